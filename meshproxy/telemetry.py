"""Metrics exposition: Prometheus text format and Envoy's plain ``/stats`` format.

Everything here runs at scrape time, never per request (ARCHITECTURE.md, hot-path rule 3): the data
plane only bumps ``ClusterStats`` counters in C; the admin server asks the sidecar for
``ClusterStats.snapshot()`` dicts (already merged across worker processes with
``counters.merge_all``) and renders them here.

The Prometheus text exposition format (version 0.0.4) is written directly rather than through
``prometheus_client`` collectors: Envoy's names include counters that do not end in ``_total``
(``envoy_cluster_upstream_rq``, ``envoy_cluster_upstream_cx_connect_fail``), which
``prometheus_client`` would rename. The tests parse the output with
``prometheus_client.parser.text_string_to_metric_families``.

Inputs
------
``clusters``: ClusterInfo dicts ``{"name", "direction": "outbound"|"inbound", "service",
"namespace", "port", "endpoints"}`` (``endpoints`` is a count or a list of endpoint dicts), with
optional ``outlier_detection`` and ``circuit_breakers`` dicts (rendered as Envoy's gauges).
``cluster_stats`` / ``listener_stats``: snapshot dicts (see ``meshproxy/_core/counters.pyi``); a
listener's may carry ``"rbac"``: ``{"allowed", "denied", "logged", "not_logged"}`` counts of its
AuthorizationPolicy filter (``meshproxy/filters/rbac.py``), rendered as Envoy's
``http.<listener>.rbac.<name>`` / ``envoy_http_rbac_<name>``.
``workload``: this sidecar's workload ``{"name", "namespace", "app", "principal"}`` or None.

Istio metrics are produced for clusters that have a ClusterInfo (outbound: ``reporter="source"``,
inbound: ``reporter="destination"``); every cluster snapshot gets the Envoy-style metrics.
The duration histogram is kept per cluster, not per status code, so
``istio_request_duration_milliseconds`` carries Istio's labels except ``response_code`` and
``response_flags``.
"""
from __future__ import annotations

import math

# Constants only (identical in both twins): the pure module imports without the others being built.
from meshproxy._py import counters

__all__ = ["CONTENT_TYPE_PROMETHEUS", "render_prometheus", "render_envoy_text", "istio_labels"]

#: Content-Type of the Prometheus text exposition format.
CONTENT_TYPE_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

UNKNOWN = "unknown"
CLUSTER_DOMAIN = "svc.cluster.local"

# snapshot key -> (Envoy stat suffix without the upstream_/downstream_ prefix, Prometheus type).
_STATS = (
    ("rq_total", "rq_total", "counter"),
    ("rq_completed", "rq_completed", "counter"),
    ("rq_active", "rq_active", "gauge"),
    ("rq_timeout", "rq_timeout", "counter"),
    ("rq_reset", "rq_rx_reset", "counter"),
    ("cx_total", "cx_total", "counter"),
    ("cx_active", "cx_active", "gauge"),
    ("cx_connect_fail", "cx_connect_fail", "counter"),
    ("cx_destroy_remote", "cx_destroy_remote", "counter"),
    ("bytes_rx", "cx_rx_bytes_total", "counter"),
    ("bytes_tx", "cx_tx_bytes_total", "counter"),
    ("rq_retry", "rq_retry", "counter"),
    ("rq_retry_success", "rq_retry_success", "counter"),
    ("rq_retry_overflow", "rq_retry_overflow", "counter"),
    ("rq_retry_limit_exceeded", "rq_retry_limit_exceeded", "counter"),
)
# Listeners do not connect anywhere.
_LISTENER_SKIP = frozenset({"cx_connect_fail", "rq_retry", "rq_retry_success", "rq_retry_overflow",
                            "rq_retry_limit_exceeded"})
