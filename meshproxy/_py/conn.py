"""The HTTP/1.1 proxy engine: downstream and upstream connections, endpoint pools, clusters.

One source, two builds (as aiohttp's websocket reader): this file is the pure-Python twin, and
``meshproxy/_core/conn.py`` (a link to it) is compiled by Cython with ``meshproxy/_core/conn.pxd``
typing its classes and methods. Keep it valid, idiomatic Python; typing lives in the .pxd.

Theory of operation
-------------------
A ``DownstreamProtocol`` serves one client connection and proxies one request at a time on it
(HTTP/1.1 has no multiplexing; pipelined requests wait in the receive buffer). Its state moves:

    ST_HEAD --head parsed, route found--> ST_BODY --request body forwarded--> ST_WAIT
    ST_WAIT --response complete, keep-alive--> ST_HEAD (next pipelined request, if buffered)
    any --101 Switching Protocols--> ST_TUNNEL (bytes copied both ways until either side closes)
    any --error or close--> ST_CLOSED

A request with no body goes straight from ST_HEAD to ST_WAIT. While the upstream connection is
being established, what would be written to it waits in ``pending``.

An ``UpstreamProtocol`` is one connection to one endpoint, owned by that endpoint's pool while
idle and attached to exactly one downstream while a request uses it. It parses response heads,
follows the response body's framing (Content-Length, chunked, or until close) and forwards the
bytes unchanged; when the response ends, the downstream decides whether the connection goes back
to the pool.

Backpressure: when one side's transport calls ``pause_writing`` (its write buffer passed the
high-water mark) the other side's reading is paused, and resumed on ``resume_writing``. Reading is
paused for several independent reasons (``PAUSE_*`` bits) and resumed when none is left.

Routing state lives in a ``ProxyContext`` per listener, replaced as a whole on reload; a request
reads it once, when its head is parsed, so in-flight requests finish on the snapshot they started
with.
"""
import asyncio
import time
from http import HTTPStatus
from random import random as _random
from time import monotonic as _monotonic

if __name__.startswith("meshproxy._core"):
    from meshproxy._core.router import HeaderEdit, RequestView, RouteEntry
    from meshproxy._core.balancer import RoundRobinPicker
    from meshproxy._core.counters import ClusterStats
    from meshproxy._core.http1 import ChunkedFramer, RequestParser, ResponseParser, request_id
else:
    from meshproxy._py.router import HeaderEdit, RequestView, RouteEntry
    from meshproxy._py.balancer import RoundRobinPicker
    from meshproxy._py.counters import ClusterStats
    from meshproxy._py.http1 import ChunkedFramer, RequestParser, ResponseParser, request_id

from meshproxy.errors import ProtocolError

ST_HEAD = 0
ST_BODY = 1
ST_WAIT = 2
ST_TUNNEL = 3
ST_CLOSED = 4

# Why downstream reading is paused (bits).
PAUSE_UPSTREAM_FULL = 1  # the upstream transport's write buffer is over its high-water mark
PAUSE_PIPELINE = 2  # too many pipelined bytes buffered while a response is pending
PAUSE_CONNECTING = 4  # too many bytes pending while the upstream connection is being set up

# Response framing.
RF_NONE = 0  # no body (HEAD, 1xx, 204, 304)
RF_LENGTH = 1
RF_CHUNKED = 2
RF_CLOSE = 3  # delimited by the upstream closing the connection

MAX_BUFFERED = 65536  # pipelined or pending bytes held before reading pauses
EJECTION_SECONDS = 5.0  # how long a connect failure keeps an endpoint out of rotation
MIRROR_MAX_BUFFER = 1048576  # a mirror that falls this far behind is dropped, never waited for
MIRROR_TIMEOUT = 30.0

REASONS = {int(st): st.phrase.encode("ascii") for st in HTTPStatus}

# Envoy's local-reply bodies, so clients and scripts that know Envoy's answers recognise ours.
BODY_NO_HEALTHY = b"no healthy upstream"
BODY_CONNECT_FAILURE = (b"upstream connect error or disconnect/reset before headers. "
                        b"reset reason: connection failure")
BODY_CONNECTION_TERMINATION = (b"upstream connect error or disconnect/reset before headers. "
                               b"reset reason: connection termination")
BODY_PROTOCOL_ERROR = b"upstream sent an invalid HTTP response"

_state = {"date": b"", "now": 0.0}


def set_date(http_date):
    """Set the ``date`` header value used in local replies (the worker ticks it every second)."""
    _state["date"] = http_date


def local_reply(status, body, close, extra=b""):
    """A complete response made by the sidecar itself (errors, no route)."""
    reason = REASONS.get(status, b"Unknown")
    head = [b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-length: %d\r\n" % len(body),
            b"content-type: text/plain\r\n" if body else b"",
            b"date: " + _state["date"] + b"\r\n" if _state["date"] else b"",
            b"server: meshproxy\r\n",
            extra,
            b"connection: close\r\n\r\n" if close else b"\r\n",
            body]
    return b"".join(head)


class Endpoint:
    """One upstream address in a worker: its idle connections and live counts.

    Endpoints are shared by every cluster that lists the same address and survive reloads, so a
    reload keeps warm connections.
    """

    def __init__(self, address, port):
        self.address = address
        self.port = port
        self.host = "%s:%d" % (address, port)
        self.idle = []
        self.rq_active = 0
        self.rq_total = 0
        self.cx_active = 0
        self.cx_total = 0
        self.max_idle = 64
        self.idle_timeout = 3600.0
        self.connect_timeout = 10.0
        self.health = "HEALTHY"
        self.healthy = True
        self.unhealthy_until = 0.0

    def acquire(self):
        """An idle connection (most recently used first), or None."""
        idle = self.idle
        while idle:
            up = idle.pop()
            if not up.closed:
                return up
        return None

    def release(self, up):
        if up.closed:
            return
        if len(self.idle) >= self.max_idle:
            up.close()
            return
        up.idle_since = _monotonic()
        self.idle.append(up)

    def sweep(self, now):
        """Close idle connections older than ``idle_timeout``; drop closed ones."""
        keep = []
        for up in self.idle:
            if up.closed:
                continue
            if now - up.idle_since > self.idle_timeout:
                up.close()
                continue
            keep.append(up)
        self.idle = keep

    def close_idle(self):
        idle = self.idle
        self.idle = []
        for up in idle:
            up.close()


