"""1 GiB through the sidecar both ways, streamed, with the sidecar's RSS watched from /proc."""
import json
import socket
import threading
import time

import pytest

GIB = 1 << 30
MIB = 1 << 20
RSS_BUDGET = 32 * MIB


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler(threading.Thread):
    def __init__(self, pid, every=0.02):
        super().__init__(daemon=True)
        self.pid = pid
        self.every = every
        self.base = rss(pid)
        self.peak = self.base
        self.samples = 0
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self.samples += 1
            time.sleep(self.every)

    def stop(self):
        self.stop_ev.set()
        self.join()
        return self.peak - self.base


def _warm_up(s):
    # a few requests so lazily created objects (pools, parsers, log) exist before the baseline
    for _ in range(3):
        assert s.request("POST", "/warm", body=b"x" * 100_000)[0] == 200
        assert s.request(path=f"/big/{MIB}")[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["c"])
def test_upload_1gib(sidecar, echo):
    _warm_up(sidecar)
    sampler = RssSampler(sidecar.pid)
    sampler.start()
    chunk = b"u" * MIB
    sock = socket.create_connection(("127.0.0.1", sidecar.outbound), timeout=60)
    sock.sendall(b"PUT /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: %d\r\n\r\n" % GIB)
    t0 = time.monotonic()
    for _ in range(GIB // MIB):
        sock.sendall(chunk)
    f = sock.makefile("rb")
    status = f.readline()
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers["content-length"]))
    elapsed = time.monotonic() - t0
    sock.close()
    grew = sampler.stop()
    assert status.startswith(b"HTTP/1.1 200"), status
    assert json.loads(body)["body_len"] == GIB
    assert sampler.samples > 10
    print(f"upload 1 GiB in {elapsed:.1f}s, RSS +{grew / MIB:.1f} MiB")
    assert grew < RSS_BUDGET, f"sidecar RSS grew {grew / MIB:.1f} MiB during a 1 GiB upload"


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["c"])
def test_download_1gib(sidecar, echo):
    _warm_up(sidecar)
    sampler = RssSampler(sidecar.pid)
    sampler.start()
    sock = socket.create_connection(("127.0.0.1", sidecar.outbound), timeout=60)
    sock.sendall(b"GET /big/%d HTTP/1.1\r\nHost: echo\r\n\r\n" % GIB)
    t0 = time.monotonic()
    buf = bytearray(MIB)
    view = memoryview(buf)
    head = b""
    while b"\r\n\r\n" not in head:
        d = sock.recv(4096)
        assert d, "closed before the head"
        head += d
    hd, _, first = head.partition(b"\r\n\r\n")
    assert hd.startswith(b"HTTP/1.1 200"), hd
    assert b"content-length: %d" % GIB in hd.lower()
    got = len(first)
    while got < GIB:
        n = sock.recv_into(view)
        assert n, f"closed after {got} bytes"
        got += n
    elapsed = time.monotonic() - t0
    sock.close()
    grew = sampler.stop()
    assert got == GIB
    print(f"download 1 GiB in {elapsed:.1f}s, RSS +{grew / MIB:.1f} MiB")
    assert grew < RSS_BUDGET, f"sidecar RSS grew {grew / MIB:.1f} MiB during a 1 GiB download"


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["c"])
def test_slow_reader_download_is_backpressured(sidecar, echo):
    """A client that reads nothing for a while: the sidecar must stop reading the upstream
    instead of buffering the whole response."""
    _warm_up(sidecar)
    sampler = RssSampler(sidecar.pid)
    sampler.start()
    sock = socket.create_connection(("127.0.0.1", sidecar.outbound), timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"GET /big/%d HTTP/1.1\r\nHost: echo\r\n\r\n" % (256 * MIB))
    time.sleep(1.5)  # read nothing: 256 MiB would pile up somewhere if nothing pushes back
    grew_stalled = sampler.peak - sampler.base
    got = 0
    while True:
        d = sock.recv(MIB)
        if not d:
            break
        got += len(d)
        if got >= 256 * MIB:
            break
    sock.close()
    grew = sampler.stop()
    assert grew_stalled < RSS_BUDGET and grew < RSS_BUDGET, (grew_stalled, grew)
