# Augmenting declarations for meshproxy/_core/stream.py (single source: meshproxy._py.stream is the
# same file uncompiled). Compiled, every call below between stream, codec, upstream, cluster and
# router is a C call over typed fields.
#
# The codec contract (what a Stream calls on the downstream connection that created it). A new
# protocol implements a subclass of Codec; streams, filters and routing do not change:
#   send_response_head(s, resp, extra, k, delimited)  encode resp's head (+extra lines, minus
#       s.resp_drop) and the first k body bytes after it in the upstream's buffer
#   send_interim(s, resp)      relay a 1xx head if the client can take it
#   send_data(s, data)         response body (HTTP/1 wire framing) or tunnel bytes
#   send_local_reply(s, status, body, extra)
#   stream_done(s)             s finished; the codec may serve the next request
#   reset_stream(s)            s cannot finish cleanly (response cut): reset it
#   start_tunnel(s), tunnel_eof(s), in_tunnel()  101 upgrades
#   pause_reading(why), resume_reading(why)      flow control from the upstream side (PAUSE_*)
#   addresses()                (local, remote) "ip:port" strings for the access log
# Every send_* adds what it writes to s.bytes_tx. A codec creates Stream(codec, ctx, request, view)
# per request, calls start(head_length), feeds request_data()/request_end(), tunnel_data(), and
# downstream_eof()/downstream_reset() when the client half-closes or goes away. ``request`` must
# offer the http1.RequestParser interface (method, host, path, version, upgrade, is_head, get,
# get_all, has, request_id, forwarded_for, serialize(extra, path, drop)).
cimport cython

from meshproxy._core.cluster cimport Cluster as CCluster
from meshproxy._core.cluster cimport Endpoint as CEndpoint
from meshproxy._core.cluster cimport LbContext as CLbContext
from meshproxy._core.cluster cimport OutlierDetector as COutlierDetector
from meshproxy._core.cluster cimport Pool as CPool
from meshproxy._core.cluster cimport Resources as CResources
from meshproxy._core.counters cimport ClusterStats as CClusterStats
from meshproxy._core.http1 cimport ChunkedFramer as CChunkedFramer
from meshproxy._core.http1 cimport RequestParser as CRequestParser
from meshproxy._core.http1 cimport ResponseParser as CResponseParser
from meshproxy._core.router cimport Decision as CDecision
from meshproxy._core.router cimport RequestView as CRequestView
from meshproxy._core.router cimport RetryRule as CRetryRule
from meshproxy._core.router cimport RouteContext as CRouteContext
from meshproxy._core.timers cimport Timer as CTimer
from meshproxy._core.timers cimport TimerWheel as CTimerWheel

cdef int A_ROUTE
cdef int S_FILTERS, S_UPSTREAM, S_DONE
cdef int PAUSE_UPSTREAM_FULL, PAUSE_PENDING
cdef int RF_NONE, RF_LENGTH, RF_CHUNKED, RF_CLOSE
cdef int W_NONE, W_CONNECT, W_QUEUE
cdef int RETRY_ON_CONNECT_FAILURE, RETRY_ON_RESET
cdef Py_ssize_t MAX_REPLAY
cdef Py_ssize_t MAX_BUFFERED
cdef dict _state
cdef bint _COMPILED


cdef class Codec:
    cdef public object loop
    cdef public bytes client_addr
    cdef public bytes xf_lines
    cdef public bint write_paused
    cdef public object wheel
    cdef public object peer_principal, xfcc

    cpdef send_response_head(self, Stream s, CResponseParser resp, bytes extra, Py_ssize_t k,
                             bint delimited)
    cpdef send_interim(self, Stream s, CResponseParser resp)
    cpdef send_data(self, Stream s, object data)
    cpdef send_local_reply(self, Stream s, int status, bytes body, bytes extra)
    cpdef stream_done(self, Stream s)
    cpdef reset_stream(self, Stream s)
    cpdef start_tunnel(self, Stream s)
    cpdef tunnel_eof(self, Stream s)
    cpdef bint in_tunnel(self)
    cpdef pause_reading(self, int why)
    cpdef resume_reading(self, int why)
    cpdef tuple addresses(self)


