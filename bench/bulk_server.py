"""Bulk origin for the bulk scenario: a source and a sink over HTTP/1.1, on uvloop, never buffering.

    python bench/bulk_server.py PORT [ADDR]

* ``GET /bytes/N``: 200 with ``Content-Length: N`` and N bytes, written from one reused 1 MiB
  buffer while the transport is below its high-water mark (pause_writing/resume_writing).
* ``POST /sink`` (or PUT) with ``Content-Length``: reads and drops the body, then answers 200 with the
  number of bytes received as its body.
* ``GET /``: the benchmark origin's fixed 1 KiB body (so contenders' start-up check passes).

Keep-alive; one request at a time per connection; Content-Length bodies only (what the scenario
sends). Anything else gets 400 and a close.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from origin import BODY  # noqa: E402

CHUNK = memoryview(b"\x5a" * (1 << 20))


class Bulk(asyncio.Protocol):
    def __init__(self):
        self.t = None
        self.buf = b""
        self.sink_left = -1  # body bytes still to drop (-1: reading a head)
        self.sink_total = 0
        self.src_left = 0
        self.paused = False

    def connection_made(self, t):
        self.t = t
        t.set_write_buffer_limits(high=4 << 20)

    def data_received(self, data):
        if self.sink_left >= 0:
            n = min(len(data), self.sink_left)
            self.sink_left -= n
            data = data[n:]
            if self.sink_left == 0:
                self._sink_done()
            if not data:
                return
        self.buf += data
        while self.sink_left < 0 and self.src_left == 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            line, *fields = head.split("\r\n")
            method, path, _ = (line.split(" ") + ["", ""])[:3]
            hdrs = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
            if method in ("POST", "PUT") and path.startswith("/sink"):
                self.sink_total = self.sink_left = int(hdrs.get("content-length", "0"))
                take = min(len(self.buf), self.sink_left)
                self.sink_left -= take
                self.buf = self.buf[take:]
                if self.sink_left == 0:
                    self._sink_done()
                else:
                    return
            elif method == "GET" and path.startswith("/bytes/"):
                self.src_left = int(path[len("/bytes/"):])
                self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                             b"content-length: %d\r\n\r\n" % self.src_left)
                self._pump()
            elif method == "GET":
                self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY))
            else:
                self.t.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"
                             b"connection: close\r\n\r\n")
                self.t.close()
                return

    def _sink_done(self):
        body = str(self.sink_total).encode()
        self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.sink_left = -1
        if self.buf:
            rest, self.buf = self.buf, b""
            self.data_received(rest)

    def _pump(self):
        while self.src_left > 0 and not self.paused:
            n = min(self.src_left, len(CHUNK))
            self.t.write(CHUNK[:n])
            self.src_left -= n
        if self.src_left == 0 and self.buf:
            rest, self.buf = self.buf, b""
            self.data_received(rest)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self._pump()


def main() -> None:
    port = int(sys.argv[1])
    addr = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(Bulk, addr, port, backlog=1024))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
