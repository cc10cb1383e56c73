"""DestinationRule ``trafficPolicy`` -> the ``Cluster`` fields it sets, for one port and subset.

The load-balancing policy (``lb_policy``: this is the only place Istio's policy names are
interpreted), the consistent-hash key and table size, the locality setting (applied to the
endpoints by ``control.locality``), the connection timeouts, the connection-pool limits (Envoy's
circuit breakers), the retry budget and outlier detection.
"""
from __future__ import annotations

from typing import Optional

from control.snapshot import DEFAULT_LB_POLICY, CircuitBreakers, HashPolicy, LocalityLb, OutlierDetection, RetryBudget

_POLICY_PARTS = ("loadBalancer", "connectionPool", "outlierDetection")
# Parts a subset may set but a portLevelSettings[] entry may not (the schema refuses it there).
_SUBSET_PARTS = ("retryBudget",)

#: connectionPool field -> CircuitBreakers field, per section. A value of 0 keeps Istio's default.
CIRCUIT_BREAKER_FIELDS = {
    "tcp": (("maxConnections", "max_connections"), ("maxConnectionDuration", "max_connection_duration")),
    "http": (("http1MaxPendingRequests", "max_pending_requests"), ("http2MaxRequests", "max_requests"),
             ("maxRetries", "max_retries"), ("maxRequestsPerConnection", "max_requests_per_connection")),
}
RING_SIZE = 1024  # Envoy's default minimum_ring_size
MAGLEV_TABLE_SIZE = 65537  # Envoy's default maglev table_size


#: DestinationRule ``loadBalancer.simple`` (every value the schema accepts) -> ``Cluster.lb_policy``.
SIMPLE_LB_POLICIES = {
    "UNSPECIFIED": DEFAULT_LB_POLICY,
    "LEAST_CONN": "LEAST_REQUEST",  # deprecated in Istio: "use LEAST_REQUEST"
    "LEAST_REQUEST": "LEAST_REQUEST",
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
    "PASSTHROUGH": "PASSTHROUGH",
}


def lb_policy(lb: dict) -> str:
    """The ``Cluster.lb_policy`` (one of ``snapshot.LB_POLICIES``) for a validated ``loadBalancer``.

    This is the only place Istio's policy names are interpreted: ``consistentHash`` is MAGLEV when
    it sets ``maglev``, else RING_HASH; ``simple`` goes through ``SIMPLE_LB_POLICIES``; neither set
    (or no ``loadBalancer`` at all) is Istio's default, LEAST_REQUEST.
    """
    if lb.get("consistentHash"):
        return "MAGLEV" if "maglev" in lb["consistentHash"] else "RING_HASH"
    return SIMPLE_LB_POLICIES[lb.get("simple", "UNSPECIFIED")]


def _port_level(policy: dict, port: int) -> Optional[dict]:
    return next((p for p in policy.get("portLevelSettings", []) if p["port"]["number"] == port), None)


