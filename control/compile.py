"""Compilation: validated resources (+ this sidecar's workload and overrides) -> Snapshot.

What is built (see docs/configuration.md for the user-facing description):

- ``virtualOutbound`` at the bootstrap outbound address:port: for every ServiceEntry host ``h`` and
  HTTP-family port ``p`` (HTTP, HTTP2, GRPC), a cluster ``outbound|p||h`` and a virtual host
  ``h:p`` whose domains are ``h:p`` (plus bare ``h`` for the service's default port, and the
  Kubernetes short names for ``<svc>.<ns>.svc.cluster.local`` hosts), with one route to the cluster.
- Endpoints come from ``spec.endpoints`` or the selected WorkloadEntries. An endpoint labelled
  ``security.istio.io/tlsMode: istio`` has a sidecar: it is dialled at its sidecar's inbound port.
- Each outbound endpoint's locality ``priority`` and effective ``weight`` are computed here for
  this sidecar, from the DestinationRule's ``localityLbSetting`` and the workload's locality
  (``control.locality``), as istiod does for Envoy's EDS.
- With a workload: ``virtualInbound`` at workload.address:inbound port, one ``inbound|target||``
  cluster per application port of the ServiceEntries that include the workload, and virtual hosts
  with the same domains as outbound, pointing at those inbound clusters. Inbound routes carry
  Istio's inbound retry policy (``INBOUND_RETRY_POLICY``: reset-before-request, twice).

Everything is sorted, so the same input always gives the same Snapshot and the same version.
"""
from __future__ import annotations

import base64
import dataclasses
import ipaddress
from typing import Optional

from control.config import schema
from control.config.load import LoadedConfig, Resource, load_config
from control.config.meshproxy import INBOUND_PORT_ANNOTATION, PATH_NORMALIZATIONS
from control.config.networking import HTTP_PROTOCOLS
from control.config.security import TLS_MODE_LABEL
from control.config.traffic import TrafficIndex, resolve_host
from control.config.validate import inbound_port_annotation, selected_workloads
from control.errors import ConfigError, ConfigIssue
from control.locality import prioritise
from control.policy import traffic_policy
from control.snapshot import (DEFAULT_RETRY_ON, INBOUND_RETRY_POLICY, AuthzMatch, AuthzPolicy, AuthzRule, Bootstrap,
                              CertificateFiles, Cluster, Destination, DirectResponse,
                              Endpoint, Fault, HeaderMatch, HeaderOps, HealthCheck, Limits, Listener, Mirror,
                              QueryMatch, Redirect, RetryPolicy, Rewrite, Route, RouteMatch,
                              Snapshot, StringMatch, VirtualHost, Workload, content_version)

DOMAIN_SUFFIX = "cluster.local"
DEFAULT_NAMESPACE = "default"


def build_snapshot(path, workload: Optional[str] = None, overrides: Optional[dict] = None) -> Snapshot:
    """Load, validate and compile a config file or directory.

    Args:
        path: a YAML file or a directory of them (see ``load_config``).
        workload: this sidecar's WorkloadEntry, ``"name"`` or ``"namespace/name"``; overrides the
            Bootstrap's ``spec.workload``. None: no workload (outbound only).
        overrides: Bootstrap field values applied last, keyed by ``Bootstrap`` field names
            (``{"concurrency": 2, "admin_port": 15100}``).

    Returns:
        The Snapshot.

    Raises:
        ConfigError: listing every problem found (load, validation and compilation).
    """
    return compile_snapshot(load_config(path), workload=workload, overrides=overrides)


