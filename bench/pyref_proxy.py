"""A minimal uvloop + httptools HTTP/1.1 proxy: the yardstick of ARCHITECTURE.md section 4.

    python bench/pyref_proxy.py LISTEN_PORT ORIGIN_PORT

Benchmark contender ``pyref`` (not in the default set). Each downstream connection gets its own
keep-alive upstream connection to 127.0.0.1:ORIGIN_PORT (no pool, no routing, no policy); request
heads are parsed with httptools and forwarded as received once complete; response bytes are
relayed as they come while httptools follows the response framing. It is what "a minimal Python
proxy" costs per request, to compare meshproxy's hot path against.
"""
from __future__ import annotations

import asyncio
import signal
import sys

import httptools
import uvloop

HOST = "127.0.0.1"


class Upstream(asyncio.Protocol):
    __slots__ = ("down", "transport", "parser")

    def __init__(self, down: "Downstream"):
        self.down = down
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.down.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self):
        self.down.response_done()

    def connection_lost(self, exc):
        self.down.transport.close()


class Downstream(asyncio.Protocol):
    __slots__ = ("loop", "origin", "transport", "parser", "buf", "up", "pending")

    def __init__(self, loop, origin):
        self.loop = loop
        self.origin = origin
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.buf = bytearray()
        self.up = None
        self.pending = []

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()
        self.loop.create_task(self._connect())

    async def _connect(self):
        try:
            _, self.up = await self.loop.create_connection(lambda: Upstream(self), HOST, self.origin)
        except OSError:
            self.transport.close()
            return
        for head in self.pending:
            self.up.transport.write(head)
        self.pending.clear()
        self.transport.resume_reading()

    def data_received(self, data):
        self.buf += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_message_complete(self):
        if self.up is None:  # upstream still connecting (reading is not always paused in time)
            self.pending.append(bytes(self.buf))
        else:
            self.up.transport.write(bytes(self.buf))
        self.buf.clear()

    def response_done(self):
        pass

    def connection_lost(self, exc):
        if self.up and self.up.transport:
            self.up.transport.close()


def main() -> None:
    port, origin = int(sys.argv[1]), int(sys.argv[2])
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: Downstream(loop, origin), HOST, port, backlog=4096))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


if __name__ == "__main__":
    main()
