"""Streams: one request's life through the sidecar, and the upstream connections it uses.

One source, two builds: Cython compiles this file with ``stream.pxd`` (final cdef classes, C
calls); ``meshproxy._py.stream`` is the same file uncompiled. Keep it plain Python.

Theory of operation (Envoy's shape: connection manager, active stream, router, pool)
---------------------------------------------------------------------------------------
A downstream *codec* (``http1conn.Http1Connection`` today; an HTTP/2 codec creates many streams on
one connection) parses a request head and creates a ``Stream``. The stream owns everything about
that request and nothing about the connection:

    start()  ── routes.decide() ──► local reply (no route, redirect, direct response, 405, NC)
        │
        ├── request-head filters (per route; none configured = no call at all)
        │      CONTINUE: next filter · STOP: wait for resume() · a filter may send a local reply
        ▼
    _route() ── cluster.choose(LbContext) ──► endpoint ── pool.acquire() or connect
        │
        ├── request body: codec → request_data() → [body filters] → upstream (or ``pending``)
        ▼
    upstream connection parses the response → on_response_head / on_response_data / end
        │                                      (each handed to the codec to encode)
        ▼
    finish(): counters, outlier result, access log, filters' on_complete → codec.stream_done()

An ``UpstreamConnection`` is attached to exactly one stream while it carries that stream's request
and calls only the stream's ``on_*`` methods; it never sees the downstream connection. When the
response ends it goes back to its ``Pool`` (keyed by address, port, transport and protocol) or is
closed.

The codec contract (what a stream calls on ``Codec``; see ``stream.pxd``) is the seam a new
protocol implements: encode a response head / interim head / body bytes / local reply for this
stream, say when a stream is done or must be reset, pause and resume reading, and carry the
client's address. Bodies cross the seam in HTTP/1 wire framing (an HTTP/1 to HTTP/1 hop forwards
them without re-encoding); a codec that frames differently de-frames at its edge.

Backpressure: when the client's transport is full the stream pauses its upstream's reading; when
the upstream's transport is full it asks the codec to pause reading (``PAUSE_*`` reasons, resumed
when none is left).
"""
import asyncio
import time
from http import HTTPStatus
from random import random as _random
from time import monotonic as _monotonic

# Relative imports: compiled, these are the compiled siblings; as meshproxy._py.stream, the twins.
from .balancer import hash_key as _hash_bytes
from .cluster import (RESULT_CONNECT_FAILED, RESULT_CONNECT_SUCCESS, RESULT_CONNECT_TIMEOUT,
                      RESULT_RESET, RESULT_TIMEOUT, LbContext)
from .http1 import ChunkedFramer, ResponseParser, request_id
from .router import A_ROUTE, RETRY_ON_CONNECT_FAILURE, RETRY_ON_RESET
from .timers import Timer

from meshproxy.errors import ProtocolError

#: True in the compiled build (this file compiled as meshproxy._core.stream).
_COMPILED = __name__.startswith("meshproxy._core")

# What a filter hook answers.
CONTINUE = 0
STOP = 1

# Stream states.
S_FILTERS = 0  # request-head filters are running (or one of them stopped the stream)
S_UPSTREAM = 1  # routed: connecting, forwarding, waiting for or relaying the response
S_DONE = 2

# Why the codec's reading is paused (bits; resumed when none is left). Bits from 16 up are the
# codec's own reasons.
PAUSE_UPSTREAM_FULL = 1  # the upstream transport's write buffer is over its high-water mark
PAUSE_PENDING = 4  # too many request bytes held while connecting or while filters stop

# Waiting for a connection (``Stream.waiting``): a pending request in Envoy's terms, counted in
# ``ClusterStats.rq_pending_active`` against http1MaxPendingRequests.
W_NONE = 0
W_CONNECT = 1  # its new connection is being established
W_QUEUE = 2  # queued in ``Resources.waiting``: the cluster is at maxConnections

#: How long before a request deadline its loop timer is armed, beyond the timing wheel's
#: resolution (the wheel fires up to one resolution late, never early).
DEADLINE_MARGIN = 0.05

# Response framing.
RF_NONE = 0  # no body (HEAD, 1xx, 204, 304)
RF_LENGTH = 1
RF_CHUNKED = 2
RF_CLOSE = 3  # delimited by the upstream closing the connection

MAX_BUFFERED = 65536  # request bytes held (connecting, filters stopped) before reading pauses
MAX_REPLAY = 65536  # request body kept for a retry after it was sent; a larger one is not retried

REASONS = {int(st): st.phrase.encode("ascii") for st in HTTPStatus}

# Envoy's local-reply bodies, so clients and scripts that know Envoy's answers recognise ours.
BODY_NO_HEALTHY = b"no healthy upstream"
BODY_CONNECT_FAILURE = (b"upstream connect error or disconnect/reset before headers. "
                        b"reset reason: connection failure")
BODY_CONNECTION_TERMINATION = (b"upstream connect error or disconnect/reset before headers. "
                               b"reset reason: connection termination")
BODY_PROTOCOL_ERROR = b"upstream sent an invalid HTTP response"
BODY_TIMEOUT = b"upstream request timeout"
BODY_OVERFLOW = (b"upstream connect error or disconnect/reset before headers. "
                 b"reset reason: overflow")
XFCC_DROP = (b"x-forwarded-client-cert",)
#: Envoy's header on a local reply caused by a circuit breaker.
OVERLOADED = b"x-envoy-overloaded: true\r\n"

_state = {"date": b""}


def set_date(http_date):
    """Set the ``date`` header value used in local replies (the worker ticks it every second)."""
    _state["date"] = http_date


def local_reply(status, body, close, extra=b""):
    """A complete HTTP/1.1 response made by the sidecar itself (errors, no route)."""
    reason = REASONS.get(status, b"Unknown")
    date = _state["date"]
    head = [b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-length: %d\r\n" % len(body),
            b"content-type: text/plain\r\n" if body else b"",
            b"date: " + date + b"\r\n" if date else b"",
            b"server: meshproxy\r\n",
            extra,
            b"connection: close\r\n\r\n" if close else b"\r\n",
            body]
    return b"".join(head)


