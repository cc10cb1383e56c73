"""Validation: one document against its kind's table, then the documents against each other.

``validate_document`` checks the envelope (``apiVersion``, ``kind``, ``metadata``) and the spec with
the kind's ``Struct`` from ``kinds.KINDS``. ``validate_resources`` checks what no single document
can: duplicate resources, a second Bootstrap, the same host:port in two ServiceEntries,
workloadSelectors that select nothing, and VirtualServices and DestinationRules against the services
(``control.config.traffic``). Neither raises; both return issues and warnings.
"""
from __future__ import annotations

from typing import Optional

from control.config import kinds
from control.config.load import Resource
from control.config.meshproxy import INBOUND_PORT_ANNOTATION
from control.config.schema import INVALID, METADATA, Reporter, did_you_mean, type_name
from control.config.traffic import TrafficIndex
from control.errors import ConfigIssue

TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec")


def validate_document(doc, file: str, line: int):
    """Check one parsed YAML document.

    Returns:
        (Resource or None, issues, warnings). The Resource is None when the document has any issue.
    """
    if not isinstance(doc, dict):
        issue = ConfigIssue(file, "", "", "", "", f"document at line {line} is {type_name(doc)}; expected a "
                                                  "mapping with apiVersion, kind, metadata and spec")
        return None, [issue], []
    kind = doc.get("kind") if isinstance(doc.get("kind"), str) else ""
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else ""
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) else "default"

    def make(path: str, message: str) -> ConfigIssue:
        if not name:
            message += f" (document at line {line})"
        return ConfigIssue(file, kind, namespace if name else "", name, path, message)

    rep = Reporter(make)
    for key in doc:
        if key not in TOP_LEVEL:
            rep.issue(str(key), "unknown field" + did_you_mean(str(key), TOP_LEVEL))
    if "kind" not in doc or doc["kind"] is None:
        rep.issue("kind", "required field is missing")
        return None, rep.issues, rep.warnings
    if not isinstance(doc["kind"], str):
        rep.issue("kind", f"expected a string, got {type_name(doc['kind'])}")
        return None, rep.issues, rep.warnings
    if kind in kinds.UNSUPPORTED_KINDS:
        rep.issue("", f"kind {kind} is not supported yet")
        return None, rep.issues, rep.warnings
    ks = kinds.KINDS.get(kind)
    if ks is None:
        rep.issue("", f"unknown kind {kind}" + did_you_mean(kind, list(kinds.KINDS) + list(kinds.UNSUPPORTED_KINDS)))
        return None, rep.issues, rep.warnings

    api = doc.get("apiVersion")
    if api is None:
        rep.issue("apiVersion", "required field is missing")
    elif api not in ks.api_versions:
        rep.issue("apiVersion", f'"{api}" is not valid for {kind} (expected {" or ".join(ks.api_versions)})')

    if doc.get("metadata") is None:
        rep.issue("metadata", "required field is missing")
        metadata = INVALID
    else:
        metadata = METADATA.check(doc["metadata"], "metadata", rep)
        if metadata is not INVALID:
            _check_annotations(metadata.get("annotations", {}), rep)

    raw_spec = doc.get("spec")
    spec = ks.spec.check({} if raw_spec is None else raw_spec, "spec", rep)

    if rep.issues or metadata is INVALID or spec is INVALID:
        return None, rep.issues, rep.warnings
    res = Resource(
        kind=kind, api_version=api, name=metadata["name"], namespace=metadata["namespace"], spec=spec,
        labels=metadata.get("labels", {}), annotations=metadata.get("annotations", {}),
        raw_spec=raw_spec or {}, file=file, line=line,
    )
    return res, rep.issues, rep.warnings


def _check_annotations(annotations: dict, rep: Reporter) -> None:
    value = annotations.get(INBOUND_PORT_ANNOTATION)
    if value is not None and inbound_port_annotation(value) is None:
        rep.issue(f"metadata.annotations.{INBOUND_PORT_ANNOTATION}", f'"{value}" is not a port (1-65535)')


def inbound_port_annotation(value: str) -> Optional[int]:
    try:
        port = int(value, 10)
    except (TypeError, ValueError):
        return None
    return port if 1 <= port <= 65535 else None


def validate_resources(resources: list):
    """Checks across documents. Returns (issues, warnings)."""
    issues: list = []
    warnings: list = []
    seen: dict = {}
    singletons: dict = {}
    for r in resources:
        ident = (r.kind, r.namespace, r.name)
        if ident in seen:
            first = seen[ident]
            issues.append(r.issue("", f"defined more than once (first in {first.file}, line {first.line})"))
            continue
        seen[ident] = r
        if kinds.KINDS[r.kind].singleton:
            if r.kind in singletons:
                first = singletons[r.kind]
                issues.append(r.issue("", f"only one {r.kind} is allowed (already defined: {r.kind} "
                                          f"{first.key} in {first.file})"))
            singletons.setdefault(r.kind, r)

    owners: dict = {}
    for r in resources:
        if r.kind != "ServiceEntry" or seen.get((r.kind, r.namespace, r.name)) is not r:
            continue
        for i, host in enumerate(r.spec["hosts"]):
            for port in r.spec["ports"]:
                other = owners.setdefault((host, port["number"]), r)
                if other is not r:
                    issues.append(r.issue(f"spec.hosts[{i}]", f"{host}:{port['number']} is already defined by "
                                                              f"ServiceEntry {other.key} ({other.file})"))

    unique = [r for r in resources if seen.get((r.kind, r.namespace, r.name)) is r]
    more_issues, more_warnings = TrafficIndex(unique).check()
    issues.extend(more_issues)
    warnings.extend(more_warnings)

    workloads = [r for r in resources if r.kind == "WorkloadEntry"]
    for r in resources:
        if r.kind == "ServiceEntry" and "workloadSelector" in r.spec:
            if not selected_workloads(r, workloads):
                sel = r.spec["workloadSelector"]["labels"]
                shown = ", ".join(f"{k}={v}" for k, v in sorted(sel.items())) or "(all)"
                warnings.append(r.issue("spec.workloadSelector.labels",
                                        f"selects no WorkloadEntry in namespace {r.namespace} ({shown})"))
    return issues, warnings


def selected_workloads(service: Resource, workloads: list) -> list:
    """WorkloadEntries in the ServiceEntry's namespace whose labels include its selector's labels."""
    sel = service.spec.get("workloadSelector")
    if sel is None:
        return []
    want = sel["labels"].items()
    return [w for w in workloads
            if w.namespace == service.namespace and want <= w.spec.get("labels", {}).items()]
