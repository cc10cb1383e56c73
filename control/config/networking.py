"""The networking.istio.io API group: ServiceEntry, WorkloadEntry, VirtualService, DestinationRule.

Field tables (see ``control.config.schema`` for the types) and the checks that span several fields
of one document. Gateway, Sidecar, EnvoyFilter, ProxyConfig and WorkloadGroup belong to this group
too and are not supported yet: a document of one of them is an error, never silently ignored.
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from control.config.schema import (DNS1123_SUBDOMAIN, INVALID, LABELS, NOT_USED, AnyValue, Bool, Duration, Enum,
                                   Field, Float, Int, KindSchema, ListOf, MapOf, Port, Reporter, Str, Struct,
                                   did_you_mean, dns1123_label, host_name, join, not_yet, regex)

NETWORKING = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")


# --- ServiceEntry and WorkloadEntry ---------------------------------------------------------------

def ip_address(value: str) -> Optional[str]:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value.startswith("unix://"):
            return f'"{value}": unix domain socket endpoints are not supported yet'
        return f'"{value}" is not an IP address (a WorkloadEntry address must be an IP address in this release)'
    return None


HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")
PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO", "REDIS", "MYSQL")


def protocol_from_name(port_name: str) -> str:
    """Istio's protocol selection by port name (``<protocol>[-<suffix>]``), else HTTP."""
    prefix = port_name.split("-", 1)[0].upper()
    return prefix if prefix in PROTOCOLS else "HTTP"


def _check_service_ports(spec: dict, path: str, rep: Reporter) -> None:
    names: dict = {}
    numbers: dict = {}
    for i, p in enumerate(spec.get("ports", [])):
        pp = f"{join(path, 'ports')}[{i}]"
        if p["name"] in names:
            rep.issue(f"{pp}.name", f'port name "{p["name"]}" is already used by ports[{names[p["name"]]}]')
        names.setdefault(p["name"], i)
        if p["number"] in numbers:
            rep.issue(f"{pp}.number", f"port {p['number']} is already used by ports[{numbers[p['number']]}]")
        numbers.setdefault(p["number"], i)
        if "protocol" not in p:
            p["protocol"] = protocol_from_name(p["name"])
        if p["protocol"] not in HTTP_PROTOCOLS:
            rep.warn(pp, f"port {p['name']} protocol {p['protocol']}: only HTTP is proxied in this release; "
                         "the port is not served")


def _check_service_hosts(spec: dict, path: str, rep: Reporter) -> None:
    seen: dict = {}
    for i, h in enumerate(spec.get("hosts", [])):
        if h in seen:
            rep.issue(f"{join(path, 'hosts')}[{i}]", f'host "{h}" is already listed as hosts[{seen[h]}]')
        seen.setdefault(h, i)