@cython.final
cdef class ListenerContext:
    cdef public str name
    cdef public CRouteContext routes
    cdef public CClusterStats stats
    cdef public object access_log
    cdef public Py_ssize_t max_head_size, max_request_line, max_headers
    cdef public str version
    cdef public int path_normalization


@cython.final
@cython.freelist(16)
cdef class Stream:
    cdef public Codec conn
    cdef public ListenerContext ctx
    cdef public CRequestParser request
    cdef public CRequestView view
    cdef public int state
    cdef public CDecision decision
    cdef public CCluster cluster
    cdef public CEndpoint endpoint
    cdef public UpstreamConnection upstream
    cdef public list pending
    cdef public bytes req_head
    cdef public bint req_done, req_body_sent, resp_started, upgrading, peer_eof, retried
    cdef public double started
    cdef public long long bytes_rx, bytes_tx
    cdef public int status
    cdef public str flags
    cdef public object route_name
    cdef public int attempts
    cdef public CLbContext lb
    cdef public long long lb_gen
    cdef public CRetryRule rule
    cdef public list replay
    cdef public Py_ssize_t replay_size
    cdef public object retry_timer
    cdef public bint retrying
    cdef public int waiting
    cdef public object timeout_timer, try_timer
    cdef public double timeout_at, try_at, precise_at
    cdef public CTimer timer
    cdef public object precise
    cdef public list filters
    cdef public Py_ssize_t filter_index
    cdef public bint body_filters
    cdef public bytes req_extra, resp_extra
    cdef public object req_drop, resp_drop
    cdef public object path
    cdef public bytes set_cookie
    cdef public dict filter_state

    @staticmethod
    @cython.locals(s=Stream)
    cdef Stream new(Codec conn, ListenerContext ctx, CRequestParser request, CRequestView view)
    cpdef setup(self, Codec conn, ListenerContext ctx, CRequestParser request, CRequestView view)
    cpdef _defaults(self)
    @cython.locals(d=CDecision, cluster=CCluster, rc=CRouteContext, ctx=ListenerContext)
    cpdef start(self, Py_ssize_t head_length)
    cpdef _run_head_filters(self)
    cpdef bint is_done(self)
    cpdef resume(self)
    @cython.locals(d=CDecision, cluster=CCluster, lb=CLbContext, ep=CEndpoint,
                   up=UpstreamConnection, head=bytes, pending=list)
    cpdef _route(self)
    @cython.locals(p=CRequestParser, conn=Codec, extra=bytes, xff=bytes)
    cpdef bytes _serialize(self)
    @cython.locals(lb=CLbContext)
    cpdef CLbContext _lb_context(self, CCluster cluster)
    @cython.locals(up=UpstreamConnection, pending=list, size=Py_ssize_t, replay=list)
    cpdef request_data(self, object data)
    cpdef request_end(self)
    @cython.locals(d=CDecision, conn=Codec, now=double)
    cpdef _arm_timeouts(self)
    @cython.locals(conn=Codec)
    cpdef _arm_try_timer(self)
    @cython.locals(at=double, early=double, conn=Codec, wheel=CTimerWheel)
    cpdef _watch(self)
    @cython.locals(now=double)
    cpdef _on_deadline(self)
    cpdef _on_timeout(self)
    @cython.locals(up=UpstreamConnection, ep=CEndpoint)
    cpdef _on_try_timeout(self)
    @cython.locals(cluster=CCluster, up=UpstreamConnection)
    cpdef _timed_out(self)
    cpdef _body_filters(self, object data, bint end)
    @cython.locals(up=UpstreamConnection)
    cpdef tunnel_data(self, object data)
    @cython.locals(cluster=CCluster, res=CResources, stats=CClusterStats)
    cpdef _connect_or_queue(self, CEndpoint ep)
    @cython.locals(up=UpstreamConnection, cluster=CCluster)
    cpdef _connect(self, CEndpoint ep)
    cpdef dequeued(self, UpstreamConnection up)
    @cython.locals(pending=list)
    cpdef _send_pending(self, UpstreamConnection up)
    cpdef _stop_waiting(self)
    cpdef _overflow(self)
    cpdef bint _retry(self, bint keep_pending)
    @cython.locals(rule=CRetryRule, cluster=CCluster)
    cpdef bint _may_retry(self, bint keep_pending)
    @cython.locals(rule=CRetryRule, cluster=CCluster, ep=CEndpoint, lb=CLbContext, cap=double,
                   pending=list)
    cpdef _start_retry(self, bint keep_pending)
    @cython.locals(cluster=CCluster, lb=CLbContext, ep=CEndpoint, up=UpstreamConnection,
                   pending=list)
    cpdef _retry_now(self)
    cpdef on_upstream_ready(self, UpstreamConnection up)
    @cython.locals(ep=CEndpoint, cluster=CCluster, lb=CLbContext, other=CEndpoint)
    cpdef on_upstream_failed(self, UpstreamConnection up, bint timed_out)
    cpdef on_upstream_lost(self, UpstreamConnection up, bint got_response_bytes)
    cpdef on_upstream_bad_response(self, UpstreamConnection up, object err)
    cpdef on_interim(self, UpstreamConnection up, CResponseParser resp)
    @cython.locals(extra=bytes, rule=CRetryRule, detector=COutlierDetector)
    cpdef on_response_head(self, UpstreamConnection up, CResponseParser resp, Py_ssize_t k,
                           bint delimited)
    cpdef on_upgrade(self, UpstreamConnection up, bytes head)
    cpdef on_response_data(self, object data)
    @cython.locals(cluster=CCluster, detector=COutlierDetector, idle_timeout=double)
    cpdef on_response_end(self, UpstreamConnection up, int status, bint reusable)
    cpdef bint on_tunnel_eof(self, UpstreamConnection up)
    @cython.locals(up=UpstreamConnection)
    cpdef pause_upstream(self)
    @cython.locals(up=UpstreamConnection)
    cpdef resume_upstream(self)
    @cython.locals(up=UpstreamConnection)
    cpdef local_reply(self, int status, bytes body, str flags, bytes extra)
    @cython.locals(cluster=CCluster, ep=CEndpoint, dur=double, us="long long", ctx=ListenerContext)
    cpdef finish(self, int status)


