"""Clusters as the data plane uses them: endpoints, pickers, connection pools, endpoint health.

One source, two builds: Cython compiles this file with ``cluster.pxd`` (final cdef classes, C
calls); ``meshproxy._py.cluster`` is the same file uncompiled. Keep it plain Python.

Theory of operation
-------------------
* A ``Pool`` holds the idle connections to one (address, port, transport, protocol) key. The
  transport is part of the key (plaintext today; the TLS identity to present and the one to expect
  once mutual TLS arrives), so a connection is only ever reused for a request that needs exactly
  the same transport. Pools are shared by every cluster that reaches the same key and survive
  reloads (warm connections stay warm); the cluster manager owns them.
* An ``Endpoint`` is one host *of one cluster* (as Envoy's Host): its pool, its live request
  counts and its health. Two clusters listing the same address have two Endpoints over one Pool, so
  each keeps its own settings (connect timeout, idle timeout, idle connections kept) and its own
  outlier state.
* A ``Cluster`` groups its endpoints by priority (locality failover, computed by control: 0 is the
  sidecar's own locality) and keeps a picker over the first group that has a healthy endpoint. The
  picker is rebuilt when membership or health changes, never per pick. ``choose(lb)`` returns an
  endpoint for an ``LbContext`` (hash key, endpoints to avoid on a retry, the request's authority for
  original-destination clusters) and takes the request's slot on it; ``release(ep)`` gives it back.
  Pickers never see a stream or a connection.
* Endpoint health goes through one interface, ``OutlierDetector.put_result(endpoint, result)``:
  ``result`` is an HTTP status (> 0) or one of the ``RESULT_*`` local-origin outcomes (Envoy's
  ``Outlier::Result``). An endpoint is out of rotation while any ``H_*`` health bit is set (an
  outlier ejection, later an active health check): it returns only when every bit has cleared.
* A cluster's circuit breakers (DestinationRule ``connectionPool`` limits, ``retryBudget``) and
  what they count live in its ``Resources`` (Envoy's ResourceManager), which the cluster manager
  keeps by cluster name across reloads, so a reload neither resets the counts nor lets requests
  already in flight escape them. ``Resources.waiting`` holds the streams queued for a connection
  at ``maxConnections`` (the stream engine serves it). A cluster with a connection limit has pools
  of its own (``pool_key(..., scope=cluster name)``), so its connections are counted exactly.
* Without a DestinationRule ``outlierDetection`` a cluster has the base ``OutlierDetector`` (a
  connect failure ejects for ``CONNECT_FAILURE_EJECTION`` s; no per-response cost). With one it
  has an ``OutlierDetection``: Envoy's consecutive-5xx / gateway / local-origin detection, ejection
  times that grow with each ejection and decay while healthy, ``maxEjectionPercent``; its
  ``minHealthPercent`` is the cluster's ``panic_threshold``.
"""
import logging
from random import random as _random
from time import monotonic as _monotonic

# Relative import: compiled, the compiled pickers; as meshproxy._py.cluster, their twins.
from . import balancer as _balancer

# Picker classes, dispatched on per pick (``Cluster.kind``).
P_NONE = 0
P_ROUND_ROBIN = 1
P_RANDOM = 2
P_LEAST_REQUEST = 3
P_RING_HASH = 4
P_MAGLEV = 5

_KINDS = {"ROUND_ROBIN": P_ROUND_ROBIN, "RANDOM": P_RANDOM, "LEAST_REQUEST": P_LEAST_REQUEST,
          "RING_HASH": P_RING_HASH, "MAGLEV": P_MAGLEV}

# Why an endpoint is out of rotation (bits of ``Endpoint.health_flags``).
H_OUTLIER = 1  # ejected by the cluster's outlier detector
H_ACTIVE_HC = 2  # failing its active health check

# Local-origin outcomes for ``OutlierDetector.put_result`` (HTTP statuses are passed as they are).
RESULT_CONNECT_SUCCESS = -1
RESULT_CONNECT_FAILED = -2
RESULT_CONNECT_TIMEOUT = -3
RESULT_RESET = -4  # the connection broke before a response head arrived
RESULT_TIMEOUT = -5  # the request timed out waiting for the upstream

