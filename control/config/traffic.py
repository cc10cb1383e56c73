"""Traffic management across documents: which VirtualService and DestinationRule apply to which
ServiceEntry host, and the checks no single document can make (unknown destination hosts, subsets
no DestinationRule defines, ports the service does not have, two VirtualServices or two
DestinationRules claiming the same host).

``TrafficIndex`` is built once from the valid resources and used by validation (``check``) and by
compilation (``control.compile``), so both agree on how names resolve. Istio's rules:

- A host without a dot is a short name, resolved in the resource's namespace to
  ``<name>.<namespace>.svc.cluster.local``; anything with a dot is used as written.
- ``*`` matches every host; ``*.example.com`` matches every host ending in ``.example.com``
  (including the wildcard host ``*.example.com`` itself). An exact host beats a wildcard, and a
  longer wildcard beats a shorter one.
"""
from __future__ import annotations

from typing import Optional

from control.config.load import Resource
from control.config.networking import HTTP_PROTOCOLS
from control.config.schema import did_you_mean

DOMAIN_SUFFIX = "cluster.local"
MESH_GATEWAY = "mesh"


def resolve_host(name: str, namespace: str) -> str:
    """Istio's ResolveShortnameToFQDN: ``reviews`` in ``default`` is ``reviews.default.svc.cluster.local``."""
    if name == "*" or "." in name:
        return name
    return f"{name}.{namespace}.svc.{DOMAIN_SUFFIX}"


def host_matches(pattern: str, host: str) -> bool:
    """Whether VirtualService/DestinationRule host ``pattern`` covers service host ``host``."""
    if pattern == host or pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.lstrip("*").endswith(pattern[1:])
    return False


def _specificity(pattern: str) -> tuple:
    return (0 if pattern.startswith("*") else 1, len(pattern))


def applies_to_sidecars(vs: Resource) -> bool:
    gateways = vs.spec.get("gateways")
    return gateways is None or MESH_GATEWAY in gateways


