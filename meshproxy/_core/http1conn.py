"""The HTTP/1.1 downstream codec: listeners and client connections.

One source, two builds: Cython compiles this file with ``http1conn.pxd``; ``meshproxy._py.http1conn``
is the same file uncompiled. Keep it plain Python.

Theory of operation
-------------------
An ``Http1Connection`` serves one client connection. It knows HTTP/1.1 framing and connection
management, nothing about routing: for each request head it creates a ``stream.Stream`` and hands
it the body; the stream calls back through the ``stream.Codec`` contract to answer. HTTP/1.1 has
no multiplexing, so one stream is active at a time and pipelined requests wait in the receive
buffer. The connection's state moves:

    ST_HEAD --head parsed, stream started--> ST_BODY --request body complete--> ST_WAIT
    ST_WAIT --stream done, keep-alive--> ST_HEAD (next pipelined request, if buffered)
    any --101 Switching Protocols--> ST_TUNNEL (bytes copied both ways until either side closes)
    any --error or close--> ST_CLOSED

A request with no body goes straight from ST_HEAD to ST_WAIT.

Timeouts and limits (``Listener.configure`` from the Bootstrap's ``limits``): each connection owns
one ``timers.Timer`` for its life and a ``tkind`` saying what its deadline means: T_IDLE (no
request in flight: the downstream idle timeout), T_HEAD (part of a request head buffered: the head
must be complete by then), T_STREAM (a request in flight: the stream idle timeout, pushed forward
by every byte either way) or T_NONE. Re-arming per request writes a deadline and an int: the
timing wheel moves the timer lazily (see ``timers``). The client's transport write buffer is
limited (``set_write_buffer_limits(high=per_connection_buffer_limit_bytes)``): over it
(``pause_writing``) the upstream stops being read, the client stops being read, and no further
pipelined request is parsed (local replies included) until ``resume_writing``. A listener at
``max_downstream_connections`` closes new connections at once (counted as ``cx_overflow``).

Routing state lives in a
``stream.ListenerContext`` per listener, replaced whole on reload; a stream reads it once, when it starts,
so in-flight requests finish on the snapshot they started with.
"""
# Relative imports: compiled, these are the compiled siblings; as meshproxy._py.http1conn, the twins.
from .http1 import ChunkedFramer, RequestParser
from .pathnorm import needs_normalizing, normalize
from .router import RequestView
from .stream import Codec, ListenerContext, Stream, local_reply  # noqa: F401 (typed in the .pxd)
from .timers import Timer

from meshproxy.errors import ProtocolError

ST_HEAD = 0
ST_BODY = 1
ST_WAIT = 2
ST_TUNNEL = 3
ST_CLOSED = 4

PAUSE_PIPELINE = 16  # (a codec's own pause reasons start at 16, see stream.PAUSE_*)
PAUSE_WRITE = 32  # the client's transport write buffer is over the per-connection limit

# What a connection's timer deadline means.
T_NONE = 0
T_IDLE = 1  # downstream idle timeout (no request in flight)
T_HEAD = 2  # request head timeout (a partial head is buffered)
T_STREAM = 3  # stream idle timeout (a request in flight)
MAX_PIPELINED = 65536  # pipelined bytes held while a response is pending before reading pauses