def compile_snapshot(cfg: LoadedConfig, workload: Optional[str] = None,
                     overrides: Optional[dict] = None) -> Snapshot:
    """Compile a ``LoadedConfig``; raises ``ConfigError`` with its issues plus any found here."""
    issues = list(cfg.issues)
    warnings = list(cfg.warnings)
    boot_res = next(iter(cfg.of_kind("Bootstrap")), None)
    boot_spec = boot_res.spec if boot_res else {}
    raw_boot = boot_res.raw_spec if boot_res else {}
    services = sorted(cfg.of_kind("ServiceEntry"), key=lambda r: (r.namespace, r.name))
    entries = sorted(cfg.of_kind("WorkloadEntry"), key=lambda r: (r.namespace, r.name))

    wl_res = None
    ref = workload if workload is not None else boot_spec.get("workload")
    if ref is not None:
        wl_res, issue = _find_workload(ref, entries, boot_res if workload is None else None)
        if issue:
            issues.append(issue)

    bootstrap = _bootstrap(boot_spec, raw_boot)
    peer_inbound_port = bootstrap.inbound_port  # what peers assume a sidecar listens on
    wl = None
    if wl_res is not None:
        wl = _workload(wl_res)
        ann = inbound_port_annotation(wl_res.annotations.get(INBOUND_PORT_ANNOTATION, ""))
        if ann:
            bootstrap = dataclasses.replace(bootstrap, inbound_port=ann)
        if _is_extra_loopback(wl.address):
            if "address" not in (raw_boot.get("outbound") or {}):
                bootstrap = dataclasses.replace(bootstrap, outbound_address=wl.address)
            if "address" not in (raw_boot.get("admin") or {}):
                bootstrap = dataclasses.replace(bootstrap, admin_address=wl.address)
    if overrides:
        bootstrap, more = _apply_overrides(bootstrap, overrides)
        issues.extend(more)
    if issues:
        raise ConfigError(issues)

    upstream = boot_spec.get("upstream", {})
    timeouts = {
        "connect_timeout": upstream.get("connectTimeout", Cluster.connect_timeout),
        "idle_timeout": upstream.get("idleTimeout", Cluster.idle_timeout),
        "max_idle_per_endpoint": upstream.get("maxIdlePerEndpoint", Cluster.max_idle_per_endpoint),
    }
    sidecar_ns = wl.namespace if wl else DEFAULT_NAMESPACE

    clusters: dict = {}
    out_vhosts: list = []
    in_vhosts: list = []
    in_targets: set = set()
    index = TrafficIndex(cfg.resources)
    outbound = _Outbound(index, entries, peer_inbound_port, timeouts, clusters, warnings, wl)
    outbound.trust_domain = bootstrap.trust_domain
    for se in services:
        ports = se.spec["ports"]
        for p in ports:
            if p["protocol"] not in HTTP_PROTOCOLS:
                continue
            for host in se.spec["hosts"]:
                cname = outbound.cluster(host, p["number"], "")
                domains = service_domains(host, p["number"], ports, sidecar_ns)
                vs = index.virtual_service_for(host)
                if vs is None:
                    routes = (Route("default", destinations=(Destination(cname),)),)
                else:
                    routes = outbound.routes(vs, p["number"], wl)
                out_vhosts.append(VirtualHost(f"{host}:{p['number']}", domains, routes))
            target = _inbound_target(se, p, wl_res, wl) if wl else None
            if target is None:
                continue
            iname = f"inbound|{target}||"
            in_targets.add(target)
            clusters[iname] = Cluster(
                name=iname, direction="inbound", service="", namespace="", port=target,
                port_name=p["name"], protocol=p["protocol"],
                endpoints=(Endpoint(wl.address, target, target, labels=dict(wl.labels),
                                    workload=f"{wl.namespace}/{wl.name}"),),
                **timeouts)
            for host in se.spec["hosts"]:
                in_vhosts.append(VirtualHost(f"{host}:{p['number']}",
                                             service_domains(host, p["number"], ports, sidecar_ns),
                                             (Route("default", destinations=(Destination(iname),),
                                                    retries=INBOUND_RETRY_POLICY),)))

    listeners = [Listener("virtualOutbound", "outbound", bootstrap.outbound_address, bootstrap.outbound_port,
                          _dedupe_domains(out_vhosts, "virtualOutbound", warnings))]
    if wl is not None:
        default = f"inbound|{next(iter(in_targets))}||" if len(in_targets) == 1 else None
        listeners.append(Listener("virtualInbound", "inbound", wl.address, bootstrap.inbound_port,
                                  _dedupe_domains(in_vhosts, "virtualInbound", warnings), default,
                                  authorization=authorization_policies(cfg, wl, bootstrap.root_namespace)))
        wl = dataclasses.replace(wl, ports={**_resolved_ports(services, entries, wl_res, wl), **wl.ports})

    hc_issues = _attach_health_checks(cfg, index, clusters)
    if hc_issues:
        raise ConfigError(hc_issues)
    listeners.sort(key=lambda li: li.name)
    cluster_list = tuple(clusters[k] for k in sorted(clusters))
    content = {"bootstrap": bootstrap, "listeners": listeners, "clusters": cluster_list, "workload": wl}
    return Snapshot(
        version=content_version(content),
        bootstrap=bootstrap,
        listeners=tuple(listeners),
        clusters=cluster_list,
        workload=wl,
        warnings=tuple(str(w) for w in warnings),
        sources=tuple(cfg.files),
    )