def _check_service_endpoints(spec: dict, path: str, rep: Reporter) -> None:
    if "endpoints" in spec and "workloadSelector" in spec:
        rep.issue(join(path, "workloadSelector"), "only one of workloadSelector or endpoints may be set")
    port_names = [p["name"] for p in spec.get("ports", [])]
    for i, ep in enumerate(spec.get("endpoints", [])):
        for name in ep.get("ports", {}):
            if name not in port_names:
                rep.issue(f"{join(path, 'endpoints')}[{i}].ports.{name}",
                          f'"{name}" is not a port name of this ServiceEntry' + did_you_mean(name, port_names)
                          + (f" (port names: {', '.join(port_names)})" if port_names else ""))
    resolution = spec.get("resolution")
    for i, ep in enumerate(spec.get("endpoints", [])):
        ap = f"{join(path, 'endpoints')}[{i}].address"
        addr = ep["address"]
        if resolution == "STATIC" and not _is_ip(addr):
            if addr.startswith("unix://"):
                rep.issue(ap, f'"{addr}": unix domain socket endpoints are not supported yet')
            else:
                rep.issue(ap, f'"{addr}" is not an IP address (DNS names need resolution DNS)')
        elif resolution in ("DNS", "DNS_ROUND_ROBIN") and not _is_ip(addr) and (
                "*" in addr or len(addr) > 253 or not DNS1123_SUBDOMAIN.match(addr.lower())):
            rep.issue(ap, f'"{addr}" is not an IP address or a DNS name')
    if resolution == "NONE":
        for key in ("endpoints", "workloadSelector"):
            if key in spec:
                rep.issue(join(path, key), f"{key} with resolution NONE is not supported yet "
                                           "(requests go to the address the application asked for)")
    if resolution == "DNS_ROUND_ROBIN" and len(spec.get("endpoints", [])) > 1:
        rep.issue(join(path, "endpoints"), "resolution DNS_ROUND_ROBIN allows at most one endpoint")
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and "endpoints" not in spec and "workloadSelector" not in spec:
        for i, h in enumerate(spec.get("hosts", [])):
            if h.startswith("*"):
                rep.issue(f"{join(path, 'hosts')}[{i}]", f"wildcard host {h} needs endpoints with resolution "
                                                        f"{resolution} (there is no name to resolve)")
    if resolution in ("STATIC",):
        for i, h in enumerate(spec.get("hosts", [])):
            if h.startswith("*"):
                rep.issue(f"{join(path, 'hosts')}[{i}]", "wildcard hosts need resolution NONE or DNS")
    if resolution == "STATIC" and "endpoints" not in spec and "workloadSelector" not in spec:
        rep.warn(join(path, "resolution"), "STATIC with neither endpoints nor workloadSelector: "
                                           "the service has no endpoints (requests get 503)")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# Istio's WorkloadEntry fields; ServiceEntry.endpoints[] has the same shape.
WORKLOAD_ENTRY = Struct({
    "address": Field(Str(ip_address), required=True, doc="IP address of the workload"),
    "ports": Field(MapOf(Port()), doc="port name -> application port on this workload"),
    "labels": Field(LABELS, doc="labels, matched by workloadSelector"),
    "network": Field(Str(), doc="accepted; single-network only in this release"),
    "locality": Field(Str(), doc="region/zone/subzone"),
    "weight": Field(Int(0, 2**32 - 1), doc="load-balancing weight; 0 excludes the endpoint"),
    "serviceAccount": Field(Str(), doc="service account of the workload"),
})

# ServiceEntry.endpoints[]: a WorkloadEntry whose address may be a DNS name (checked per resolution).
ENDPOINT = Struct({**WORKLOAD_ENTRY.fields, "address": Field(Str(non_empty=True), required=True,
                                                             doc="IP address, or DNS name with resolution DNS")})

SERVICE_PORT = Struct({
    "number": Field(Port(), required=True),
    "protocol": Field(Enum(PROTOCOLS), doc="default: from the port name prefix, else HTTP"),
    "name": Field(Str(dns1123_label), required=True),
    "targetPort": Field(Port()),
})

SERVICE_ENTRY = Struct({
    "hosts": Field(ListOf(Str(host_name, normalise=str.lower), min_items=1), required=True),
    "addresses": Field(ListOf(Str()), warn=NOT_USED),
    "ports": Field(ListOf(SERVICE_PORT, min_items=1), required=True),
    "location": Field(Enum(("MESH_EXTERNAL", "MESH_INTERNAL")), default="MESH_EXTERNAL"),
    "resolution": Field(Enum(("STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE")), required=True,
                        doc="STATIC, DNS, DNS_ROUND_ROBIN or NONE; required (Istio defaults to NONE)"),
    "endpoints": Field(ListOf(ENDPOINT)),
    "workloadSelector": Field(Struct({"labels": Field(LABELS, default={})})),
    "exportTo": Field(ListOf(Str()), warn=NOT_USED),
    "subjectAltNames": Field(ListOf(Str()), warn=NOT_USED),
}, checks=(_check_service_ports, _check_service_hosts, _check_service_endpoints))


# --- VirtualService -------------------------------------------------------------------------------


def vs_host(value: str) -> Optional[str]:
    """A VirtualService/DestinationRule host: a DNS name, a short name, ``*.suffix`` or ``*``."""
    if value == "*":
        return None
    return host_name(value)


_MATCH_KINDS = ("exact", "prefix", "regex")