class TrafficIndex:
    """ServiceEntry hosts and ports, and the VirtualServices and DestinationRules for them."""

    def __init__(self, resources: list):
        self.services: dict = {}  # host -> {port number: (ServiceEntry, port dict)}
        for r in sorted((r for r in resources if r.kind == "ServiceEntry"), key=lambda r: (r.namespace, r.name)):
            for host in r.spec["hosts"]:
                ports = self.services.setdefault(host, {})
                for p in r.spec["ports"]:
                    ports.setdefault(p["number"], (r, p))
        order = {id(r): i for i, r in enumerate(resources)}
        self.virtual_services = sorted((r for r in resources if r.kind == "VirtualService"),
                                       key=lambda r: order[id(r)])
        self.destination_rules = sorted((r for r in resources if r.kind == "DestinationRule"),
                                        key=lambda r: order[id(r)])
        # resolved host pattern -> first resource claiming it (later ones are conflicts)
        self.vs_hosts: dict = {}
        for vs in self.virtual_services:
            if applies_to_sidecars(vs):
                for h in vs.spec["hosts"]:
                    self.vs_hosts.setdefault(resolve_host(h, vs.namespace), vs)
        self.dr_hosts: dict = {}
        for dr in self.destination_rules:
            self.dr_hosts.setdefault(resolve_host(dr.spec["host"], dr.namespace), dr)

    # --- lookups --------------------------------------------------------------------------------------

    def service_host(self, host: str) -> Optional[str]:
        """The ServiceEntry host serving ``host``: itself, or the most specific wildcard SE host."""
        if host in self.services:
            return host
        found = [h for h in self.services if h.startswith("*.") and host_matches(h, host)]
        return max(found, key=_specificity) if found else None

    def http_ports(self, host: str) -> list:
        """(number, port dict) of the HTTP-family ports of service host ``host``, by number."""
        return sorted((n, p) for n, (_, p) in self.services.get(host, {}).items()
                      if p["protocol"] in HTTP_PROTOCOLS)

    def virtual_service_for(self, host: str) -> Optional[Resource]:
        """The sidecar VirtualService for service host ``host`` (most specific host pattern wins)."""
        found = [h for h in self.vs_hosts if host_matches(h, host)]
        return self.vs_hosts[max(found, key=_specificity)] if found else None

    def destination_rule_for(self, host: str) -> Optional[Resource]:
        found = [h for h in self.dr_hosts if host_matches(h, host)]
        return self.dr_hosts[max(found, key=_specificity)] if found else None

    def subset(self, host: str, name: str) -> Optional[dict]:
        dr = self.destination_rule_for(host)
        if dr is None:
            return None
        return next((s for s in dr.spec.get("subsets", []) if s["name"] == name), None)

    # --- checks ---------------------------------------------------------------------------------------

    def check(self):
        """(issues, warnings) for VirtualServices and DestinationRules against the services."""
        issues: list = []
        warnings: list = []
        for vs in self.virtual_services:
            self._check_virtual_service(vs, issues, warnings)
        for dr in self.destination_rules:
            self._check_destination_rule(dr, issues, warnings)
        return issues, warnings

    def _check_virtual_service(self, vs: Resource, issues: list, warnings: list) -> None:
        if not applies_to_sidecars(vs):
            warnings.append(vs.issue("spec.gateways", "applies only to gateways, not to sidecars (no \"mesh\"): "
                                                      "ignored by the sidecar"))
            return
        others = [g for g in vs.spec.get("gateways", []) if g != MESH_GATEWAY]
        if others:
            warnings.append(vs.issue("spec.gateways", f"gateways are not supported yet: only \"mesh\" applies "
                                                      f"(ignored: {', '.join(others)})"))
        for i, h in enumerate(vs.spec["hosts"]):
            full = resolve_host(h, vs.namespace)
            owner = self.vs_hosts.get(full)
            if owner is not vs:
                issues.append(vs.issue(f"spec.hosts[{i}]", f"host {full} is already claimed by VirtualService "
                                                           f"{owner.key} ({owner.file}): one VirtualService per "
                                                           "host for sidecars"))
            elif not any(host_matches(full, s) for s in self.services):
                warnings.append(vs.issue(f"spec.hosts[{i}]", f"host {full} matches no ServiceEntry host: "
                                                             "nothing is routed by it"))
        for i, route in enumerate(vs.spec["http"]):
            base = f"spec.http[{i}]"
            for j, rd in enumerate(route.get("route", [])):
                self._check_destination(vs, f"{base}.route[{j}].destination", rd["destination"], issues)
            if "mirror" in route:
                self._check_destination(vs, f"{base}.mirror", route["mirror"], issues)
            for j, m in enumerate(route.get("mirrors", [])):
                self._check_destination(vs, f"{base}.mirrors[{j}].destination", m["destination"], issues)

    def _check_destination(self, vs: Resource, path: str, dest: dict, issues: list) -> None:
        full = resolve_host(dest["host"], vs.namespace)
        host = self.service_host(full)
        if host is None:
            issues.append(vs.issue(f"{path}.host", f"unknown host {full}: not a ServiceEntry host"
                                   + did_you_mean(full, [h for h in self.services if not h.startswith("*")])))
            return
        ports = self.http_ports(host)
        numbers = [n for n, _ in ports]
        shown = ", ".join(map(str, numbers))
        if "port" in dest:
            if dest["port"]["number"] not in numbers:
                issues.append(vs.issue(f"{path}.port.number", f"{dest['port']['number']} is not an HTTP port of "
                                       f"{host} (HTTP ports: {shown or 'none'})"))
        elif len(numbers) > 1:
            issues.append(vs.issue(f"{path}.port", f"{host} has several HTTP ports ({shown}): set port.number"))
        elif not numbers:
            issues.append(vs.issue(f"{path}.host", f"{host} has no HTTP port"))
        if "subset" in dest and self.subset(host, dest["subset"]) is None:
            dr = self.destination_rule_for(host)
            known = [s["name"] for s in dr.spec.get("subsets", [])] if dr else []
            where = f"DestinationRule {dr.key}" if dr else "any DestinationRule"
            hint = did_you_mean(dest["subset"], known) or (f" (defined: {', '.join(known)})" if known else "")
            issues.append(vs.issue(f"{path}.subset", f'subset "{dest["subset"]}" of {host} is not defined by {where}'
                                   + hint))

    def _check_destination_rule(self, dr: Resource, issues: list, warnings: list) -> None:
        full = resolve_host(dr.spec["host"], dr.namespace)
        owner = self.dr_hosts.get(full)
        if owner is not dr:
            issues.append(dr.issue("spec.host", f"host {full} is already configured by DestinationRule {owner.key} "
                                                f"({owner.file})"))
            return
        hosts = [h for h in self.services if host_matches(full, h)]
        if not hosts:
            warnings.append(dr.issue("spec.host", f"host {full} matches no ServiceEntry host: the "
                                                  "DestinationRule does nothing"))
            return
        numbers = sorted({n for h in hosts for n, _ in self.http_ports(h)})
        policies = [("spec.trafficPolicy", dr.spec.get("trafficPolicy", {}))]
        policies += [(f"spec.subsets[{i}].trafficPolicy", s.get("trafficPolicy", {}))
                     for i, s in enumerate(dr.spec.get("subsets", []))]
        for path, pol in policies:
            for i, pls in enumerate(pol.get("portLevelSettings", [])):
                if pls["port"]["number"] not in numbers:
                    warnings.append(dr.issue(f"{path}.portLevelSettings[{i}].port.number",
                                             f"{pls['port']['number']} is not an HTTP port of {full} "
                                             f"(HTTP ports: {', '.join(map(str, numbers)) or 'none'}): ignored"))