# --- AuthorizationPolicy (inbound) ----------------------------------------------------------------

#: AuthorizationPolicy source / operation fields -> Istio's attribute names.
SOURCE_KEYS = {"principals": "source.principal", "requestPrincipals": "request.auth.principal",
               "namespaces": "source.namespace", "ipBlocks": "source.ip", "remoteIpBlocks": "remote.ip",
               "serviceAccounts": "source.serviceAccount", "trustDomains": "source.trustDomain"}
OPERATION_KEYS = {"hosts": "request.host", "ports": "destination.port", "methods": "request.method",
                  "paths": "request.path"}


def authorization_policies(cfg: LoadedConfig, wl: Workload, root_namespace: str) -> tuple:
    """The AuthorizationPolicies that apply to workload ``wl``, as Istio selects them: those of
    the root namespace (mesh-wide) and of the workload's namespace, narrowed by
    ``selector.matchLabels`` (a subset of the workload's labels)."""
    out = []
    for r in sorted(cfg.of_kind("AuthorizationPolicy"), key=lambda r: (r.namespace, r.name)):
        if r.namespace not in (root_namespace, wl.namespace):
            continue
        want = r.spec.get("selector", {}).get("matchLabels", {})
        if not want.items() <= wl.labels.items():
            continue
        scope = "selector" if want else ("mesh" if r.namespace == root_namespace else "namespace")
        out.append(AuthzPolicy(f"{r.namespace}/{r.name}", r.spec.get("action", "ALLOW"),
                               tuple(_authz_rule(rule) for rule in r.spec.get("rules", ())), scope))
    return tuple(out)


def _authz_fields(spec: dict, keys: dict, where: str) -> tuple:
    out = []
    for name, key in keys.items():
        for field_name, negate in ((name, False), ("not" + name[0].upper() + name[1:], True)):
            if spec.get(field_name):
                out.append(AuthzMatch(key, tuple(spec[field_name]), negate, f"{where}.{field_name}"))
    return tuple(out)


def _authz_rule(rule: dict) -> AuthzRule:
    sources = tuple(_authz_fields(f["source"], SOURCE_KEYS, f"from[{i}].source")
                    for i, f in enumerate(rule.get("from", ())))
    operations = tuple(_authz_fields(t["operation"], OPERATION_KEYS, f"to[{i}].operation")
                       for i, t in enumerate(rule.get("to", ())))
    conditions = []
    for i, w in enumerate(rule.get("when", ())):
        for field_name, negate in (("values", False), ("notValues", True)):
            if w.get(field_name):
                conditions.append(AuthzMatch(w["key"], tuple(w[field_name]), negate, f"when[{i}].{field_name}"))
    return AuthzRule(sources, operations, tuple(conditions))


# --- Domains ------------------------------------------------------------------------------------------


def service_domains(host: str, port: int, service_ports: list, sidecar_namespace: str) -> tuple:
    """Host header values routed to ``host``'s port ``port``, lowercase, in a stable order.

    ``host:port`` always; bare ``host`` too when ``port`` is the service's default port (80, or its
    first port when it has no port 80). For ``<svc>.<ns>.svc.cluster.local`` the short forms
    ``<svc>.<ns>.svc`` and ``<svc>.<ns>`` follow the same rule, and so does ``<svc>`` when ``ns`` is
    the sidecar's namespace (as Kubernetes DNS search paths make them resolve).
    """
    numbers = [p["number"] for p in service_ports]
    default = port == 80 or (80 not in numbers and numbers and numbers[0] == port)
    if host.startswith("*."):  # wildcard ServiceEntry host: the data plane matches it as a suffix
        return (f"{host}:{port}", host) if default else (f"{host}:{port}",)
    names = [host]
    suffix = f".svc.{DOMAIN_SUFFIX}"
    if host.endswith(suffix):
        parts = host[: -len(suffix)].split(".")
        if len(parts) == 2:
            svc, ns = parts
            names += [f"{svc}.{ns}.svc", f"{svc}.{ns}"]
            if ns == sidecar_namespace:
                names.append(svc)
    out = []
    for n in names:
        n = n.lower()
        out.append(f"{n}:{port}")
        if default:
            out.append(n)
    return tuple(out)