# Why OutlierDetection ejected an endpoint (Envoy's ``OutlierEjectionType``).
EJECT_5XX = 1  # consecutive_5xx
EJECT_GATEWAY = 2  # consecutive_gateway_failure
EJECT_LOCAL = 3  # consecutive_local_origin_failure
EJECTION_TYPES = {1: "consecutive_5xx", 2: "consecutive_gateway_failure",
                  3: "consecutive_local_origin_failure"}

#: Envoy's ``max_ejection_time`` default (Istio does not set it): the cap on ``baseEjectionTime``
#: times the number of times an endpoint has been ejected.
MAX_EJECTION_TIME = 300.0

#: How long a connect failure keeps an endpoint out of rotation when the cluster has no
#: ``outlierDetection`` (Istio's default retry policy retries connect failures elsewhere).
CONNECT_FAILURE_EJECTION = 5.0

#: The transport of a plaintext pool key.
TRANSPORT_PLAINTEXT = "plaintext"
#: The transport of a pool key for Istio's mutual TLS (followed by ``|`` and the peer's identity).
TRANSPORT_ISTIO_MUTUAL = "istio_mutual"
#: The protocol of an HTTP/1.1 pool key.
PROTOCOL_HTTP1 = "http/1.1"

_GENERATION = [0]

#: Istio's "unlimited" circuit-breaker value (2^32 - 1).
MAX_UNLIMITED = 4294967295
log = logging.getLogger("meshproxy")

#: Original-destination endpoints kept per passthrough cluster (oldest dropped first).
PASSTHROUGH_MAX = 4096


def pool_key(address, port, transport=TRANSPORT_PLAINTEXT, protocol=PROTOCOL_HTTP1, scope=""):
    """The key of the pool that may serve a request to ``address:port`` over ``transport``;
    ``scope``: the cluster whose pools are its own (it has a connection limit), else ""."""
    return (address, port, transport, protocol, scope)


class Pool:
    """The connections to one (address, port, transport, protocol): idle ones are reused LIFO.

    A pool does not decide how long a connection may idle or how many are kept: the cluster whose
    request used the connection last does (``release(up, max_idle, idle_timeout)``).
    """

    def __init__(self, key):
        self.key = key
        self.address = key[0]
        self.port = key[1]
        self.transport = key[2]
        self.protocol = key[3]
        self.host = "%s:%d" % (self.address, self.port)
        self.idle = []
        self.cx_active = 0
        self.cx_total = 0
        # Mutual TLS (the transport is not plaintext): the client context, and the SPIFFE ID
        # the server's certificate must carry (checked once per connection).
        self.ssl = None
        self.identity = None

    def acquire(self):
        """An idle connection (most recently used first), or None."""
        idle = self.idle
        while idle:
            up = idle.pop()
            if not up.closed:
                return up
        return None

    def release(self, up, max_idle, idle_timeout):
        """Keep ``up`` for reuse for at most ``idle_timeout`` s, unless ``max_idle`` are kept."""
        if up.closed:
            return
        if len(self.idle) >= max_idle:
            up.close()
            return
        up.idle_deadline = _monotonic() + idle_timeout
        self.idle.append(up)

    def sweep(self, now):
        """Close idle connections past their deadline; drop closed ones."""
        keep = []
        for up in self.idle:
            if up.closed:
                continue
            if now >= up.idle_deadline:
                if up.expiring:
                    up.stats.max_duration_reached()
                up.close()
                continue
            keep.append(up)
        self.idle = keep

    def close_idle(self):
        idle = self.idle
        self.idle = []
        for up in idle:
            up.close()


