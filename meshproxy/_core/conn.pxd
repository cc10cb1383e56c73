# Augmenting declarations for meshproxy/_core/conn.py (a link to meshproxy/_py/conn.py): with
# them Cython compiles the engine's classes to final cdef classes with C fields, and the methods
# below to C calls (cpdef: also callable from Python, as the pure twin and the tests do).
cimport cython

from meshproxy._core.balancer cimport LeastRequestPicker as CLeastRequestPicker
from meshproxy._core.balancer cimport MaglevPicker as CMaglevPicker
from meshproxy._core.balancer cimport RandomPicker as CRandomPicker
from meshproxy._core.balancer cimport RingHashPicker as CRingHashPicker
from meshproxy._core.balancer cimport RoundRobinPicker as CRoundRobinPicker
from meshproxy._core.counters cimport ClusterStats as CClusterStats
from meshproxy._core.http1 cimport ChunkedFramer as CChunkedFramer
from meshproxy._core.http1 cimport RequestParser as CRequestParser
from meshproxy._core.http1 cimport ResponseParser as CResponseParser
from meshproxy._core.router cimport RequestView as CRequestView
from meshproxy._core.router cimport RouteEntry as CRouteEntry

cdef int ST_HEAD, ST_BODY, ST_WAIT, ST_TUNNEL, ST_CLOSED
cdef int PAUSE_UPSTREAM_FULL, PAUSE_PIPELINE, PAUSE_CONNECTING
cdef int RF_NONE, RF_LENGTH, RF_CHUNKED, RF_CLOSE
cdef int P_NONE, P_ROUND_ROBIN, P_RANDOM, P_LEAST_REQUEST, P_RING_HASH, P_MAGLEV
cdef Py_ssize_t MAX_BUFFERED
cdef dict _state


@cython.final
cdef class Endpoint:
    cdef public str address
    cdef public int port
    cdef public str host
    cdef public list idle
    cdef public Py_ssize_t rq_active, rq_total, cx_active, cx_total, max_idle
    cdef public double idle_timeout, connect_timeout
    cdef public str health
    cdef public bint healthy
    cdef public double unhealthy_until

    cpdef UpstreamProtocol acquire(self)
    cpdef release(self, UpstreamProtocol up)


@cython.final
cdef class Cluster:
    cdef public str name
    cdef public list endpoints
    cdef public CClusterStats stats
    cdef public object info
    cdef public object picker
    cdef public list weights, priorities, group
    cdef public str policy
    cdef public object hash_policy
    cdef public bint least
    cdef public long epoch
    cdef public Endpoint single
    cdef public int priority
    cdef public bint passthrough
    cdef public int default_port

    cdef public int kind
    @cython.locals(single=Endpoint, i=Py_ssize_t, kind=int, rr=CRoundRobinPicker,
                   lr=CLeastRequestPicker, rnd=CRandomPicker, rh=CRingHashPicker,
                   mg=CMaglevPicker, key=object)
    cpdef Endpoint pick(self, object ds)


@cython.final
cdef class ProxyContext:
    cdef public str name
    cdef public dict routes
    cdef public Cluster default
    cdef public CClusterStats stats
    cdef public object access_log
    cdef public Py_ssize_t max_head_size, max_request_line, max_headers
    cdef public str version
    cdef public dict route_names
    cdef public dict tables
    cdef public list wildcards


@cython.final
cdef class Listener:
    cdef public ProxyContext ctx
    cdef public object loop
    cdef public set connections
    cdef public bint draining
    cdef public object server