class Listener:
    """A listening socket's shared state: the current context and the open connections."""

    def __init__(self, ctx, loop, timers=None):
        self.ctx = ctx
        self.loop = loop
        self.connections = set()
        self.draining = False
        self.server = None
        self.timers = timers  # a timers.TimerWheel; None: no timeouts
        self.head_timeout = 0.0  # seconds; 0 = none (all four)
        self.idle_timeout = 0.0
        self.stream_idle_timeout = 0.0
        self.buffer_limit = 0  # bytes of client transport write buffer; 0 = transport default
        self.max_connections = 0  # 0 = no limit
        self.tls_id = None  # this sidecar's SPIFFE ID when the listener takes mutual TLS

    def configure(self, limits):
        """Take the timeouts and limits of a Bootstrap ``Limits`` (new connections get the new
        buffer limit; timeouts apply from the next time a connection arms its timer)."""
        self.head_timeout = float(limits.request_headers_timeout)
        self.idle_timeout = float(limits.idle_timeout)
        self.stream_idle_timeout = float(limits.stream_idle_timeout)
        self.buffer_limit = int(limits.per_connection_buffer_limit_bytes)
        self.max_connections = int(limits.max_downstream_connections)

    def protocol_factory(self):
        return Http1Connection(self)

    def drain(self):
        """Stop keeping connections alive: idle ones close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


class Http1Connection(Codec):
    """One HTTP/1.x client connection (asyncio protocol) and the codec of its streams."""

    def __init__(self, listener):
        Codec.__init__(self, listener.loop)
        self.listener = listener
        ctx = listener.ctx
        self.parser = RequestParser(ctx.max_head_size, ctx.max_request_line, ctx.max_headers)
        self.view = RequestView(self.parser, b"http", 0)
        self.framer = None
        self.transport = None
        self.tx = None
        self.buf = None
        self.pos = 0
        self.state = ST_HEAD
        self.paused = 0
        self.in_process = False
        self.keep_alive = True
        self.req_remaining = 0
        self.stream = None
        self.peer = None
        self.sockname = None
        self.addr_strs = None  # (local, remote) "ip:port" for the access log, made on first use
        self.timer = None
        self.tkind = T_NONE

    # -- asyncio protocol interface ------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.tx = transport.write  # bound once: no attribute lookup per response
        listener = self.listener
        if 0 < listener.max_connections <= len(listener.connections):
            # Envoy's downstream_cx_overflow: closed at once, never counted as open.
            listener.ctx.stats.overflow()
            self.state = ST_CLOSED
            transport.close()
            return
        listener.connections.add(self)
        if listener.buffer_limit > 0:
            transport.set_write_buffer_limits(high=listener.buffer_limit)
        wheel = listener.timers
        if wheel is not None:
            self.wheel = wheel
            self.timer = Timer(wheel, self)
            if listener.idle_timeout > 0.0:
                self.tkind = T_IDLE
                wheel.arm(self.timer, wheel.now + listener.idle_timeout)
        listener.ctx.stats.cx_open()
        peer = transport.get_extra_info("peername")
        self.peer = peer
        self.sockname = transport.get_extra_info("sockname")
        self.view.port = self.sockname[1] if self.sockname else 0
        host = peer[0] if peer else "unknown"
        self.client_addr = host.encode()
        self.xf_lines = b"x-forwarded-proto: http\r\nx-forwarded-for: " + self.client_addr + b"\r\n"
        if listener.tls_id is not None:
            # (cold: once per connection, on listeners that take mutual TLS)
            from meshproxy import tls
            pc = tls.peer_cert(transport.get_extra_info("ssl_object"))
            if pc is not None:
                self.peer_principal = pc.spiffe_id
                self.xfcc = tls.xfcc_line(listener.tls_id, pc)
        if listener.draining:
            transport.close()

    def data_received(self, data):
        state = self.state
        if self.tkind == T_STREAM:
            self._touch()
        if state == ST_TUNNEL:
            s = self.stream
            if s is not None:
                s.tunnel_data(data)
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
        state = self.state
        if state == ST_HEAD and self.stream is None:
            self._close()
            return False
        if state == ST_BODY:
            # The request body can never be completed: reset the request (Envoy: DC). Waiting
            # for the response instead left client, sidecar and upstream all waiting for ever.
            self._close()
            return False
        if state == ST_TUNNEL and self.stream is not None:
            return self.stream.downstream_eof()
        self.keep_alive = False
        return True

    def connection_lost(self, exc):
        listener = self.listener
        if self in listener.connections:  # (not for a connection closed as an overflow)
            listener.connections.discard(self)
            listener.ctx.stats.cx_close()
        t = self.timer
        if t is not None:
            self.tkind = T_NONE
            t.cancel()
            t.target = None  # no cycle left behind
            self.timer = None
        s = self.stream
        self.stream = None
        if s is not None:
            s.downstream_reset()
        self.state = ST_CLOSED
        self.buf = None

    def pause_writing(self):
        # The client does not read what it is sent: stop reading what the upstream sends, and
        # stop reading (and serving) the client's pipelined requests. A request body being
        # uploaded or tunnel bytes keep flowing (the upstream side bounds them).
        self.write_paused = True
        state = self.state
        if state != ST_BODY and state != ST_TUNNEL:
            self.pause_reading(PAUSE_WRITE)
        s = self.stream
        if s is not None:
            s.pause_upstream()

    def resume_writing(self):
        self.write_paused = False
        self.resume_reading(PAUSE_WRITE)
        s = self.stream
        if s is not None:
            s.resume_upstream()
        elif (self.state == ST_HEAD and not self.in_process and self.buf is not None
                and self.transport is not None):
            self._process()  # pipelined requests held while the client was not reading

    # -- request parsing ---------------------------------------------------------------------------

    def _process(self):
        self.in_process = True
        try:
            self._process_loop()
        finally:
            self.in_process = False

    def _process_loop(self):
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
                if self.write_paused:
                    # The client is not reading its responses: serve nothing more (local
                    # replies included) until it does (resume_writing).
                    self.pause_reading(PAUSE_WRITE)
                    return
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
                    if self.tkind != T_HEAD and self.timer is not None:
                        self._arm_head()
                    return
                self.pos = pos + n
                if self.timer is not None:
                    if self.listener.stream_idle_timeout > 0.0:
                        self._arm_stream()
                    else:
                        self.tkind = T_NONE  # (lazy: a stale deadline finds T_NONE and is dropped)
                self._on_head(n)
            elif state == ST_BODY:
                self._request_body(buf, pos, end)
            elif state == ST_WAIT:
                # Pipelined bytes wait for the response to finish; bound them.
                if end - pos > MAX_PIPELINED:
                    self.pause_reading(PAUSE_PIPELINE)
                return
            elif state == ST_TUNNEL:
                chunk = buf[pos:] if pos else buf
                self.buf = None
                self.pos = 0
                if self.stream is not None:
                    self.stream.tunnel_data(bytes(chunk))
                return
            else:
                return

    def _on_head(self, n):
        p = self.parser
        listener = self.listener
        # Path normalisation (Istio pathNormalization, BASE by default): one scan of the path;
        # only a path that needs it is rewritten, and routing, filters and the upstream then see
        # the normalised path. A path that cannot be normalised is answered 400, as Envoy does.
        norm = None
        mode = listener.ctx.path_normalization
        path = p.path
        if needs_normalizing(path, mode):
            norm = normalize(path, mode)
            if norm is None:
                self._protocol_error(ProtocolError("path normalization failed", 400))
                return
            if norm is path:
                norm = None
        self.keep_alive = p.keep_alive and not listener.draining
        pre = False
        k = 0
        # body framing of the request
        if p.chunked:
            framer = self.framer
            if framer is None:
                framer = self.framer = ChunkedFramer()
            else:
                framer.reset()
            has_body = True
            buf = self.buf
            pos = self.pos
            if pos < len(buf):
                # Body bytes came with the head: frame them before the stream starts, so a bad
                # chunk is answered 400 with nothing at all sent upstream (not even the head).
                try:
                    k = framer.feed(buf, pos, len(buf))
                except ProtocolError as e:
                    self._protocol_error(e)
                    return
                pre = True
        else:
            self.req_remaining = p.content_length if p.content_length > 0 else 0
            has_body = self.req_remaining > 0
        self.state = ST_BODY if has_body else ST_WAIT
        self.view.reset(p)
        if norm is not None:
            self.view.set_path(norm)
        s = Stream.new(self, listener.ctx, p, self.view)
        if norm is not None:
            s.path = norm  # the upstream's path unless a rewrite replaces it
        self.stream = s
        if not has_body:
            s.request_end()
        s.start(n)
        if pre and self.state == ST_BODY:
            # the bytes framed above, now validated, go to the stream
            self._chunked_body(self.stream, buf, pos, k)

    def _request_body(self, buf, pos, end):
        s = self.stream
        if self.parser.chunked:
            try:
                k = self.framer.feed(buf, pos, end)
            except ProtocolError as e:
                self._body_error(e)
                return
            self._chunked_body(s, buf, pos, k)
            return
        k = end - pos
        if k > self.req_remaining:
            k = self.req_remaining
        self.req_remaining -= k
        if k:
            if pos == 0 and k == end:
                data = buf if type(buf) is bytes else bytes(buf)
            else:
                data = bytes(buf[pos:pos + k])
            if s is not None:
                s.request_data(data)
        self.pos = pos + k
        if self.req_remaining == 0 and self.state == ST_BODY:
            self.state = ST_WAIT
            if s is not None:
                s.request_end()

    def _chunked_body(self, s, buf, pos, k):
        """Hand ``buf[pos:pos + k]``, already framed, to the stream: the bytes up to any held
        trailer section as they are, the trailer section (when held) as the framer rewrote it."""
        framer = self.framer
        fwd = k - framer.held
        if fwd > 0 and s is not None:
            if pos == 0 and fwd == len(buf):
                data = buf if type(buf) is bytes else bytes(buf)
            else:
                data = bytes(buf[pos:pos + fwd])
            s.request_data(data)
        self.pos = pos + k
        if framer.done and self.state == ST_BODY:
            tr = framer.trailers()
            if tr is not None and s is not None:
                s.request_data(tr)
            self.state = ST_WAIT
            if s is not None:
                s.request_end()

    # -- timeouts --------------------------------------------------------------------------------

    def _arm_head(self):
        """Part of a request head is buffered: the rest must come within the head timeout."""
        t = self.listener.head_timeout
        if t > 0.0:
            self.tkind = T_HEAD
            self.timer.wheel.arm(self.timer, self.loop.time() + t)

    def _arm_stream(self):
        self.tkind = T_STREAM
        self._touch()

    def _touch(self):
        """Stream activity: push the stream idle deadline forward (one field write, usually)."""
        timer = self.timer
        if timer is not None:
            timer.wheel.arm(timer, timer.wheel.now + self.listener.stream_idle_timeout)

    def _arm_idle(self):
        timer = self.timer
        idle = self.listener.idle_timeout
        if idle > 0.0:
            self.tkind = T_IDLE
            timer.wheel.arm(timer, timer.wheel.now + idle)
        else:
            self.tkind = T_NONE

    def on_timer(self, now):
        """The timing wheel's callback: the deadline of ``tkind`` has come."""
        kind = self.tkind
        self.tkind = T_NONE
        state = self.state
        if state == ST_CLOSED or kind == T_NONE:
            return
        stats = self.listener.ctx.stats
        if kind == T_IDLE:
            if state == ST_HEAD and self.stream is None:
                stats.idle_timeout()  # Envoy: downstream_cx_idle_timeout
                self.keep_alive = False
                self._close()
        elif kind == T_HEAD:
            if state == ST_HEAD and self.stream is None:
                stats.header_timeout()  # Envoy: downstream_rq_header_timeout
                self.keep_alive = False
                self.tx(local_reply(408, b"request header timeout", True))
                self._close()
        elif kind == T_STREAM:
            s = self.stream
            if s is None or s.is_done():
                return
            stats.stream_idle_timeout()  # Envoy: downstream_rq_idle_timeout
            self.keep_alive = False
            if not s.resp_started and (state == ST_BODY or state == ST_WAIT):
                s.local_reply(408, b"stream timeout", "SI", b"")
            else:
                self._close()

    # -- the codec contract (called by the stream) ---------------------------------------------

    def send_response_head(self, s, resp, extra, k, delimited):
        if s is not self.stream:
            return
        if not self.keep_alive or not s.req_done or self.listener.draining:
            self.keep_alive = False
            extra = extra + b"connection: close\r\n"
        elif self.parser.version == 0:
            if delimited:
                extra = extra + b"connection: keep-alive\r\n"
            else:
                self.keep_alive = False
        elif not delimited:
            self.keep_alive = False
            extra = extra + b"connection: close\r\n"
        if s.resp_drop is None:
            data = resp.serialize(extra, k)
        else:
            data = resp.serialize(extra, k, s.resp_drop)
        s.bytes_tx += len(data)
        self.tx(data)

    def send_interim(self, s, resp):
        # Never to an HTTP/1.0 client, which cannot take one (RFC 9110 section 15.2).
        if s is self.stream and self.parser.version != 0:
            data = resp.serialize()
            s.bytes_tx += len(data)
            self.tx(data)

    def send_data(self, s, data):
        if s is self.stream and self.state != ST_CLOSED:
            if self.tkind == T_STREAM:
                self._touch()
            s.bytes_tx += len(data)
            self.tx(data)

    def send_local_reply(self, s, status, body, extra):
        # A request whose body has not been read in full cannot be followed by another on the
        # same connection, so the connection closes after the reply.
        if s is not self.stream or self.state == ST_CLOSED:
            return
        if self.state == ST_BODY or self.listener.draining:
            self.keep_alive = False
        data = local_reply(status, body, not self.keep_alive, extra)
        s.bytes_tx += len(data)
        self.tx(data)

    def stream_done(self, s):
        if s is not self.stream:
            return
        self.stream = None
        if not self.keep_alive or self.state == ST_CLOSED:
            self._close()
            return
        self.state = ST_HEAD
        if self.timer is not None:
            self._arm_idle()
        self.resume_reading(PAUSE_PIPELINE)
        if not self.in_process and self.buf is not None:
            self._process()

    def reset_stream(self, s):
        if s is self.stream:
            self.stream = None
            self._close()

    def start_tunnel(self, s):
        """A 101 response: from now on bytes are copied both ways."""
        self.state = ST_TUNNEL
        buf = self.buf
        self.buf = None
        if buf is not None and self.pos < len(buf):
            s.tunnel_data(bytes(buf[self.pos:]))
        self.pos = 0

    def tunnel_eof(self, s):
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError, AttributeError):
            self._close()

    def in_tunnel(self):
        return self.state == ST_TUNNEL

    def pause_reading(self, why):
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= why

    def resume_reading(self, why):
        if self.paused & why:
            self.paused &= ~why
            if not self.paused and self.transport is not None and self.state != ST_CLOSED:
                self.transport.resume_reading()

    def addresses(self):
        if self.addr_strs is None:
            self.addr_strs = (_addr(self.sockname), _addr(self.peer))
        return self.addr_strs

    # -- errors and closing ----------------------------------------------------------------------

    def _protocol_error(self, e):
        """A bad request head: answer with the error's status and close (nothing is forwarded)."""
        ctx = self.listener.ctx
        rx = len(self.buf) - self.pos if self.buf is not None else 0
        ctx.stats.rq_start()
        self.keep_alive = False
        status = e.status_hint
        reply = local_reply(status, str(e).encode("ascii", "replace"), True)
        self.tx(reply)
        ctx.stats.rq_end(status, 0, rx, len(reply))
        ctx.stats.flag("DPE", status)
        if ctx.access_log is not None:
            self._log_error(ctx, status, rx, len(reply))
        self._close()

    def _log_error(self, ctx, status, rx, tx):
        from meshproxy.accesslog import AccessRecord
        import time
        rec = AccessRecord()
        rec.start_time = time.time()
        rec.response_code = status
        rec.response_flags = "DPE"
        rec.bytes_received = rx
        rec.bytes_sent = tx
        rec.duration_ms = 0
        addrs = self.addresses()
        rec.downstream_local_address = addrs[0]
        rec.downstream_remote_address = addrs[1]
        ctx.access_log.log(rec)

    def _body_error(self, e):
        """Bad framing inside a request body already being forwarded: reset both sides."""
        s = self.stream
        self.stream = None
        self.keep_alive = False
        if s is not None and not s.is_done():
            up = s.upstream
            if up is not None:
                s.upstream = None
                up.stream = None
                up.close()
            s.flags = "DPE"
            if not s.resp_started:
                data = local_reply(400, str(e).encode("ascii", "replace"), True)
                s.bytes_tx += len(data)
                self.tx(data)
                s.finish(400)
            else:
                s.finish(s.status)
        self._close()

    def drain(self):
        if self.state == ST_HEAD and self.stream is None and (
                self.buf is None or self.pos >= len(self.buf)):
            self._close()
        else:
            self.keep_alive = False

    def _close(self):
        self.state = ST_CLOSED
        s = self.stream
        if s is not None:
            up = s.upstream
            if up is not None:
                s.upstream = None
                up.stream = None
                up.close()
        if self.transport is not None:
            self.transport.close()


def _addr(a):
    if not a:
        return None
    return "%s:%d" % (a[0], a[1])