def _one_of(keys: tuple, required: bool):
    names = ", ".join(keys[:-1]) + " or " + keys[-1]

    def check(spec: dict, path: str, rep: Reporter) -> None:
        present = [k for k in keys if k in spec]
        if len(present) > 1:
            rep.issue(path, f"only one of {names} may be set")
        elif required and not present:
            rep.issue(path, f"one of {names} is required")
    return check


def _string_match(required: bool, prefix: bool = True) -> Struct:
    return Struct({
        "exact": Field(Str()),
        "prefix": Field(Str()) if prefix else Field(AnyValue(), unsupported="prefix is not supported for "
                                                                             "queryParams (use exact or regex)"),
        "regex": Field(Str(regex)),
    }, checks=(_one_of(_MATCH_KINDS, required),))


STRING_MATCH = _string_match(required=True)
STRING_MATCH_OR_PRESENCE = _string_match(required=False)  # {} means "present" (headers, queryParams)
HEADER_NAME = Str(normalise=str.lower, non_empty=True)

HTTP_MATCH = Struct({
    "name": Field(Str()),
    "uri": Field(STRING_MATCH),
    "scheme": Field(STRING_MATCH),
    "method": Field(STRING_MATCH),
    "authority": Field(STRING_MATCH),
    "headers": Field(MapOf(STRING_MATCH_OR_PRESENCE, key=HEADER_NAME)),
    "withoutHeaders": Field(MapOf(STRING_MATCH_OR_PRESENCE, key=HEADER_NAME)),
    "queryParams": Field(MapOf(_string_match(required=False, prefix=False), key=Str(non_empty=True))),
    "ignoreUriCase": Field(Bool()),
    "port": Field(Port()),
    "sourceLabels": Field(LABELS),
    "sourceNamespace": Field(Str()),
    "gateways": Field(ListOf(Str())),
    "statPrefix": not_yet("statPrefix"),
})

PORT_SELECTOR = Struct({"number": Field(Port(), required=True)})

DESTINATION = Struct({
    "host": Field(Str(vs_host, normalise=str.lower, non_empty=True), required=True),
    "subset": Field(Str(non_empty=True)),
    "port": Field(PORT_SELECTOR),
})

HEADER_OPERATIONS = Struct({
    "set": Field(MapOf(Str(), key=HEADER_NAME)),
    "add": Field(MapOf(Str(), key=HEADER_NAME)),
    "remove": Field(ListOf(HEADER_NAME)),
})
HEADERS = Struct({"request": Field(HEADER_OPERATIONS), "response": Field(HEADER_OPERATIONS)})

PERCENT = Struct({"value": Field(Float(0, 100), required=True)})

ROUTE_DESTINATION = Struct({
    "destination": Field(DESTINATION, required=True),
    "weight": Field(Int(0, 100)),
    "headers": Field(HEADERS),
})

REDIRECT_CODES = (301, 302, 303, 307, 308)
REDIRECT = Struct({
    "uri": Field(Str()),
    "authority": Field(Str()),
    "port": Field(Port()),
    "derivePort": not_yet("derivePort"),
    "scheme": Field(Str()),
    "redirectCode": Field(Int(300, 399), default=301),
}, checks=(lambda spec, path, rep: _check_redirect(spec, path, rep),))


def _check_redirect(spec: dict, path: str, rep: Reporter) -> None:
    if spec["redirectCode"] not in REDIRECT_CODES:
        rep.issue(join(path, "redirectCode"), f"{spec['redirectCode']} is not a redirect code "
                                              f"(one of {', '.join(map(str, REDIRECT_CODES))})")


def _body_bytes(value: str) -> Optional[str]:
    import base64
    import binascii

    try:
        base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return "expected base64 of UTF-8 text (binary bodies are not supported yet)"
    return None


DIRECT_RESPONSE = Struct({
    "status": Field(Int(200, 599), required=True),
    "body": Field(Struct({"string": Field(Str()), "bytes": Field(Str(_body_bytes))},
                         checks=(_one_of(("string", "bytes"), required=True),))),
})