def traffic_policy(dr_spec: dict, port: int, subset: Optional[dict]) -> dict:
    """Cluster fields from a DestinationRule, merged the way Istio does.

    Top-level policy, then its portLevelSettings for ``port`` (each part set there replaces the
    top-level one), then the subset's policy (each part set replaces), then the subset's
    portLevelSettings for ``port`` (replacing every part: port-level policies do not inherit).
    ``retryBudget`` has no port-level form: the subset's replaces the top-level one.
    """
    top = dr_spec.get("trafficPolicy", {})
    parts = {k: top.get(k) for k in _POLICY_PARTS + _SUBSET_PARTS}
    pls = _port_level(top, port)
    if pls:
        parts.update({k: pls[k] for k in _POLICY_PARTS if k in pls})
    sub = (subset or {}).get("trafficPolicy")
    if sub:
        parts.update({k: sub[k] for k in _POLICY_PARTS + _SUBSET_PARTS if k in sub})
        spls = _port_level(sub, port)
        if spls:
            parts.update({k: spls.get(k) for k in _POLICY_PARTS})
    out: dict = {}
    lb = parts["loadBalancer"] or {}
    out["lb_policy"] = lb_policy(lb)
    ch = lb.get("consistentHash")
    if ch:
        maglev = "maglev" in ch
        cookie = ch.get("httpCookie", {})
        out["hash_policy"] = HashPolicy(
            header=ch.get("httpHeaderName", ""), cookie=cookie.get("name", ""), cookie_ttl=cookie.get("ttl", 0.0),
            cookie_path=cookie.get("path", ""), source_ip=bool(ch.get("useSourceIp", False)),
            query_param=ch.get("httpQueryParameterName", ""),
            ring_size=0 if maglev else ch.get("ringHash", {}).get("minimumRingSize",
                                                                  ch.get("minimumRingSize", RING_SIZE)),
            maglev_table_size=ch["maglev"].get("tableSize", MAGLEV_TABLE_SIZE) if maglev else 0)
    loc = lb.get("localityLbSetting")
    if loc:
        out["locality_lb"] = LocalityLb(
            enabled=loc["enabled"],
            distribute=tuple((d["from"], tuple(d["to"].items())) for d in loc.get("distribute", [])),
            failover=tuple((f["from"], f["to"]) for f in loc.get("failover", [])),
            failover_priority=tuple(loc.get("failoverPriority", ())))
    pool = parts["connectionPool"] or {}
    if "connectTimeout" in pool.get("tcp", {}):
        out["connect_timeout"] = pool["tcp"]["connectTimeout"]
    if "idleTimeout" in pool.get("http", {}):
        out["idle_timeout"] = pool["http"]["idleTimeout"]
    breakers = circuit_breakers(pool)
    if breakers is not None:
        out["circuit_breakers"] = breakers
    if parts["retryBudget"] is not None:
        out["retry_budget"] = retry_budget(parts["retryBudget"])
    od = parts["outlierDetection"]
    if od is not None:
        out["outlier_detection"] = outlier_detection(od)
    return out


def outlier_detection(od: dict) -> OutlierDetection:
    """A validated ``outlierDetection`` with Istio's defaults (as Istio's translation to Envoy:
    unset fields keep Envoy's defaults, gateway errors are enforced only when set, the local-origin
    threshold only with the split)."""
    d = OutlierDetection()
    return OutlierDetection(
        consecutive_5xx=od.get("consecutive5xxErrors", d.consecutive_5xx),
        consecutive_gateway=od.get("consecutiveGatewayErrors", d.consecutive_gateway),
        consecutive_local_origin=od.get("consecutiveLocalOriginFailures") or d.consecutive_local_origin,
        split_external_local_origin_errors=bool(od.get("splitExternalLocalOriginErrors", False)),
        interval=od.get("interval", d.interval),
        base_ejection_time=od.get("baseEjectionTime", d.base_ejection_time),
        max_ejection_percent=od.get("maxEjectionPercent") or d.max_ejection_percent,
        min_health_percent=od.get("minHealthPercent", d.min_health_percent))


def circuit_breakers(pool: dict) -> Optional[CircuitBreakers]:
    """The limits of a validated ``connectionPool``, or None when it sets none.

    As Istio's translation to Envoy: a limit set above 0 replaces the default; 0 (or unset) keeps
    Istio's default (``MAX_UNLIMITED``; for maxRequestsPerConnection no limit, for
    maxConnectionDuration none).
    """
    kw = {}
    for section, fields in CIRCUIT_BREAKER_FIELDS.items():
        values = pool.get(section, {})
        for istio_name, name in fields:
            if values.get(istio_name):
                kw[name] = values[istio_name]
    return CircuitBreakers(**kw) if kw else None


def retry_budget(rb: dict) -> RetryBudget:
    """A validated ``retryBudget`` with Envoy's defaults (20%, at least 3, no interval) for unset fields."""
    d = RetryBudget()
    return RetryBudget(percent=float(rb.get("percent", d.percent)),
                       min_retry_concurrency=rb.get("minRetryConcurrency", d.min_retry_concurrency),
                       budget_interval=rb.get("budgetInterval", d.budget_interval))
