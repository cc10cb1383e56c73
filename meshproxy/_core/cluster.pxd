# Augmenting declarations for meshproxy/_core/cluster.py (single source: meshproxy._py.cluster is
# the same file uncompiled). Compiled, a pick is C calls over typed fields and the C pickers.
#
# Contract:
#   Cluster.choose(lb) -> Endpoint or None. Takes the request's slot on the endpoint (rq_active,
#     least-request count); every successful choose is paired with exactly one release(ep, gen),
#     gen being cluster.gen read right after choose.
#   Cluster.release(ep, gen): gives the slot back; a slot taken under an older picker (the cluster
#     rebuilt since) only lowers rq_active.
#   OutlierDetector.put_result(ep, result): result > 0 is an HTTP status, < 0 a RESULT_* code.
#     Called for connection outcomes always, for response statuses only when wants_responses.
#     OutlierDetection (a DestinationRule's outlierDetection) overrides put_result/eject/tick in
#     the vtable: a per-response put_result is a C call and a few int compares on the Endpoint.
#   Pool.acquire() -> an idle UpstreamConnection (typed object here: stream.pxd owns the type).
cimport cython

from meshproxy._core.balancer cimport LeastRequestPicker as CLeastRequestPicker
from meshproxy._core.balancer cimport MaglevPicker as CMaglevPicker
from meshproxy._core.balancer cimport RandomPicker as CRandomPicker
from meshproxy._core.balancer cimport RingHashPicker as CRingHashPicker
from meshproxy._core.balancer cimport RoundRobinPicker as CRoundRobinPicker
from meshproxy._core.counters cimport ClusterStats as CClusterStats

cdef int P_NONE, P_ROUND_ROBIN, P_RANDOM, P_LEAST_REQUEST, P_RING_HASH, P_MAGLEV
cdef int H_OUTLIER, H_ACTIVE_HC
cdef int EJECT_5XX, EJECT_GATEWAY, EJECT_LOCAL


@cython.final
cdef class Pool:
    cdef public tuple key
    cdef public str address
    cdef public int port
    cdef public object transport, protocol
    cdef public str host
    cdef public list idle
    cdef public Py_ssize_t cx_active, cx_total
    cdef public object ssl
    cdef public object identity

    cpdef object acquire(self)
    cpdef release(self, object up, Py_ssize_t max_idle, double idle_timeout)


@cython.final
cdef class Endpoint:
    cdef public str address
    cdef public int port
    cdef public str host
    cdef public Pool pool
    cdef public Py_ssize_t rq_active, rq_total
    cdef public int health_flags
    cdef public bint healthy
    cdef public double ejected_until
    cdef public long ejections
    # outlier detection state (OutlierDetection): consecutive counters, the ejection-time
    # multiplier (Envoy's eject time backoff), when the last ejection / un-ejection happened
    cdef public int cons_5xx, cons_gateway, cons_local
    cdef public int eject_multiplier
    cdef public double ejected_at, unejected_at
    cdef public Py_ssize_t slot
    cdef public long long gen

    cpdef bint set_health_flag(self, int flag, bint on)


@cython.final
cdef class LbContext:
    cdef public unsigned long long hash_key
    cdef public bint has_key
    cdef public list avoid
    cdef public bytes authority
    cdef public bytes source

    cpdef reset(self)


cdef class OutlierDetector:
    cdef public object cluster
    cdef public bint wants_responses
    cdef public list ejected
    cdef public long long enforced_total, enforced_5xx, enforced_gateway, enforced_local
    cdef public long long enforced_connect, overflow

    cpdef put_result(self, Endpoint ep, long result)
    cpdef eject(self, Endpoint ep, double seconds)
    cpdef tick(self, double now)


cdef class OutlierDetection(OutlierDetector):
    cdef public int consecutive_5xx, consecutive_gateway, consecutive_local
    cdef public bint split
    cdef public double interval, base_ejection_time, max_ejection_time, max_ejection_percent
    cdef public double next_interval

    cpdef put_result(self, Endpoint ep, long result)
    cpdef eject(self, Endpoint ep, double seconds)
    cpdef tick(self, double now)
    cpdef _http_status(self, Endpoint ep, long status)
    @cython.locals(n=Py_ssize_t, active=Py_ssize_t, t=double, cap=double)
    cpdef bint _detected(self, Endpoint ep, int kind)
    cpdef double ejection_time(self, Endpoint ep)


@cython.final
cdef class Resources:
    cdef public long long max_connections, max_pending, max_requests, max_retries
    cdef public double budget_percent, budget_interval
    cdef public long long budget_min
    cdef public long long connections, retries
    cdef public list waiting
    cdef public double window_start
    cdef public long long window_requests, previous_requests

    @cython.locals(now=double)
    cpdef request_started(self)
    @cython.locals(active="long long", allowed="long long", requests=double, now=double,
                   elapsed=double)
    cpdef bint retry_allowed(self, CClusterStats stats)


@cython.final
cdef class Cluster:
    cdef public str name
    cdef public CClusterStats stats
    cdef public object info
    cdef public str policy
    cdef public object hash_policy
    cdef public double connect_timeout, idle_timeout
    cdef public Py_ssize_t max_idle
    cdef public bint passthrough, needs_context
    cdef public int default_port
    cdef public object pool_for
    cdef public list endpoints, weights, priorities, group
    cdef public object picker
    cdef public int kind
    cdef public Endpoint single
    cdef public int priority
    cdef public long long gen
    cdef public dict original
    cdef public OutlierDetector detector
    cdef public Resources res
    cdef public Py_ssize_t max_requests_per_connection
    cdef public double max_connection_duration
    cdef public double panic_threshold

    @cython.locals(ep=Endpoint, lr=CLeastRequestPicker)
    cpdef Endpoint choose(self, LbContext lb)
    @cython.locals(lr=CLeastRequestPicker)
    cpdef release(self, Endpoint ep, long long gen)
    @cython.locals(kind=int, key="unsigned long long", rr=CRoundRobinPicker, lr=CLeastRequestPicker,
                   rnd=CRandomPicker, rh=CRingHashPicker, mg=CMaglevPicker)
    cpdef Py_ssize_t _pick_index(self, LbContext lb) except -1
    @cython.locals(ep=Endpoint, tried=int, best=int, p=int, group=list)
    cpdef Endpoint choose_remote(self, LbContext lb)
    @cython.locals(ep=Endpoint)
    cpdef Endpoint _other(self, LbContext lb)
    @cython.locals(ep=Endpoint, port=int, colon=Py_ssize_t, host=bytes, name=bytes)
    cpdef Endpoint _original_destination(self, LbContext lb)
    cpdef health_changed(self)
    @cython.locals(healthy=Py_ssize_t, total=Py_ssize_t)
    cpdef rebuild(self)
