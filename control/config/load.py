"""Loading: a YAML file or a directory of them -> resources, issues and warnings.

``load_config`` never raises for bad content: YAML syntax errors, documents that fail their schema
and conflicts between documents all become ``ConfigIssue`` s in ``LoadedConfig.issues`` (warnings in
``LoadedConfig.warnings``), so one run reports every problem. Only a path that does not exist or
cannot be read raises ``ConfigError``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
import yaml

from control.errors import ConfigError, ConfigIssue

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Resource:
    """One validated document. ``spec`` is normalised (hosts lowercased, durations in seconds,
    defaults filled); ``raw_spec`` is the spec as written (to tell "set" from "defaulted")."""

    kind: str
    api_version: str
    name: str
    namespace: str
    spec: dict
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    raw_spec: dict = field(default_factory=dict)
    file: str = ""
    line: int = 0  # first line of the document (1-based)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def issue(self, path: str, message: str) -> ConfigIssue:
        return ConfigIssue(self.file, self.kind, self.namespace, self.name, path, message)


@dataclass
class LoadedConfig:
    resources: list = field(default_factory=list)  # list[Resource], in file then document order
    issues: list = field(default_factory=list)  # list[ConfigIssue]: errors
    warnings: list = field(default_factory=list)  # list[ConfigIssue]: accepted but not acted on
    files: list = field(default_factory=list)  # list[str]: files read, in order

    @property
    def ok(self) -> bool:
        return not self.issues

    def of_kind(self, kind: str) -> list:
        return [r for r in self.resources if r.kind == kind]


class _Loader(_BaseLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                k = (key_node.tag, key_node.value)
                if k in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f'duplicate key "{key_node.value}" (first at line {seen[k] + 1})',
                        key_node.start_mark)
                seen[k] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)


def read_documents(text: str, file: str):
    """Parse multi-document YAML. Returns (list of (line, document), list of issues).

    Documents before a syntax error are kept; PyYAML cannot resume after one, so the rest of that
    file is not read (the issue says where it stopped).
    """
    docs, issues = [], []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            data = loader.construct_document(node)
            docs.append((node.start_mark.line + 1, data))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = e.problem or "invalid YAML"
        if e.context:
            started = e.context_mark
            at = f" (line {started.line + 1})" if started is not None and mark is not None \
                and started.line != mark.line else ""
            msg = f"{e.context}{at}: {msg}"
        where = f"line {mark.line + 1}" if mark is not None else ""
        issues.append(ConfigIssue(file, "", "", "", where, msg))
    except yaml.YAMLError as e:  # pragma: no cover - PyYAML raises Marked errors for content
        issues.append(ConfigIssue(file, "", "", "", "", f"invalid YAML: {e}"))
    finally:
        loader.dispose()
    return docs, issues


def config_files(path: str) -> tuple:
    """(files, display names) for a file or a directory (``*.yaml``/``*.yml``, sorted, non-recursive)."""
    if not os.path.exists(path):
        raise ConfigError([ConfigIssue(path, "", "", "", "", "no such file or directory")])
    if os.path.isdir(path):
        try:
            names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml"))
                           and os.path.isfile(os.path.join(path, n)))
        except OSError as e:
            raise ConfigError([ConfigIssue(path, "", "", "", "", f"cannot read directory: {e.strerror}")])
        return [os.path.join(path, n) for n in names], names
    return [path], [path]


def load_config(path) -> LoadedConfig:
    """Read, parse and validate a config file or directory.

    Args:
        path: a YAML file (multi-document) or a directory; in a directory every ``*.yaml`` and
            ``*.yml`` file is read, in sorted order, not recursively.

    Returns:
        ``LoadedConfig``: the valid resources plus every issue and warning found. Issues name the
        file (its base name when read from a directory), the resource and the field path.

    Raises:
        ConfigError: ``path`` does not exist or cannot be read (the error carries it as an issue).
    """
    from control.config.validate import validate_document, validate_resources

    path = os.fspath(path)
    files, names = config_files(path)
    cfg = LoadedConfig()
    if os.path.isdir(path) and not files:
        cfg.warnings.append(ConfigIssue(path, "", "", "", "", "no *.yaml or *.yml files in this directory"))
    for fpath, display in zip(files, names):
        try:
            with open(fpath, "rb") as f:
                data = f.read()
        except OSError as e:
            issue = ConfigIssue(display, "", "", "", "", f"cannot read: {e.strerror}")
            if fpath == path:
                raise ConfigError([issue])
            cfg.issues.append(issue)
            continue
        cfg.files.append(fpath)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            cfg.issues.append(ConfigIssue(display, "", "", "", "", f"not UTF-8 text (byte {e.start})"))
            continue
        docs, issues = read_documents(text, display)
        cfg.issues.extend(issues)
        for line, doc in docs:
            if doc is None:
                continue  # empty document
            res, issues, warnings = validate_document(doc, display, line)
            cfg.issues.extend(issues)
            cfg.warnings.extend(warnings)
            if res is not None:
                cfg.resources.append(res)
    issues, warnings = validate_resources(cfg.resources)
    cfg.issues.extend(issues)
    cfg.warnings.extend(warnings)
    return cfg
