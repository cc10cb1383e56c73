"""A fault-injecting TCP proxy for the integration tests (stdlib only).

    with FaultProxy(("127.0.0.120", backend_port), host="127.0.0.130") as p:
        ...                      # the sidecar's endpoint is (p.host, p.port)
        p.set_mode("cut")        # from now on, request bytes are answered by a FIN
        p.set_mode("drip", n=1, interval=0.02)
        p.accepted               # connections accepted so far

It listens on ``host:port`` (port 0: any free one) and forwards each connection to one upstream
``(host, port)``, on its own thread with its own asyncio loop, like asyncpg's
``_testbase/fuzzer.py:TCPFuzzingProxy``. The *mode* can be switched at any time from any thread;
it is read again each time bytes arrive, so it applies to new connections and to the next bytes
of existing ones (a pooled upstream connection of the sidecar included):

    pass                   forward both ways
    cut                    request bytes arrive: close both sides (a clean FIN, nothing
                           forwarded); ``on_accept=True``: close each connection as soon as it
                           is accepted
    reset                  request bytes arrive: abort the client side with a TCP RST
                           (SO_LINGER {1, 0}, then close), nothing forwarded
    stall                  read request bytes and drop them: never forward, never answer
    drip                   forward the request; deliver the response ``n`` bytes every
                           ``interval`` seconds
    reset_after_headers    forward the request; pass the response head (up to and including
                           the blank line), wait ``pause`` seconds (so the head is surely on
                           its way to the client), then RST the client side

``stop()`` (or leaving the ``with`` block) closes the listener and every connection, and ends
the thread.
"""
import asyncio
import socket
import struct
import threading

MODES = ("pass", "cut", "reset", "stall", "drip", "reset_after_headers")
DEFAULTS = {"on_accept": False, "n": 1, "interval": 0.05, "pause": 0.05}


def _rst(writer):
    """Abort ``writer``'s connection with a RST: a zero linger time makes close() send a RST
    instead of a FIN (and drop whatever was not sent yet)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream, host="127.0.0.1", port=0, mode="pass", **params):
        self.upstream = upstream
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._mode = ("pass", dict(DEFAULTS))
        self.set_mode(mode, **params)
        self.accepted = 0  # connections accepted (only the proxy's thread writes it)
        self._writers = set()  # every open transport, client and upstream sides
        self._tasks = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{host}", daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error

    # -- the test's side -----------------------------------------------------------------------

    def set_mode(self, mode, **params):
        """Switch to ``mode`` (one of MODES) with its parameters (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}")
        with self._lock:
            self._mode = (mode, {**DEFAULTS, **params})

    @property
    def mode(self):
        with self._lock:
            return self._mode[0]

    def _current(self):
        with self._lock:
            return self._mode

    def stop(self):
        if not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- the proxy's thread --------------------------------------------------------------------

    def _run(self):
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.host, self.port, reuse_address=True))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as e:
            self._error = e
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self):
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, creader, cwriter):
        """One client connection: pump the request side here, the response side in a task
        started when the upstream connection is made (lazily: cut, reset and stall never
        connect upstream)."""
        self.accepted += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(cwriter)
        uwriter = pump = None
        try:
            mode, p = self._current()
            if mode == "cut" and p["on_accept"]:
                return  # (finally: a FIN)
            while True:
                data = await creader.read(65536)
                if not data:  # the client is gone (the sidecar never half-closes HTTP/1.1)
                    return
                mode, p = self._current()
                if mode == "cut":
                    return
                if mode == "reset":
                    _rst(cwriter)
                    return
                if mode == "stall":
                    continue  # read and dropped: the request hangs
                if uwriter is None:
                    ureader, uwriter = await asyncio.open_connection(*self.upstream)
                    self._writers.add(uwriter)
                    pump = asyncio.ensure_future(self._respond(ureader, cwriter))
                    self._tasks.add(pump)
                uwriter.write(data)
                await uwriter.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (cwriter, uwriter):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            if pump is not None:
                pump.cancel()
                self._tasks.discard(pump)
            self._tasks.discard(task)

    async def _respond(self, ureader, cwriter):
        """Upstream to client, as the mode says when each chunk arrives."""
        head = b""  # reset_after_headers: the response head read so far, not yet sent
        try:
            while True:
                data = await ureader.read(65536)
                if not data:
                    if head:
                        cwriter.write(head)
                    cwriter.close()  # the upstream closed: so does the client side
                    return
                mode, p = self._current()
                if mode == "reset_after_headers":
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    cwriter.write(head[:end + 4])
                    await cwriter.drain()
                    await asyncio.sleep(p["pause"])
                    _rst(cwriter)
                    return
                if head:  # the mode changed in the middle of a head: send what was kept
                    data, head = head + data, b""
                if mode == "drip":
                    n = max(1, p["n"])
                    for i in range(0, len(data), n):
                        cwriter.write(data[i:i + n])
                        await cwriter.drain()
                        await asyncio.sleep(p["interval"])
                    continue
                cwriter.write(data)
                await cwriter.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            cwriter.transport.abort()