class Cluster:
    """A cluster as the data plane uses it: endpoints, picker, counters, settings.

    Endpoints are grouped by priority (locality failover: 0 is the sidecar's own locality); the
    picker covers the first group that has a healthy endpoint. It is rebuilt when endpoint health
    changes (``HEALTH_EPOCH`` moves), never per pick.
    """

    def __init__(self, name, endpoints, weights, stats, info=None, policy="ROUND_ROBIN",
                 hash_policy=None, priorities=None, passthrough=False, default_port=80):
        self.name = name
        # ServiceEntry resolution NONE / DestinationRule PASSTHROUGH: dial the request's own
        # authority (explicit mode's equivalent of Envoy's original-destination cluster).
        self.passthrough = passthrough
        self.default_port = default_port
        self.endpoints = list(endpoints)
        self.weights = [w if w > 0 else 1 for w in weights]
        self.priorities = list(priorities) if priorities else [0] * len(self.endpoints)
        self.stats = stats
        self.info = info
        self.policy = policy
        self.hash_policy = hash_policy
        self.least = policy == "LEAST_REQUEST"
        self.epoch = -1
        self.group = []
        self.picker = None
        self.kind = P_NONE
        self.single = None
        self.priority = 0
        self.rebuild()

    def set_endpoints(self, endpoints, weights, priorities=None):
        """New membership (DNS re-resolution): rebuild the groups and the picker."""
        self.endpoints = list(endpoints)
        self.weights = [w if w > 0 else 1 for w in weights]
        self.priorities = list(priorities) if priorities else [0] * len(self.endpoints)
        self.rebuild()

    def rebuild(self):
        self.epoch = HEALTH_EPOCH[0]
        eps = self.endpoints
        best = None
        for i in range(len(eps)):
            if eps[i].healthy and (best is None or self.priorities[i] < best):
                best = self.priorities[i]
        if best is None:
            # Nothing healthy: panic mode, as Envoy, balance over everything.
            best = min(self.priorities) if self.priorities else 0
            idx = [i for i in range(len(eps)) if self.priorities[i] == best]
        else:
            idx = [i for i in range(len(eps)) if self.priorities[i] == best and eps[i].healthy]
        self.priority = best
        self.group = [eps[i] for i in idx]
        self.single = self.group[0] if len(self.group) == 1 else None
        if len(self.group) > 1:
            self.picker = make_picker(self.policy, [self.weights[i] for i in idx],
                                      [eps[i].host for i in idx], self.hash_policy)
            self.kind = picker_kind(self.picker)
        else:
            self.picker = None
            self.kind = P_NONE

    def pick(self, ds):
        """The endpoint for the next request (``ds``: the downstream, for hash keys and
        least-request accounting; None for mirrors), or None when the cluster has none."""
        if self.passthrough:
            return passthrough_endpoint(ds, self.default_port)
        if self.epoch != HEALTH_EPOCH[0]:
            self.rebuild()
        single = self.single
        if single is not None:
            return single
        picker = self.picker
        if picker is None:
            return None
        # One branch per picker class, each through a typed local, so the compiled engine calls
        # the picker with a C call (conn.pxd types rr/lr/rnd/rh/mg).
        kind = self.kind
        if kind == P_ROUND_ROBIN:
            rr = picker
            i = rr.pick()
        elif kind == P_LEAST_REQUEST:
            lr = picker
            i = lr.pick()
            if ds is not None:
                lr.acquire(i)
                ds.lr_picker = lr
                ds.lr_index = i
        elif kind == P_RANDOM:
            rnd = picker
            i = rnd.pick()
        else:
            key = hash_key(self.hash_policy, ds) if self.hash_policy is not None else None
            if key is None:
                key = int(_random() * 2 ** 63)
            if kind == P_RING_HASH:
                rh = picker
                i = rh.pick(key)
            elif kind == P_MAGLEV:
                mg = picker
                i = mg.pick(key)
            else:
                i = picker.pick(key)
        return self.group[i]

    def pick_other(self, ds, failed):
        """An endpoint other than ``failed`` for a retry, or None. The request's least-request
        slot moves with it: released on ``failed``, taken on the endpoint returned."""
        ds.release_lr()
        for _ in range(4):
            ep = self.pick(ds)
            if ep is not failed:
                return ep
            ds.release_lr()
        for ep in self.group:
            if ep is not failed and ep.healthy:
                return ep
        return None


P_NONE = 0
P_ROUND_ROBIN = 1
P_RANDOM = 2
P_LEAST_REQUEST = 3
P_RING_HASH = 4
P_MAGLEV = 5


def picker_kind(picker):
    """Which picker class this is (the engine dispatches on it per pick)."""
    from meshproxy.core import balancer as _b
    for kind, name in ((P_ROUND_ROBIN, "RoundRobinPicker"), (P_RANDOM, "RandomPicker"),
                       (P_LEAST_REQUEST, "LeastRequestPicker"), (P_RING_HASH, "RingHashPicker"),
                       (P_MAGLEV, "MaglevPicker")):
        cls = getattr(_b, name, None)
        if cls is not None and type(picker) is cls:
            return kind
    return P_NONE


# Bumped whenever an endpoint's health changes; clusters rebuild their picker lazily.
HEALTH_EPOCH = [0]

# Endpoints made for passthrough clusters, by (host, port); bounded (oldest dropped first).
PASSTHROUGH = {}
PASSTHROUGH_MAX = 4096


