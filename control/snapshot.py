"""The Snapshot: the immutable, versioned contract between control and the sidecar.

Like Envoy's xDS resources, a Snapshot holds everything one sidecar needs: its listeners with their
virtual hosts and routes, the clusters those routes name, each cluster's endpoints, and the bootstrap
settings (ports, limits, access log, timeouts). It is plain data: frozen dataclasses of str, int,
float, bool, tuples and small dicts, serialisable with ``to_dict`` / ``from_dict`` (JSON-safe) for
``/config_dump`` and for sending to worker processes or, later, over the control-plane wire.

Naming follows Envoy: a cluster is ``outbound|<port>||<service FQDN>`` or
``inbound|<target port>||``; listeners are ``virtualOutbound`` / ``virtualInbound`` as in Istio.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


#: Every value ``Cluster.lb_policy`` can take. Control maps Istio's names onto these once, when it
#: compiles (``control.policy``), so the data plane needs no table of its own:
#:
#: - ``ROUND_ROBIN``: weighted round robin (DestinationRule ``simple: ROUND_ROBIN``).
#: - ``RANDOM``: weighted random (``simple: RANDOM``).
#: - ``LEAST_REQUEST``: the endpoint with fewer active requests (power of two choices, weighted).
#:   Istio's default: no DestinationRule, no ``loadBalancer``, no ``simple``, ``simple: UNSPECIFIED``;
#:   ``simple: LEAST_CONN`` is Istio's deprecated alias of it.
#: - ``RING_HASH`` / ``MAGLEV``: ``consistentHash`` (``maglev`` set: MAGLEV, else RING_HASH); the key and
#:   the table size are in ``Cluster.hash_policy``.
#: - ``PASSTHROUGH``: no balancing; the request's own authority is dialled (``simple: PASSTHROUGH``).
LB_POLICIES = ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV", "PASSTHROUGH")
DEFAULT_LB_POLICY = "LEAST_REQUEST"  # Istio's default when a DestinationRule sets no policy


@dataclass(frozen=True)
class Endpoint:
    """One upstream address of a cluster.

    ``address``/``port`` is what the sidecar dials: the application port, or the inbound port of
    the endpoint's own sidecar when ``sidecar`` is True (see docs/configuration.md, "Sidecar-aware
    endpoints"). ``target_port`` is the application port on the workload.

    Like Envoy's EDS endpoints, each carries its locality ``priority`` and load-balancing ``weight``
    computed by control for this snapshot's sidecar (``control.locality``): the data plane balances
    over the endpoints of the lowest priority that has a healthy one, by ``weight``, and fails over
    to the next priority when none is healthy.

    - ``priority``: 0 is the sidecar's own locality (and every endpoint when locality load
      balancing does not apply); higher numbers are failover tiers, tried in increasing order.
    - ``weight``: the effective weight within its priority, at least 1. It equals ``config_weight``
      unless ``localityLbSetting.distribute`` rewrote it to give each locality its share.
    - ``config_weight``: the weight as configured (WorkloadEntry / ServiceEntry endpoint ``weight``,
      default 1; weight 0 endpoints are left out of the snapshot). Left out (0), it is ``weight``.
    """

    address: str
    port: int
    target_port: int
    labels: dict = field(default_factory=dict)
    weight: int = 1  # effective load-balancing weight (see above)
    locality: str = ""  # "region/zone/subzone"
    workload: str = ""  # "namespace/name" of the WorkloadEntry, "" for inline endpoints
    sidecar: bool = False
    hostname: str = ""  # DNS resolution: the name this address was resolved from
    priority: int = 0  # locality priority: 0 = the sidecar's own locality, higher = failover
    config_weight: int = 0  # the configured weight; 0: the same as weight
    # A sidecar endpoint's SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<serviceAccount>): what
    # its certificate must say when this sidecar dials it with mutual TLS; "" for others.
    identity: str = ""

    def __post_init__(self):
        if not self.config_weight:
            object.__setattr__(self, "config_weight", self.weight)


@dataclass(frozen=True)
class HashPolicy:
    """DestinationRule ``loadBalancer.consistentHash``: exactly one key source is set."""

    header: str = ""  # httpHeaderName (lowercase)
    cookie: str = ""  # httpCookie.name
    cookie_ttl: float = 0.0  # httpCookie.ttl (seconds); 0: session cookie
    cookie_path: str = ""  # httpCookie.path
    source_ip: bool = False  # useSourceIp
    query_param: str = ""  # httpQueryParameterName
    ring_size: int = 0  # ringHash.minimumRingSize (or legacy minimumRingSize); 0 with maglev
    maglev_table_size: int = 0  # maglev.tableSize; 0 with ring hash


@dataclass(frozen=True)
class LocalityLb:
    """DestinationRule ``localityLbSetting``, as configured.

    Control has already applied it: it is what the endpoints' ``priority`` and ``weight`` come from
    (``control.locality``); it stays here to show in ``/config_dump``.
    """

    enabled: bool = True
    distribute: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()  # (from, ((to, weight),))
    failover: tuple[tuple[str, str], ...] = ()  # (from region, to region)
    failover_priority: tuple[str, ...] = ()  # label keys


@dataclass(frozen=True)
class HealthCheck:
    """An active health check (meshproxy's ``HealthCheck`` kind), as Envoy's ``HealthCheck``.

    Exactly one of ``http_path`` (an HTTP check) and ``tcp`` (a TCP check) applies: ``tcp`` is
    True for a TCP check. Durations are in seconds; ``expected_statuses`` are ``[start, end)``
    ranges. ``source`` is the ``namespace/name`` of the resource, for ``/config_dump`` and
    ``meshproxy explain``. Plain data with no meshproxy import: ``control.health`` runs it.
    """

    source: str = ""
    tcp: bool = False
    http_path: str = ""
    http_host: str = ""  # the Host header ("" when the cluster's service host is used)
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)
    request_headers: tuple[tuple[str, str], ...] = ()
    send: str = ""  # TCP: text written once connected
    expect: str = ""  # TCP: text that must arrive
    interval: float = 10.0
    timeout: float = 1.0
    interval_jitter: float = 0.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    no_traffic_interval: float = 60.0


@dataclass(frozen=True)
class OutlierDetection:
    """DestinationRule ``outlierDetection`` with Istio's defaults filled in (Envoy's semantics).

    A threshold of 0 is off. ``consecutive_local_origin`` applies only with
    ``split_external_local_origin_errors`` (without it, local-origin failures count as 5xx).
    ``min_health_percent`` is Envoy's healthy panic threshold for the cluster.
    """

    consecutive_5xx: int = 5  # consecutive5xxErrors
    consecutive_gateway: int = 0  # consecutiveGatewayErrors (Envoy's 5, enforced only when set)
    consecutive_local_origin: int = 5  # consecutiveLocalOriginFailures
    split_external_local_origin_errors: bool = False
    interval: float = 10.0  # seconds
    base_ejection_time: float = 30.0  # seconds, times the number of ejections
    max_ejection_time: float = 300.0  # Envoy's max_ejection_time (not settable in Istio)
    max_ejection_percent: int = 10  # at least one endpoint may be ejected regardless
    min_health_percent: int = 0  # Istio's default: no panic threshold


#: Istio's "unlimited" circuit-breaker value (2^32 - 1), its default for every threshold.
MAX_UNLIMITED = 4294967295


@dataclass(frozen=True)
class CircuitBreakers:
    """DestinationRule connectionPool limits (Envoy's circuit breakers, cluster-wide).

    Istio writes its thresholds into Envoy's default-priority ``circuit_breakers`` of the cluster,
    so a limit applies to all the endpoints of the cluster (a subset is its own cluster) together.
    A field Istio leaves at 0 (or unset) keeps Istio's default: ``MAX_UNLIMITED`` for the four
    thresholds, no limit for requests per connection and no maximum connection duration.
    """

    max_connections: int = MAX_UNLIMITED  # tcp.maxConnections
    max_pending_requests: int = MAX_UNLIMITED  # http.http1MaxPendingRequests
    max_requests: int = MAX_UNLIMITED  # http.http2MaxRequests
    max_retries: int = MAX_UNLIMITED  # http.maxRetries
    max_requests_per_connection: int = 0  # http.maxRequestsPerConnection (0: unlimited)
    max_connection_duration: float = 0.0  # tcp.maxConnectionDuration seconds (0: none)


@dataclass(frozen=True)
class RetryBudget:
    """DestinationRule trafficPolicy.retryBudget (Envoy's circuit-breaker retry_budget).

    When set it replaces ``CircuitBreakers.max_retries`` (Envoy: a configured retry budget takes
    precedence over max_retries): concurrent retries may reach ``percent`` of the active and
    pending requests, never fewer than ``min_retry_concurrency``; with ``budget_interval``, the
    requests started within that interval are counted instead of the active ones.
    """

    percent: float = 20.0  # percent
    min_retry_concurrency: int = 3  # minRetryConcurrency
    budget_interval: float = 0.0  # budgetInterval seconds (0: count only active + pending requests)


@dataclass(frozen=True)
class Cluster:
    name: str  # "outbound|80|v2|reviews.default.svc.cluster.local" or "inbound|8080||"
    direction: str  # "outbound" | "inbound"
    service: str  # FQDN host ("" for inbound)
    namespace: str  # namespace of the ServiceEntry ("" for inbound)
    port: int  # service port (inbound: the application port)
    port_name: str
    protocol: str  # Istio port protocol: HTTP, HTTP2, GRPC, TCP, ...
    lb_policy: str = DEFAULT_LB_POLICY  # always one of LB_POLICIES
    endpoints: tuple[Endpoint, ...] = ()
    connect_timeout: float = 10.0  # seconds (Istio's default)
    idle_timeout: float = 3600.0  # seconds an idle pooled upstream connection is kept (Istio: 1h)
    max_idle_per_endpoint: int = 1024  # as Envoy's default max_connections circuit breaker
    subset: str = ""  # DestinationRule subset name ("" for the whole service)
    hash_policy: Optional[HashPolicy] = None  # set when lb_policy is RING_HASH or MAGLEV
    locality_lb: Optional[LocalityLb] = None  # as configured; already applied to the endpoints' priority/weight
    resolution: str = "STATIC"  # STATIC | DNS | DNS_ROUND_ROBIN | NONE
    dns_hosts: tuple[tuple[str, int, int], ...] = ()  # DNS: (hostname, port, weight) to resolve
    destination_rule: str = ""  # "namespace/name" of the DestinationRule applied, if any
    health_check: Optional[HealthCheck] = None  # active health check (meshproxy HealthCheck kind)
    outlier_detection: Optional[OutlierDetection] = None  # None: only the passive connect-failure ejection
    circuit_breakers: CircuitBreakers = CircuitBreakers()  # connectionPool limits (Istio's defaults: none)
    retry_budget: Optional[RetryBudget] = None  # trafficPolicy.retryBudget; None: maxRetries applies


@dataclass(frozen=True)
class StringMatch:
    """Istio's StringMatch: ``exact``, ``prefix`` or ``regex`` (RE2 syntax, full match)."""

    kind: str  # "exact" | "prefix" | "regex"
    value: str


@dataclass(frozen=True)
class HeaderMatch:
    """One ``headers`` (or ``withoutHeaders``, ``invert=True``) entry of an HTTPMatchRequest.

    ``match`` None means presence only (Istio's empty match ``{}``).
    """

    name: str  # lowercase
    match: Optional[StringMatch] = None
    invert: bool = False


@dataclass(frozen=True)
class QueryMatch:
    name: str
    match: Optional[StringMatch] = None  # None: the parameter must be present


@dataclass(frozen=True)
class RouteMatch:
    """One HTTPMatchRequest: every field set must match (AND); a Route's matches are OR."""

    name: str = ""
    uri: Optional[StringMatch] = None
    ignore_uri_case: bool = False
    scheme: Optional[StringMatch] = None
    method: Optional[StringMatch] = None
    authority: Optional[StringMatch] = None
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryMatch, ...] = ()
    port: int = 0  # 0: any
    source_labels: dict = field(default_factory=dict)  # compiled away: the sidecar's own labels


@dataclass(frozen=True)
class HeaderOps:
    """Istio's Headers.HeaderOperations; names lowercase, applied in the order remove, set, add."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Destination:
    """One ``route[]`` entry: a cluster (service + port + subset) and its weight."""

    cluster: str
    weight: int = 100
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)


@dataclass(frozen=True)
class Redirect:
    uri: str = ""
    authority: str = ""
    port: int = 0
    scheme: str = ""
    code: int = 301


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: str = ""  # the body as text (Istio ``body.string``; ``body.bytes`` is base64-decoded)


@dataclass(frozen=True)
class Rewrite:
    uri: str = ""  # replaces the matched prefix (or the whole path for exact/regex matches)
    authority: str = ""
    uri_regex: str = ""  # uriRegexRewrite.match
    uri_regex_rewrite: str = ""  # uriRegexRewrite.rewrite (\1 style groups)


@dataclass(frozen=True)
class Fault:
    delay: float = 0.0  # seconds (fixedDelay)
    delay_percent: float = 0.0
    abort_status: int = 0
    abort_percent: float = 0.0


@dataclass(frozen=True)
class Mirror:
    cluster: str
    percent: float = 100.0


#: Istio's retry conditions when a route says nothing (Istio >= 1.24: 503 is not retried).
DEFAULT_RETRY_ON = ("connect-failure", "refused-stream", "unavailable", "cancelled",
                    "retriable-status-codes")


@dataclass(frozen=True)
class RetryPolicy:
    """VirtualService ``http[].retries`` (or Istio's default policy when absent).

    ``retry_on``: Envoy's conditions; ``status_codes``: the numbers given in ``retryOn`` (what
    ``retriable-status-codes`` retries); ``attempts`` 0 disables retries; ``per_try_timeout`` 0:
    none; ``backoff``: Envoy's base interval (25 ms), the cap being ten times it.
    """

    attempts: int = 2
    per_try_timeout: float = 0.0
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    status_codes: tuple[int, ...] = ()
    retry_remote_localities: bool = False
    ignore_previous_hosts: bool = True
    backoff: float = 0.025
    configured: bool = False  # False: Istio's default policy


#: Istio's default policy for inbound routes (Istio >= 1.24, istio/istio#52055): a request to the
#: application is retried twice when its connection failed before the request was written
#: (refused, reset on connect). Outbound routes without ``retries`` get ``RetryPolicy()``.
INBOUND_RETRY_POLICY = RetryPolicy(attempts=2, retry_on=("reset-before-request",))


@dataclass(frozen=True)
class Route:
    """One HTTPRoute. Exactly one of ``destinations``, ``redirect``, ``direct_response`` is set."""

    name: str
    matches: tuple[RouteMatch, ...] = ()  # empty: matches every request
    destinations: tuple[Destination, ...] = ()
    redirect: Optional[Redirect] = None
    direct_response: Optional[DirectResponse] = None
    rewrite: Optional[Rewrite] = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    fault: Optional[Fault] = None
    mirrors: tuple[Mirror, ...] = ()
    virtual_service: str = ""  # "namespace/name"; "" for a host's default route
    index: int = 0  # position in the VirtualService's spec.http
    timeout: float = 0.0  # http[].timeout in seconds; 0: none (Istio's default)
    retries: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def cluster(self) -> str:
        """The single destination's cluster ("" when weighted or not routing to a cluster)."""
        return self.destinations[0].cluster if len(self.destinations) == 1 else ""

    @property
    def forwards_only(self) -> bool:
        """Matches everything and forwards to one cluster as it is (with at most a timeout and
        a retry policy): the data plane's fast path, a decision prebuilt per host."""
        return (not self.matches and len(self.destinations) == 1 and self.redirect is None
                and self.direct_response is None and self.rewrite is None and self.fault is None
                and not self.mirrors and self.request_headers == HeaderOps()
                and self.response_headers == HeaderOps()
                and self.destinations[0].request_headers == HeaderOps()
                and self.destinations[0].response_headers == HeaderOps())

    @property
    def is_simple(self) -> bool:
        """``forwards_only`` with Istio's default timeout (none) and retry policy."""
        return (self.forwards_only and not self.timeout
                and (self.retries == RetryPolicy() or self.retries == INBOUND_RETRY_POLICY))


@dataclass(frozen=True)
class VirtualHost:
    """A set of domains (Host header values, lowercase, with and without ``:port``) and routes."""

    name: str  # "echo.default.svc.cluster.local:80"
    domains: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class AuthzMatch:
    """One field of an AuthorizationPolicy rule: Istio's attribute ``key`` against ``values``.

    ``key`` is Istio's attribute name: ``source.principal``, ``source.namespace``,
    ``source.serviceAccount``, ``source.trustDomain``, ``source.ip`` (``ipBlocks``), ``remote.ip``,
    ``request.auth.principal`` / ``audiences`` / ``presenter`` / ``claims[a][b]``,
    ``request.headers[name]``, ``request.host``, ``request.method``, ``request.path``,
    ``destination.ip``, ``destination.port``, ``connection.sni``. Values keep Istio's spelling
    (``abc*`` prefix, ``*abc`` suffix, ``*`` presence, CIDRs, path templates); the data plane
    compiles them once per apply. ``negate``: a ``not*`` field or ``notValues`` (matches when
    none of the values match, including when the attribute is absent). ``field``: where it came
    from, for logs and ``meshproxy explain`` (``from[0].source.notPrincipals``).
    """

    key: str
    values: tuple[str, ...]
    negate: bool = False
    field: str = ""


@dataclass(frozen=True)
class AuthzRule:
    """One ``rules[]`` entry: matches when a source, an operation and every condition match.

    ``sources`` (``from[]``) and ``operations`` (``to[]``) are alternatives (OR) of field lists
    (AND); empty: any. ``conditions`` (``when[]``): all must match.
    """

    sources: tuple[tuple[AuthzMatch, ...], ...] = ()
    operations: tuple[tuple[AuthzMatch, ...], ...] = ()
    conditions: tuple[AuthzMatch, ...] = ()


@dataclass(frozen=True)
class AuthzPolicy:
    """An AuthorizationPolicy that applies to this sidecar's workload (inbound listener).

    ``action``: ALLOW, DENY or AUDIT. No rules: matches nothing (an ALLOW policy without rules
    therefore denies everything). ``scope`` says why it applies: ``mesh`` (root namespace),
    ``namespace`` or ``selector``.
    """

    name: str  # "namespace/name"
    action: str = "ALLOW"
    rules: tuple[AuthzRule, ...] = ()
    scope: str = "namespace"


@dataclass(frozen=True)
class Listener:
    name: str  # "virtualOutbound" | "virtualInbound"
    direction: str  # "outbound" | "inbound"
    address: str
    port: int
    virtual_hosts: tuple[VirtualHost, ...]
    default_cluster: Optional[str] = None  # used when no domain matches (inbound, single app port)
    # AuthorizationPolicies that apply (inbound only; sorted by namespace/name). Empty: no RBAC
    # filter at all.
    authorization: tuple[AuthzPolicy, ...] = ()


@dataclass(frozen=True)
class Limits:
    max_request_headers_kb: int = 60  # Envoy's default; 431 beyond
    max_request_line: int = 16384  # 414 beyond
    max_headers: int = 100  # Envoy's default; 431 beyond
    # Downstream timeouts (seconds, 0 = disabled) and limits; Envoy's names in brackets.
    request_headers_timeout: float = 10.0  # whole request head within this (request_headers_timeout)
    idle_timeout: float = 3600.0  # a connection with no request in flight (idle_timeout; Istio: 1h)
    stream_idle_timeout: float = 0.0  # a request with no bytes either way (stream_idle_timeout)
    per_connection_buffer_limit_bytes: int = 1048576  # (per_connection_buffer_limit_bytes)
    max_downstream_connections: int = 16384  # per listener and worker; 0 = no limit


@dataclass(frozen=True)
class CertificateFiles:
    """The sidecar's workload certificate (a SPIFFE X.509-SVID chain), its key and the mesh's
    trust roots, as PEM files (Envoy's file-based secrets)."""

    certificate_chain: str
    private_key: str
    ca_certificates: str


@dataclass(frozen=True)
class Bootstrap:
    """What Istio keeps outside the CRDs (MeshConfig / ProxyConfig), for this sidecar."""

    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"  # Istio meshConfig.rootNamespace (mesh-wide policies)
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    outbound_address: str = "127.0.0.1"
    outbound_port: int = 15001
    inbound_port: int = 15006
    prometheus_port: int = 15090  # /stats/prometheus only, as Envoy's 15090 in Istio
    status_port: int = 15021  # /healthz/ready, as pilot-agent's 15021 in Istio
    concurrency: int = 1
    drain_duration: float = 5.0  # seconds (Istio ProxyConfig.drainDuration)
    exit_on_zero_active_connections: bool = False  # after /drain_listeners, exit once idle
    access_log_file: str = ""  # "" = off; "/dev/stdout" or a path (Istio MeshConfig.accessLogFile)
    access_log_encoding: str = "TEXT"  # TEXT | JSON (MeshConfig.accessLogEncoding)
    access_log_format: str = ""  # "" = Envoy/Istio default (MeshConfig.accessLogFormat)
    dns_servers: tuple[str, ...] = ()  # "ip" or "ip:port"; () = /etc/resolv.conf
    # NONE | BASE | MERGE_SLASHES | DECODE_AND_MERGE_SLASHES (MeshConfig.pathNormalization)
    path_normalization: str = "BASE"
    limits: Limits = field(default_factory=Limits)
    # None: no certificate, plaintext between sidecars. Set: mutual TLS to every endpoint that
    # has a sidecar (Istio's auto mTLS) and TLS or plaintext accepted inbound (PERMISSIVE).
    certificates: Optional[CertificateFiles] = None


@dataclass(frozen=True)
class Workload:
    """The workload this sidecar runs next to (from its WorkloadEntry), if any."""

    name: str
    namespace: str
    address: str
    labels: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)  # port name -> application port
    service_account: str = ""
    locality: str = ""  # "region/zone/subzone" (WorkloadEntry.locality)