class Endpoint:
    """One host of one cluster: its pool, live request counts, health and picker slot."""

    def __init__(self, address, port, pool):
        self.address = address
        self.port = port
        self.host = "%s:%d" % (address, port)
        self.pool = pool
        self.rq_active = 0
        self.rq_total = 0
        self.health_flags = 0
        self.healthy = True
        self.ejected_until = 0.0
        self.ejections = 0  # times ejected in all (for /clusters)
        # OutlierDetection state: consecutive 5xx / gateway (502-504) / local-origin failures,
        # the ejection-time multiplier (Envoy's eject time backoff: +1 per ejection, -1 per
        # interval spent healthy), the time of the last ejection and of the last un-ejection.
        self.cons_5xx = 0
        self.cons_gateway = 0
        self.cons_local = 0
        self.eject_multiplier = 0
        self.ejected_at = 0.0
        self.unejected_at = 0.0
        self.slot = -1  # index in the cluster's current picker (valid while gen matches)
        self.gen = -1

    @property
    def health(self):
        """Envoy's health word for ``/clusters``."""
        return "HEALTHY" if self.health_flags == 0 else "UNHEALTHY"

    def set_health_flag(self, flag, on):
        """Set or clear one ``H_*`` bit; True when the endpoint's eligibility changed."""
        was = self.health_flags == 0
        if on:
            self.health_flags |= flag
        else:
            self.health_flags &= ~flag
        self.healthy = self.health_flags == 0
        return self.healthy != was


class LbContext:
    """What a picker may know about a request (Envoy's LoadBalancerContext).

    ``hash_key``: the consistent-hash key when ``has_key`` (else a random key is used); ``avoid``: endpoints a
    retry should not go back to (None: any); ``authority``: the request's ``host[:port]`` (for
    original-destination clusters); ``source``: the client's address.
    """

    def __init__(self):
        self.hash_key = 0
        self.has_key = False
        self.avoid = None
        self.authority = None
        self.source = b""

    def reset(self):
        self.hash_key = 0
        self.has_key = False
        self.avoid = None
        self.authority = None


class OutlierDetector:
    """Endpoint health from request outcomes (Envoy's ``Outlier::Detector``).

    The engine reports every connection outcome, and every response status when
    ``wants_responses`` is True, through ``put_result``. This base detector implements the
    sidecar's passive default: a connect failure (or connect timeout) ejects the endpoint for
    ``CONNECT_FAILURE_EJECTION`` seconds. ``tick(now)`` (the cluster manager's periodic tick)
    returns ejected endpoints whose time is over. A DestinationRule's ``outlierDetection`` is
    ``OutlierDetection``, a subclass. ``ejected`` is the endpoints currently ejected; the
    ``enforced_*`` counters and ``overflow`` (ejections refused by ``maxEjectionPercent``) are
    Envoy's ``outlier_detection.ejections_*`` stats.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self.wants_responses = False
        self.ejected = []
        self.enforced_total = 0
        self.enforced_5xx = 0
        self.enforced_gateway = 0
        self.enforced_local = 0
        self.enforced_connect = 0  # the base detector's connect-failure ejections
        self.overflow = 0

    def put_result(self, ep, result):
        if result == RESULT_CONNECT_FAILED or result == RESULT_CONNECT_TIMEOUT:
            self.eject(ep, CONNECT_FAILURE_EJECTION)

    def eject(self, ep, seconds):
        ep.ejected_until = _monotonic() + seconds
        if ep.health_flags & H_OUTLIER:
            return
        ep.ejections += 1
        self.enforced_total += 1
        self.enforced_connect += 1
        self.ejected.append(ep)
        if ep.set_health_flag(H_OUTLIER, True):
            self.cluster.health_changed()

    def tick(self, now):
        if not self.ejected:
            return
        keep = []
        changed = False
        for ep in self.ejected:
            if now >= ep.ejected_until:
                if ep.set_health_flag(H_OUTLIER, False):
                    changed = True
            else:
                keep.append(ep)
        self.ejected = keep
        if changed:
            self.cluster.health_changed()

    def settings(self):
        """What ``explain`` and ``/clusters`` say about this detector."""
        return None

    def counters(self):
        """Envoy's ``outlier_detection.*`` stats of the cluster."""
        return {"ejections_active": len(self.ejected),
                "ejections_enforced_total": self.enforced_total,
                "ejections_enforced_consecutive_5xx": self.enforced_5xx,
                "ejections_enforced_consecutive_gateway_failure": self.enforced_gateway,
                "ejections_enforced_consecutive_local_origin_failure": self.enforced_local,
                "ejections_enforced_connect_failure": self.enforced_connect,
                "ejections_overflow": self.overflow}

    def take_state(self, old):
        """Carry ``old``'s ejections and counters into this detector (a reload); ``old`` may be
        of either class. Endpoints no longer in the cluster are dropped from ``ejected``."""
        eps = self.cluster.endpoints
        self.ejected = [ep for ep in old.ejected if ep in eps]
        self.enforced_total = old.enforced_total
        self.enforced_5xx = old.enforced_5xx
        self.enforced_gateway = old.enforced_gateway
        self.enforced_local = old.enforced_local
        self.enforced_connect = old.enforced_connect
        self.overflow = old.overflow


