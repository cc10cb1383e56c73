"""An open-loop HTTP/1.1 load generator at a fixed rate, with coordinated-omission-corrected latency.

    python bench/loadgen.py --addr 127.0.0.2 --port P --host origin.default.svc.cluster.local \\
        --rate 1000 --connections 16 --duration 10 --warmup 2

Prints one JSON line. Request ``i`` is *due* at ``t0 + i / rate`` whatever happened before (open
loop, as wrk2 and Fortio's ``-qps``): it goes out on an idle connection as soon as it is due, or
waits for one. Its latency is measured from when it was *due*, not from when it was sent, so a
stall of the system under test is charged to every request it delays (coordinated omission
corrected). The service time (from the actual send) and the generator's own lateness (send - due)
are reported too: lateness is the generator's error bar.

Why not uvloop: libuv's timers and clock have 1 ms resolution, coarse next to the 0.1-0.3 ms being
measured. This is a single-threaded ``select()`` loop (microsecond timeouts, 16 sockets), which
keeps sends within tens of microseconds of their due time without spinning a core.

As a library, ``OpenLoop`` is the same generator with more to it (the demo, demo/mesh.py, runs one
in a thread): several requests sent in turn, every outcome handed to a callback, a run until
``stop()``, a timeout for connecting and answering, a cap on the backlog, and a failed connection
replaced when a request next needs one. ``run()`` below is the benchmark's use of it.
"""
from __future__ import annotations

import argparse
import json
import math
import select
import socket
import sys
import time


def request(host: str, path: str = "/", agent: str = "meshproxy-loadgen") -> bytes:
    """The bytes of a ``GET path`` with ``Host: host``."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\n\r\n".encode()


def nearest_rank(sorted_values, p: float):
    """The ``p``-th percentile (0-100) of ``sorted_values`` (not empty), by nearest rank."""
    n = len(sorted_values)
    return sorted_values[min(n - 1, max(0, math.ceil(p / 100.0 * n - 1e-9) - 1))]


def percentiles(values: list[float], ps=(50, 90, 99, 99.9)) -> dict:
    if not values:
        return {}
    v = sorted(values)
    out = {f"p{p:g}": nearest_rank(v, p) * 1e3 for p in ps}
    out["max"] = v[-1] * 1e3
    out["mean"] = sum(v) / len(v) * 1e3
    return out


class Conn:
    __slots__ = ("sock", "buf", "i", "due", "sent", "need")

    def __init__(self, addr: str, port: int, src: str | None, timeout: float | None = None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if src:
                s.bind((src, 0))
            s.settimeout(timeout)
            s.connect((addr, port))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s
        self.buf = bytearray()
        self.i = -1  # the request in flight
        self.due = self.sent = 0.0
        self.need = -1  # total bytes of the current response once its head is known


def response_length(buf: bytearray) -> int:
    """Head + Content-Length of the response at the start of ``buf``; -1 while the head is short."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return -1
    head = bytes(buf[:end]).lower()
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        raise ValueError(f"response without content-length: {head[:200]!r}")
    j = head.find(b"\r\n", i + 2)
    return end + 4 + int(head[i + 17:j if j > 0 else None])