def _dedupe_domains(vhosts: list, listener: str, warnings: list) -> tuple:
    """Sort virtual hosts; a domain claimed twice (only possible for short names) stays with the first."""
    vhosts = sorted(vhosts, key=lambda v: v.name)
    owner: dict = {}
    out = []
    for vh in vhosts:
        kept = []
        for d in vh.domains:
            if d in owner:
                warnings.append(ConfigIssue("", "", "", "", listener,
                                            f'domain "{d}" of {vh.name} is already served by {owner[d]}; '
                                            "ignored for " + vh.name))
                continue
            owner[d] = vh.name
            kept.append(d)
        out.append(dataclasses.replace(vh, domains=tuple(kept)))
    return tuple(out)


# --- Outbound clusters and VirtualService routes ---------------------------------------------------------


class _Outbound:
    """Builds outbound clusters on demand (base, subset) and the routes of VirtualServices."""

    def __init__(self, index: TrafficIndex, entries: list, peer_inbound_port: int, timeouts: dict,
                 clusters: dict, warnings: list, workload: Optional[Workload]):
        self.index, self.entries, self.peer_inbound_port = index, entries, peer_inbound_port
        self.timeouts, self.clusters, self.warnings = timeouts, clusters, warnings
        self.workload = workload  # this sidecar's: endpoint priorities follow its locality
        self.warned: set = set()
        self.trust_domain = "cluster.local"  # of the SPIFFE IDs sidecar endpoints must present

    # --- clusters -------------------------------------------------------------------------------------

    def cluster(self, host: str, port: int, subset: str) -> str:
        """The name of cluster ``outbound|port|subset|host``, building it on first use."""
        name = f"outbound|{port}|{subset}|{host}"
        if name in self.clusters:
            return name
        se, p = self.index.services[host][port]
        dr = self.index.destination_rule_for(host)
        subset_spec = None
        if subset:
            subset_spec = next(s for s in dr.spec.get("subsets", []) if s["name"] == subset)
        sources = _endpoint_sources(se, selected_workloads(se, self.entries))
        if subset_spec is not None:
            want = subset_spec["labels"].items()
            sources = [s for s in sources if want <= s[0].get("labels", {}).items()]
        resolution = se.spec["resolution"]
        endpoints = _endpoints(sources, p, self.peer_inbound_port, self.trust_domain,
                               se.namespace) if resolution != "NONE" else ()
        dns_hosts: tuple = ()
        if resolution in ("DNS", "DNS_ROUND_ROBIN"):
            if "endpoints" in se.spec or "workloadSelector" in se.spec:
                dns_hosts = tuple((e.address, e.port, e.weight) for e in endpoints)
            elif subset_spec is None or not subset_spec["labels"]:
                dns_hosts = ((host, p.get("targetPort", p["number"]), 1),)
            endpoints = ()
        if subset_spec is not None and resolution != "NONE" and not endpoints and not dns_hosts:
            key = (dr.key, subset)
            if key not in self.warned:
                self.warned.add(key)
                i = dr.spec["subsets"].index(subset_spec)
                self.warnings.append(dr.issue(f"spec.subsets[{i}].labels",
                                              f'subset "{subset}" of {host} selects no endpoint (requests get 503)'))
        policy = traffic_policy(dr.spec if dr else {}, port, subset_spec)
        endpoints = prioritise(endpoints, policy.get("locality_lb"), self.workload)
        self.clusters[name] = Cluster(
            name=name, direction="outbound", service=host, namespace=se.namespace, port=port,
            port_name=p["name"], protocol=p["protocol"], endpoints=endpoints, subset=subset,
            resolution=resolution, dns_hosts=dns_hosts, destination_rule=dr.key if dr else "",
            **{**self.timeouts, **policy})
        return name

    def destination_cluster(self, vs, dest: dict) -> str:
        host = self.index.service_host(resolve_host(dest["host"], vs.namespace))
        if "port" in dest:
            port = dest["port"]["number"]
        else:
            port = self.index.http_ports(host)[0][0]
        return self.cluster(host, port, dest.get("subset", ""))

    # --- routes ---------------------------------------------------------------------------------------

    def routes(self, vs, port: int, wl: Optional[Workload]) -> tuple:
        out = []
        for i, http in enumerate(vs.spec["http"]):
            route = self._route(vs, i, http, port, wl)
            if route is not None:
                out.append(route)
        return tuple(out)

    def _route(self, vs, index: int, http: dict, port: int, wl: Optional[Workload]) -> Optional[Route]:
        matches = []
        for m in http.get("match", []):
            if "port" in m and m["port"] != port:
                continue
            if "gateways" in m and "mesh" not in m["gateways"]:
                continue
            labels = wl.labels if wl else {}
            if not m.get("sourceLabels", {}).items() <= labels.items():
                continue
            if "sourceNamespace" in m and m["sourceNamespace"] != (wl.namespace if wl else None):
                continue
            matches.append(_route_match(m))
        if http.get("match") and not matches:
            return None
        headers = http.get("headers", {})
        destinations = tuple(
            Destination(self.destination_cluster(vs, rd["destination"]), rd.get("weight", 100),
                        _header_ops(rd.get("headers", {}).get("request")),
                        _header_ops(rd.get("headers", {}).get("response")))
            for rd in http.get("route", []))
        mirrors = []
        if "mirror" in http:
            pct = http["mirrorPercentage"]["value"] if "mirrorPercentage" in http else \
                float(http.get("mirrorPercent", 100))
            mirrors.append(Mirror(self.destination_cluster(vs, http["mirror"]), pct))
        for m in http.get("mirrors", []):
            mirrors.append(Mirror(self.destination_cluster(vs, m["destination"]),
                                  m.get("percentage", {}).get("value", 100.0)))
        return Route(
            name=http.get("name", ""), matches=tuple(matches), destinations=destinations,
            redirect=_redirect(http.get("redirect")), direct_response=_direct_response(http.get("directResponse")),
            rewrite=_rewrite(http.get("rewrite")), request_headers=_header_ops(headers.get("request")),
            response_headers=_header_ops(headers.get("response")), fault=_fault(http.get("fault")),
            mirrors=tuple(mirrors), virtual_service=vs.key, index=index,
            timeout=http.get("timeout", 0.0), retries=_retry_policy(http.get("retries")))