REWRITE = Struct({
    "uri": Field(Str()),
    "authority": Field(Str()),
    "uriRegexRewrite": Field(Struct({
        "match": Field(Str(regex, non_empty=True), required=True),
        "rewrite": Field(Str(), required=True),
    })),
}, checks=(_one_of(("uri", "uriRegexRewrite"), required=False),))

FAULT = Struct({
    "delay": Field(Struct({
        "fixedDelay": Field(Duration(), required=True),
        "exponentialDelay": not_yet("exponentialDelay"),
        "percentage": Field(PERCENT),
        "percent": Field(Int(0, 100)),
    })),
    "abort": Field(Struct({
        "httpStatus": Field(Int(200, 599)),
        "grpcStatus": not_yet("grpcStatus"),
        "http2Error": not_yet("http2Error"),
        "percentage": Field(PERCENT),
    }, checks=(lambda spec, path, rep: _check_abort(spec, path, rep),))),
}, checks=(lambda spec, path, rep: _check_fault(spec, path, rep),))


def _check_abort(spec: dict, path: str, rep: Reporter) -> None:
    if "httpStatus" not in spec:
        rep.issue(join(path, "httpStatus"), "required field is missing")
    if "percentage" not in spec:
        rep.warn(join(path, "percentage"), "not set: no request is aborted")


def _check_fault(spec: dict, path: str, rep: Reporter) -> None:
    if not spec:
        rep.issue(path, "one of delay or abort is required")
    delay = spec.get("delay")
    if delay is not None and "percentage" not in delay and "percent" not in delay:
        rep.warn(join(path, "delay.percentage"), "not set: no request is delayed")

MIRROR_POLICY = Struct({
    "destination": Field(DESTINATION, required=True),
    "percentage": Field(PERCENT),
})


def _check_http_route(spec: dict, path: str, rep: Reporter) -> None:
    has = [k for k in ("route", "redirect", "directResponse") if k in spec]
    if len(has) > 1:
        rep.issue(join(path, has[1]), f"{has[1]} cannot be combined with {has[0]}")
    elif not has:
        rep.issue(path, "one of route, redirect or directResponse is required")
    if "rewrite" in spec and ("redirect" in spec or "directResponse" in spec):
        rep.issue(join(path, "rewrite"), "rewrite cannot be combined with "
                  + ("redirect" if "redirect" in spec else "directResponse"))
    if "mirror" in spec and "mirrors" in spec:
        rep.issue(join(path, "mirrors"), "only one of mirror or mirrors may be set")
    for key in ("mirrorPercentage", "mirrorPercent"):
        if key in spec and "mirror" not in spec:
            rep.issue(join(path, key), f"{key} needs mirror")
    routes = spec.get("route", [])
    if len(routes) > 1 or (routes and "weight" in routes[0]):
        total = sum(r.get("weight", 0) for r in routes)
        if total != 100:
            rep.issue(f"{join(path, 'route')}[{len(routes) - 1}].weight",
                      f"weights must sum to 100, got {total}")
    rw = spec.get("rewrite", {}).get("uriRegexRewrite")
    if rw and isinstance(rw.get("match"), str) and isinstance(rw.get("rewrite"), str):
        from control import regex

        try:
            groups = regex.compile(rw["match"]).groups
        except regex.RegexError:
            return  # reported on rewrite.uriRegexRewrite.match
        msg = regex.check_rewrite(rw["rewrite"], groups)
        if msg:
            rep.issue(join(path, "rewrite.uriRegexRewrite.rewrite"), msg)


#: Envoy's retry conditions (x-envoy-retry-on) and gRPC's (x-envoy-retry-grpc-on), as Istio's
#: ``retryOn`` takes them; numbers in the list are retriable status codes.
RETRY_ON = ("5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
            "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
            "retriable-headers", "http3-post-connect-failure",
            "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")


def _retry_on(value: str) -> Optional[str]:
    for part in value.split(","):
        part = part.strip()
        if part.isdigit():
            if not 100 <= int(part) <= 599:
                return f"{part} is not an HTTP status code"
            continue
        if part not in RETRY_ON:
            return f"unknown retry condition {part!r}{did_you_mean(part, RETRY_ON)}"
    return None