def passthrough_endpoint(ds, default_port):
    """The endpoint named by the request's own authority (``host[:port]``), or None."""
    if ds is None:
        return None
    host = ds.parser.host
    if not host:
        return None
    name = host
    port = default_port
    colon = host.rfind(b":")
    if colon > 0 and b"]" not in host[colon:]:
        name = host[:colon]
        try:
            port = int(host[colon + 1:])
        except ValueError:
            return None
    if name.startswith(b"[") and name.endswith(b"]"):
        name = name[1:-1]
    key = (name, port)
    ep = PASSTHROUGH.get(key)
    if ep is None:
        if len(PASSTHROUGH) >= PASSTHROUGH_MAX:
            old = next(iter(PASSTHROUGH))
            PASSTHROUGH.pop(old).close_idle()
        ep = PASSTHROUGH[key] = Endpoint(name.decode("latin-1"), port)
    return ep


def mark_unhealthy(ep, seconds):
    """Passive health: a connect failure takes the endpoint out of rotation for a while."""
    if ep.healthy:
        ep.healthy = False
        ep.health = "UNHEALTHY"
        HEALTH_EPOCH[0] += 1
    ep.unhealthy_until = _monotonic() + seconds


def revive(endpoints, now):
    """Return endpoints whose ejection time is over (called by the worker's 1 s tick)."""
    changed = False
    for ep in endpoints:
        if not ep.healthy and now >= ep.unhealthy_until:
            ep.healthy = True
            ep.health = "HEALTHY"
            changed = True
    if changed:
        HEALTH_EPOCH[0] += 1


def make_picker(policy, weights, names, hash_policy):
    """A picker for ``policy`` (Istio names) over ``weights``."""
    try:
        from meshproxy.core import balancer as _b
        factory = getattr(_b, "make_picker", None)
    except ImportError:  # pragma: no cover
        factory = None
    if factory is not None:
        opts = {}
        if hash_policy is not None:
            if policy == "MAGLEV" and hash_policy.maglev_table_size:
                opts["table_size"] = hash_policy.maglev_table_size
            elif policy == "RING_HASH" and hash_policy.ring_size:
                opts["minimum_ring_size"] = hash_policy.ring_size
        pol = "ROUND_ROBIN" if policy in ("PASSTHROUGH", "UNSPECIFIED") else policy
        return factory(pol, weights, names=names, **opts)
    return RoundRobinPicker(weights)


def hash_key(hp, ds):
    """The consistent-hash key of the request on ``ds`` for a HashPolicy, or None."""
    if ds is None:
        return None
    from meshproxy.core import balancer as _b
    p = ds.parser
    if hp.header:
        v = p.get_all(hp.header.encode("latin-1"))
    elif hp.cookie:
        v = _cookie(p.get_all(b"cookie"), hp.cookie.encode("latin-1"))
        if v is None:
            # Envoy generates the cookie when absent and sets it on the response.
            v = request_id()
            ds.set_cookie = b"set-cookie: %s=%s%s%s\r\n" % (
                hp.cookie.encode("latin-1"), v,
                (b"; Max-Age=%d" % int(hp.cookie_ttl)) if hp.cookie_ttl else b"",
                (b"; Path=" + hp.cookie_path.encode("latin-1")) if hp.cookie_path else b"")
    elif hp.source_ip:
        v = ds.client_addr
    elif hp.query_param:
        from meshproxy.core import router as _r
        v = _r.parse_query(p.path).get(hp.query_param.encode("utf-8"))
    else:
        v = None
    if v is None:
        return None
    return _b.hash_key(v) if hasattr(_b, "hash_key") else hash(v) & 0x7FFFFFFFFFFFFFFF


def _cookie(header, name):
    if header is None:
        return None
    for part in header.split(b";"):
        part = part.strip()
        eq = part.find(b"=")
        if eq > 0 and part[:eq] == name:
            return part[eq + 1:]
    return None


def _wildcard(wildcards, host):
    """The target of the longest wildcard domain (``*.example.com``) matching ``host``."""
    colon = host.rfind(b":")
    bare = host[:colon] if colon > 0 and b"]" not in host[colon:] else host
    for suffix, target in wildcards:
        if bare.endswith(suffix) or host.endswith(suffix):
            return target
    return None


def _location(redirect, req):
    """The Location of an Istio HTTPRedirect."""
    p = req.parser
    scheme = redirect.scheme.encode() if redirect.scheme else b"http"
    host = p.host or b""
    if redirect.authority:
        host = redirect.authority.encode("latin-1")
    if redirect.port:
        colon = host.rfind(b":")
        if colon > 0 and b"]" not in host[colon:]:
            host = host[:colon]
        host = host + b":%d" % redirect.port
    path = req.path()
    if redirect.uri:
        q = path.find(b"?")
        path = redirect.uri.encode("utf-8") + (path[q:] if q >= 0 else b"")
    return scheme + b"://" + host + path


def _authority_edit(authority):
    e = HeaderEdit.__new__(HeaderEdit)
    e.drop = (b"host",)
    e.extra = b"host: " + authority + b"\r\n"
    e.empty = False
    e.ops = None
    return e


class ProxyContext:
    """Everything a listener routes with; replaced whole on reload.

    ``routes`` maps a lowercased Host value (``b"echo.default.svc.cluster.local:80"``) to a
    ``Cluster``; ``default`` is used when no domain matches (None: 404 NR).
    """

    def __init__(self, name, routes, default, stats, access_log=None, max_head_size=61440,
                 max_request_line=16384, max_headers=100, version="", route_names=None,
                 tables=None, wildcards=None):
        self.name = name
        self.routes = routes
        self.tables = tables  # host -> router.RouteTable (hosts with a VirtualService)
        self.wildcards = wildcards  # [(b".example.com", RouteTable or Cluster)], longest first
        self.default = default
        self.stats = stats
        self.access_log = access_log
        self.max_head_size = max_head_size
        self.max_request_line = max_request_line
        self.max_headers = max_headers
        self.version = version
        self.route_names = route_names or {}