def _retry_policy(r: Optional[dict]) -> RetryPolicy:
    """Istio's HTTPRetry; without one, Istio's default policy (2 attempts)."""
    if r is None:
        return RetryPolicy()
    conditions, codes = [], []
    for part in (r.get("retryOn") or ",".join(DEFAULT_RETRY_ON)).split(","):
        part = part.strip()
        if part.isdigit():
            codes.append(int(part))
        elif part and part not in conditions:
            conditions.append(part)
    if codes and "retriable-status-codes" not in conditions:
        conditions.append("retriable-status-codes")
    return RetryPolicy(attempts=r.get("attempts", 2), per_try_timeout=r.get("perTryTimeout", 0.0),
                       retry_on=tuple(conditions), status_codes=tuple(codes),
                       retry_remote_localities=r.get("retryRemoteLocalities", False),
                       ignore_previous_hosts=r.get("retryIgnorePreviousHosts", True),
                       backoff=r.get("backoff", 0.025), configured=True)


def _string_match(m: Optional[dict]) -> Optional[StringMatch]:
    if not m:
        return None
    kind = next(k for k in ("exact", "prefix", "regex") if k in m)
    return StringMatch(kind, m[kind])


def _route_match(m: dict) -> RouteMatch:
    headers = [HeaderMatch(k, _string_match(v)) for k, v in m.get("headers", {}).items()]
    headers += [HeaderMatch(k, _string_match(v), invert=True) for k, v in m.get("withoutHeaders", {}).items()]
    return RouteMatch(
        name=m.get("name", ""), uri=_string_match(m.get("uri")), ignore_uri_case=m.get("ignoreUriCase", False),
        scheme=_string_match(m.get("scheme")), method=_string_match(m.get("method")),
        authority=_string_match(m.get("authority")), headers=tuple(headers),
        query_params=tuple(QueryMatch(k, _string_match(v)) for k, v in m.get("queryParams", {}).items()),
        port=m.get("port", 0))


def _header_ops(ops: Optional[dict]) -> HeaderOps:
    if not ops:
        return HeaderOps()
    return HeaderOps(set=tuple(ops.get("set", {}).items()), add=tuple(ops.get("add", {}).items()),
                     remove=tuple(ops.get("remove", ())))