class OutlierDetection(OutlierDetector):
    """A DestinationRule's ``outlierDetection``: Envoy's consecutive-error outlier detection with
    Istio's defaults (see docs/configuration.md).

    * An HTTP 5xx adds one to the endpoint's consecutive 5xx count, a 502/503/504 also to its
      consecutive gateway-error count; any other status resets both. The count that reaches its
      threshold (``consecutive_5xx``; ``consecutive_gateway``, 0 = off) is reset and ejects.
    * Local-origin failures (connect failure or timeout, the connection reset before a response,
      the request timing out): without ``split`` they count as a 503 (a timeout as a 504), a
      successful connect counts as nothing; with ``split`` they count only toward
      ``consecutive_local`` and a successful connect resets that count.
    * Ejection: enforced only while the endpoints ejected stay within ``max_ejection_percent`` of
      the cluster's endpoints (one may always be ejected); it lasts ``base_ejection_time`` times
      the endpoint's multiplier (+1 per ejection while below ``max_ejection_time +
      base_ejection_time``), at most ``max(base_ejection_time, max_ejection_time)``.
    * Every ``interval`` (on the sidecar's 1 s tick): endpoints whose time is over return, with
      their consecutive counts reset; an endpoint that has been back for an interval or more has
      its multiplier lowered by one.
    """

    def __init__(self, cluster, consecutive_5xx=5, consecutive_gateway=0, consecutive_local=5,
                 split=False, interval=10.0, base_ejection_time=30.0,
                 max_ejection_time=MAX_EJECTION_TIME, max_ejection_percent=10.0):
        OutlierDetector.__init__(self, cluster)
        self.wants_responses = True
        self.consecutive_5xx = consecutive_5xx
        self.consecutive_gateway = consecutive_gateway
        self.consecutive_local = consecutive_local
        self.split = split
        self.interval = interval
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max_ejection_time
        self.max_ejection_percent = max_ejection_percent
        self.next_interval = 0.0

    def put_result(self, ep, result):
        if result > 0:
            self._http_status(ep, result)
            return
        if self.split:
            if result == RESULT_CONNECT_SUCCESS:
                ep.cons_local = 0
                return
            ep.cons_local += 1
            if ep.cons_local == self.consecutive_local:
                self._detected(ep, EJECT_LOCAL)
            return
        if result == RESULT_CONNECT_SUCCESS:
            return  # the response's status will say how the request went
        if result == RESULT_TIMEOUT:
            self._http_status(ep, 504)
        else:
            self._http_status(ep, 503)

    def _http_status(self, ep, status):
        if status < 500 or status > 599:
            ep.cons_5xx = 0
            ep.cons_gateway = 0
            return
        if 502 <= status <= 504:
            ep.cons_gateway += 1
            if ep.cons_gateway == self.consecutive_gateway:
                self._detected(ep, EJECT_GATEWAY)
        else:
            ep.cons_gateway = 0
        ep.cons_5xx += 1
        if ep.cons_5xx == self.consecutive_5xx:
            self._detected(ep, EJECT_5XX)

    def _detected(self, ep, kind):
        """A threshold was reached: eject ``ep`` if allowed; the count is reset either way (so a
        new run of errors is detected without a success in between). True when ejected."""
        if ep.health_flags & H_OUTLIER:
            return False
        if kind == EJECT_5XX:
            ep.cons_5xx = 0
        elif kind == EJECT_GATEWAY:
            ep.cons_gateway = 0
        else:
            ep.cons_local = 0
        n = len(self.cluster.endpoints)
        active = len(self.ejected)
        if active > 0 and (n <= 0 or 100.0 * (active + 1) > self.max_ejection_percent * n):
            self.overflow += 1
            log.warning("outlier: %s of %s not ejected (%s): %d of %d endpoints are ejected "
                        "already (maxEjectionPercent %g)", ep.host, self.cluster.name,
                        EJECTION_TYPES[kind], active, n, self.max_ejection_percent)
            return False
        base = self.base_ejection_time
        if ep.eject_multiplier * base < self.max_ejection_time + base:
            ep.eject_multiplier += 1
        t = self.ejection_time(ep)
        now = _monotonic()
        ep.ejected_at = now
        ep.ejected_until = now + t
        ep.ejections += 1
        self.enforced_total += 1
        if kind == EJECT_5XX:
            self.enforced_5xx += 1
        elif kind == EJECT_GATEWAY:
            self.enforced_gateway += 1
        else:
            self.enforced_local += 1
        self.ejected.append(ep)
        log.info("outlier: ejected %s of %s for %gs (%s; ejected %d times)", ep.host,
                 self.cluster.name, t, EJECTION_TYPES[kind], ep.ejections)
        if ep.set_health_flag(H_OUTLIER, True):
            self.cluster.health_changed()
        return True

    def ejection_time(self, ep):
        """How long an ejection of ``ep`` lasts with its current multiplier."""
        t = self.base_ejection_time * ep.eject_multiplier
        cap = self.max_ejection_time
        if cap < self.base_ejection_time:
            cap = self.base_ejection_time
        return t if t < cap else cap

    def eject(self, ep, seconds):
        """Eject ``ep`` for ``seconds`` now (as the base detector; outside the thresholds)."""
        OutlierDetector.eject(self, ep, seconds)
        ep.ejected_at = _monotonic()

    def tick(self, now):
        # The interval timer: the sidecar ticks once a second (a little early is on time).
        if now + 0.05 < self.next_interval:
            return
        self.next_interval = now + self.interval
        changed = False
        if self.ejected:
            keep = []
            for ep in self.ejected:
                if now + 0.05 >= ep.ejected_until:
                    ep.cons_5xx = 0
                    ep.cons_gateway = 0
                    ep.cons_local = 0
                    ep.unejected_at = now
                    log.info("outlier: %s of %s is back after %gs", ep.host, self.cluster.name,
                             now - ep.ejected_at)
                    if ep.set_health_flag(H_OUTLIER, False):
                        changed = True
                else:
                    keep.append(ep)
            self.ejected = keep
        for ep in self.cluster.endpoints:
            if (ep.eject_multiplier > 0 and not ep.health_flags & H_OUTLIER
                    and ep.unejected_at > 0.0 and now - ep.unejected_at + 0.05 >= self.interval):
                ep.eject_multiplier -= 1
        if changed:
            self.cluster.health_changed()

    def settings(self):
        return {"consecutive_5xx": self.consecutive_5xx,
                "consecutive_gateway_failure": self.consecutive_gateway,
                "consecutive_local_origin_failure": self.consecutive_local if self.split else 0,
                "split_external_local_origin_errors": bool(self.split),
                "interval": self.interval, "base_ejection_time": self.base_ejection_time,
                "max_ejection_time": self.max_ejection_time,
                "max_ejection_percent": self.max_ejection_percent,
                "min_health_percent": self.cluster.panic_threshold}