HTTP_RETRY = Struct({
    "attempts": Field(Int(0, 1000)),
    "perTryTimeout": Field(Duration(positive=True)),
    "retryOn": Field(Str(validate=_retry_on)),
    "retryRemoteLocalities": Field(Bool()),
    "retryIgnorePreviousHosts": Field(Bool()),
    "backoff": Field(Duration(positive=True)),
})

HTTP_ROUTE = Struct({
    "name": Field(Str()),
    "match": Field(ListOf(HTTP_MATCH)),
    "route": Field(ListOf(ROUTE_DESTINATION, min_items=1)),
    "redirect": Field(REDIRECT),
    "directResponse": Field(DIRECT_RESPONSE),
    "delegate": not_yet("delegate"),
    "rewrite": Field(REWRITE),
    "timeout": Field(Duration()),
    "retries": Field(HTTP_RETRY),
    "fault": Field(FAULT),
    "mirror": Field(DESTINATION),
    "mirrorPercentage": Field(PERCENT),
    "mirrorPercent": Field(Int(0, 100)),
    "mirrors": Field(ListOf(MIRROR_POLICY, min_items=1)),
    "corsPolicy": not_yet("corsPolicy"),
    "headers": Field(HEADERS),
}, checks=(_check_http_route,))

VIRTUAL_SERVICE = Struct({
    "hosts": Field(ListOf(Str(vs_host, normalise=str.lower, non_empty=True), min_items=1), required=True),
    "gateways": Field(ListOf(Str(non_empty=True))),
    "http": Field(ListOf(HTTP_ROUTE, min_items=1), required=True),
    "tcp": not_yet("tcp"),
    "tls": not_yet("tls"),
    "exportTo": Field(ListOf(Str()), warn=NOT_USED + " (the VirtualService applies to every sidecar)"),
})


# --- DestinationRule -------------------------------------------------------------------------------

