"""Downstream timeouts and limits (Bootstrap ``limits``): request head timeout, idle timeout,
connection limit, per-connection buffer limit (clients that do not read their responses)."""
import re
import select
import socket
import statistics
import threading
import time

from harness import ECHO_HOST, RawConn

MB = 1 << 20


def stat(s, name):
    """One counter from the admin's Envoy text /stats (0 when absent)."""
    st, body = s.admin_get("/stats")
    assert st == 200
    m = re.search(r"^" + re.escape(name) + r": (\d+)$", body.decode(), re.M)
    return int(m.group(1)) if m else 0


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def limited(make_sidecar, **limits):
    return make_sidecar(boot={"upstream": {"connectTimeout": "2s"}, "limits": limits})


def get(host_port, path="/", host=ECHO_HOST):
    c = RawConn(*host_port)
    try:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
        return c.read_response()[0]
    finally:
        c.close()


def test_slowloris_heads_closed_at_head_timeout(make_sidecar, echo):
    s = limited(make_sidecar, requestHeadersTimeout="1s")
    addr = (s.host, s.outbound)
    # A normal client's latency before the attack.
    c = RawConn(*addr)
    req = b"GET / HTTP/1.1\r\nHost: " + ECHO_HOST.encode() + b"\r\n\r\n"
    before = []
    for _ in range(20):
        t0 = time.monotonic()
        c.send(req)
        assert c.read_response()[0] == 200
        before.append(time.monotonic() - t0)

    head = b"GET / HTTP/1.1\r\nHost: " + ECHO_HOST.encode() + b"\r\nX-Slow: " + b"a" * 1000
    socks, started, closed, got = [], {}, {}, {}
    for _ in range(200):
        k = socket.create_connection(addr)
        k.setblocking(False)
        k.send(head[:1])
        started[k] = time.monotonic()
        socks.append(k)
    during, errors = [], []
    stop = threading.Event()

    def normal_client():
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                c.send(req)
                st = c.read_response()[0]
                during.append(time.monotonic() - t0)
                if st != 200:
                    errors.append(st)
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    th = threading.Thread(target=normal_client)
    th.start()
    try:
        deadline = time.monotonic() + 4.0
        pos = 1
        while len(closed) < len(socks) and time.monotonic() < deadline:
            pos += 1
            for k in socks:  # one more byte each (never the end of the head)
                if k not in closed:
                    try:
                        k.send(head[pos:pos + 1])
                    except OSError:
                        pass
            r, _, _ = select.select([k for k in socks if k not in closed], [], [], 0.05)
            now = time.monotonic()
            for k in r:
                try:
                    d = k.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    d = b""
                if d:
                    got[k] = got.get(k, b"") + d
                    continue
                closed[k] = now - started[k]
    finally:
        stop.set()
        th.join(10)
        for k in socks:
            k.close()
    c.close()
    assert len(closed) == 200, f"only {len(closed)} of 200 slow heads closed"
    times = sorted(closed.values())
    # Closed at the 1 s head timeout: not before, and within the wheel's resolution (100 ms) plus
    # scheduling slack on a shared machine.
    assert times[0] >= 0.9, times[:5]
    assert times[-1] <= 1.0 + 0.1 + 0.6, times[-5:]
    assert all(v.startswith(b"HTTP/1.1 408 ") for v in got.values())
    assert not errors, errors
    assert len(during) >= 10
    # The normal client kept its usual latency (generous: the machine is shared).
    assert statistics.median(during) <= max(5 * statistics.median(before), 0.05), (before, during)
    assert stat(s, "http.virtualOutbound.downstream_rq_header_timeout") == 200


def test_idle_timeout_closes_idle_keepalive_connection(make_sidecar, echo):
    s = limited(make_sidecar, idleTimeout="1s")
    c = RawConn(s.host, s.outbound)
    req = b"GET / HTTP/1.1\r\nHost: " + ECHO_HOST.encode() + b"\r\n\r\n"
    # Activity keeps it open: a request every 0.5 s for 2 s.
    for _ in range(4):
        c.send(req)
        assert c.read_response()[0] == 200
        time.sleep(0.5)
    c.send(req)
    assert c.read_response()[0] == 200
    t0 = time.monotonic()
    assert c.is_closed(timeout=3.0)
    took = time.monotonic() - t0
    assert 0.85 <= took <= 1.0 + 0.1 + 0.6, took
    c.close()
    # A connection that never sends anything is idle too.
    c = RawConn(s.host, s.outbound)
    assert c.is_closed(timeout=3.0)
    c.close()
    assert stat(s, "http.virtualOutbound.downstream_cx_idle_timeout") == 2