def _redirect(r: Optional[dict]) -> Optional[Redirect]:
    if r is None:
        return None
    return Redirect(uri=r.get("uri", ""), authority=r.get("authority", ""), port=r.get("port", 0),
                    scheme=r.get("scheme", ""), code=r["redirectCode"])


def _direct_response(d: Optional[dict]) -> Optional[DirectResponse]:
    if d is None:
        return None
    body = d.get("body", {})
    text = body.get("string", "")
    if "bytes" in body:
        text = base64.b64decode(body["bytes"]).decode("utf-8")
    return DirectResponse(d["status"], text)


def _rewrite(r: Optional[dict]) -> Optional[Rewrite]:
    if r is None:
        return None
    rx = r.get("uriRegexRewrite", {})
    return Rewrite(uri=r.get("uri", ""), authority=r.get("authority", ""), uri_regex=rx.get("match", ""),
                   uri_regex_rewrite=rx.get("rewrite", ""))


def _fault(f: Optional[dict]) -> Optional[Fault]:
    if f is None:
        return None
    delay, abort = f.get("delay", {}), f.get("abort", {})
    delay_pct = delay["percentage"]["value"] if "percentage" in delay else float(delay.get("percent", 0))
    return Fault(delay=delay.get("fixedDelay", 0.0), delay_percent=delay_pct if delay else 0.0,
                 abort_status=abort.get("httpStatus", 0),
                 abort_percent=abort.get("percentage", {}).get("value", 0.0))


# --- Endpoints ----------------------------------------------------------------------------------------


def _endpoint_sources(se: Resource, selected: list) -> list:
    """(endpoint spec, "namespace/name" of its WorkloadEntry or "", annotations) for a ServiceEntry."""
    if "endpoints" in se.spec:
        return [(ep, "", {}) for ep in se.spec["endpoints"]]
    return [(w.spec, f"{w.namespace}/{w.name}", w.annotations) for w in selected]


def _endpoints(sources: list, port: dict, peer_inbound_port: int, trust_domain: str = "cluster.local",
               namespace: str = "default") -> tuple:
    out = []
    for ep, workload, ann in sources:
        weight = ep.get("weight", 1)
        if weight == 0:
            continue  # Istio: weight 0 takes the endpoint out of load balancing
        target = ep.get("ports", {}).get(port["name"], port.get("targetPort", port["number"]))
        labels = ep.get("labels", {})
        sidecar = labels.get(TLS_MODE_LABEL) == "istio"
        dial = target
        identity = ""
        if sidecar:
            dial = inbound_port_annotation(ann.get(INBOUND_PORT_ANNOTATION, "")) or peer_inbound_port
            # Istio: a workload's identity is its namespace and service account ("default")
            ns = workload.split("/", 1)[0] if workload else namespace
            identity = f"spiffe://{trust_domain}/ns/{ns}/sa/{ep.get('serviceAccount') or 'default'}"
        out.append(Endpoint(address=ep["address"], port=dial, target_port=target, labels=dict(labels),
                            weight=weight, locality=ep.get("locality", ""), workload=workload, sidecar=sidecar,
                            identity=identity))
    out.sort(key=lambda e: (e.address, e.port, e.target_port, e.workload))
    return tuple(out)


def _inbound_target(se: Resource, port: dict, wl_res: Resource, wl: Workload) -> Optional[int]:
    """The application port of ``port`` on this workload, if the ServiceEntry includes it."""
    if se.namespace != wl.namespace:
        return None
    if "endpoints" in se.spec:
        eps = [ep for ep in se.spec["endpoints"] if _same_ip(ep["address"], wl.address)]
        if not eps:
            return None
        ep_ports = eps[0].get("ports", {})
    elif wl_res in selected_workloads(se, [wl_res]):
        ep_ports = wl_res.spec.get("ports", {})
    else:
        return None
    return ep_ports.get(port["name"], port.get("targetPort", port["number"]))


def _resolved_ports(services: list, entries: list, wl_res: Resource, wl: Workload) -> dict:
    out = {}
    for se in services:
        for p in se.spec["ports"]:
            target = _inbound_target(se, p, wl_res, wl)
            if target is not None:
                out.setdefault(p["name"], target)
    return out


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


# --- Active health checks (meshproxy HealthCheck kind) ----------------------------------------------