LB_SIMPLE = ("UNSPECIFIED", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN")
HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    f = 2
    while f * f <= n:
        if n % f == 0:
            return False
        f += 1
    return True


def _check_consistent_hash(spec: dict, path: str, rep: Reporter) -> None:
    keys = [k for k in HASH_KEYS if k in spec and spec[k] is not False]
    if len(keys) != 1:
        got = f", got {len(keys)} ({', '.join(keys)})" if keys else ""
        rep.issue(path, "consistentHash needs exactly one hash key: httpHeaderName, httpCookie, useSourceIp "
                        f"or httpQueryParameterName{got}")
    algos = [k for k in ("ringHash", "maglev", "minimumRingSize") if k in spec]
    if len(algos) > 1:
        rep.issue(join(path, algos[1]), f"{algos[1]} cannot be combined with {algos[0]}")
    size = spec.get("maglev", {}).get("tableSize")
    if size is not None and not _is_prime(size):
        rep.issue(join(path, "maglev.tableSize"), f"{size} is not a prime number")


CONSISTENT_HASH = Struct({
    "httpHeaderName": Field(HEADER_NAME),
    "httpCookie": Field(Struct({
        "name": Field(Str(non_empty=True), required=True),
        "path": Field(Str()),
        "ttl": Field(Duration()),
        "attributes": not_yet("attributes"),
    })),
    "useSourceIp": Field(Bool()),
    "httpQueryParameterName": Field(Str(non_empty=True)),
    "ringHash": Field(Struct({"minimumRingSize": Field(Int(1, 1 << 23))})),
    "maglev": Field(Struct({"tableSize": Field(Int(1, 5000011))})),
    "minimumRingSize": Field(Int(1, 1 << 23)),
}, checks=(_check_consistent_hash,))


def _check_locality(spec: dict, path: str, rep: Reporter) -> None:
    if "distribute" in spec and "failover" in spec:
        rep.issue(join(path, "failover"), "failover cannot be combined with distribute")
    for i, d in enumerate(spec.get("distribute", [])):
        total = sum(d["to"].values())
        if total != 100:
            rep.issue(f"{join(path, 'distribute')}[{i}].to", f"weights must sum to 100, got {total}")
    for i, f in enumerate(spec.get("failover", [])):
        src, dst = f["from"].split("/")[0], f["to"].split("/")[0]
        if src == dst:
            rep.issue(f"{join(path, 'failover')}[{i}].to",
                      f'failover must be to another region (from "{f["from"]}" to "{f["to"]}")')


LOCALITY_LB = Struct({
    "enabled": Field(Bool(), default=True),
    "distribute": Field(ListOf(Struct({
        "from": Field(Str(non_empty=True), required=True),
        "to": Field(MapOf(Int(0, 100)), required=True),
    }))),
    "failover": Field(ListOf(Struct({
        "from": Field(Str(non_empty=True), required=True),
        "to": Field(Str(non_empty=True), required=True),
    }))),
    "failoverPriority": Field(ListOf(Str(non_empty=True))),
}, checks=(_check_locality,))


def _check_load_balancer(spec: dict, path: str, rep: Reporter) -> None:
    if "simple" in spec and "consistentHash" in spec:
        rep.issue(join(path, "consistentHash"), "consistentHash cannot be combined with simple")
    if spec.get("simple") == "LEAST_CONN":
        rep.warn(join(path, "simple"), "LEAST_CONN is deprecated: it means LEAST_REQUEST")


LOAD_BALANCER = Struct({
    "simple": Field(Enum(LB_SIMPLE)),
    "consistentHash": Field(CONSISTENT_HASH),
    "localityLbSetting": Field(LOCALITY_LB),
    "warmupDurationSecs": not_yet("warmupDurationSecs"),
    "warmup": not_yet("warmup"),
}, checks=(_check_load_balancer,))

INT32_MAX = 2**31 - 1


class Threshold(Int):
    """An Istio int32 connection-pool limit: > 0 sets it, 0 keeps Istio's default, < 0 is an error."""

    def __init__(self):
        super().__init__(0, INT32_MAX)

    def check(self, value, path, rep):
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                rep.issue(path, "must not be negative")
                return INVALID
            if value > INT32_MAX:
                rep.issue(path, f"{value} is out of range (an int32: at most {INT32_MAX})")
                return INVALID
        return super().check(value, path, rep)


def _check_tcp_pool(spec: dict, path: str, rep: Reporter) -> None:
    if "maxConnectionDuration" in spec and spec["maxConnectionDuration"] < 0.001:
        rep.issue(join(path, "maxConnectionDuration"), "must be at least 1ms")


# Istio's ConnectionPoolSettings. The limits are Envoy's circuit breakers (control.policy).
CONNECTION_POOL = Struct({
    "tcp": Field(Struct({
        "maxConnections": Field(Threshold()),
        "connectTimeout": Field(Duration(positive=True)),
        "tcpKeepalive": not_yet("tcpKeepalive"),
        "maxConnectionDuration": Field(Duration()),
        "idleTimeout": not_yet("tcp.idleTimeout"),
    }, checks=(_check_tcp_pool,))),
    "http": Field(Struct({
        "http1MaxPendingRequests": Field(Threshold()),
        "http2MaxRequests": Field(Threshold()),
        "maxRequestsPerConnection": Field(Threshold()),
        "maxRetries": Field(Threshold()),
        "idleTimeout": Field(Duration(positive=True)),
        "h2UpgradePolicy": not_yet("h2UpgradePolicy"),
        "useClientProtocol": not_yet("useClientProtocol"),
        "maxConcurrentStreams": not_yet("maxConcurrentStreams"),
    })),
})

# Istio's TrafficPolicy.RetryBudget (Envoy's circuit-breaker retry_budget); defaults in control.policy.
RETRY_BUDGET = Struct({
    "percent": Field(Float(0, 100)),
    "minRetryConcurrency": Field(Int(0, 2**32 - 1)),
    "budgetInterval": Field(Duration()),
})

def _check_outlier_detection(spec: dict, path: str, rep: Reporter) -> None:
    for key in ("interval", "baseEjectionTime"):
        if key in spec and spec[key] < 0.001:
            rep.issue(join(path, key), "must be at least 1ms")
    if "consecutiveLocalOriginFailures" in spec and not spec.get("splitExternalLocalOriginErrors"):
        rep.warn(join(path, "consecutiveLocalOriginFailures"),
                 "takes effect only with splitExternalLocalOriginErrors: true (local-origin failures "
                 "count as 5xx errors otherwise)")


# Istio's OutlierDetection; the defaults (applied by control.policy) are Istio's and Envoy's.
OUTLIER_DETECTION = Struct({
    "consecutive5xxErrors": Field(Int(0)),
    "consecutiveGatewayErrors": Field(Int(0)),
    "consecutiveLocalOriginFailures": Field(Int(0)),
    "splitExternalLocalOriginErrors": Field(Bool()),
    "interval": Field(Duration(positive=True)),
    "baseEjectionTime": Field(Duration(positive=True)),
    "maxEjectionPercent": Field(Int(0, 100)),
    "minHealthPercent": Field(Int(0, 100)),
    "consecutiveErrors": Field(AnyValue(), unsupported="consecutiveErrors is deprecated by Istio and "
                                                        "not supported: use consecutiveGatewayErrors "
                                                        "or consecutive5xxErrors"),
}, checks=(_check_outlier_detection,))

# The parts a portLevelSettings[] entry may set too; retryBudget is only top-level and per subset.
_POLICY_FIELDS = {
    "loadBalancer": Field(LOAD_BALANCER),
    "connectionPool": Field(CONNECTION_POOL),
    "outlierDetection": Field(OUTLIER_DETECTION),
    "tls": not_yet("tls"),
}

PORT_TRAFFIC_POLICY = Struct({"port": Field(PORT_SELECTOR, required=True), **_POLICY_FIELDS})


def _check_port_levels(spec: dict, path: str, rep: Reporter) -> None:
    seen: dict = {}
    for i, p in enumerate(spec.get("portLevelSettings", [])):
        number = p["port"]["number"]
        if number in seen:
            rep.issue(f"{join(path, 'portLevelSettings')}[{i}].port.number",
                      f"port {number} is already set in portLevelSettings[{seen[number]}]")
        seen.setdefault(number, i)


TRAFFIC_POLICY = Struct({
    **_POLICY_FIELDS,
    "portLevelSettings": Field(ListOf(PORT_TRAFFIC_POLICY)),
    "retryBudget": Field(RETRY_BUDGET),
    "tunnel": not_yet("tunnel"),
    "proxyProtocol": not_yet("proxyProtocol"),
}, checks=(_check_port_levels,))

SUBSET = Struct({
    "name": Field(Str(dns1123_label), required=True),
    "labels": Field(LABELS, default={}),
    "trafficPolicy": Field(TRAFFIC_POLICY),
})


def _check_subsets(spec: dict, path: str, rep: Reporter) -> None:
    seen: dict = {}
    for i, s in enumerate(spec.get("subsets", [])):
        if s["name"] in seen:
            rep.issue(f"{join(path, 'subsets')}[{i}].name",
                      f'subset "{s["name"]}" is already defined as subsets[{seen[s["name"]]}]')
        seen.setdefault(s["name"], i)


DESTINATION_RULE = Struct({
    "host": Field(Str(vs_host, normalise=str.lower, non_empty=True), required=True),
    "trafficPolicy": Field(TRAFFIC_POLICY),
    "subsets": Field(ListOf(SUBSET)),
    "exportTo": Field(ListOf(Str()), warn=NOT_USED + " (the DestinationRule applies to every sidecar)"),
    "workloadSelector": Field(Struct({"matchLabels": Field(LABELS)}),
                              warn=NOT_USED + " (the DestinationRule applies to every sidecar)"),
}, checks=(_check_subsets,))

KINDS = {
    "ServiceEntry": KindSchema("ServiceEntry", NETWORKING, SERVICE_ENTRY),
    "WorkloadEntry": KindSchema("WorkloadEntry", NETWORKING, WORKLOAD_ENTRY),
    "VirtualService": KindSchema("VirtualService", NETWORKING, VIRTUAL_SERVICE),
    "DestinationRule": KindSchema("DestinationRule", NETWORKING, DESTINATION_RULE),
}

# Kinds of this group that change routing: an error until implemented.
UNSUPPORTED_KINDS = ("Gateway", "Sidecar", "EnvoyFilter", "ProxyConfig", "WorkloadGroup")
