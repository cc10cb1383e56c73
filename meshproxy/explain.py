"""``meshproxy explain``: what the sidecar would do with a request, and why, without sending it.

It compiles the config exactly as ``meshproxy run`` does, parses the request with the data plane's
own parser, builds the same ``router.RouteContext`` and calls the same ``router.decide`` the data
plane calls, so the answer is the data plane's answer: the virtual host, every route tried in order with the first condition that
failed, the route that matched, its destinations and weights, the load-balancing policy and the
endpoints it chooses among, and any rewrite, header edit, redirect, direct response, fault or
mirror.
"""
from __future__ import annotations

import urllib.parse
from typing import Optional

from control.duration import format_duration
from control.snapshot import CircuitBreakers, Cluster, HeaderOps, Snapshot
from meshproxy.core import http1, pathnorm, router
from meshproxy.errors import ProtocolError


class ExplainError(Exception):
    pass


def build_request(method: str, url: str, headers: list[str]) -> bytes:
    """An HTTP/1.1 request head for METHOD URL and ``-H 'name: value'`` headers."""
    u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if not u.hostname:
        raise ExplainError(f"{url}: the URL needs a host (the service name)")
    host = u.netloc.rsplit("@", 1)[-1]
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    if method.upper() == "CONNECT":
        # CONNECT's target is the authority (RFC 9110 9.3.6), not a path.
        path = host if u.port else f"{host}:{443 if u.scheme == 'https' else 80}"
    lines = [f"{method.upper()} {path} HTTP/1.1", f"Host: {host}"]
    for h in headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"-H {h!r}: expected 'name: value'")
        if name.strip().lower() == "host":
            lines[1] = f"Host: {value.strip()}"
            continue
        lines.append(f"{name.strip()}: {value.strip()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def explain(snap: Snapshot, method: str, url: str, headers: list[str],
            inbound: bool = False) -> tuple[list[str], dict]:
    """Lines to print and a summary dict (``status``, ``route``, ``cluster``, ``endpoints``...)."""
    raw = build_request(method, url, headers)
    p = http1.RequestParser()
    try:
        p.parse(raw)
    except ProtocolError as e:
        return [f"the sidecar would answer {e.status_hint} (request rejected: {e})"], {
            "status": e.status_hint}
    # The codec's path normalisation (Bootstrap pathNormalization), before anything routes.
    mode = snap.bootstrap.path_normalization
    path = p.path
    norm = pathnorm.normalize(path, pathnorm.MODES[mode])
    if norm is None:
        return [f"the sidecar would answer 400 (path {_s(path)} cannot be normalised: "
                f"pathNormalization {mode})"], {"status": 400}
    out: list[str] = []
    direction = "inbound" if inbound else "outbound"
    lst = snap.listener(direction)
    if lst is None:
        raise ExplainError(f"the config has no {direction} listener"
                           + (" (use --workload)" if inbound else ""))
    out.append(f"request   {method.upper()} {_s(p.path)}  Host: {_s(p.host)}"
               + "".join(f"\n          {h}" for h in headers if not h.lower().startswith("host:")))
    if norm != path:
        out.append(f"path      {_s(path)} -> {_s(norm)} (pathNormalization {mode})")
    out.append(f"listener  {lst.name} {lst.address}:{lst.port}")
    clusters = {c.name: c for c in snap.clusters}
    # The data plane's own route context and decision, over stand-in clusters.
    rc = router.build_route_context(lst, {name: _Named(name) for name in clusters})
    req = router.RequestView(p, b"http", lst.port)
    if norm is not path:
        req.set_path(norm)
    decision = router.decide(rc, req)
    host = (p.host or b"").decode("latin-1")
    target = router.host_target(rc, p.host) if p.host is not None else None
    summary: dict = {}
    if lst.authorization and decision is not router.NO_ROUTE and decision is not router.CONNECT_NOT_ALLOWED:
        # The RBAC filter runs first on every route of the listener (before fault injection).
        cluster = clusters.get(decision.cluster_name or "")
        verdict = _authorization(out, lst, p, req, cluster)
        if verdict is not None:
            return out, verdict
    if target is None:
        if decision.action == router.A_ROUTE:
            out.append(f"no virtual host has the domain {host!r}: the listener's default cluster")
            return out + _describe_cluster(clusters.get(decision.cluster_name),
                                           decision.cluster_name, snap), {
                "status": None, "cluster": decision.cluster_name}
        if decision is router.CONNECT_NOT_ALLOWED:
            out.append("no virtual host has the domain; CONNECT is not proxied: 405")
            return out, {"status": 405}
        known = sorted({d for v in lst.virtual_hosts for d in v.domains if ":" not in d})
        out.append(f"no virtual host has the domain {host!r}: 404 NR (no route)")
        if known:
            out.append("  known domains: " + ", ".join(known[:12])
                       + (" ..." if len(known) > 12 else ""))
        return out, {"status": 404, "flags": "NR"}
    domain = router.matched_domain(rc, p.host).decode("latin-1")
    vh = next(v for v in lst.virtual_hosts if domain in v.domains)
    if type(target) is not router.RouteTable or not any(r.virtual_service for r in vh.routes):
        # One route that sends everything to one cluster: the data plane's fast path (a prebuilt
        # decision), or a one-route table when the route has a retry policy of its own (inbound).
        route = vh.routes[0]
        name = f"{route.virtual_service} http[{route.index}]" if route.virtual_service else "default"
        out.append(f"vhost     {vh.name}  (domain {domain!r})")
        if route.virtual_service:
            out.append(f"routes    VirtualService {route.virtual_service}: http[{route.index}] sends "
                       "everything to one destination")
        else:
            out.append("routes    no VirtualService for this host: the default route sends everything "
                       + ("to the application" if inbound else "to the service"))
        if decision is router.CONNECT_NOT_ALLOWED:
            out.append("result    CONNECT is not proxied: 405")
            return out, {"status": 405, "route": name}
        out.append("timeout   " + (f"{route.timeout:g}s" if route.timeout else "none (Istio's default)"))
        out.append("retries   " + _retries(route.retries))
        summary = {"status": None, "route": name, "cluster": decision.cluster_name}
        return out + _describe_cluster(clusters.get(decision.cluster_name),
                                       decision.cluster_name, snap), summary
    table = target
    out.append(f"vhost     {table.name}  (domain {domain!r})")
    tried, entry = table.explain(req)
    vs_names = sorted({r.virtual_service for r in vh.routes if r.virtual_service})
    out.append("routes    VirtualService " + ", ".join(vs_names) + " (first match wins)")
    for label, _block, why in tried:
        mark = "MATCH " if entry is not None and label == tried[-1][0] else "  no  "
        out.append(f"  {mark} {label}: {why}")
    if entry is None:
        out.append("result    no route matched: 404 NR")
        return out, {"status": 404, "flags": "NR"}
    route = entry.route
    summary["route"] = f"{route.virtual_service} http[{route.index}]"
    if route.fault is not None:
        f = route.fault
        if f.abort_status:
            out.append(f"fault     abort with {f.abort_status} for {f.abort_percent:g}% of requests"
                       " (flag FI)")
        if f.delay:
            out.append(f"fault     delay {f.delay:g}s for {f.delay_percent:g}% of requests"
                       " (flag DI)")
    if decision is router.CONNECT_NOT_ALLOWED:
        out.append("result    CONNECT is not proxied: 405")
        summary["status"] = 405
        return out, summary
    if route.direct_response is not None:
        d = route.direct_response
        out.append(f"result    direct response {d.status}" + (f" body {d.body!r}" if d.body else ""))
        summary["status"] = decision.status
        return out, summary
    if route.redirect is not None:
        loc = router.location(route.redirect, req).decode("latin-1")
        out.append(f"result    redirect {route.redirect.code} to {loc}")
        summary["status"] = decision.status
        summary["location"] = loc
        return out, summary
    if route.rewrite is not None:
        rw = route.rewrite
        if decision.path is not None:
            out.append(f"rewrite   path {_s(req.path())} -> {_s(decision.path)}")
        if rw.authority:
            out.append(f"rewrite   authority {host} -> {rw.authority}")
    _edits(out, "request headers", route.request_headers)
    _edits(out, "response headers", route.response_headers)
    out.append("timeout   " + (f"{route.timeout:g}s" if route.timeout else "none (Istio's default)"))
    out.append("retries   " + _retries(route.retries))
    total = sum(d.weight for d in route.destinations)
    out.append("destinations" if len(route.destinations) > 1 else "destination")
    for d in route.destinations:
        share = f"{100.0 * d.weight / total:g}%" if total else "0%"
        out.append(f"  {d.cluster}  weight {d.weight} ({share})")
        _edits(out, "  request headers", d.request_headers, indent="    ")
        _edits(out, "  response headers", d.response_headers, indent="    ")
    for m in route.mirrors:
        out.append(f"mirror    {m.cluster} for {m.percent:g}% of requests (fire and forget; "
                   "Host gets -shadow)")
    summary["destinations"] = [(d.cluster, d.weight) for d in route.destinations]
    for d in route.destinations:
        out += _describe_cluster(clusters.get(d.cluster), d.cluster, snap)
    if len(route.destinations) == 1:
        summary["cluster"] = route.destinations[0].cluster
        if decision.action != router.A_ROUTE:
            summary["status"] = decision.status
            summary["flags"] = decision.flags
    return out, summary