def test_connection_limit_overflow_closed_and_counted(make_sidecar, echo):
    s = limited(make_sidecar, maxDownstreamConnections=5)
    req = b"GET / HTTP/1.1\r\nHost: " + ECHO_HOST.encode() + b"\r\n\r\n"
    conns = [RawConn(s.host, s.outbound) for _ in range(5)]
    for c in conns:
        c.send(req)
        assert c.read_response()[0] == 200
    extra = RawConn(s.host, s.outbound)
    assert extra.is_closed(timeout=2.0)
    extra.close()
    assert stat(s, "listener.virtualOutbound.downstream_cx_overflow") == 1
    st, body = s.admin_get("/stats/prometheus")
    assert re.search(rb'^envoy_listener_downstream_cx_overflow\{envoy_listener_address="virtualOutbound"\} 1$',
                     body, re.M), body
    # The five still work; a slot freed is usable again.
    for c in conns:
        c.send(req)
        assert c.read_response()[0] == 200
    conns.pop().close()
    time.sleep(0.2)
    c = RawConn(s.host, s.outbound)
    c.send(req)
    assert c.read_response()[0] == 200
    for c2 in conns + [c]:
        c2.close()


def _non_reading_client(addr, payload, seconds):
    """Connect with a small receive buffer, send ``payload`` (as much as the sidecar takes in
    ``seconds``), never read. Returns (socket, bytes sent)."""
    k = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    k.connect(addr)
    k.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(payload) and time.monotonic() < deadline:
        _, w, _ = select.select([], [k], [], 0.05)
        if w:
            try:
                sent += k.send(payload[sent:sent + 65536])
            except BlockingIOError:
                pass
    return k, sent


def _settle(s, key, timeout=8.0):
    """Wait until a counter stops moving (0.5 s without change); returns its value."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = stat(s, key)
        if v != last:
            last, since = v, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            break
        time.sleep(0.1)
    return last


def test_unread_pipelined_big_responses_keep_rss_bounded(make_sidecar, echo):
    s = limited(make_sidecar)  # defaults: 1 MiB per-connection buffer limit
    addr = (s.host, s.outbound)
    for _ in range(3):  # warm up: pools, buffers, a whole 1 MiB response read
        c = RawConn(*addr)
        c.send(b"GET /big/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (MB, ECHO_HOST.encode()))
        st, _, body, _ = c.read_response()
        assert st == 200 and len(body) == MB
        c.close()
    time.sleep(0.3)
    idle = rss_kb(s.pid)
    one = b"GET /big/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (MB, ECHO_HOST.encode())
    k, sent = _non_reading_client(addr, one * 1000, 3.0)
    peak = idle
    for _ in range(30):
        peak = max(peak, rss_kb(s.pid))
        time.sleep(0.1)
    served = _settle(s, "http.virtualOutbound.downstream_rq_total")
    peak = max(peak, rss_kb(s.pid))
    k.close()
    assert (peak - idle) * 1024 <= 8 * MB, f"RSS grew {(peak - idle) / 1024:.1f} MB (sent {sent} B, " \
                                            f"{served} requests started)"
    # Still serving others.
    assert get(addr) == 200


def test_unread_pipelined_local_replies_bounded(make_sidecar, echo):
    s = limited(make_sidecar)
    addr = (s.host, s.outbound)
    assert get(addr, host="nowhere.example") == 404
    time.sleep(0.3)
    idle = rss_kb(s.pid)
    one = b"GET /x HTTP/1.1\r\nHost: nowhere.example\r\n\r\n"
    n = 300000
    k, sent = _non_reading_client(addr, one * n, 6.0)
    served = _settle(s, "http.virtualOutbound.downstream_rq_total")
    peak = rss_kb(s.pid)
    k.close()
    # Each 404 is ~150 bytes: the limit (1 MiB) plus the kernel's socket buffers hold some
    # tens of thousands; without a limit every request sent is answered into memory.
    assert sent > 0
    assert served < n * 0.5, f"{served} local replies made for a client reading nothing"
    assert (peak - idle) * 1024 <= 8 * MB, f"RSS grew {(peak - idle) / 1024:.1f} MB"
    assert get(addr) == 200


def test_stream_idle_timeout(make_sidecar, echo):
    """Off by default (as Istio's sidecars); when set, a request with no bytes either way for that
    long gets 408 (flag SI) and the connection closes."""
    s = limited(make_sidecar, streamIdleTimeout="1s")
    c = RawConn(s.host, s.outbound)
    t0 = time.monotonic()
    c.send(b"GET /delay/3 HTTP/1.1\r\nHost: " + ECHO_HOST.encode() + b"\r\n\r\n")
    st, headers, body, _ = c.read_response()
    took = time.monotonic() - t0
    assert st == 408 and body == b"stream timeout", (st, body)
    assert 0.85 <= took <= 1.0 + 0.1 + 0.6, took
    assert c.is_closed(timeout=2.0)
    c.close()
    assert stat(s, "http.virtualOutbound.downstream_rq_idle_timeout") == 1
    # A response that keeps coming is not idle, however long it takes as a whole.
    assert get((s.host, s.outbound), "/delay/0.5") == 200