@cython.final
cdef class DownstreamProtocol:
    cdef public Listener listener
    cdef public CRequestParser parser
    cdef public CChunkedFramer framer
    cdef public object transport
    cdef public object tx
    cdef public object buf
    cdef public Py_ssize_t pos
    cdef public int state
    cdef public int paused
    cdef public bint write_paused
    cdef public bytes client_addr
    cdef public bytes xf_lines
    cdef public object peer
    cdef public object sockname
    cdef public int local_port
    cdef public CRequestView view
    cdef public tuple addr_strs
    cdef public str route_name
    cdef public ProxyContext ctx
    cdef public Cluster cluster
    cdef public Endpoint endpoint
    cdef public UpstreamProtocol upstream
    cdef public list pending
    cdef public bytes req_head
    cdef public long long req_remaining
    cdef public bint req_done, req_body_sent, keep_alive, resp_started, retried, upgrading
    cdef public double start
    cdef public long long bytes_rx, bytes_tx
    cdef public str flags
    cdef public int last_status
    cdef public bint peer_eof
    cdef public object resp_edit
    cdef public list mirrors
    cdef public CLeastRequestPicker lr_picker
    cdef public Py_ssize_t lr_index
    cdef public bytes set_cookie
    cdef public object delay_handle
    cdef public int attempts

    @cython.locals(state=int, pos=Py_ssize_t, end=Py_ssize_t, n=Py_ssize_t)
    cpdef _process(self)
    @cython.locals(ctx=ProxyContext, cluster=Cluster, ep=Endpoint, up=UpstreamProtocol,
                   has_body=bint, extra=bytes, head=bytes, p=CRequestParser,
                   framer=CChunkedFramer, delay=double, req=CRequestView, entry=CRouteEntry,
                   dest=tuple)
    cpdef _on_head(self)
    @cython.locals(k=Py_ssize_t, done=bint, framer=CChunkedFramer)
    cpdef _forward_request_body(self, object buf, Py_ssize_t pos, Py_ssize_t end)
    @cython.locals(up=UpstreamProtocol, size=Py_ssize_t)
    cpdef _send_up(self, object data)
    @cython.locals(up=UpstreamProtocol)
    cpdef _connect(self, Endpoint ep)
    cpdef upstream_ready(self, UpstreamProtocol up)
    cpdef upstream_failed(self, UpstreamProtocol up, object reason)
    cpdef upstream_lost(self, UpstreamProtocol up, bint got_response_bytes)
    cpdef upstream_bad_response(self, UpstreamProtocol up, object err)
    cpdef bytes response_head(self, UpstreamProtocol up, bint head_extra_ok)
    cpdef write(self, object data)
    cpdef start_tunnel(self, UpstreamProtocol up)
    @cython.locals(ep=Endpoint)
    cpdef response_done(self, UpstreamProtocol up, int status, bint reusable)
    cpdef _continue(self)
    @cython.locals(lr=CLeastRequestPicker)
    cpdef release_lr(self)
    @cython.locals(cluster=Cluster, ctx=ProxyContext, ep=Endpoint, dur=double, us="long long")
    cpdef _end_request(self, int status)
    cpdef _local(self, int status, bytes body, str flags, bint has_unread_body, bytes extra=*)
    cpdef _pause(self, int why)
    cpdef _resume(self, int why)
    @cython.locals(up=UpstreamProtocol)
    cpdef _close(self)


@cython.final
cdef class UpstreamProtocol:
    cdef public Endpoint endpoint
    cdef public object loop
    cdef public CClusterStats stats
    cdef public object transport
    cdef public object tx
    cdef public DownstreamProtocol downstream
    cdef public CResponseParser parser
    cdef public CChunkedFramer framer
    cdef public object buf
    cdef public Py_ssize_t pos
    cdef public bint closed, reused, got_bytes, in_head, keep_alive, tunnel, body_done, peer_eof
    cdef public double idle_since
    cdef public int framing
    cdef public long long remaining
    cdef public int status
    cdef public int paused

    cpdef attach(self, DownstreamProtocol ds, bint reused)
    cpdef detach(self)
    cpdef close(self)
    cpdef pause(self, int why)
    cpdef resume(self, int why)
    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t, n=Py_ssize_t, status=int, p=CResponseParser)
    cpdef _process(self, DownstreamProtocol ds)
    @cython.locals(status=int, k=Py_ssize_t, done=bint, framing=int, extra=bytes, head=bytes,
                   framer=CChunkedFramer)
    cpdef _on_head(self, DownstreamProtocol ds, CResponseParser p, object buf, Py_ssize_t pos,
                   Py_ssize_t end)
    @cython.locals(framing=int, k=Py_ssize_t)
    cpdef Py_ssize_t _take(self, object buf, Py_ssize_t pos, Py_ssize_t end) except -1
    @cython.locals(k=Py_ssize_t, done=bint)
    cpdef _body(self, DownstreamProtocol ds, object buf, Py_ssize_t pos, Py_ssize_t end)