class _ExplainConn:
    """The connection side of a request explained: no peer address, no peer identity."""

    client_addr = b""
    peer_principal = None

    def __init__(self, lst):
        self.local = f"{lst.address}:{lst.port}"

    def addresses(self):
        return (self.local, "")


class _ExplainStream:
    """What ``rbac.Attributes`` reads from a stream, for a request that is only explained."""

    filter_state = None

    def __init__(self, lst, parser, view, cluster):
        self.conn = _ExplainConn(lst)
        self.request = parser
        self.view = view
        self.cluster = _Info(cluster) if cluster is not None else None

    def header(self, name):
        return self.view.header(name)


class _Info:
    def __init__(self, info):
        self.info = info


def _authorization(out: list, lst, parser, view, cluster) -> Optional[dict]:
    """The listener's AuthorizationPolicies and their decision; a summary when denied."""
    from meshproxy.filters import rbac
    authz = rbac.Authorizer(lst.authorization)
    attrs = rbac.Attributes(_ExplainStream(lst, parser, view, cluster))
    out.append("authz     AuthorizationPolicies: " + ", ".join(
        f"{p.name} ({p.action}, {p.scope})" for p in authz.policies))
    out.append("          (explain has no peer address and no peer or JWT identity: source "
               "conditions on them do not match, their not* forms do)")
    for p in authz.policies:
        if not p.rules:
            out.append(f"  {p.name}: no rules: matches nothing")
            continue
        for i, r in enumerate(p.rules):
            why = r.explain(attrs)
            out.append(f"  {p.name} rule[{i}]: " + ("MATCH" if not why else why))
    audited, ai = authz.audited(attrs)
    if audited is not None:
        out.append(f"audit     AUDIT {audited.name} rule[{ai}] matches: the request is logged")
    allowed, p, i = authz.decide(attrs)
    if allowed:
        out.append("authz     allowed" + (f" by {p.name} rule[{i}]" if p is not None else
                                          " (no DENY policy matched, no ALLOW policy applies)"))
        return None
    if p is not None:
        out.append(f"result    denied by DENY policy {p.name} rule[{i}]: 403 RBAC: access denied")
    else:
        out.append("result    denied: no ALLOW policy matched: 403 RBAC: access denied")
    return {"status": 403, "authz": rbac.response_details(p, i)}