def reduce_timer_slack() -> bool:
    """prctl(PR_SET_TIMERSLACK, 1 ns): the kernel's default 50 us slack on select() timeouts would
    be most of the generator's lateness."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(29, 1, 0, 0, 0) == 0  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


#: wake this early and spin the rest of the way to a due time (seconds)
SPIN = 40e-6

#: ``error`` of an outcome without an answer: the connection failed, or no answer within timeout
IO_ERROR, TIMEOUT = "io", "timeout"


class OpenLoop:
    """Open-loop load on ``connections`` keep-alive connections to addr:port. Request ``i`` is
    ``requests[i % len(requests)]`` (bytes), due at ``t0 + i / rate``.

    Every outcome goes to ``on_response(i, due, sent, done, head, error)``, on the thread that
    runs ``run()``: the times are ``time.perf_counter()`` seconds, ``head`` is the response head
    (bytes, up to the blank line) and ``error`` None, or ``head`` is None and ``error`` IO_ERROR or
    TIMEOUT. ``timeout`` (seconds, None: none) bounds a connect and the wait for an answer.
    ``max_backlog``: requests due but not yet sent beyond this many are skipped, oldest first, and
    counted in ``skipped`` (None: never). A failed connection, or one the server closes
    (``Connection: close``), is replaced when a request next needs one.
    """

    def __init__(self, addr: str, port: int, requests: list[bytes], rate: float,
                 connections: int, on_response, src: str | None = None,
                 timeout: float | None = None, max_backlog: int | None = None):
        self.addr, self.port, self.src = addr, port, src
        self.requests = requests
        self.interval = 1.0 / rate
        self.connections = connections
        self.on_response = on_response
        self.timeout = timeout
        self.max_backlog = max_backlog
        self.t0 = 0.0  # perf_counter() time request 0 is due, set by run()
        self.skipped = 0
        self.abandoned = 0  # still in flight when run() stopped waiting for answers
        self.backlog_max = 0
        self.timer_slack_1ns = False
        self._stop_at = math.inf

    def stop(self) -> None:
        """End the schedule now (from any thread): requests due later are not sent; run() returns
        once the answers in flight are in, or its ``drain`` time has passed."""
        self._stop_at = time.perf_counter()

    def run(self, duration: float | None = None, drain: float = 10.0,
            start_in: float = 0.05) -> None:
        """Send from ``start_in`` seconds after the connections are open (when request 0 is
        due), for ``duration`` seconds (None: until stop()), then wait up to ``drain`` seconds for
        the answers in flight."""
        self.timer_slack_1ns = reduce_timer_slack()
        by_fd: dict = {}
        down = 0  # connections to open (again) when a request needs one

        def connect() -> Conn:
            c = Conn(self.addr, self.port, self.src, self.timeout)
            by_fd[c.sock.fileno()] = c
            return c

        def close(c: Conn) -> None:
            nonlocal down
            busy.discard(c)
            del by_fd[c.sock.fileno()]
            c.sock.close()
            down += 1

        def fail(c: Conn, error: str) -> None:
            close(c)
            on_response(c.i, c.due, c.sent, perf(), None, error)

        idle: list = []
        busy: set = set()
        for _ in range(self.connections):
            try:
                idle.append(connect())
            except OSError:
                down += 1
        reqs, nreq = self.requests, len(self.requests)
        on_response, timeout, cap = self.on_response, self.timeout, self.max_backlog
        interval = self.interval
        perf = time.perf_counter
        sel = select.select
        t0 = self.t0 = perf() + start_in
        t_end = t0 + duration if duration is not None else math.inf
        i = 0  # next request index
        backlog_max = 0
        try:
            while True:
                now = perf()
                if self._stop_at < t_end:
                    t_end = self._stop_at
                if timeout is not None and busy:
                    for c in [c for c in busy if now - c.sent >= timeout]:
                        fail(c, TIMEOUT)
                due = t0 + i * interval
                if cap is not None and due <= now and due < t_end:
                    behind = int((min(now, t_end) - due) / interval) + 1
                    if behind > cap:
                        self.skipped += behind - cap
                        i += behind - cap
                # send every request that is due, on an idle connection or a new one
                while idle or down:
                    due = t0 + i * interval
                    if due > now or due >= t_end:
                        break
                    if idle:
                        c = idle.pop()
                    else:
                        try:
                            c = connect()
                        except OSError:
                            on_response(i, due, now, perf(), None, IO_ERROR)
                            i += 1
                            continue
                        down -= 1
                    c.i, c.due, c.sent, c.need = i, due, perf(), -1
                    i += 1
                    try:
                        c.sock.send(reqs[c.i % nreq])
                    except OSError:
                        fail(c, IO_ERROR)
                        continue
                    busy.add(c)
                next_due = t0 + i * interval
                if next_due >= t_end and not busy:
                    break
                backlog = int((now - next_due) / interval) + 1 if now >= next_due else 0
                backlog_max = max(backlog_max, backlog)
                if now > t_end + drain:  # the server stopped answering: give up on what is in flight
                    self.abandoned += len(busy)
                    break
                if (idle or down) and next_due < t_end:
                    wait = next_due - perf() - SPIN
                    if wait <= 0:  # within SPIN of the due time: poll, do not sleep
                        wait = 0.0
                else:
                    wait = min(1.0, t_end + drain - now)
                if timeout is not None and busy:
                    wait = min(wait, min(c.sent for c in busy) + timeout - now)
                readable, _, _ = sel([c.sock for c in busy], [], [], wait) if busy else \
                    (time.sleep(wait) or ([], [], []))
                for s in readable:
                    c = by_fd[s.fileno()]
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        fail(c, IO_ERROR)
                        continue
                    c.buf += data
                    if c.need < 0:
                        try:
                            c.need = response_length(c.buf)
                        except ValueError:
                            fail(c, IO_ERROR)
                            continue
                    if 0 <= c.need <= len(c.buf):
                        done = perf()
                        head = bytes(c.buf[:c.buf.find(b"\r\n\r\n")])
                        del c.buf[:c.need]
                        if b"\r\nconnection: close" in head.lower():
                            close(c)
                        else:
                            busy.discard(c)
                            idle.append(c)
                        on_response(c.i, c.due, c.sent, done, head, None)
        finally:
            self.backlog_max = backlog_max
            for c in by_fd.values():
                c.sock.close()


def run(addr: str, port: int, host: str, rate: float, nconn: int, duration: float,
        warmup: float, src: str | None = None, path: str = "/") -> dict:
    """The benchmark's run: ``warmup`` unmeasured seconds, then ``duration`` measured ones."""
    lat: list[float] = []
    svc: list[float] = []
    late: list[float] = []
    errors = {"status": 0, "io": 0}

    def record(i, due, sent, done, head, error):
        if error is not None:
            errors["io"] += 1
            return
        if not head.startswith(b"HTTP/1.1 200"):
            errors["status"] += 1
        if due >= gen.t0 + warmup:
            lat.append(done - due)
            svc.append(done - sent)
            late.append(sent - due)

    gen = OpenLoop(addr, port, [request(host, path)], rate, nconn, record, src)
    gen.run(warmup + duration)
    errors["io"] += gen.abandoned
    n = len(lat)
    return {
        "rate_target": rate, "connections": nconn, "duration_s": duration, "warmup_s": warmup,
        "requests": n, "rate_achieved": n / duration if duration else 0.0,
        "errors": errors,
        "latency_ms": percentiles(lat), "service_ms": percentiles(svc),
        "lateness_ms": percentiles(late), "backlog_max": gen.backlog_max,
        "timer_slack_1ns": gen.timer_slack_1ns,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="localhost", help="Host header")
    p.add_argument("--path", default="/")
    p.add_argument("--rate", type=float, default=1000.0, help="requests per second (total)")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--src", help="source address to bind (127.0.0.x)")
    a = p.parse_args(argv)
    out = run(a.addr, a.port, a.host, a.rate, a.connections, a.duration, a.warmup, a.src, a.path)
    print("LOADGEN_JSON " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