# Listener-only counters (downstream timeouts): snapshot key -> Envoy http.<prefix>.downstream_*.
_LISTENER_ONLY = (
    ("cx_idle_timeout", "cx_idle_timeout", "counter"),
    ("rq_header_timeout", "rq_header_timeout", "counter"),
    ("rq_idle_timeout", "rq_idle_timeout", "counter"),
)
# Envoy keeps the connection-limit counter in the listener's scope: listener.<addr>.downstream_cx_overflow.
# Cluster-only stats (connection pool limits): snapshot key -> Envoy cluster.<name>.upstream_*. For a
# cluster ``cx_overflow`` is Envoy's upstream_cx_overflow (maxConnections reached); read with
# ``snap.get(key, 0)``, so snapshots from before these keys render as zeros.
_CLUSTER_ONLY = (
    ("cx_overflow", "cx_overflow", "counter"),
    ("rq_pending_total", "rq_pending_total", "counter"),
    ("rq_pending_active", "rq_pending_active", "gauge"),
    ("rq_pending_overflow", "rq_pending_overflow", "counter"),
    ("cx_max_requests", "cx_max_requests", "counter"),
    ("cx_max_duration_reached", "cx_max_duration_reached", "counter"),
)

_LE = tuple(str(int(b)) if float(b).is_integer() else repr(float(b)) for b in counters.BUCKETS_MS) + ("+Inf",)

_ISTIO_LABELS = ("reporter", "source_workload", "source_workload_namespace", "source_principal",
                 "source_app", "destination_workload", "destination_workload_namespace",
                 "destination_service", "destination_service_name", "destination_service_namespace",
                 "destination_app", "request_protocol")


# ---------------------------------------------------------------------------------------------
# Prometheus text format helpers