class _Named:
    """Stands in for a data-plane cluster inside a RouteTable built for explaining."""

    def __init__(self, name):
        self.name = name


def _retries(r) -> str:
    if r.attempts == 0:
        return "disabled (attempts: 0)"
    on = ",".join(r.retry_on + tuple(str(c) for c in r.status_codes))
    text = f"{r.attempts} attempts on {on}"
    if r.per_try_timeout:
        text += f", {r.per_try_timeout:g}s per try"
    return text + ("" if r.configured else " (Istio's default)")


def _edits(out: list, what: str, ops: HeaderOps, indent: str = "") -> None:
    parts = [f"set {n}: {v}" for n, v in ops.set] + [f"add {n}: {v}" for n, v in ops.add]
    parts += [f"remove {n}" for n in ops.remove]
    if parts:
        out.append(f"{indent}{what}: " + "; ".join(parts))


def describe_health_check(h) -> str:
    """One line for a ``snapshot.HealthCheck``."""
    if h.tcp:
        what = "TCP connect" + (f", send {h.send!r}" if h.send else "") + (
            f", expect {h.expect!r}" if h.expect else "")
    else:
        codes = ",".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in h.expected_statuses)
        what = f"HTTP GET {h.http_path}" + (f" Host {h.http_host}" if h.http_host else "") + (
            f" expects {codes}")
    return (f"{what} every {h.interval:g}s (timeout {h.timeout:g}s"
            + (f", jitter {h.interval_jitter:g}s" if h.interval_jitter else "")
            + f", no traffic {h.no_traffic_interval:g}s): out after {h.unhealthy_threshold} "
            f"failed, back after {h.healthy_threshold} passed (HealthCheck {h.source})")