class Resources:
    """A cluster's circuit breakers and what they count (Envoy's ResourceManager).

    Limits (Istio's DestinationRule ``connectionPool``; ``MAX_UNLIMITED`` when not set):
    ``max_connections`` (connections open or opening, ``connections``), ``max_pending``
    (requests waiting for a connection: ``ClusterStats.rq_pending_active``), ``max_requests``
    (requests in flight: ``ClusterStats.rq_active``), ``max_retries`` (retries in flight,
    ``retries``). A ``retryBudget`` (``budget_percent`` >= 0) replaces ``max_retries``, as in
    Envoy: retries in flight may be ``budget_percent`` of the active and pending requests (of the
    requests started in the last ``budget_interval`` s when that is set), never fewer than
    ``budget_min``. ``waiting``: streams queued at ``max_connections``, oldest first.
    """

    def __init__(self):
        self.max_connections = MAX_UNLIMITED
        self.max_pending = MAX_UNLIMITED
        self.max_requests = MAX_UNLIMITED
        self.max_retries = MAX_UNLIMITED
        self.budget_percent = -1.0
        self.budget_min = 3
        self.budget_interval = 0.0
        self.connections = 0
        self.retries = 0
        self.waiting = []
        # budget_interval: requests started in the current and the previous interval
        self.window_start = 0.0
        self.window_requests = 0
        self.previous_requests = 0

    def configure(self, max_connections, max_pending, max_requests, max_retries,
                  budget_percent=-1.0, budget_min=3, budget_interval=0.0):
        """New limits (a snapshot was applied); the counts carry on."""
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.max_retries = max_retries
        self.budget_percent = budget_percent
        self.budget_min = budget_min
        self.budget_interval = budget_interval

    def request_started(self):
        """Count a request for the budget's interval (only called when ``budget_interval``)."""
        now = _monotonic()
        if now - self.window_start >= self.budget_interval:
            # The window moved on: the last one becomes the previous (or nothing, if idle longer).
            if now - self.window_start < 2.0 * self.budget_interval:
                self.previous_requests = self.window_requests
            else:
                self.previous_requests = 0
            self.window_requests = 0
            self.window_start = now
        self.window_requests += 1

    def retry_allowed(self, stats):
        """May one more retry start now (the retry budget, else the maxRetries breaker)?"""
        active = self.retries
        if self.budget_percent < 0.0:
            return active < self.max_retries
        if self.budget_interval > 0.0:
            # Requests of the last interval: the current window, and the previous one's share.
            now = _monotonic()
            elapsed = now - self.window_start
            if elapsed >= 2.0 * self.budget_interval:
                requests = 0.0
            elif elapsed >= self.budget_interval:
                requests = self.window_requests * (2.0 - elapsed / self.budget_interval)
            else:
                requests = (self.window_requests
                            + self.previous_requests * (1.0 - elapsed / self.budget_interval))
        else:
            requests = stats.rq_active + stats.rq_pending_active
        allowed = int(requests * self.budget_percent / 100.0)
        if allowed < self.budget_min:
            allowed = self.budget_min
        return active < allowed

    def state(self, stats):
        """Envoy's ``circuit_breakers.default.*`` gauges and the thresholds, for admin."""
        requests = stats.rq_active
        pending = stats.rq_pending_active
        retry_max = self.max_retries
        if self.budget_percent >= 0.0:
            retry_max = int((requests + pending) * self.budget_percent / 100.0)
            if retry_max < self.budget_min:
                retry_max = self.budget_min
        return {"max_connections": self.max_connections, "max_pending_requests": self.max_pending,
                "max_requests": self.max_requests, "max_retries": self.max_retries,
                "cx_open": int(self.connections >= self.max_connections),
                "rq_pending_open": int(pending >= self.max_pending),
                "rq_open": int(requests >= self.max_requests),
                "rq_retry_open": int(self.retries >= retry_max),
                "remaining_cx": max(0, self.max_connections - self.connections),
                "remaining_pending": max(0, self.max_pending - pending),
                "remaining_rq": max(0, self.max_requests - requests),
                "remaining_retries": max(0, retry_max - self.retries),
                "connections": self.connections, "retries_active": self.retries,
                "waiting": len(self.waiting)}