class Listener:
    """A listening socket's shared state: the current context and the open connections."""

    def __init__(self, ctx, loop):
        self.ctx = ctx
        self.loop = loop
        self.connections = set()
        self.draining = False
        self.server = None

    def protocol_factory(self):
        return DownstreamProtocol(self)

    def drain(self):
        """Stop keeping connections alive: idle ones close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


class DownstreamProtocol:
    """One client connection (asyncio protocol)."""

    def __init__(self, listener):
        self.listener = listener
        ctx = listener.ctx
        self.parser = RequestParser(ctx.max_head_size, ctx.max_request_line, ctx.max_headers)
        self.framer = None
        self.transport = None
        self.tx = None
        self.buf = None
        self.pos = 0
        self.state = ST_HEAD
        self.paused = 0
        self.write_paused = False
        self.client_addr = b""
        self.xf_lines = b""
        self.peer = None
        self.sockname = None
        self.local_port = 0
        self.view = None  # router.RequestView, reused per request when a VirtualService applies
        self.addr_strs = None  # (local, remote) "ip:port" for the access log, made on first use
        self.route_name = "default"
        # the request in flight
        self.ctx = None
        self.cluster = None
        self.endpoint = None
        self.upstream = None
        self.pending = None
        self.req_head = None
        self.req_remaining = 0
        self.req_done = False
        self.req_body_sent = False
        self.keep_alive = True
        self.resp_started = False
        self.start = 0.0
        self.bytes_rx = 0
        self.bytes_tx = 0
        self.retried = False
        self.flags = ""
        self.upgrading = False
        self.last_status = 0
        self.peer_eof = False  # tunnel: the client has sent EOF
        # traffic management (only set when a VirtualService / policy asks for it)
        self.resp_edit = None
        self.mirrors = None
        self.lr_picker = None
        self.lr_index = 0
        self.set_cookie = None
        self.delay_handle = None
        self.attempts = 0

    # -- asyncio protocol interface ------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.tx = transport.write  # bound once: no attribute lookup per response
        listener = self.listener
        listener.connections.add(self)
        listener.ctx.stats.cx_open()
        peer = transport.get_extra_info("peername")
        self.peer = peer
        self.sockname = transport.get_extra_info("sockname")
        self.local_port = self.sockname[1] if self.sockname else 0
        host = peer[0] if peer else "unknown"
        self.client_addr = host.encode()
        self.xf_lines = b"x-forwarded-proto: http\r\nx-forwarded-for: " + self.client_addr + b"\r\n"
        if listener.draining:
            transport.close()

    def data_received(self, data):
        state = self.state
        if state == ST_TUNNEL:
            up = self.upstream
            if up is not None and up.transport is not None:
                up.transport.write(data)
            elif self.pending is not None:
                self.pending.append(data)
            return
        if state == ST_CLOSED:
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
        self._process()

    def eof_received(self):
        # A half-closed client: finish what is in flight, then close (HTTP/1.1 has no half-close).
        if self.state == ST_HEAD and self.upstream is None:
            self._close()
            return False
        if self.state == ST_BODY:
            # The request body can never be completed: reset the request (Envoy: DC). Waiting
            # for the response instead left client, sidecar and upstream all waiting for ever.
            self._close()
            return False
        if self.state == ST_TUNNEL and self.upstream is not None and self.upstream.transport:
            up = self.upstream
            self.peer_eof = True
            if up.peer_eof:
                # Both ends have sent EOF: the tunnel is over. Returning True here kept both
                # half-closed transports open for ever (every finished WebSocket leaked two fds).
                up.downstream = None
                up.close()
                self.upstream_lost(up, True)
                return False
            try:
                self.upstream.transport.write_eof()
            except (OSError, RuntimeError, AttributeError):
                self.upstream.close()
            return True
        self.keep_alive = False
        return True

    def connection_lost(self, exc):
        prev = self.state
        self.state = ST_CLOSED
        listener = self.listener
        listener.connections.discard(self)
        listener.ctx.stats.cx_close()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.downstream = None
            up.close()
        if self.cluster is not None and prev != ST_HEAD:
            if prev == ST_TUNNEL:
                self._end_request(101)
            else:
                # The client went away with a request in flight (Envoy: DC).
                self.flags = "DC"
                self._end_request(self.last_status if self.resp_started else 0)
        self.buf = None

    def pause_writing(self):
        self.write_paused = True
        up = self.upstream
        if up is not None:
            up.pause(1)

    def resume_writing(self):
        self.write_paused = False
        up = self.upstream
        if up is not None:
            up.resume(1)

    # -- request processing ----------------------------------------------------------------------

    def _process(self):
        while True:
            state = self.state
            buf = self.buf
            if buf is None:
                return
            pos = self.pos
            end = len(buf)
            if pos >= end:
                self.buf = None
                self.pos = 0
                return
            if state == ST_HEAD:
                try:
                    n = self.parser.parse(buf, pos)
                except ProtocolError as e:
                    self._protocol_error(e)
                    return
                if n == 0:
                    if type(buf) is not bytearray:
                        nb = bytearray(buf[pos:]) if pos else bytearray(buf)
                        self.buf = nb
                        self.pos = 0
                    return
                self.pos = pos + n
                self._on_head()
            elif state == ST_BODY:
                self._forward_request_body(buf, pos, end)
            elif state == ST_WAIT:
                # Pipelined bytes wait for the response to finish; bound them.
                if end - pos > MAX_BUFFERED:
                    self._pause(PAUSE_PIPELINE)
                return
            elif state == ST_TUNNEL:
                chunk = buf[pos:] if pos else buf
                self.buf = None
                self.pos = 0
                self._send_up(bytes(chunk))
                return
            else:
                return

    def _on_head(self):
        p = self.parser
        ctx = self.listener.ctx
        self.ctx = ctx
        self.start = _monotonic()
        self.bytes_rx = p.head_length
        self.bytes_tx = 0
        self.flags = ""
        self.retried = False
        self.resp_started = False
        self.req_done = False
        self.req_body_sent = False
        self.keep_alive = p.keep_alive and not self.listener.draining
        host = p.host
        cluster = ctx.routes.get(host) if host is not None else None
        if cluster is None:
            cluster = ctx.default
        # body framing of the request
        if p.chunked:
            framer = self.framer
            if framer is None:
                framer = self.framer = ChunkedFramer()
            else:
                framer.reset()
            has_body = True
        else:
            self.req_remaining = p.content_length if p.content_length > 0 else 0
            has_body = self.req_remaining > 0
        ctx.stats.rq_start()
        self.resp_edit = None
        self.route_name = "default"
        path = None
        edit = None
        delay = 0.0
        if cluster is None and host is not None:
            table = ctx.tables.get(host) if ctx.tables is not None else None
            if table is None and ctx.wildcards is not None:
                table = _wildcard(ctx.wildcards, host)
            if table is not None:
                if type(table) is Cluster:
                    cluster = table
                else:
                    # A VirtualService applies: match, then act (router.py).
                    req = self.view
                    if req is None:
                        req = self.view = RequestView(p, b"http", self.local_port)
                    else:
                        req.reset(p)
                    entry = table.find(req)
                    if entry is None:
                        self.cluster = None
                        self._local(404, b"", "NR", has_body)
                        return
                    fault = entry.fault
                    if fault is not None:
                        if fault.abort_status and _random() * 100.0 < fault.abort_percent:
                            # Counted on the route's destination, as Envoy's istio_requests_total
                            # reports fault aborts (response_flags FI).
                            dest = entry.pick()
                            self.cluster = dest[0]
                            if self.cluster is not None:
                                self.cluster.stats.rq_start()
                            self._local(fault.abort_status, b"fault filter abort", "FI",
                                        has_body)
                            return
                        if fault.delay > 0 and _random() * 100.0 < fault.delay_percent:
                            delay = fault.delay
                    if entry.direct is not None:
                        self.cluster = None
                        self._local(entry.direct.status, entry.direct_body, "-", has_body)
                        return
                    if entry.redirect is not None:
                        self.cluster = None
                        self._local(entry.redirect.code, b"", "-", has_body,
                                    b"location: " + _location(entry.redirect, req) + b"\r\n")
                        return
                    self.route_name = entry.name or "%s/%d" % (entry.virtual_service,
                                                               entry.index)
                    dest = entry.pick()
                    cluster = dest[0]
                    edit = dest[2]
                    self.resp_edit = dest[3]
                    if entry.rewrite is not None:
                        path = entry.rewritten_path(req, req.block)
                    if entry.rewrite_authority is not None:
                        edit = HeaderEdit.merge(edit, _authority_edit(entry.rewrite_authority))
                    if cluster is None:
                        self.cluster = None
                        self._local(503, b"", "NC", has_body)
                        return
                    if entry.mirrors:
                        self._start_mirrors(entry, path, edit)
        if cluster is None:
            cluster = ctx.default
        if cluster is None or p.method == b"CONNECT":
            self.cluster = None
            self._local(404 if cluster is None else 405, b"", "NR" if cluster is None else "-",
                        has_body)
            return
        self.cluster = cluster
        ep = cluster.pick(self)
        if ep is None:
            self.cluster = cluster
            cluster.stats.rq_start()
            self._local(503, BODY_NO_HEALTHY, "UH", has_body)
            return
        self.endpoint = ep
        rid = p.request_id
        xff = p.forwarded_for
        if xff is None:
            extra = self.xf_lines
        else:
            extra = (b"x-forwarded-proto: http\r\nx-forwarded-for: " + xff + b", "
                     + self.client_addr + b"\r\n")
        if rid is None:
            extra = extra + b"x-request-id: " + request_id() + b"\r\n"
        if p.version == 0 and not p.upgrade:
            # Keep the upstream connection reusable for HTTP/1.0 clients too.
            extra = extra + b"connection: keep-alive\r\n"
        if edit is None:
            head = p.serialize(extra, path)
        else:
            head = p.serialize(extra + edit.extra, path, edit.drop)
        self.req_head = head
        self.upgrading = p.upgrade is not None
        cluster.stats.rq_start()
        ep.rq_active += 1
        ep.rq_total += 1
        self.state = ST_BODY if has_body else ST_WAIT
        if not has_body:
            self.req_done = True
        if delay > 0:
            # fault.delay: hold the request (and any body) as if the connection were being set up.
            self.flags = "DI"
            self.pending = [head]
            self.delay_handle = self.listener.loop.call_later(delay, self._delayed, ep)
            return
        up = ep.acquire()
        if up is not None:
            up.attach(self, True)
            self.upstream = up
            up.tx(head)
        else:
            self.pending = [head]
            self._connect(ep)

    def _delayed(self, ep):
        """The fault delay is over: send what waited."""
        self.delay_handle = None
        if self.state == ST_CLOSED or self.pending is None:
            return
        up = ep.acquire()
        if up is not None:
            up.attach(self, True)
            self.upstream = up
            self.upstream_ready(up)
        else:
            self._connect(ep)

    def _start_mirrors(self, entry, path, edit):
        """Fire-and-forget copies of this request to the route's mirror clusters."""
        p = self.parser
        host = p.host or b""
        # Envoy appends -shadow to the host name, before any port: a:80 -> a-shadow:80.
        colon = host.rfind(b":")
        if colon > 0 and b"]" not in host[colon:]:
            shadow = host[:colon] + b"-shadow" + host[colon:]
        else:
            shadow = host + b"-shadow"
        drop = (b"host",) + (edit.drop if edit is not None and edit.drop else ())
        extra = self.xf_lines + b"host: " + shadow + b"\r\nconnection: close\r\n"
        if edit is not None:
            extra = extra + edit.extra
        for cluster, percent, _ in entry.mirrors:
            if cluster is None or _random() * 100.0 >= percent:
                continue
            ep = cluster.pick(None)
            if ep is None:
                continue
            m = MirrorProtocol(ep, self.listener.loop, p.serialize(extra, path, drop))
            if self.mirrors is None:
                self.mirrors = []
            self.mirrors.append(m)
            m.start()

    def _forward_request_body(self, buf, pos, end):
        framer = self.framer
        if self.parser.chunked:
            try:
                k = framer.feed(buf, pos, end)
            except ProtocolError as e:
                self._body_error(e)
                return
            done = framer.done
        else:
            k = end - pos
            if k > self.req_remaining:
                k = self.req_remaining
            self.req_remaining -= k
            done = self.req_remaining == 0
        if k:
            self.bytes_rx += k
            self.req_body_sent = True
            if pos == 0 and k == end:
                self._send_up(buf if type(buf) is bytes else bytes(buf))
            else:
                self._send_up(bytes(buf[pos:pos + k]))
        self.pos = pos + k
        if done:
            self.req_done = True
            self.state = ST_WAIT

    def _send_up(self, data):
        mirrors = self.mirrors
        if mirrors is not None:
            for m in mirrors:
                m.send(data)
        up = self.upstream
        if up is not None and up.transport is not None:
            up.tx(data)
            return
        pending = self.pending
        if pending is None:
            return
        pending.append(data)
        size = 0
        for x in pending:
            size += len(x)
        if size > MAX_BUFFERED:
            self._pause(PAUSE_CONNECTING)

    def _connect(self, ep):
        up = UpstreamProtocol(ep, self.listener.loop, self.cluster.stats)
        up.attach(self, False)
        self.upstream = up
        ep.cx_total += 1
        self.listener.loop.create_task(up.connect())

    def upstream_ready(self, up):
        """The new upstream connection ``up`` is established: flush what waited for it."""
        pending = self.pending
        self.pending = None
        if pending:
            up.transport.write(b"".join(pending))
        self._resume(PAUSE_CONNECTING)

    def upstream_failed(self, up, reason):
        """Connecting to the endpoint failed (refused, unreachable, timed out)."""
        if self.upstream is not up:
            return
        self.upstream = None
        ep = self.endpoint
        if ep is not None:
            mark_unhealthy(ep, EJECTION_SECONDS)
        # Istio's default retry policy retries connect failures (2 attempts) on another
        # endpoint; nothing has been sent yet, everything is still in ``pending``.
        if self.attempts < 2 and self.pending is not None and self.cluster is not None:
            other = self.cluster.pick_other(self, ep)
            if other is not None:
                self.attempts += 1
                if ep is not None:
                    ep.rq_active -= 1
                other.rq_active += 1
                other.rq_total += 1
                self.endpoint = other
                self.flags = "URX" if self.attempts else ""
                self._connect(other)
                return
        self.pending = None
        self._local(503, BODY_CONNECT_FAILURE, "UF", not self.req_done)
        self._continue()

    def upstream_lost(self, up, got_response_bytes):
        """The upstream connection closed while this request was using it."""
        if self.upstream is not up:
            return
        self.upstream = None
        if self.state == ST_TUNNEL:
            self._end_request(101)
            self._close()
            return
        if not got_response_bytes:
            # A pooled connection the server had closed: safe to retry once when nothing of the
            # request body has been consumed (Envoy resets such requests too; clients see 503 UC).
            if up.reused and not self.retried and not self.req_body_sent and self.req_done:
                self.retried = True
                self.pending = [self.req_head]
                self._connect(self.endpoint)
                return
            self.cluster.stats.reset()
            self._local(503, BODY_CONNECTION_TERMINATION, "UC", not self.req_done)
            self._continue()
            return
        # Mid-response: the client cannot be told cleanly; close it (Envoy: UC, response cut).
        self.flags = "UC"
        self.cluster.stats.reset()
        self._end_request(up.status)
        self._close()

    def upstream_bad_response(self, up, err):
        # Detach ``up`` first: its _process loop runs while ``up.downstream`` is this connection,
        # and the bytes that failed to parse are still in its buffer; left attached it would
        # parse them again forever (a bad chunk after a response head spun the worker at 100%).
        up.downstream = None
        up.buf = None
        if self.upstream is not up:
            return
        self.upstream = None
        up.close()
        if self.resp_started:
            self.flags = "UPE"
            self._end_request(up.status)
            self._close()
            return
        self._local(502, BODY_PROTOCOL_ERROR, "UPE", not self.req_done)
        self._continue()

    def response_head(self, up, head_extra_ok):
        """Called by the upstream with a final response head; returns the extra header lines."""
        self.resp_started = True
        extra = b""
        edit = self.resp_edit
        if edit is not None:
            extra = edit.extra
        if self.set_cookie is not None:
            extra = extra + self.set_cookie
        if not self.keep_alive or not self.req_done or self.listener.draining:
            self.keep_alive = False
            return extra + b"connection: close\r\n"
        if self.parser.version == 0:
            if head_extra_ok:
                return extra + b"connection: keep-alive\r\n"
            self.keep_alive = False
            return extra
        if not head_extra_ok:
            self.keep_alive = False
            return extra + b"connection: close\r\n"
        return extra

    def resp_drop(self):
        """Response header names a route's edits remove or replace (None: none)."""
        edit = self.resp_edit
        return edit.drop if edit is not None else None

    def release_lr(self):
        lr = self.lr_picker
        if lr is not None:
            self.lr_picker = None
            lr.release(self.lr_index)

    def write(self, data):
        self.bytes_tx += len(data)
        self.tx(data)

    def start_tunnel(self, up):
        """A 101 response: from now on bytes are copied both ways."""
        self.state = ST_TUNNEL
        self.pending = None
        buf = self.buf
        if buf is not None and self.pos < len(buf):
            up.transport.write(bytes(buf[self.pos:]))
        self.buf = None
        self.pos = 0

    def response_done(self, up, status, reusable):
        """The response ended; ``reusable``: the upstream connection may serve another request."""
        self.last_status = status
        self.upstream = None
        ep = self.endpoint
        if reusable and self.req_done:
            up.detach()
            ep.release(up)
        else:
            up.detach()
            up.close()
        self._end_request(status)
        if not self.keep_alive:
            self._close()
            return
        self.state = ST_HEAD
        self._continue()

    def _continue(self):
        """After a response finished outside ``_process``: serve the next pipelined request."""
        if self.state != ST_HEAD:
            return
        self._resume(PAUSE_PIPELINE)
        if self.buf is not None:
            self._process()

    def _end_request(self, status):
        cluster = self.cluster
        ctx = self.ctx
        if self.lr_picker is not None:
            self.release_lr()
        self.mirrors = None
        self.set_cookie = None
        self.attempts = 0
        if self.delay_handle is not None:
            self.delay_handle.cancel()
            self.delay_handle = None
        dur = _monotonic() - self.start
        us = int(dur * 1000000)
        ep = self.endpoint
        if ep is not None:
            ep.rq_active -= 1
            self.endpoint = None
        flags = self.flags
        if cluster is not None:
            cluster.stats.rq_end(status, us, self.bytes_rx, self.bytes_tx)
            if flags:
                cluster.stats.flag(flags, status)
        if ctx is not None:
            ctx.stats.rq_end(status, us, self.bytes_rx, self.bytes_tx)
            if flags and cluster is None:
                ctx.stats.flag(flags, status)
            if ctx.access_log is not None:
                self._log(ctx, status, dur, ep)
        self.cluster = None

    def _log(self, ctx, status, dur, ep):
        # Cold unless the access log is on; what is fixed per connection is formatted once.
        p = self.parser
        if self.addr_strs is None:
            self.addr_strs = (_addr(self.sockname), _addr(self.peer))
        rec = _access_record()()
        rec.start_time = time.time() - dur
        rec.method = _s(p.method)
        rec.path = _s(p.path)
        rec.protocol = "HTTP/1.1" if p.version == 1 else "HTTP/1.0"
        rec.response_code = status
        rec.response_flags = self.flags if self.flags and self.flags != "-" else ""
        rec.bytes_received = self.bytes_rx
        rec.bytes_sent = self.bytes_tx
        rec.duration_ms = int(dur * 1000)
        rec.x_forwarded_for = _s(p.forwarded_for)
        rec.user_agent = _s(p.get(b"user-agent"))
        rec.request_id = _s(p.request_id or self._last_rid())
        rec.authority = _s(p.host)
        rec.upstream_host = ep.host if ep is not None else None
        rec.upstream_cluster = self.cluster.name if self.cluster is not None else None
        rec.downstream_local_address = self.addr_strs[0]
        rec.downstream_remote_address = self.addr_strs[1]
        rec.route_name = self.route_name if self.cluster is not None else None
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

    def _local(self, status, body, flags, has_unread_body, extra=b""):
        """Answer the current request locally (no route, no endpoint, upstream failure).

        A request whose body has not been read in full cannot be followed by another on the same
        connection, so the connection closes after the reply.
        """
        self.flags = flags if flags != "-" else ""
        if has_unread_body or self.listener.draining:
            self.keep_alive = False
        reply = local_reply(status, body, not self.keep_alive, extra)
        self.resp_started = True
        self.write(reply)
        self.last_status = status
        self._end_request(status)
        if not self.keep_alive:
            self._close()
            return
        self.state = ST_HEAD

    def _protocol_error(self, e):
        """A bad request head: answer with the error's status and close (nothing is forwarded)."""
        ctx = self.listener.ctx
        self.ctx = ctx
        self.cluster = None
        self.flags = "DPE"
        self.start = _monotonic()
        self.bytes_rx = len(self.buf) - self.pos if self.buf is not None else 0
        self.bytes_tx = 0
        ctx.stats.rq_start()
        self.keep_alive = False
        status = e.status_hint
        reply = local_reply(status, str(e).encode("ascii", "replace"), True)
        self.write(reply)
        self.last_status = status
        ctx.stats.rq_end(status, 0, self.bytes_rx, self.bytes_tx)
        ctx.stats.flag("DPE", status)
        if ctx.access_log is not None:
            self._log_error(ctx, status)
        self._close()

    def _log_error(self, ctx, status):
        rec = _access_record()()
        rec.start_time = time.time()
        rec.response_code = status
        rec.response_flags = "DPE"
        rec.bytes_received = self.bytes_rx
        rec.bytes_sent = self.bytes_tx
        rec.duration_ms = 0
        rec.downstream_local_address = _addr(self.sockname)
        rec.downstream_remote_address = _addr(self.peer)
        ctx.access_log.log(rec)

    def _body_error(self, e):
        """Bad framing inside a request body already being forwarded: reset both sides."""
        self.flags = "DPE"
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.downstream = None
            up.close()
        if not self.resp_started:
            self.keep_alive = False
            self.write(local_reply(400, str(e).encode("ascii", "replace"), True))
            self._end_request(400)
        else:
            self._end_request(self.last_status)
        self._close()

    def drain(self):
        if self.state == ST_HEAD and self.upstream is None and (
                self.buf is None or self.pos >= len(self.buf)):
            self._close()
        else:
            self.keep_alive = False

    def _pause(self, why):
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= why

    def _resume(self, why):
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and self.transport is not None and self.state != ST_CLOSED:
                self.transport.resume_reading()

    def _close(self):
        if self.state != ST_CLOSED:
            self.state = ST_CLOSED
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.downstream = None
            up.close()
        if self.transport is not None:
            self.transport.close()


