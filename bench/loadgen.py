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
"""
from __future__ import annotations

import argparse
import json
import math
import select
import socket
import sys
import time


def percentiles(values: list[float], ps=(50, 90, 99, 99.9)) -> dict:
    if not values:
        return {}
    v = sorted(values)
    out = {}
    for p in ps:
        k = min(len(v) - 1, max(0, math.ceil(p / 100.0 * len(v) - 1e-9) - 1))  # nearest rank
        out[f"p{p:g}"] = v[k] * 1e3
    out["max"] = v[-1] * 1e3
    out["mean"] = sum(v) / len(v) * 1e3
    return out


class Conn:
    __slots__ = ("sock", "buf", "due", "sent", "need")

    def __init__(self, addr: str, port: int, src: str | None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if src:
            s.bind((src, 0))
        s.connect((addr, port))
        s.setblocking(False)
        self.sock = s
        self.buf = bytearray()
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


def run(addr: str, port: int, host: str, rate: float, nconn: int, duration: float,
        warmup: float, src: str | None = None, path: str = "/") -> dict:
    slack = reduce_timer_slack()
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshproxy-loadgen\r\n\r\n".encode()
    conns = [Conn(addr, port, src) for _ in range(nconn)]
    by_fd = {c.sock.fileno(): c for c in conns}
    idle = list(conns)
    busy: set = set()
    interval = 1.0 / rate
    t0 = time.perf_counter() + 0.05
    t_measure = t0 + warmup
    t_end = t_measure + duration
    i = 0  # next request index
    lat: list[float] = []
    svc: list[float] = []
    late: list[float] = []
    status_errors = io_errors = 0
    backlog_max = 0
    perf = time.perf_counter
    sel = select.select
    while True:
        now = perf()
        # send every request that is due, while connections are idle
        while idle:
            due = t0 + i * interval
            if due > now or due >= t_end:
                break
            c = idle.pop()
            c.due, c.sent, c.need = due, perf(), -1
            try:
                c.sock.send(req)
            except OSError:
                io_errors += 1
                break
            busy.add(c)
            i += 1
        next_due = t0 + i * interval
        if next_due >= t_end and not busy:
            break
        backlog = int((now - next_due) / interval) + 1 if now >= next_due else 0
        backlog_max = max(backlog_max, backlog)
        if idle and next_due < t_end:
            timeout = next_due - perf() - SPIN
            if timeout <= 0:  # within SPIN of the due time: poll, do not sleep
                timeout = 0.0
        else:
            timeout = 1.0
        if now > t_end + 10:  # the server stopped answering: give up on what is in flight
            io_errors += len(busy)
            break
        readable, _, _ = sel([c.sock for c in busy], [], [], timeout) if busy else \
            (time.sleep(timeout) or ([], [], []))
        for s in readable:
            c = by_fd[s.fileno()]
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                io_errors += 1
                busy.discard(c)
                continue
            c.buf += data
            if c.need < 0:
                c.need = response_length(c.buf)
            if 0 <= c.need <= len(c.buf):
                done = perf()
                if not c.buf.startswith(b"HTTP/1.1 200"):
                    status_errors += 1
                del c.buf[:c.need]
                busy.discard(c)
                idle.append(c)
                if c.due >= t_measure:
                    lat.append(done - c.due)
                    svc.append(done - c.sent)
                    late.append(c.sent - c.due)
    for c in conns:
        c.sock.close()
    n = len(lat)
    return {
        "rate_target": rate, "connections": nconn, "duration_s": duration, "warmup_s": warmup,
        "requests": n, "rate_achieved": n / duration if duration else 0.0,
        "errors": {"status": status_errors, "io": io_errors},
        "latency_ms": percentiles(lat), "service_ms": percentiles(svc),
        "lateness_ms": percentiles(late), "backlog_max": backlog_max, "timer_slack_1ns": slack,
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