def _escape(value) -> str:
    # Label values: backslash, double quote and line feed are escaped (exposition format 0.0.4).
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _num(v) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Exposition:
    """Collects samples per metric family so each family is written in one block."""

    def __init__(self):
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def family(self, name: str, typ: str, help_: str) -> list[str]:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = (typ, help_, [])
        return fam[2]

    def sample(self, name: str, typ: str, help_: str, labels, value) -> None:
        self.family(name, typ, help_).append(f"{name}{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, help_: str, labels, latency: dict) -> None:
        lines = self.family(name, "histogram", help_)
        cumulative = 0
        labels = list(labels)
        for le, n in zip(_LE, latency["buckets"]):
            cumulative += n
            lines.append(f"{name}_bucket{_labels(labels + [('le', le)])} {cumulative}")
        lab = _labels(labels)
        lines.append(f"{name}_sum{lab} {_num(float(latency['sum_ms']))}")
        lines.append(f"{name}_count{lab} {latency['count']}")

    def render(self) -> bytes:
        out = []
        for name, (typ, help_, lines) in self.families.items():
            if not lines:
                continue
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {typ}")
            out.extend(lines)
        return ("\n".join(out) + "\n").encode() if out else b""


# ---------------------------------------------------------------------------------------------
# Istio labels


def _service_names(info: dict) -> tuple[str, str, str]:
    """(destination_service FQDN, destination_service_name, destination_service_namespace)."""
    service = info.get("service") or ""
    namespace = info.get("namespace") or UNKNOWN
    if not service:
        return UNKNOWN, UNKNOWN, namespace
    if "." not in service:
        # A short Kubernetes-style name: qualify it like Istio does.
        return f"{service}.{namespace}.{CLUSTER_DOMAIN}", service, namespace
    if f".{CLUSTER_DOMAIN}" in service or ".svc." in service:
        return service, service.split(".", 1)[0], namespace
    # ServiceEntry host (e.g. api.example.com): Istio uses the host as the name.
    return service, service, namespace


def istio_labels(info: dict, workload: dict | None) -> list[tuple[str, str]]:
    """Istio's standard labels (without response_code/response_flags/connection_security_policy)
    for requests through ``info``'s cluster, as reported by this sidecar."""
    wl = workload or {}
    wl_name = wl.get("name") or UNKNOWN
    wl_ns = wl.get("namespace") or UNKNOWN
    wl_app = wl.get("app") or UNKNOWN
    wl_principal = wl.get("principal") or UNKNOWN
    fqdn, svc_name, svc_ns = _service_names(info)
    if info.get("direction") == "inbound":
        values = ("destination", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN,
                  wl_name, wl_ns, fqdn, svc_name, svc_ns, wl_app, "http")
    else:
        values = ("source", wl_name, wl_ns, UNKNOWN, wl_app,
                  UNKNOWN, svc_ns, fqdn, svc_name, svc_ns, UNKNOWN, "http")
    del wl_principal  # Istio reports source_principal only with mTLS peer identity: "unknown" here
    return list(zip(_ISTIO_LABELS, values))


def _code_series(snap: dict):
    """Yield (response_code, response_flags, count): unflagged responses as "-", flagged ones
    (counted by ``ClusterStats.flag``) under their flags."""
    codes = dict(snap.get("codes", {}))
    flagged = []
    for key, n in snap.get("flags", {}).items():
        flags, _, status = key.rpartition("|")
        try:
            code = int(status)
        except ValueError:
            flags, code = key, 0
        flagged.append((code, flags or "-", n))
        codes[code] = codes.get(code, 0) - n
    for code in sorted(codes):
        if codes[code] > 0:
            yield code, "-", codes[code]
    for item in sorted(flagged):
        yield item


# ---------------------------------------------------------------------------------------------
# Renderers


def _endpoint_counts(info: dict) -> tuple[int, int]:
    eps = info.get("endpoints", 0)
    if isinstance(eps, int):
        return eps, eps
    total = len(eps)
    healthy = sum(1 for e in eps if str(e.get("health", "HEALTHY")).upper() == "HEALTHY")
    return total, healthy


#: Envoy's ``cluster.<name>.outlier_detection.*`` stats (ClusterInfo ``outlier_detection``).
_OUTLIER_STATS = (
    ("ejections_active", "gauge"),
    ("ejections_enforced_total", "counter"),
    ("ejections_enforced_consecutive_5xx", "counter"),
    ("ejections_enforced_consecutive_gateway_failure", "counter"),
    ("ejections_enforced_consecutive_local_origin_failure", "counter"),
    ("ejections_overflow", "counter"),
)


def _outlier_stats(info: dict):
    od = info.get("outlier_detection") or {}
    return [(key, typ, od.get(key, 0)) for key, typ in _OUTLIER_STATS]


#: Envoy's ``cluster.<name>.circuit_breakers.default.*`` gauges (ClusterInfo ``circuit_breakers``):
#: 1 while a limit is reached (``*_open``), and what is left before it is (``remaining_*``).
_CIRCUIT_BREAKER_STATS = ("cx_open", "rq_pending_open", "rq_open", "rq_retry_open",
                          "remaining_cx", "remaining_pending", "remaining_rq", "remaining_retries")


def _circuit_breaker_stats(info: dict):
    cb = info.get("circuit_breakers")
    if not cb:
        return []
    return [(key, cb.get(key, 0)) for key in _CIRCUIT_BREAKER_STATS]


def render_prometheus(clusters: list, cluster_stats: list, listener_stats: list,
                      workload: dict | None) -> bytes:
    """Render Istio standard metrics and Envoy-style metrics in the Prometheus text format.

    Args:
        clusters: ClusterInfo dicts (see module docstring); matched to stats by ``name``.
        cluster_stats: merged ``ClusterStats.snapshot()`` dicts of clusters.
        listener_stats: merged snapshot dicts of listeners.
        workload: this sidecar's workload labels, or None (labels become "unknown").

    Returns:
        The exposition (UTF-8), served with ``CONTENT_TYPE_PROMETHEUS``.
    """
    exp = _Exposition()
    infos = {c["name"]: c for c in clusters}

    # Declare families up front so the output order is stable whatever the data.
    exp.family("istio_requests_total", "counter", "Requests handled by this proxy (Istio standard metric).")
    exp.family("istio_request_duration_milliseconds", "histogram", "Request duration in milliseconds.")

    for snap in cluster_stats:
        info = infos.get(snap["name"])
        if info is None or info.get("direction") not in ("inbound", "outbound"):
            continue
        base = istio_labels(info, workload)
        policy = "none" if info["direction"] == "inbound" else UNKNOWN
        for code, flags, n in _code_series(snap):
            exp.sample("istio_requests_total", "counter", "", base + [
                ("response_code", str(code)), ("response_flags", flags),
                ("connection_security_policy", policy)], n)
        if snap["latency"]["count"]:
            exp.histogram("istio_request_duration_milliseconds", "",
                          base + [("connection_security_policy", policy)], snap["latency"])

    for snap in cluster_stats:
        lab = [("cluster_name", snap["name"])]
        for key, suffix, typ in _STATS + _CLUSTER_ONLY:
            exp.sample(f"envoy_cluster_upstream_{suffix}", typ, f"Envoy cluster.upstream_{suffix}",
                       lab, snap.get(key, 0))
        classes: dict[int, int] = {}
        for code, n in sorted(snap.get("codes", {}).items()):
            if 100 <= code <= 599:
                exp.sample("envoy_cluster_upstream_rq", "counter", "Envoy cluster.upstream_rq_<code>",
                           lab + [("envoy_response_code", str(code))], n)
                classes[code // 100] = classes.get(code // 100, 0) + n
        for cls, n in sorted(classes.items()):
            exp.sample("envoy_cluster_upstream_rq_xx", "counter", "Envoy cluster.upstream_rq_<N>xx",
                       lab + [("envoy_response_code_class", str(cls))], n)
        exp.histogram("envoy_cluster_upstream_rq_time", "Envoy cluster.upstream_rq_time (ms)", lab,
                      snap["latency"])
        info = infos.get(snap["name"])
        if info is not None:
            total, healthy = _endpoint_counts(info)
            exp.sample("envoy_cluster_membership_total", "gauge", "Envoy cluster.membership_total",
                       lab, total)
            exp.sample("envoy_cluster_membership_healthy", "gauge", "Envoy cluster.membership_healthy",
                       lab, healthy)
            for key, typ, value in _outlier_stats(info):
                exp.sample(f"envoy_cluster_outlier_detection_{key}", typ,
                           f"Envoy cluster.outlier_detection.{key}", lab, value)
            for key, value in _circuit_breaker_stats(info):
                exp.sample(f"envoy_cluster_circuit_breakers_default_{key}", "gauge",
                           f"Envoy cluster.circuit_breakers.default.{key}", lab, value)

    for snap in listener_stats:
        lab = [("envoy_http_conn_manager_prefix", snap["name"])]
        for key, suffix, typ in _STATS:
            if key in _LISTENER_SKIP:
                continue
            exp.sample(f"envoy_http_downstream_{suffix}", typ, f"Envoy http.downstream_{suffix}",
                       lab, snap.get(key, 0))
        for key, suffix, typ in _LISTENER_ONLY:
            exp.sample(f"envoy_http_downstream_{suffix}", typ, f"Envoy http.downstream_{suffix}",
                       lab, snap.get(key, 0))
        exp.sample("envoy_listener_downstream_cx_overflow", "counter",
                   "Envoy listener.downstream_cx_overflow (connections over the listener's limit)",
                   [("envoy_listener_address", snap["name"])], snap.get("cx_overflow", 0))
        classes = {}
        for code, n in snap.get("codes", {}).items():
            if 100 <= code <= 599:
                classes[code // 100] = classes.get(code // 100, 0) + n
        for cls, n in sorted(classes.items()):
            exp.sample("envoy_http_downstream_rq_xx", "counter", "Envoy http.downstream_rq_<N>xx",
                       lab + [("envoy_response_code_class", str(cls))], n)
        exp.histogram("envoy_http_downstream_rq_time", "Envoy http.downstream_rq_time (ms)", lab,
                      snap["latency"])
        for key, n in sorted(snap.get("rbac", {}).items()):
            exp.sample(f"envoy_http_rbac_{key}", "counter",
                       f"Envoy http.rbac.{key} (AuthorizationPolicy decisions)", lab, n)
    return exp.render()


_QUANTILES = (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100)


def _quantile(latency: dict, q: float) -> float:
    """Estimate a quantile (0..100) from bucket counts, interpolating linearly inside a bucket
    (as Prometheus' histogram_quantile does); values in +Inf report the last finite bound."""
    count = latency["count"]
    bounds = counters.BUCKETS_MS
    rank = q / 100.0 * count
    cumulative = 0
    lower = 0.0
    for i, n in enumerate(latency["buckets"]):
        if i >= len(bounds):
            return float(bounds[-1])
        upper = float(bounds[i])
        if n and cumulative + n >= rank:
            return lower + (upper - lower) * max(rank - cumulative, 0) / n
        cumulative += n
        lower = upper
    return float(bounds[-1])


def _fmt_q(v: float) -> str:
    return f"{v:.6g}"


def render_envoy_text(cluster_stats: list, listener_stats: list, clusters: list | None = None) -> bytes:
    """Render counters in Envoy's plain ``/stats`` format, one ``name: value`` per line, sorted.

    Cluster stats are ``cluster.<name>.upstream_*``, listener stats ``http.<name>.downstream_*``.
    Histograms print Envoy's quantile summary (``P0(nan,v) P25(nan,v) ...``: no interval values,
    cumulative estimates from the buckets) or ``No recorded values``.
    """
    lines: list[tuple[str, str]] = []
    infos = {c["name"]: c for c in clusters or ()}

    def add(prefix: str, snap: dict, direction: str) -> None:
        for key, suffix, _typ in _STATS:
            if direction == "downstream" and key in _LISTENER_SKIP:
                continue
            lines.append((f"{prefix}.{direction}_{suffix}", str(snap.get(key, 0))))
        classes: dict[int, int] = {}
        for code, n in snap.get("codes", {}).items():
            if 100 <= code <= 599:
                if direction == "upstream":
                    lines.append((f"{prefix}.upstream_rq_{code}", str(n)))
                classes[code // 100] = classes.get(code // 100, 0) + n
        for cls, n in classes.items():
            lines.append((f"{prefix}.{direction}_rq_{cls}xx", str(n)))
        lat = snap["latency"]
        if lat["count"]:
            text = " ".join(f"P{q:g}(nan,{_fmt_q(_quantile(lat, q))})" for q in _QUANTILES)
        else:
            text = "No recorded values"
        lines.append((f"{prefix}.{direction}_rq_time", text))

    for snap in cluster_stats:
        prefix = f"cluster.{snap['name']}"
        add(prefix, snap, "upstream")
        for key, suffix, _typ in _CLUSTER_ONLY:
            lines.append((f"{prefix}.upstream_{suffix}", str(snap.get(key, 0))))
        info = infos.get(snap["name"])
        if info is not None:
            total, healthy = _endpoint_counts(info)
            lines.append((f"{prefix}.membership_total", str(total)))
            lines.append((f"{prefix}.membership_healthy", str(healthy)))
            for key, _typ, value in _outlier_stats(info):
                lines.append((f"{prefix}.outlier_detection.{key}", str(value)))
            for key, value in _circuit_breaker_stats(info):
                lines.append((f"{prefix}.circuit_breakers.default.{key}", str(value)))
    for snap in listener_stats:
        add(f"http.{snap['name']}", snap, "downstream")
        for key, suffix, _typ in _LISTENER_ONLY:
            lines.append((f"http.{snap['name']}.downstream_{suffix}", str(snap.get(key, 0))))
        lines.append((f"listener.{snap['name']}.downstream_cx_overflow", str(snap.get("cx_overflow", 0))))
        for key, n in snap.get("rbac", {}).items():
            lines.append((f"http.{snap['name']}.rbac.{key}", str(n)))
    lines.sort()
    return "".join(f"{k}: {v}\n" for k, v in lines).encode()