@cython.final
cdef class UpstreamConnection:
    cdef public CPool pool
    cdef public CClusterStats stats
    cdef public object transport
    cdef public object tx
    cdef public Stream stream
    cdef public CResponseParser parser
    cdef public CChunkedFramer framer
    cdef public object buf
    cdef public Py_ssize_t pos
    cdef public bint closed, reused, got_bytes, in_head, keep_alive, tunnel, body_done, peer_eof
    cdef public double idle_deadline
    cdef public CResources res
    cdef public Py_ssize_t requests
    cdef public double created
    cdef public bint expiring
    cdef public int framing
    cdef public long long remaining
    cdef public int status
    cdef public int paused

    cpdef attach(self, Stream s, bint reused)
    @cython.locals(res=CResources, waiting=list, s=Stream)
    cpdef _free_slot(self)
    cpdef detach(self)
    cpdef close(self)
    cpdef pause(self, int why)
    cpdef resume(self, int why)
    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t, n=Py_ssize_t, status=int, p=CResponseParser)
    cpdef _process(self, Stream s)
    @cython.locals(status=int, k=Py_ssize_t, done=bint, framing=int, head=bytes,
                   framer=CChunkedFramer)
    cpdef _on_head(self, Stream s, CResponseParser p, object buf, Py_ssize_t pos, Py_ssize_t end)
    @cython.locals(framing=int, k=Py_ssize_t)
    cpdef Py_ssize_t _take(self, object buf, Py_ssize_t pos, Py_ssize_t end) except -1
    @cython.locals(k=Py_ssize_t, done=bint)
    cpdef _body(self, Stream s, object buf, Py_ssize_t pos, Py_ssize_t end)


cdef double DEADLINE_MARGIN


@cython.locals(idle_timeout=double, limit=Py_ssize_t, left=double)
cdef double _keep_for(CCluster cluster, UpstreamConnection up)
@cython.locals(pool=CPool, waiting=list, s=Stream, i=Py_ssize_t)
cdef _hand_over(CResources res, UpstreamConnection up)
@cython.locals(ep=CEndpoint, p=CPool, up=UpstreamConnection)
cdef _reclaim_idle(CCluster cluster, CPool pool)