def _health_check(r: Resource) -> HealthCheck:
    spec = r.spec
    kw: dict = {}
    if "http" in spec:
        h = spec["http"]
        kw.update(http_path=h["path"], http_host=h.get("host", ""),
                  request_headers=tuple(sorted(h.get("requestHeaders", {}).items())))
        if "expectedStatuses" in h:
            kw["expected_statuses"] = tuple((x["start"], x["end"]) for x in h["expectedStatuses"])
    else:
        t = spec["tcp"]
        kw.update(tcp=True, send=t.get("send", ""), expect=t.get("expect", ""))
    return HealthCheck(
        source=r.key, interval=spec["interval"], timeout=spec["timeout"],
        interval_jitter=spec["intervalJitter"], unhealthy_threshold=spec["unhealthyThreshold"],
        healthy_threshold=spec["healthyThreshold"], no_traffic_interval=spec["noTrafficInterval"],
        **kw)


def _attach_health_checks(cfg: LoadedConfig, index: TrafficIndex, clusters: dict) -> list:
    """Give each outbound cluster the most specific HealthCheck selecting it (subset and port
    set beats subset beats port beats host only); returns the issues found."""
    issues: list = []
    chosen: dict = {}  # cluster name -> (specificity, Resource)
    for r in sorted(cfg.of_kind("HealthCheck"), key=lambda r: (r.namespace, r.name)):
        spec = r.spec
        host = index.service_host(resolve_host(spec["host"], r.namespace))
        if host is None or host.startswith("*."):
            issues.append(r.issue("spec.host", f'"{spec["host"]}" is not a ServiceEntry host'))
            continue
        ports = index.services[host]
        if "port" in spec and spec["port"] not in ports:
            issues.append(r.issue("spec.port", f"{spec['port']} is not a port of {host} "
                                               f"(ports: {', '.join(str(p) for p in sorted(ports))})"))
            continue
        subset = spec.get("subset", "")
        if subset and index.subset(host, subset) is None:
            issues.append(r.issue("spec.subset", f'{host} has no subset "{subset}" (no '
                                                 "DestinationRule defines it)"))
            continue
        rank = (2 if subset else 0) + (1 if "port" in spec else 0)
        for name, c in clusters.items():
            if c.direction != "outbound" or c.service != host:
                continue
            if subset and c.subset != subset or "port" in spec and c.port != spec["port"]:
                continue
            prev = chosen.get(name)
            if prev is not None and prev[0] == rank:
                issues.append(r.issue("spec.host", f"cluster {name} is already health-checked by "
                                                   f"HealthCheck {prev[1].key}"))
                continue
            if prev is None or prev[0] < rank:
                chosen[name] = (rank, r)
    if not issues:
        for name, (_, r) in chosen.items():
            clusters[name] = dataclasses.replace(clusters[name], health_check=_health_check(r))
    return issues


# --- Workload and bootstrap ---------------------------------------------------------------------------


def _find_workload(ref: str, entries: list, boot: Optional[Resource]):
    def issue(message: str) -> ConfigIssue:
        if boot is not None:
            return boot.issue("spec.workload", message)
        return ConfigIssue("", "", "", "", "workload", message)

    known = ", ".join(w.key for w in entries) or "none defined"
    if "/" in ref:
        ns, name = ref.split("/", 1)
        found = [w for w in entries if w.namespace == ns and w.name == name]
    else:
        found = [w for w in entries if w.name == ref]
    if not found:
        return None, issue(f'WorkloadEntry "{ref}" not found (known: {known})')
    if len(found) > 1:
        return None, issue(f'WorkloadEntry "{ref}" is ambiguous: use one of '
                           + ", ".join(w.key for w in found))
    return found[0], None


def _workload(r: Resource) -> Workload:
    return Workload(name=r.name, namespace=r.namespace, address=r.spec["address"],
                    labels=dict(r.spec.get("labels", {})), ports=dict(r.spec.get("ports", {})),
                    service_account=r.spec.get("serviceAccount", ""),
                    locality=r.spec.get("locality", ""))


def _is_extra_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and ip.is_loopback and address != "127.0.0.1"