class Codec:
    """The downstream side of a stream: what a protocol's connection must provide.

    A codec parses requests from its connection, creates a ``Stream`` per request (``Stream(codec,
    ctx, request, view)`` then ``start()``), feeds it the request body (``request_data``,
    ``request_end``) and tells it when the client goes away (``downstream_reset``). In return the
    stream calls the methods below. ``client_addr`` (bytes) and ``xf_lines`` (the
    ``x-forwarded-*`` lines for this client) are set by the codec when the connection opens;
    ``write_paused`` tells whether the client's transport is over its high-water mark. Every
    ``send_*`` method adds what it writes to ``s.bytes_tx``.
    """

    def __init__(self, loop):
        self.loop = loop
        self.client_addr = b""
        self.xf_lines = b""
        self.write_paused = False
        self.wheel = None  # the listener's timers.TimerWheel (None: request timeouts use loop timers)
        self.peer_principal = None  # the client's SPIFFE ID (mutual TLS), else None
        self.xfcc = None  # its x-forwarded-client-cert line (mutual TLS), else None

    def send_response_head(self, s, resp, extra, k, delimited):
        """Encode the upstream's response head ``resp`` (plus ``extra`` header lines, minus
        ``s.resp_drop``) with the first ``k`` body bytes that arrived with it. ``delimited``:
        the response body has its own framing (not ended by the upstream closing)."""
        raise NotImplementedError

    def send_interim(self, s, resp):
        """Relay an interim (1xx) response head, if the client can take one."""
        raise NotImplementedError

    def send_data(self, s, data):
        """Response body bytes (HTTP/1 wire framing) or tunnelled bytes for the client."""
        raise NotImplementedError

    def send_local_reply(self, s, status, body, extra):
        """Answer ``s`` with a response made here."""
        raise NotImplementedError

    def stream_done(self, s):
        """``s`` has finished (response complete, or answered locally)."""
        raise NotImplementedError

    def reset_stream(self, s):
        """``s`` cannot be completed cleanly (the response was cut): reset it."""
        raise NotImplementedError

    def start_tunnel(self, s):
        """A 101 response was relayed: bytes now flow both ways unparsed."""
        raise NotImplementedError

    def tunnel_eof(self, s):
        """The upstream half-closed the tunnel: half-close the client side."""
        raise NotImplementedError

    def pause_reading(self, why):
        raise NotImplementedError

    def resume_reading(self, why):
        raise NotImplementedError

    def in_tunnel(self):
        """True once the connection carries an upgraded (101) tunnel."""
        raise NotImplementedError

    def addresses(self):
        """``(local, remote)`` as ``"ip:port"`` strings (for the access log)."""
        raise NotImplementedError


class ListenerContext:
    """Everything a listener serves with; replaced whole on reload.

    ``routes`` is the listener's ``router.RouteContext`` (what ``decide`` reads); ``stats`` the
    listener's counters; the limits are the codec's; ``path_normalization`` the codec's
    ``pathnorm`` mode (BASE by default).
    """

    def __init__(self, name, routes, stats, access_log=None, max_head_size=61440,
                 max_request_line=16384, max_headers=100, version="", path_normalization=1):
        self.name = name
        self.routes = routes
        self.stats = stats
        self.access_log = access_log
        self.max_head_size = max_head_size
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.version = version
        self.path_normalization = path_normalization