class UpstreamProtocol:
    """One connection to an endpoint (asyncio protocol)."""

    def __init__(self, endpoint, loop, stats):
        self.endpoint = endpoint
        self.loop = loop
        self.stats = stats
        self.transport = None
        self.tx = None
        self.downstream = None
        self.parser = None
        self.framer = None
        self.buf = None
        self.pos = 0
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
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

    async def connect(self):
        ep = self.endpoint
        try:
            await asyncio.wait_for(
                self.loop.create_connection(self._self, ep.address, ep.port),
                ep.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            self.closed = True
            self.stats.cx_fail()
            ds = self.downstream
            if ds is not None:
                self.downstream = None
                ds.upstream_failed(self, e)

    def _self(self):
        return self

    def attach(self, ds, reused):
        self.downstream = ds
        self.reused = reused
        self.got_bytes = False
        self.in_head = True
        self.status = 0
        if self.parser is None:
            self.parser = ResponseParser()

    def detach(self):
        self.downstream = None
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
        ep = self.endpoint
        ep.cx_active += 1
        self.stats.cx_open()
        if self.closed:
            transport.close()
            return
        ds = self.downstream
        if ds is not None:
            ds.upstream_ready(self)
            if ds.write_paused:
                self.pause(1)
        else:
            transport.close()

    def data_received(self, data):
        ds = self.downstream
        if ds is None:
            # Bytes on an idle pooled connection: the server broke protocol; drop the connection.
            self.close()
            return
        self.got_bytes = True
        if self.tunnel:
            ds.write(data)
            return
        buf = self.buf
        if buf is None:
            buf = self.buf = data
            self.pos = 0
        elif type(buf) is bytearray:
            buf += data
        else:
            nb = bytearray(buf[self.pos:])
            nb += data
            buf = self.buf = nb
            self.pos = 0
        self._process(ds)

    def _process(self, ds):
        while self.downstream is ds:
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
                    ds.upstream_bad_response(self, e)
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
                    # Interim response (100 Continue, 103 Early Hints): relay and keep reading;
                    # never to an HTTP/1.0 client, which cannot take one (RFC 9110 section 15.2).
                    if ds.parser.version != 0:
                        ds.write(p.serialize())
                    continue
                self._on_head(ds, p, buf, pos, end)
            else:
                self._body(ds, buf, pos, end)

    def _on_head(self, ds, p, buf, pos, end):
        status = self.status
        self.in_head = False
        if status == 101:
            if ds.upgrading and p.upgrade is not None:
                self.tunnel = True
                head = p.serialize(b"")
                rest = buf[pos:end] if pos < end else b""
                self.buf = None
                self.pos = 0
                ds.resp_started = True
                ds.write(head + bytes(rest) if rest else head)
                ds.start_tunnel(self)
                return
            ds.upstream_bad_response(self, ProtocolError("unexpected 101 response", 502))
            return
        if ds.parser.is_head or status == 204 or status == 304:
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
        extra = ds.response_head(self, self.framing != RF_CLOSE)
        framing = self.framing
        if framing == RF_NONE or (framing == RF_LENGTH and self.remaining == 0):
            self.buf = None
            self.pos = 0
            ds.write(p.serialize(extra, 0, ds.resp_drop()))
            ds.response_done(self, status, self.keep_alive and pos == end)
            return
        # One write for the head and whatever body came with it.
        try:
            k = self._take(buf, pos, end)
        except ProtocolError as e:
            ds.write(p.serialize(extra, 0))
            ds.upstream_bad_response(self, e)
            return
        done = self.body_done
        ds.write(p.serialize(extra, k, ds.resp_drop()))
        pos += k
        self.pos = pos
        if pos >= end:
            self.buf = None
            self.pos = 0
        if done:
            ds.response_done(self, status, self.keep_alive and self.buf is None)

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

    def _body(self, ds, buf, pos, end):
        try:
            k = self._take(buf, pos, end)
        except ProtocolError as e:
            ds.upstream_bad_response(self, e)
            return
        done = self.body_done
        if k:
            if pos == 0 and k == end and type(buf) is bytes:
                ds.write(buf)
            else:
                ds.write(bytes(buf[pos:pos + k]))
        pos += k
        self.pos = pos
        if pos >= end:
            self.buf = None
            self.pos = 0
        if done:
            ds.response_done(self, self.status, self.keep_alive and self.buf is None)

    def eof_received(self):
        ds = self.downstream
        if ds is not None and self.tunnel:
            self.peer_eof = True
            if ds.peer_eof:
                # Both ends have sent EOF: close the tunnel (see DownstreamProtocol.eof_received).
                self.downstream = None
                self.close()
                ds.upstream_lost(self, True)
                return False
            try:
                ds.transport.write_eof()
            except (OSError, RuntimeError, AttributeError):
                ds._close()
            return True
        return False

    def connection_lost(self, exc):
        was_closed = self.closed
        self.closed = True
        ep = self.endpoint
        if self.transport is not None:
            ep.cx_active -= 1
            self.stats.cx_close()
            if not was_closed:
                self.stats.cx_remote_close()
        ds = self.downstream
        if ds is None:
            return
        if not self.in_head and self.framing == RF_CLOSE and not self.tunnel:
            # A close-delimited body ends here.
            ds.response_done(self, self.status, False)
            return
        self.downstream = None
        ds.upstream_lost(self, self.got_bytes)

    def pause_writing(self):
        ds = self.downstream
        if ds is not None:
            ds._pause(PAUSE_UPSTREAM_FULL)

    def resume_writing(self):
        ds = self.downstream
        if ds is not None:
            ds._resume(PAUSE_UPSTREAM_FULL)


class MirrorProtocol:
    """A fire-and-forget copy of a request (VirtualService ``mirror``): its response is read and
    discarded; a slow or dead mirror is dropped and never slows or fails the primary request."""

    def __init__(self, endpoint, loop, head):
        self.endpoint = endpoint
        self.loop = loop
        self.transport = None
        self.pending = [head]
        self.size = len(head)
        self.dead = False
        self.timer = None

    def start(self):
        self.timer = self.loop.call_later(MIRROR_TIMEOUT, self.abort)
        self.loop.create_task(self._connect())

    async def _connect(self):
        ep = self.endpoint
        try:
            await asyncio.wait_for(
                self.loop.create_connection(self._self, ep.address, ep.port), ep.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            self.abort()

    def _self(self):
        return self

    def send(self, data):
        if self.dead:
            return
        t = self.transport
        if t is None:
            self.size += len(data)
            if self.size > MIRROR_MAX_BUFFER:
                self.abort()
                return
            self.pending.append(data)
            return
        if t.get_write_buffer_size() > MIRROR_MAX_BUFFER:
            self.abort()
            return
        t.write(data)

    def abort(self):
        self.dead = True
        self.pending = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport):
        self.transport = transport
        if self.dead:
            transport.abort()
            return
        pending = self.pending
        self.pending = None
        if pending:
            transport.write(b"".join(pending))

    def data_received(self, data):
        pass  # the mirror's answer is discarded

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.dead = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass


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


def _addr(a):
    if not a:
        return None
    return "%s:%d" % (a[0], a[1])