def _bootstrap(spec: dict, raw: dict) -> Bootstrap:
    b = Bootstrap()
    kw: dict = {}
    table = {
        "trustDomain": "trust_domain", "rootNamespace": "root_namespace", "prometheusPort": "prometheus_port", "statusPort": "status_port",
        "concurrency": "concurrency", "drainDuration": "drain_duration", "accessLogFile": "access_log_file",
        "exitOnZeroActiveConnections": "exit_on_zero_active_connections",
        "accessLogEncoding": "access_log_encoding", "accessLogFormat": "access_log_format",
    }
    for key, attr in table.items():
        if key in spec:
            kw[attr] = spec[key]
    for section, prefix in (("outbound", "outbound"), ("admin", "admin")):
        for k in ("address", "port"):
            if k in spec.get(section, {}):
                kw[f"{prefix}_{k}"] = spec[section][k]
    if "port" in spec.get("inbound", {}):
        kw["inbound_port"] = spec["inbound"]["port"]
    if "dnsServers" in spec:
        kw["dns_servers"] = tuple(spec["dnsServers"])
    if "certificates" in spec:
        c = spec["certificates"]
        kw["certificates"] = CertificateFiles(c["certificateChain"], c["privateKey"],
                                              c["caCertificates"])
    pn = spec.get("pathNormalization", {}).get("normalization")
    if pn is not None:
        kw["path_normalization"] = "BASE" if pn == "DEFAULT" else pn
    lim = spec.get("limits", {})
    limits = Limits(
        max_request_headers_kb=lim.get("maxRequestHeadersKb", b.limits.max_request_headers_kb),
        max_request_line=lim.get("maxRequestLine", b.limits.max_request_line),
        max_headers=lim.get("maxHeaders", b.limits.max_headers),
        request_headers_timeout=float(lim.get("requestHeadersTimeout", b.limits.request_headers_timeout)),
        idle_timeout=float(lim.get("idleTimeout", b.limits.idle_timeout)),
        stream_idle_timeout=float(lim.get("streamIdleTimeout", b.limits.stream_idle_timeout)),
        per_connection_buffer_limit_bytes=lim.get("perConnectionBufferLimitBytes",
                                                  b.limits.per_connection_buffer_limit_bytes),
        max_downstream_connections=lim.get("maxDownstreamConnections", b.limits.max_downstream_connections),
    )
    return dataclasses.replace(b, limits=limits, **kw)


_OVERRIDE_RANGES = {"concurrency": (1, 1024)}


def _apply_overrides(b: Bootstrap, overrides: dict):
    fields = {f.name: f for f in dataclasses.fields(Bootstrap)}
    defaults = Bootstrap()
    issues, kw = [], {}

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue("<overrides>", "", "", "", key, message))

    for key, value in overrides.items():
        if key not in fields:
            bad(str(key), "unknown Bootstrap field" + schema.did_you_mean(str(key), fields))
            continue
        if key == "limits":
            if isinstance(value, Limits):
                kw[key] = value
            elif isinstance(value, dict):
                lf = {f.name for f in dataclasses.fields(Limits)}
                unknown = [k for k in value if k not in lf]
                for k in unknown:
                    bad(f"limits.{k}", "unknown field" + schema.did_you_mean(str(k), lf))
                if not unknown:
                    kw[key] = dataclasses.replace(b.limits, **value)
            else:
                bad(key, f"expected a mapping, got {schema.type_name(value)}")
            continue
        want = type(getattr(defaults, key))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and want is not bool) or not isinstance(value, want):
            bad(key, f"expected {schema.type_name(want())}, got {schema.type_name(value)}")
            continue
        if key.endswith("_port") and not 1 <= value <= 65535:
            bad(key, f"{value} is not a port (1-65535)")
            continue
        if key.endswith("_address"):
            msg = schema.bind_address(value)
            if msg:
                bad(key, msg)
                continue
        lo, hi = _OVERRIDE_RANGES.get(key, (None, None))
        if lo is not None and not lo <= value <= hi:
            bad(key, f"{value} is out of range ({lo}-{hi})")
            continue
        if key == "access_log_encoding" and value not in ("TEXT", "JSON"):
            bad(key, f'"{value}" is not valid: expected one of TEXT, JSON')
            continue
        if key == "path_normalization":
            if value.upper() not in PATH_NORMALIZATIONS:
                bad(key, f'"{value}" is not valid: expected one of ' + ", ".join(PATH_NORMALIZATIONS))
                continue
            value = "BASE" if value.upper() == "DEFAULT" else value.upper()
        kw[key] = value
    return dataclasses.replace(b, **kw), issues


__all__ = ["build_snapshot", "compile_snapshot", "service_domains", "DOMAIN_SUFFIX"]