def describe_circuit_breakers(c: Cluster) -> str:
    """The cluster's connectionPool limits in Istio's field names, or Istio's defaults."""
    cb, d = c.circuit_breakers, CircuitBreakers()
    parts = [f"{name} {getattr(cb, attr)}" for name, attr in (
        ("maxConnections", "max_connections"), ("http1MaxPendingRequests", "max_pending_requests"),
        ("http2MaxRequests", "max_requests"), ("maxRequestsPerConnection", "max_requests_per_connection"),
        ("maxRetries", "max_retries")) if getattr(cb, attr) != getattr(d, attr)]
    if cb.max_retries != d.max_retries and c.retry_budget is not None:
        parts[-1] += " (the retry budget applies instead)"
    if cb.max_connection_duration:
        parts.append(f"maxConnectionDuration {format_duration(cb.max_connection_duration)}")
    if not parts:
        return "Istio's defaults (no limits)"
    return ", ".join(parts) + (f" (DestinationRule {c.destination_rule})" if c.destination_rule else "")


def _describe_cluster(c: Optional[Cluster], name: str, snap: Snapshot) -> list[str]:
    if c is None:
        return [f"cluster   {name}: not defined (503 NC)"]
    lines = [f"cluster   {c.name}"]
    policy = c.lb_policy
    if c.hash_policy is not None:
        hp = c.hash_policy
        key = (f"header {hp.header}" if hp.header else f"cookie {hp.cookie}" if hp.cookie
               else "source IP" if hp.source_ip else f"query parameter {hp.query_param}")
        policy += f" on {key}"
    src = f" (DestinationRule {c.destination_rule})" if c.destination_rule else " (Istio's default)"
    lines.append(f"  lb        {policy}{src}")
    if c.health_check is not None:
        lines.append("  health    " + describe_health_check(c.health_check))
    od = c.outlier_detection
    if od is not None:
        rules = [f"{od.consecutive_5xx} consecutive 5xx" if od.consecutive_5xx else "5xx off"]
        if od.consecutive_gateway:
            rules.append(f"{od.consecutive_gateway} consecutive gateway errors")
        if od.split_external_local_origin_errors:
            rules.append(f"{od.consecutive_local_origin} consecutive local-origin failures (split)")
        lines.append(f"  outlier   eject after {', '.join(rules)}; interval {format_duration(od.interval)}, "
                     f"baseEjectionTime {format_duration(od.base_ejection_time)} (max "
                     f"{format_duration(od.max_ejection_time)}), maxEjectionPercent "
                     f"{od.max_ejection_percent}%, minHealthPercent {od.min_health_percent}%")
    lines.append("  breakers  " + describe_circuit_breakers(c))
    rb = c.retry_budget
    if rb is not None:
        over = (f"the requests of the last {format_duration(rb.budget_interval)}" if rb.budget_interval
                else "active requests")
        lines.append(f"  retry budget {rb.percent:g}% of {over} (at least {rb.min_retry_concurrency} "
                     f"concurrent retries){src}")
    if c.resolution != "STATIC":
        lines.append(f"  resolution {c.resolution}"
                     + (": " + ", ".join(f"{h}:{p}" for h, p, _ in c.dns_hosts)
                        if c.dns_hosts else ": the request's own authority"))
    if not c.endpoints and c.resolution == "STATIC":
        lines.append("  endpoints none: 503 UH (no healthy upstream)")
        return lines
    for e in c.endpoints:
        extra = []
        if e.config_weight != 1:
            extra.append(f"weight {e.config_weight}")
        if e.weight != e.config_weight:
            extra.append(f"lb weight {e.weight}")
        if e.priority:
            extra.append(f"priority {e.priority}")
        if e.locality:
            extra.append(f"locality {e.locality}")
        if e.sidecar:
            extra.append(f"sidecar (inbound port {e.port}, app port {e.target_port})")
        if e.workload:
            extra.append(f"workload {e.workload}")
        labels = ",".join(f"{k}={v}" for k, v in sorted(e.labels.items())
                          if not k.startswith("security.istio.io"))
        if labels:
            extra.append(labels)
        lines.append(f"  endpoint  {e.address}:{e.port}" + ("  " + "  ".join(extra) if extra else ""))
    return lines


def _s(b) -> str:
    if b is None:
        return "-"
    return b.decode("latin-1") if isinstance(b, (bytes, bytearray)) else str(b)