@dataclass(frozen=True)
class Snapshot:
    version: str
    bootstrap: Bootstrap
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    workload: Optional[Workload] = None
    warnings: tuple[str, ...] = ()  # things accepted but not acted on
    sources: tuple[str, ...] = ()  # files the snapshot was compiled from

    def cluster(self, name: str) -> Optional[Cluster]:
        for c in self.clusters:
            if c.name == name:
                return c
        return None

    def listener(self, direction: str) -> Optional[Listener]:
        for listener in self.listeners:
            if listener.direction == direction:
                return listener
        return None

    def to_dict(self) -> dict:
        return _to_plain(self)

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Snapshot":
        """Rebuild a Snapshot from ``to_dict()`` output (nested dataclasses from their types)."""
        return _from_plain(cls, d)

    @classmethod
    def from_json(cls, s: str) -> "Snapshot":
        return cls.from_dict(json.loads(s))


def content_version(payload: Any) -> str:
    """A short, stable version string for a snapshot's content (first 12 hex of SHA-256)."""
    return hashlib.sha256(json.dumps(_to_plain(payload), sort_keys=True).encode()).hexdigest()[:12]


_HINTS: dict = {}


def _hints(cls) -> dict:
    h = _HINTS.get(cls)
    if h is None:
        h = _HINTS[cls] = typing.get_type_hints(cls)
    return h


def _from_plain(tp: Any, value: Any) -> Any:
    """The inverse of ``_to_plain`` for the annotated types used in this module."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_plain(args[0], value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in value)
        if args:
            return tuple(_from_plain(a, v) for a, v in zip(args, value))
        return tuple(value)
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _from_plain(hints[f.name], value[f.name])
        return tp(**kwargs)
    if tp is tuple:
        return tuple(value)
    return value


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    return obj