class Cluster:
    """A cluster as the data plane uses it: endpoints by priority, a picker, counters, settings.

    Args:
        name: the cluster's name (``outbound|80|v1|reviews.default.svc.cluster.local``).
        stats: its ``counters.ClusterStats``.
        info: the snapshot's ``control.snapshot.Cluster`` (for admin and explain), or None.
        policy: a canonical LB policy name (control normalises Istio's spellings).
        hash_policy: the snapshot's ``HashPolicy`` for RING_HASH / MAGLEV, else None.
        passthrough: dial the request's own authority (ServiceEntry ``resolution: NONE``,
            DestinationRule ``PASSTHROUGH``): explicit mode's original-destination cluster.
        pool_for: ``pool_for(address, port) -> Pool``; the cluster manager's pool lookup.
        resources: the cluster's ``Resources`` (circuit breakers), kept across reloads.
    """

    def __init__(self, name, stats, info=None, policy="LEAST_REQUEST", hash_policy=None,
                 connect_timeout=10.0, idle_timeout=3600.0, max_idle=1024, passthrough=False,
                 default_port=80, pool_for=None, resources=None):
        self.name = name
        self.stats = stats
        self.info = info
        self.policy = policy
        self.hash_policy = hash_policy
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.passthrough = passthrough
        self.default_port = default_port
        self.pool_for = pool_for
        # An LbContext is only needed when the pick depends on the request.
        self.needs_context = passthrough or hash_policy is not None
        self.endpoints = []
        self.weights = []
        self.priorities = []
        self.group = []
        self.picker = None
        self.kind = P_NONE
        self.single = None
        self.priority = 0
        self.gen = 0
        self.original = None  # passthrough: (address, port) -> Endpoint
        self.detector = OutlierDetector(self)
        # Circuit breakers: the cluster manager passes the one kept for this cluster's name.
        self.res = resources if resources is not None else Resources()
        # Upstream connections are closed after this many requests (0: no limit), and once
        # older than this many seconds (0.0: no limit): connectionPool.http.maxRequestsPerConnection
        # and tcp.maxConnectionDuration.
        self.max_requests_per_connection = 0
        self.max_connection_duration = 0.0
        # Envoy's healthy_panic_threshold (Istio's minHealthPercent, set with outlierDetection):
        # the group balanced over is in panic (health ignored) when its healthy share is below it;
        # 0: never (nothing healthy: no endpoint). < 0, no outlierDetection: panic only when
        # nothing at all is healthy.
        self.panic_threshold = -1.0

    def set_endpoints(self, endpoints, weights, priorities=None):
        """New membership (apply, DNS re-resolution): rebuild the groups and the picker."""
        self.endpoints = list(endpoints)
        self.weights = [w if w > 0 else 1 for w in weights]
        self.priorities = list(priorities) if priorities else [0] * len(self.endpoints)
        self.rebuild()

    def health_changed(self):
        """An endpoint's eligibility changed (the detector or a health check says so)."""
        self.rebuild()

    def rebuild(self):
        # Generations are unique across clusters: an endpoint carried into a reloaded cluster
        # must never match its old cluster's picker (its slot would index the wrong table).
        _GENERATION[0] += 1
        self.gen = _GENERATION[0]
        eps = self.endpoints
        prios = self.priorities
        best = -1
        for i in range(len(eps)):
            if eps[i].healthy and (best < 0 or prios[i] < best):
                best = prios[i]
        if best < 0:
            # Nothing healthy: panic mode, as Envoy, balance over the first group regardless
            # (unless minHealthPercent is 0: Envoy's panic threshold 0 never panics).
            best = min(prios) if prios else 0
            if self.panic_threshold == 0.0:
                idx = []
            else:
                idx = [i for i in range(len(eps)) if prios[i] == best]
        else:
            idx = [i for i in range(len(eps)) if prios[i] == best and eps[i].healthy]
            if self.panic_threshold > 0.0:
                total = 0
                for i in range(len(eps)):
                    if prios[i] == best:
                        total += 1
                healthy = len(idx)
                if 100.0 * healthy < self.panic_threshold * total:
                    idx = [i for i in range(len(eps)) if prios[i] == best]
        self.priority = best
        for ep in eps:
            ep.gen = -1
        self.group = [eps[i] for i in idx]
        for slot in range(len(self.group)):
            self.group[slot].slot = slot
            self.group[slot].gen = self.gen
        self.single = self.group[0] if len(self.group) == 1 else None
        if len(self.group) > 1:
            # Names (not list positions) place endpoints on hash rings, so a key keeps its
            # endpoint when another endpoint leaves or returns.
            self.picker = _balancer.make_picker(self.policy, [self.weights[i] for i in idx],
                                                names=[eps[i].host for i in idx],
                                                **self._picker_options())
            self.kind = _KINDS.get(self.policy, P_ROUND_ROBIN)
        else:
            self.picker = None
            self.kind = P_NONE

    def _picker_options(self):
        hp = self.hash_policy
        if hp is None:
            return {}
        if self.policy == "MAGLEV" and hp.maglev_table_size:
            return {"table_size": hp.maglev_table_size}
        if self.policy == "RING_HASH" and hp.ring_size:
            return {"minimum_ring_size": hp.ring_size}
        return {}

    def choose(self, lb):
        """The endpoint for the next request (``lb``: an LbContext or None), or None when the
        cluster has none to offer. The request holds a slot on it until ``release(ep, gen)``,
        where ``gen`` is the cluster's ``gen`` read right after this call."""
        if self.passthrough:
            ep = self._original_destination(lb)
            if ep is None:
                return None
        else:
            ep = self.single
            if ep is None:
                if self.picker is None:
                    return None
                ep = self.group[self._pick_index(lb)]
            if lb is not None and lb.avoid is not None and ep in lb.avoid:
                ep = self._other(lb)
                if ep is None:
                    return None
            if self.kind == P_LEAST_REQUEST and ep.gen == self.gen:
                lr = self.picker
                lr.acquire(ep.slot)
        ep.rq_active += 1
        ep.rq_total += 1
        return ep

    def release(self, ep, gen):
        """The request that ``choose`` gave ``ep`` to (under generation ``gen``) is over, or
        moves elsewhere. A slot taken before the picker was rebuilt is not the new picker's."""
        ep.rq_active -= 1
        if self.kind == P_LEAST_REQUEST and gen == self.gen and ep.gen == gen:
            lr = self.picker
            lr.release(ep.slot)

    def _pick_index(self, lb):
        # One branch per picker class, each through a typed local, so the compiled build calls
        # the picker with a C call (cluster.pxd types rr/lr/rnd/rh/mg).
        kind = self.kind
        picker = self.picker
        if kind == P_ROUND_ROBIN:
            rr = picker
            return rr.pick()
        if kind == P_LEAST_REQUEST:
            lr = picker
            return lr.pick()
        if kind == P_RANDOM:
            rnd = picker
            return rnd.pick()
        if lb is not None and lb.has_key:
            key = lb.hash_key
        else:
            key = int(_random() * 2 ** 62)
        if kind == P_RING_HASH:
            rh = picker
            return rh.pick(key)
        mg = picker
        return mg.pick(key)

    def choose_remote(self, lb):
        """A retry under ``retryRemoteLocalities``: a healthy endpoint of the nearest priority
        (locality) beyond every one tried so far (``lb.avoid``), or None when there is none.
        Takes the request's slot as ``choose`` does."""
        avoid = lb.avoid
        if avoid is None:
            return None
        eps = self.endpoints
        prios = self.priorities
        tried = -1
        for i in range(len(eps)):
            if eps[i] in avoid and prios[i] > tried:
                tried = prios[i]
        best = -1
        for i in range(len(eps)):
            p = prios[i]
            if p > tried and eps[i].healthy and (best < 0 or p < best):
                best = p
        if best < 0:
            return None
        group = [eps[i] for i in range(len(eps)) if prios[i] == best and eps[i].healthy]
        ep = group[int(_random() * len(group)) % len(group)]
        ep.rq_active += 1
        ep.rq_total += 1
        return ep

    def _other(self, lb):
        """An endpoint not in ``lb.avoid`` (a retry), or None."""
        avoid = lb.avoid
        if self.picker is not None:
            for _ in range(4):
                ep = self.group[self._pick_index(lb)]
                if ep not in avoid:
                    return ep
        for ep in self.group:
            if ep not in avoid:
                return ep
        # The whole group is excluded: fall back to healthy endpoints of lower priorities.
        for i in range(len(self.endpoints)):
            ep = self.endpoints[i]
            if ep.healthy and ep not in avoid and self.priorities[i] != self.priority:
                return ep
        return None

    def _original_destination(self, lb):
        """The endpoint named by the request's own authority (``host[:port]``), or None."""
        if lb is None or not lb.authority:
            return None
        host = lb.authority
        name = host
        port = self.default_port
        colon = host.rfind(b":")
        if colon > 0 and b"]" not in host[colon:]:
            name = host[:colon]
            try:
                port = int(host[colon + 1:])
            except ValueError:
                return None
            if not 0 < port < 65536:
                return None
        if name.startswith(b"[") and name.endswith(b"]"):
            name = name[1:-1]
        key = (name, port)
        if self.original is None:
            self.original = {}
        ep = self.original.get(key)
        if ep is None:
            if len(self.original) >= PASSTHROUGH_MAX:
                del self.original[next(iter(self.original))]
            address = name.decode("latin-1")
            ep = Endpoint(address, port, self.pool_for(address, port))
            self.original[key] = ep
        return ep

    def all_endpoints(self):
        """Every endpoint, original-destination ones included (for admin)."""
        if self.original:
            return self.endpoints + list(self.original.values())
        return list(self.endpoints)