class Stream:
    """One request: its route decision, filters, endpoint, upstream, timings and flags.

    A codec makes one with ``Stream.new(conn, ctx, request, view)`` (no Python-level constructor
    call on the hot path) and then calls ``start(head_length)``.
    """

    def __init__(self, conn, ctx, request, view):
        self.setup(conn, ctx, request, view)

    @staticmethod
    def new(conn, ctx, request, view):
        s = Stream.__new__(Stream)
        s.setup(conn, ctx, request, view)
        return s

    def setup(self, conn, ctx, request, view):
        self.conn = conn
        self.ctx = ctx
        self.request = request  # the codec's parsed request (HTTP/1: http1.RequestParser)
        self.view = view  # router.RequestView over ``request``
        self.flags = ""
        self.req_extra = b""
        self.resp_extra = b""
        if not _COMPILED:
            self._defaults()

    def _defaults(self):
        """Every other field's start value. A compiled stream is made zeroed (None, 0, False)
        by its type, so only the pure twin runs this."""
        self.state = S_FILTERS
        self.decision = None
        self.cluster = None
        self.endpoint = None
        self.upstream = None
        self.pending = None
        self.req_head = None
        self.req_done = False
        self.req_body_sent = False
        self.resp_started = False
        self.upgrading = False
        self.peer_eof = False  # tunnel: the client has sent EOF
        self.started = 0.0
        self.bytes_rx = 0
        self.bytes_tx = 0
        self.status = 0
        self.route_name = None
        self.attempts = 0
        self.retried = False
        self.lb = None
        self.lb_gen = 0
        self.rule = None
        self.replay = None
        self.replay_size = 0
        self.retry_timer = None
        self.retrying = False
        self.waiting = W_NONE
        self.timeout_timer = None
        self.try_timer = None
        self.timeout_at = 0.0
        self.try_at = 0.0
        self.timer = None
        self.precise = None
        self.precise_at = 0.0
        self.filters = None
        self.filter_index = 0
        self.body_filters = False
        self.req_drop = None
        self.resp_drop = None
        self.path = None
        self.set_cookie = None
        self.filter_state = None

    # -- request side ------------------------------------------------------------------------

    def start(self, head_length):
        """The request head is parsed: decide, run the request-head filters, route."""
        ctx = self.ctx
        self.started = _monotonic()
        self.bytes_rx = head_length
        ctx.stats.rq_start()
        req = self.request
        self.upgrading = req.upgrade is not None
        rc = ctx.routes
        d = rc.decide(self.view)
        self.decision = d
        self.route_name = d.route_name
        factories = d.filters
        if d.action == A_ROUTE:
            cluster = d.cluster
            self.cluster = cluster
            if d.path is not None:  # a rewrite; else the codec's (normalised) path, or None
                self.path = d.path
            self.rule = d.retry
            if d.retry.replay:
                self.replay = []
            cluster.stats.rq_start()
            if cluster.res.budget_interval > 0.0:
                cluster.res.request_started()
        elif factories is None:
            self.local_reply(d.status, d.body, d.flags, d.extra)
            return
        if factories is not None:
            # The route's filters run before the router acts (Envoy's order: a fault abort wins
            # over a direct response).
            shared = d.shared_filters
            self.filters = shared if shared is not None else [f.create() for f in factories]
            self.body_filters = d.body_filters
            self._run_head_filters()
            return
        self._route()

    def _run_head_filters(self):
        filters = self.filters
        while self.filter_index < len(filters):
            f = filters[self.filter_index]
            self.filter_index += 1
            if f.on_request_head(self) != CONTINUE or self.state == S_DONE:
                return
        self._route()

    def is_done(self):
        return self.state == S_DONE

    def resume(self):
        """An asynchronous filter that answered STOP lets the stream go on."""
        if self.state == S_FILTERS:
            self._run_head_filters()

    def _route(self):
        d = self.decision
        if d.action != A_ROUTE:
            self.local_reply(d.status, d.body, d.flags, d.extra)
            return
        cluster = self.cluster
        if cluster.stats.rq_active > cluster.res.max_requests:
            self._overflow()  # http2MaxRequests
            return
        lb = None
        if cluster.needs_context:
            lb = self._lb_context(cluster)
        ep = cluster.choose(lb)
        if ep is None:
            self.local_reply(503, BODY_NO_HEALTHY, "UH", b"")
            return
        self.lb_gen = cluster.gen
        self.endpoint = ep
        head = self._serialize()
        self.req_head = head
        self.state = S_UPSTREAM
        if self.req_done:
            self._arm_timeouts()
        pending = self.pending
        if pending and self.body_filters:
            # Body that arrived while a filter held the stream: the body filters see it now,
            # after their own head hook.
            for chunk in pending:
                self._body_filters(chunk, False)
                if self.state == S_DONE:
                    return
            if self.req_done:
                self._body_filters(b"", True)
                if self.state == S_DONE:
                    return
        up = ep.pool.acquire()
        if up is not None:
            up.attach(self, True)
            self.upstream = up
            if self.conn.write_paused:
                up.pause(1)
            if pending:
                self.pending = None
                pending.insert(0, head)
                up.tx(b"".join(pending))
                self.conn.resume_reading(PAUSE_PENDING)
            else:
                up.tx(head)
        else:
            if pending:
                pending.insert(0, head)
            else:
                self.pending = [head]
            self._connect_or_queue(ep)

    def _serialize(self):
        """The request head for the upstream: the client's head spliced, hop-by-hop headers
        dropped, ``x-forwarded-*``, ``x-request-id`` and the filters' edits added."""
        p = self.request
        conn = self.conn
        xff = p.forwarded_for
        if xff is None:
            extra = conn.xf_lines
        else:
            extra = (b"x-forwarded-proto: http\r\nx-forwarded-for: " + xff + b", "
                     + conn.client_addr + b"\r\n")
        if p.request_id is None:
            extra = extra + b"x-request-id: " + request_id() + b"\r\n"
        if p.version == 0 and p.upgrade is None:
            # Keep the upstream connection reusable for HTTP/1.0 clients too.
            extra = extra + b"connection: keep-alive\r\n"
        drop = self.req_drop
        if conn.xfcc is not None:
            # A mutual-TLS client: Envoy's x-forwarded-client-cert, the client's own replaced.
            extra = extra + conn.xfcc
            drop = XFCC_DROP if drop is None else tuple(drop) + XFCC_DROP
        if drop is None:
            return p.serialize(extra + self.req_extra, self.path)
        return p.serialize(extra + self.req_extra, self.path, drop)

    def _lb_context(self, cluster):
        lb = self.lb
        if lb is None:
            lb = self.lb = LbContext()
            lb.source = self.conn.client_addr
        lb.authority = self.request.host
        hp = cluster.hash_policy
        if hp is not None:
            key = self._hash_key(hp)
            lb.has_key = key is not None
            if key is not None:
                lb.hash_key = key
        return lb

    def _hash_key(self, hp):
        """The consistent-hash key of this request for a HashPolicy (None: no key)."""
        p = self.request
        if hp.header:
            v = p.get_all(hp.header.encode("latin-1"))
        elif hp.cookie:
            v = _cookie(p.get_all(b"cookie"), hp.cookie.encode("latin-1"))
            if v is None:
                # Envoy generates the cookie when absent and sets it on the response.
                v = request_id()
                self.set_cookie = b"set-cookie: %s=%s%s%s\r\n" % (
                    hp.cookie.encode("latin-1"), v,
                    (b"; Max-Age=%d" % int(hp.cookie_ttl)) if hp.cookie_ttl else b"",
                    (b"; Path=" + hp.cookie_path.encode("latin-1")) if hp.cookie_path else b"")
        elif hp.source_ip:
            v = self.conn.client_addr
        elif hp.query_param:
            v = self.view.query(hp.query_param.encode("utf-8"))
        else:
            v = None
        if v is None:
            return None
        return _hash_bytes(v)

    def request_data(self, data):
        """Request body bytes from the codec (in HTTP/1 wire framing)."""
        if self.state == S_DONE:
            return
        self.bytes_rx += len(data)
        self.req_body_sent = True
        if self.body_filters and self.state == S_UPSTREAM:
            self._body_filters(data, False)
            if self.state == S_DONE:
                return
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > MAX_REPLAY:
                self.replay = None  # too large to keep: this request will not be retried once sent
            else:
                replay.append(data)
        up = self.upstream
        if up is not None and up.transport is not None:
            up.tx(data)
            return
        pending = self.pending
        if pending is None:
            pending = self.pending = []
        pending.append(data)
        size = 0
        for x in pending:
            size += len(x)
        if size > MAX_BUFFERED:
            self.conn.pause_reading(PAUSE_PENDING)

    def request_end(self):
        """The request body is complete (or there was none)."""
        self.req_done = True
        if self.state == S_UPSTREAM:
            self._arm_timeouts()
            if self.body_filters:
                self._body_filters(b"", True)

    def _arm_timeouts(self):
        """The request is complete: the route's timeout starts (Envoy's), and the per-try
        timeout of the attempt in flight."""
        d = self.decision
        conn = self.conn
        if conn.wheel is not None:
            if d.timeout > 0.0 or self.rule.per_try_timeout > 0.0:
                now = conn.loop.time()
                if d.timeout > 0.0 and self.timeout_at == 0.0:
                    self.timeout_at = now + d.timeout
                if self.rule.per_try_timeout > 0.0:
                    self.try_at = now + self.rule.per_try_timeout
                self._watch()
            return
        if d.timeout > 0.0 and self.timeout_timer is None:
            self.timeout_timer = conn.loop.call_later(d.timeout, self._on_timeout)
        if self.rule.per_try_timeout > 0.0:
            self._arm_try_timer()

    def _arm_try_timer(self):
        conn = self.conn
        if conn.wheel is not None:
            self.try_at = conn.loop.time() + self.rule.per_try_timeout
            self._watch()
            return
        if self.try_timer is not None:
            self.try_timer.cancel()
        self.try_timer = conn.loop.call_later(self.rule.per_try_timeout, self._on_try_timeout)

    # Request timeouts on the codec's timing wheel (the sidecar always has one): the stream
    # keeps the route's and the attempt's deadlines (``timeout_at``, ``try_at``, loop time) and
    # one wheel ``Timer`` set one resolution plus DEADLINE_MARGIN before the nearer one; only
    # then is a loop timer (``precise``) armed for the exact time. Most requests end long before:
    # a timeout costs them one wheel insert and discard, not a loop timer (a uvloop timer armed
    # and cancelled per request costs about five times as much). Without a wheel (the engine's
    # unit tests) each timeout is a loop timer of its own.

    def _watch(self):
        """Watch the nearer deadline: on the wheel until it is near, then precisely."""
        at = self.timeout_at
        if self.try_at > 0.0 and (at == 0.0 or self.try_at < at):
            at = self.try_at
        if self.precise is not None:
            if self.precise_at == at:
                return
            self.precise.cancel()
            self.precise = None
        if at == 0.0:
            if self.timer is not None:
                self.timer.cancel()
            return
        conn = self.conn
        wheel = conn.wheel
        early = at - wheel.resolution - DEADLINE_MARGIN
        if early <= wheel.now:
            if self.timer is not None:
                self.timer.cancel()
            self.precise_at = at
            self.precise = conn.loop.call_at(at, self._on_deadline)
            return
        if self.timer is None:
            self.timer = Timer(wheel, self)
        wheel.arm(self.timer, early)

    def on_timer(self, now):
        """The timing wheel: a deadline is near."""
        if self.state != S_DONE:
            self._watch()

    def _on_deadline(self):
        """A deadline's loop timer: the route's timeout wins over the attempt's."""
        self.precise = None
        if self.state == S_DONE:
            return
        now = self.conn.loop.time() + 0.001  # libuv counts whole milliseconds
        if self.timeout_at > 0.0 and now >= self.timeout_at:
            self.timeout_at = 0.0
            self.try_at = 0.0
            self._timed_out()
            return
        if self.try_at > 0.0 and now >= self.try_at:
            self.try_at = 0.0
            self._on_try_timeout()  # may retry, which sets the next attempt's deadline
            if self.state == S_DONE:
                return
        self._watch()

    def _on_timeout(self):
        """The route's timeout: 504 UT (or, with the response under way, a reset)."""
        self.timeout_timer = None
        if self.state == S_DONE:
            return
        self._timed_out()

    def _on_try_timeout(self):
        """This attempt took longer than ``perTryTimeout``: UT, and retried when the policy
        retries resets and timeouts (5xx, gateway-error, reset)."""
        self.try_timer = None
        if self.state == S_DONE or self.resp_started:
            return
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.stream = None
            up.close()
        ep = self.endpoint
        if ep is not None:
            self.cluster.detector.put_result(ep, RESULT_TIMEOUT)
        if self.rule.on & RETRY_ON_RESET and self._retry(False):
            return
        self._timed_out()

    def _timed_out(self):
        cluster = self.cluster
        cluster.stats.timeout()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.stream = None
            up.close()
        if self.resp_started:
            self.flags = "UT"
            self.finish(self.status)
            self.conn.reset_stream(self)
            return
        self.pending = None
        self.local_reply(504, BODY_TIMEOUT, "UT,URX" if self.retrying else "UT", b"")

    def _body_filters(self, data, end):
        for f in self.filters:
            f.on_request_body(self, data, end)
            if self.state == S_DONE:
                return

    def tunnel_data(self, data):
        """Client bytes after a 101 (WebSocket and other upgrades)."""
        up = self.upstream
        if up is not None and up.transport is not None:
            up.tx(data)
        elif self.pending is not None:
            self.pending.append(data)

    def downstream_eof(self):
        """The client half-closed a tunnel; True keeps the client transport open."""
        up = self.upstream
        if up is None or up.transport is None:
            return False
        self.peer_eof = True
        if up.peer_eof:
            # Both ends have sent EOF: the tunnel is over (keeping both half-closed transports
            # open leaked two descriptors per finished WebSocket).
            up.stream = None
            up.close()
            self.on_upstream_lost(up, True)
            return False
        try:
            up.transport.write_eof()
        except (OSError, RuntimeError, AttributeError):
            up.close()
        return True

    def downstream_reset(self):
        """The client connection is gone."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.stream = None
            up.close()
        if self.state == S_DONE:
            return
        if self.conn.in_tunnel():
            self.finish(101)
            return
        # The client went away with a request in flight (Envoy: DC).
        self.flags = "DC"
        self.finish(self.status if self.resp_started else 0)

    # -- upstream side -------------------------------------------------------------------------

    def _connect_or_queue(self, ep):
        """No idle connection to ``ep``: make one, or wait for one at maxConnections; over
        http1MaxPendingRequests, 503 UO at once. What to send waits in ``pending``."""
        cluster = self.cluster
        res = cluster.res
        stats = cluster.stats
        if stats.rq_pending_active >= res.max_pending:
            self.pending = None
            self.conn.resume_reading(PAUSE_PENDING)
            self._overflow()
            return
        stats.pending_start()
        if res.connections >= res.max_connections:
            stats.overflow()  # upstream_cx_overflow
            self.waiting = W_QUEUE
            res.waiting.append(self)
            _reclaim_idle(cluster, ep.pool)
            return
        self.waiting = W_CONNECT
        self._connect(ep)

    def _connect(self, ep):
        cluster = self.cluster
        up = UpstreamConnection(ep.pool, cluster.stats)
        up.res = cluster.res
        cluster.res.connections += 1
        up.attach(self, False)
        self.upstream = up
        ep.pool.cx_total += 1
        self.conn.loop.create_task(up.connect(cluster.connect_timeout))

    def dequeued(self, up):
        """This stream waited at maxConnections. ``up``: an idle connection to its endpoint
        handed over by a request that just finished with it; None: a connection slot is free,
        connect."""
        if up is None:
            self.waiting = W_CONNECT
            self._connect(self.endpoint)
            return
        self.waiting = W_NONE
        self.cluster.stats.pending_end()
        self._send_pending(up)

    def _send_pending(self, up):
        """Carry on over the pooled connection ``up``: what waited in ``pending`` goes out."""
        up.attach(self, True)
        self.upstream = up
        if self.conn.write_paused:
            up.pause(1)
        pending = self.pending
        self.pending = None
        if pending:
            up.tx(b"".join(pending))
        self.conn.resume_reading(PAUSE_PENDING)

    def _stop_waiting(self):
        """No longer a pending request (connected, failed, retrying elsewhere, or over)."""
        if self.waiting == W_QUEUE:
            self.cluster.res.waiting.remove(self)
        self.waiting = W_NONE
        self.cluster.stats.pending_end()

    def _overflow(self):
        """A circuit breaker is full: 503 UO at once (Envoy's overflow; never retried)."""
        self.cluster.stats.pending_overflow()
        self.local_reply(503, BODY_OVERFLOW, "UO", OVERLOADED)

    def on_upstream_ready(self, up):
        """The new upstream connection ``up`` is established: flush what waited for it."""
        if self.waiting:
            self._stop_waiting()
        self.cluster.detector.put_result(self.endpoint, RESULT_CONNECT_SUCCESS)
        pending = self.pending
        self.pending = None
        if pending:
            up.tx(b"".join(pending))
        self.conn.resume_reading(PAUSE_PENDING)
        if self.conn.write_paused:
            up.pause(1)

    def on_upstream_failed(self, up, timed_out):
        """Connecting failed (refused, unreachable, timed out)."""
        if self.upstream is not up:
            return
        self.upstream = None
        if self.waiting:
            self._stop_waiting()
        ep = self.endpoint
        cluster = self.cluster
        cluster.detector.put_result(ep, RESULT_CONNECT_TIMEOUT if timed_out
                                    else RESULT_CONNECT_FAILED)
        # Istio's default retry policy retries connect failures on another endpoint; nothing
        # has been sent yet, everything is still in ``pending``.
        if self.pending is not None and self.rule.on & RETRY_ON_CONNECT_FAILURE:
            if self._retry(True):
                return
        self.pending = None
        self.conn.resume_reading(PAUSE_PENDING)
        self.local_reply(503, BODY_CONNECT_FAILURE, "UF,URX" if self.retrying else "UF", b"")

    def on_upstream_lost(self, up, got_response_bytes):
        """The upstream connection closed while this stream was using it."""
        if self.upstream is not up:
            return
        self.upstream = None
        if self.conn.in_tunnel():
            self.finish(101)
            self.conn.reset_stream(self)
            return
        if not got_response_bytes:
            self.cluster.detector.put_result(self.endpoint, RESULT_RESET)
            # A pooled connection the server had closed: safe to retry once when nothing of the
            # request body has been consumed (Envoy resets such requests too; clients see 503 UC).
            if up.reused and not self.retried and not self.req_body_sent and self.req_done:
                self.retried = True
                self.pending = [self.req_head]
                self._connect_or_queue(self.endpoint)
                return
            self.cluster.stats.reset()
            if self.rule.on & RETRY_ON_RESET and self._retry(False):
                return
            self.local_reply(503, BODY_CONNECTION_TERMINATION,
                             "UC,URX" if self.retrying else "UC", b"")
            return
        # Mid-response: the client cannot be told cleanly; reset it (Envoy: UC, response cut).
        self.flags = "UC"
        self.cluster.stats.reset()
        self.finish(up.status)
        self.conn.reset_stream(self)

    def on_upstream_bad_response(self, up, err):
        # Detach ``up`` first: the bytes that failed to parse are still in its buffer; left
        # attached it would parse them again forever.
        up.stream = None
        up.buf = None
        if self.upstream is not up:
            return
        self.upstream = None
        up.close()
        if self.resp_started:
            self.flags = "UPE"
            self.finish(up.status)
            self.conn.reset_stream(self)
            return
        self.local_reply(502, BODY_PROTOCOL_ERROR, "UPE", b"")

    def _retry(self, keep_pending):
        """Start another attempt after a retriable failure (see ``_may_retry``); False when
        there will be none."""
        if not self._may_retry(keep_pending):
            return False
        self._start_retry(keep_pending)
        return True

    def _may_retry(self, keep_pending):
        """May another attempt start? Not when none is left (counted: limit exceeded), when the
        request cannot be replayed (its body is still coming, or was too large to keep), or when
        the retry budget / maxRetries breaker is full (counted: overflow)."""
        rule = self.rule
        cluster = self.cluster
        if self.attempts >= rule.attempts:
            if rule.attempts > 0:
                cluster.stats.retry_limit_exceeded()
            return False
        if not keep_pending and (not self.req_done or (self.req_body_sent and self.replay is None)):
            return False
        if not self.retrying and not cluster.res.retry_allowed(cluster.stats):
            cluster.stats.retry_overflow()
            return False
        return True

    def _start_retry(self, keep_pending):
        """Another attempt, on another endpoint when there is one, after Envoy's jittered
        exponential backoff. ``keep_pending``: nothing was sent (a connect failure): what waits
        in ``pending`` goes to the next attempt; otherwise the head and the kept body
        (``replay``) are sent again."""
        rule = self.rule
        cluster = self.cluster
        if self.waiting:
            self._stop_waiting()
        if not self.retrying:
            self.retrying = True
            cluster.res.retries += 1
        self.attempts += 1
        cluster.stats.retry()
        ep = self.endpoint
        lb = self.lb
        if lb is None:
            lb = self._lb_context(cluster)
        if rule.ignore_previous_hosts or rule.remote_localities:
            if lb.avoid is None:
                lb.avoid = [ep]
            else:
                lb.avoid.append(ep)
        cluster.release(ep, self.lb_gen)
        self.endpoint = None
        if not keep_pending:
            pending = [self.req_head]
            if self.replay:
                pending.extend(self.replay)
            self.pending = pending
        # Envoy: a random delay up to base * 2^(retry - 1), capped at max_backoff.
        cap = rule.backoff * (1 << (self.attempts - 1))
        if cap > rule.max_backoff:
            cap = rule.max_backoff
        self.retry_timer = self.conn.loop.call_later(_random() * cap, self._retry_now)

    def _retry_now(self):
        self.retry_timer = None
        if self.state == S_DONE:
            return
        cluster = self.cluster
        lb = self.lb
        ep = None
        if self.rule.remote_localities:
            ep = cluster.choose_remote(lb)  # the next locality (priority) not tried yet
        if ep is None:
            ep = cluster.choose(lb)
        if ep is None and lb.avoid is not None:
            # Every endpoint was tried: go back to any of them (Envoy does the same after its
            # host-selection attempts).
            lb.avoid = None
            ep = cluster.choose(lb)
        if ep is None:
            self.pending = None
            self.local_reply(503, BODY_NO_HEALTHY, "UH", b"")
            return
        self.lb_gen = cluster.gen
        self.endpoint = ep
        if self.req_done and self.rule.per_try_timeout > 0.0:
            self._arm_try_timer()
        up = ep.pool.acquire()
        if up is not None:
            self._send_pending(up)
        else:
            self._connect_or_queue(ep)

    def on_interim(self, up, resp):
        self.conn.send_interim(self, resp)

    def on_response_head(self, up, resp, k, delimited):
        """The upstream's final response head, with ``k`` body bytes after it in its buffer."""
        rule = self.rule
        if rule.statuses and rule.retries_status(resp.status):
            # A retriable answer: nothing of it has reached the client; drop it and try again.
            detector = self.cluster.detector
            if detector.wants_responses:
                detector.put_result(self.endpoint, resp.status)
            if self._may_retry(False):
                self.upstream = None
                up.stream = None
                up.close()
                self._start_retry(False)
                return
            if self.retrying:
                self.flags = "URX"
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.try_at > 0.0:
            self.try_at = 0.0  # (the route's timeout, if any, is still watched)
            self._watch()
        self.resp_started = True
        self.status = resp.status
        if self.filters is not None:
            for f in self.filters:
                f.on_response_head(self)
                if self.state == S_DONE:
                    return
        extra = self.resp_extra
        if self.set_cookie is not None:
            extra = extra + self.set_cookie
        self.conn.send_response_head(self, resp, extra, k, delimited)

    def on_upgrade(self, up, head):
        """A 101: ``head`` (and any bytes after it) go to the client, then bytes flow both ways."""
        self.resp_started = True
        self.status = 101
        self.pending = None
        self.conn.send_data(self, head)
        self.conn.start_tunnel(self)

    def on_response_data(self, data):
        if self.body_filters:
            for f in self.filters:
                f.on_response_body(self, data, False)
        self.conn.send_data(self, data)

    def on_response_end(self, up, status, reusable):
        """The response ended; ``reusable``: the upstream connection may serve another request."""
        self.upstream = None
        up.detach()
        cluster = self.cluster
        if reusable and self.req_done:
            idle_timeout = cluster.idle_timeout
            if cluster.max_requests_per_connection > 0 or cluster.max_connection_duration > 0.0:
                idle_timeout = _keep_for(cluster, up)
            if idle_timeout <= 0.0:
                up.close()
            elif cluster.res.waiting:
                _hand_over(cluster.res, up)
            else:
                up.pool.release(up, cluster.max_idle, idle_timeout)
        else:
            up.close()
        detector = self.cluster.detector
        if detector.wants_responses:
            detector.put_result(self.endpoint, status)
        if self.body_filters:
            for f in self.filters:
                f.on_response_body(self, b"", True)
        self.finish(status)
        self.conn.stream_done(self)

    def on_tunnel_eof(self, up):
        """The upstream half-closed a tunnel; True keeps the upstream transport open."""
        up.peer_eof = True
        if self.peer_eof:
            up.stream = None
            up.close()
            self.on_upstream_lost(up, True)
            return False
        self.conn.tunnel_eof(self)
        return True

    def pause_upstream(self):
        up = self.upstream
        if up is not None:
            up.pause(1)

    def resume_upstream(self):
        up = self.upstream
        if up is not None:
            up.resume(1)

    # -- the end -------------------------------------------------------------------------------

    def local_reply(self, status, body, flags, extra):
        """Answer this request locally (no route, no endpoint, upstream failure, a filter)."""
        if self.state == S_DONE:
            return
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.stream = None
            up.close()
        self.flags = flags
        self.resp_started = True
        self.status = status
        self.conn.send_local_reply(self, status, body, extra)
        self.finish(status)
        self.conn.stream_done(self)

    def finish(self, status):
        """Counters, outlier state, access log, filters' on_complete; the stream is over."""
        if self.state == S_DONE:
            return
        self.state = S_DONE
        self.status = status
        cluster = self.cluster
        ctx = self.ctx
        dur = _monotonic() - self.started
        us = int(dur * 1000000)
        ep = self.endpoint
        if ep is not None:
            cluster.release(ep, self.lb_gen)
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
            self.timeout_timer = None
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.timer is not None:
            self.timer.cancel()
        if self.precise is not None:
            self.precise.cancel()
            self.precise = None
        if self.waiting:
            self._stop_waiting()
        if self.retrying:
            cluster.res.retries -= 1
            if 0 < status < 500:
                cluster.stats.retry_success()
        flags = self.flags
        if cluster is not None:
            cluster.stats.rq_end(status, us, self.bytes_rx, self.bytes_tx)
            if flags:
                cluster.stats.flag(flags, status)
        ctx.stats.rq_end(status, us, self.bytes_rx, self.bytes_tx)
        if flags and cluster is None:
            ctx.stats.flag(flags, status)
        if ctx.access_log is not None:
            self._log(ctx, status, dur, ep)
        if self.filters is not None:
            for f in self.filters:
                f.on_complete(self)

    def _log(self, ctx, status, dur, ep):
        # Cold unless the access log is on.
        p = self.request
        addrs = self.conn.addresses()
        rec = _access_record()()
        rec.start_time = time.time() - dur
        rec.method = _s(p.method)
        rec.path = _s(p.path)
        rec.protocol = "HTTP/1.1" if p.version == 1 else "HTTP/1.0"
        rec.response_code = status
        rec.response_flags = self.flags
        rec.bytes_received = self.bytes_rx
        rec.bytes_sent = self.bytes_tx
        rec.duration_ms = int(dur * 1000)
        rec.x_forwarded_for = _s(p.forwarded_for)
        rec.user_agent = _s(p.get(b"user-agent"))
        rec.request_id = _s(p.request_id or self._last_rid())
        rec.authority = _s(p.host)
        rec.upstream_host = ep.host if ep is not None else None
        rec.upstream_cluster = self.cluster.name if self.cluster is not None else None
        rec.downstream_local_address = addrs[0]
        rec.downstream_remote_address = addrs[1]
        rec.route_name = self.route_name if self.cluster is not None else None
        fs = self.filter_state
        if fs is not None:  # a filter's %RESPONSE_CODE_DETAILS% (rbac_access_denied_...)
            rec.response_code_details = fs.get("response_code_details")
        ctx.access_log.log(rec)

    def _last_rid(self):
        head = self.req_head
        if head is None:
            return None
        i = head.find(b"\r\nx-request-id: ")
        if i < 0:
            return None
        j = head.find(b"\r\n", i + 2)
        return head[i + 16:j]

    # -- what filters use ----------------------------------------------------------------------

    def header(self, name):
        """A request header's value (lowercase ``name`` bytes; several values joined by ``,``)."""
        return self.view.header(name)

    def add_request_headers(self, lines, drop=None):
        """Header lines (``b"name: value\\r\\n"``...) to add upstream, names to remove first."""
        self.req_extra = self.req_extra + lines
        if drop:
            self.req_drop = drop if self.req_drop is None else tuple(self.req_drop) + tuple(drop)

    def add_response_headers(self, lines, drop=None):
        """Header lines to add to the response, names of the upstream's headers to remove."""
        self.resp_extra = self.resp_extra + lines
        if drop:
            self.resp_drop = drop if self.resp_drop is None else tuple(self.resp_drop) + tuple(drop)

    def upstream_head(self):
        """The request head as it is (or would be) sent upstream."""
        if self.req_head is not None:
            return self.req_head
        return self._serialize()

    def state_dict(self):
        """Per-stream storage for filters (Envoy's filter state), made on first use."""
        if self.filter_state is None:
            self.filter_state = {}
        return self.filter_state


class UpstreamConnection:
    """One connection from a pool (asyncio protocol), attached to one stream at a time."""

    def __init__(self, pool, stats):
        self.pool = pool
        self.stats = stats
        self.transport = None
        self.tx = None
        self.stream = None
        self.parser = None
        self.framer = None
        self.buf = None
        self.pos = 0
        self.closed = False
        self.reused = False
        self.idle_deadline = 0.0
        self.got_bytes = False
        self.in_head = True
        self.framing = RF_NONE
        self.remaining = 0
        self.keep_alive = False
        self.status = 0
        self.paused = 0
        self.tunnel = False
        self.body_done = False
        self.peer_eof = False  # tunnel: the upstream has sent EOF
        self.res = None  # the Resources this connection counts in (until it is gone)
        self.requests = 0  # requests carried (maxRequestsPerConnection)
        self.created = 0.0  # when it was established (maxConnectionDuration)
        self.expiring = False  # its idle deadline is its maxConnectionDuration

    async def connect(self, timeout):
        pool = self.pool
        loop = asyncio.get_running_loop()
        try:
            if pool.ssl is None:
                await asyncio.wait_for(loop.create_connection(self._self, pool.address, pool.port),
                                       timeout)
            else:
                # Mutual TLS to another sidecar: the handshake is part of connecting (a bad
                # certificate on either side is a connect failure, UF); the peer's identity is
                # checked in connection_made.
                from meshproxy import tls
                await asyncio.wait_for(tls.connect(loop, self._self, pool.address, pool.port,
                                                   pool.ssl), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            if pool.ssl is not None:
                _log_tls_failure(pool, e)
            self.closed = True
            self.stats.cx_fail()
            if self.res is not None:
                self._free_slot()
            s = self.stream
            if s is not None:
                self.stream = None
                s.on_upstream_failed(self, isinstance(e, asyncio.TimeoutError))

    def _self(self):
        return self

    def attach(self, s, reused):
        self.stream = s
        self.reused = reused
        self.requests += 1
        self.got_bytes = False
        self.in_head = True
        self.status = 0
        if self.parser is None:
            self.parser = ResponseParser()

    def detach(self):
        self.stream = None
        if self.paused:
            self.paused = 0
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def pause(self, why):
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= why

    def resume(self, why):
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # -- asyncio protocol interface ------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.tx = transport.write  # bound once: no attribute lookup per request
        self.created = _monotonic()
        self.pool.cx_active += 1
        self.stats.cx_open()
        if self.closed:
            transport.close()
            return
        if self.pool.identity is not None and not _peer_ok(self.pool, transport):
            # Not the workload this endpoint must be: as a failed connect (UF), never used.
            self.closed = True
            self.stats.cx_fail()
            transport.close()
            s = self.stream
            if s is not None:
                self.stream = None
                s.on_upstream_failed(self, False)
            return
        if self.paused:
            # Paused while connecting (the client's transport was full): start paused.
            transport.pause_reading()
        s = self.stream
        if s is not None:
            s.on_upstream_ready(self)
        else:
            transport.close()

    def data_received(self, data):
        s = self.stream
        if s is None:
            # Bytes on an idle pooled connection: the server broke protocol; drop the connection.
            self.close()
            return
        self.got_bytes = True
        if self.tunnel:
            s.conn.send_data(s, data)
            return
        buf = self.buf
        if buf is None:
            self.buf = data
            self.pos = 0
        elif type(buf) is bytearray:
            buf += data
        else:
            nb = bytearray(buf[self.pos:])
            nb += data
            self.buf = nb
            self.pos = 0
        self._process(s)

    def _process(self, s):
        while self.stream is s:
            buf = self.buf
            if buf is None:
                return
            pos = self.pos
            end = len(buf)
            if pos >= end:
                self.buf = None
                self.pos = 0
                return
            if self.in_head:
                p = self.parser
                try:
                    n = p.parse(buf, pos)
                except ProtocolError as e:
                    self.buf = None
                    s.on_upstream_bad_response(self, e)
                    return
                if n == 0:
                    if type(buf) is not bytearray:
                        self.buf = bytearray(buf[pos:])
                        self.pos = 0
                    return
                pos += n
                self.pos = pos
                status = p.status
                self.status = status
                if status < 200 and status != 101:
                    # Interim response (100 Continue, 103 Early Hints): relay and keep reading.
                    s.on_interim(self, p)
                    continue
                self._on_head(s, p, buf, pos, end)
            else:
                self._body(s, buf, pos, end)

    def _on_head(self, s, p, buf, pos, end):
        status = self.status
        self.in_head = False
        if status == 101:
            if s.upgrading and p.upgrade is not None:
                self.tunnel = True
                head = p.serialize(b"")
                rest = buf[pos:end] if pos < end else b""
                self.buf = None
                self.pos = 0
                s.on_upgrade(self, head + bytes(rest) if rest else head)
                return
            s.on_upstream_bad_response(self, ProtocolError("unexpected 101 response", 502))
            return
        if s.request.is_head or status == 204 or status == 304:
            self.framing = RF_NONE
        elif p.chunked:
            self.framing = RF_CHUNKED
            framer = self.framer
            if framer is None:
                framer = self.framer = ChunkedFramer()
            else:
                framer.reset()
        elif p.content_length >= 0:
            self.framing = RF_LENGTH
            self.remaining = p.content_length
        else:
            self.framing = RF_CLOSE
        self.keep_alive = p.keep_alive and self.framing != RF_CLOSE
        framing = self.framing
        if framing == RF_NONE or (framing == RF_LENGTH and self.remaining == 0):
            self.buf = None
            self.pos = 0
            s.on_response_head(self, p, 0, True)
            if self.stream is s:
                s.on_response_end(self, status, self.keep_alive and pos == end)
            return
        # One write for the head and whatever body came with it.
        try:
            k = self._take(buf, pos, end)
        except ProtocolError as e:
            # The head is good, its body is not: the client gets the head, then a cut.
            s.on_response_head(self, p, 0, framing != RF_CLOSE)
            if self.stream is s:
                s.on_upstream_bad_response(self, e)
            return
        done = self.body_done
        s.on_response_head(self, p, k, framing != RF_CLOSE)
        pos += k
        self.pos = pos
        if pos >= end:
            self.buf = None
            self.pos = 0
        if done and self.stream is s:
            s.on_response_end(self, status, self.keep_alive and self.buf is None)

    def _take(self, buf, pos, end):
        """How many of ``buf[pos:end]`` belong to the response body (its framing decides);
        sets ``body_done`` when the body ends there. Raises ProtocolError on bad chunking."""
        framing = self.framing
        if framing == RF_LENGTH:
            k = end - pos
            if k > self.remaining:
                k = self.remaining
            self.remaining -= k
            self.body_done = self.remaining == 0
        elif framing == RF_CHUNKED:
            k = self.framer.feed(buf, pos, end)
            self.body_done = self.framer.done
        else:
            k = end - pos
            self.body_done = False
        return k

    def _body(self, s, buf, pos, end):
        try:
            k = self._take(buf, pos, end)
        except ProtocolError as e:
            s.on_upstream_bad_response(self, e)
            return
        done = self.body_done
        if k:
            if pos == 0 and k == end and type(buf) is bytes:
                s.on_response_data(buf)
            else:
                s.on_response_data(bytes(buf[pos:pos + k]))
        pos += k
        self.pos = pos
        if pos >= end:
            self.buf = None
            self.pos = 0
        if done and self.stream is s:
            s.on_response_end(self, self.status, self.keep_alive and self.buf is None)

    def eof_received(self):
        s = self.stream
        if s is not None and self.tunnel:
            return s.on_tunnel_eof(self)
        return False

    def connection_lost(self, exc):
        was_closed = self.closed
        self.closed = True
        if self.transport is not None:
            self.pool.cx_active -= 1
            self.stats.cx_close()
            if not was_closed:
                self.stats.cx_remote_close()
        if self.res is not None:
            self._free_slot()
        s = self.stream
        if s is None:
            return
        if not self.in_head and self.framing == RF_CLOSE and not self.tunnel:
            # A close-delimited body ends here.
            s.on_response_end(self, self.status, False)
            return
        self.stream = None
        s.on_upstream_lost(self, self.got_bytes)

    def _free_slot(self):
        """This connection no longer counts against maxConnections: the oldest stream waiting
        for a connection of the cluster may make one."""
        res = self.res
        self.res = None
        res.connections -= 1
        waiting = res.waiting
        if waiting and res.connections < res.max_connections:
            s = waiting.pop(0)
            s.dequeued(None)

    def pause_writing(self):
        s = self.stream
        if s is not None:
            s.conn.pause_reading(PAUSE_UPSTREAM_FULL)

    def resume_writing(self):
        s = self.stream
        if s is not None:
            s.conn.resume_reading(PAUSE_UPSTREAM_FULL)


def _log_tls_failure(pool, e):
    """A mutual-TLS connect failed: say why (certificate refused, handshake...)."""
    import logging
    logging.getLogger("meshproxy").warning("mtls: connecting to %s (%s) failed: %s", pool.host,
                                           pool.identity, e or type(e).__name__)


def _peer_ok(pool, transport):
    """Does the TLS peer of a new connection carry the SPIFFE ID its endpoint must have?"""
    from meshproxy import tls
    got = tls.peer_id(transport.get_extra_info("ssl_object"))
    if got == pool.identity:
        return True
    import logging
    logging.getLogger("meshproxy").warning(
        "mtls: %s presented %s, expected %s: connection refused", pool.host, got or "no SPIFFE ID",
        pool.identity)
    return False


def _keep_for(cluster, up):
    """How long ``up`` may idle in its pool under maxRequestsPerConnection and
    maxConnectionDuration (<= 0: close it now, counted)."""
    idle_timeout = cluster.idle_timeout
    limit = cluster.max_requests_per_connection
    if limit > 0 and up.requests >= limit:
        cluster.stats.max_requests_reached()
        return 0.0
    if cluster.max_connection_duration > 0.0:
        left = up.created + cluster.max_connection_duration - _monotonic()
        if left <= 0.0:
            cluster.stats.max_duration_reached()
            return 0.0
        if left < idle_timeout:
            idle_timeout = left
            up.expiring = True  # the pool's sweep counts it when it closes it idle
    return idle_timeout


def _hand_over(res, up):
    """A connection came free while streams wait at maxConnections: the oldest one waiting for
    its endpoint gets it; if none waits for that endpoint, close it so the oldest waiting stream
    can connect where it needs to."""
    pool = up.pool
    waiting = res.waiting
    for i in range(len(waiting)):
        s = waiting[i]
        if s.endpoint.pool is pool:
            del waiting[i]
            s.dequeued(up)
            return
    up.close()


def _reclaim_idle(cluster, pool):
    """A stream queued at maxConnections while the cluster keeps idle connections to other
    endpoints: close one of those, so the slot it frees serves the queue."""
    for ep in cluster.endpoints:
        p = ep.pool
        if p is not pool and p.idle:
            up = p.acquire()
            if up is not None:
                up.close()
                return


def _cookie(header, name):
    if header is None:
        return None
    for part in header.split(b";"):
        part = part.strip()
        eq = part.find(b"=")
        if eq > 0 and part[:eq] == name:
            return part[eq + 1:]
    return None


_ACCESS_RECORD = []


def _access_record():
    """accesslog.AccessRecord, imported on first use (the access log is off by default)."""
    if not _ACCESS_RECORD:
        from meshproxy.accesslog import AccessRecord
        _ACCESS_RECORD.append(AccessRecord)
    return _ACCESS_RECORD[0]


def _s(b):
    if b is None:
        return None
    return b.decode("latin-1")
