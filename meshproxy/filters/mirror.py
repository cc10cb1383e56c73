"""Istio's ``mirror`` / ``mirrors``: fire-and-forget copies of requests to other clusters.

The copy gets ``-shadow`` appended to its Host (before any port, as Envoy does) and is sent on a
connection of its own; its response is read and discarded. A mirror that falls
``MIRROR_MAX_BUFFER`` bytes behind or takes longer than ``MIRROR_TIMEOUT`` is dropped: it never
slows down or fails the request it copies.
"""
import asyncio
from random import random as _random

from meshproxy.filters import CONTINUE, HttpFilter

MIRROR_MAX_BUFFER = 1048576
MIRROR_TIMEOUT = 30.0


def shadow_host(host):
    """``a:80`` -> ``a-shadow:80`` (Envoy's shadow host naming)."""
    colon = host.rfind(b":")
    if colon > 0 and b"]" not in host[colon:]:
        return host[:colon] + b"-shadow" + host[colon:]
    return host + b"-shadow"


class MirrorFilter(HttpFilter):
    """``config``: ``((cluster, percent), ...)``, the route's mirror targets."""

    def __init__(self, config):
        self.targets = config
        self.mirrors = None

    def on_request_head(self, stream):
        head = None
        for cluster, percent in self.targets:
            if _random() * 100.0 >= percent:
                continue
            ep = cluster.choose(None)
            if ep is None:
                continue
            if head is None:
                p = stream.request
                extra = (stream.conn.xf_lines + b"host: " + shadow_host(p.host or b"")
                         + b"\r\nconnection: close\r\n" + stream.req_extra)
                drop = (b"host",) + tuple(stream.req_drop or ())
                head = p.serialize(extra, stream.path, drop)
            m = MirrorConnection(cluster, ep, cluster.gen, stream.conn.loop, head)
            if self.mirrors is None:
                self.mirrors = []
            self.mirrors.append(m)
            m.start()
        return CONTINUE

    def on_request_body(self, stream, data, end):
        if self.mirrors is not None and data:
            for m in self.mirrors:
                m.send(data)
        return CONTINUE


class MirrorConnection:
    """One mirrored request's connection (asyncio protocol)."""

    def __init__(self, cluster, endpoint, gen, loop, head):
        self.cluster = cluster
        self.endpoint = endpoint
        self.gen = gen
        self.loop = loop
        self.transport = None
        self.pending = [head]
        self.size = len(head)
        self.dead = False
        self.released = False
        self.timer = None

    def start(self):
        self.timer = self.loop.call_later(MIRROR_TIMEOUT, self.abort)
        self.loop.create_task(self._connect())

    async def _connect(self):
        pool = self.endpoint.pool
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self, pool.address, pool.port),
                self.cluster.connect_timeout)
        except (OSError, asyncio.TimeoutError):
            self.abort()

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
        self._end()
        if self.transport is not None:
            self.transport.abort()

    def _end(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.released:
            self.released = True
            self.cluster.release(self.endpoint, self.gen)

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
        return None  # the mirror's answer is discarded

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.dead = True
        self._end()

    def pause_writing(self):
        return None

    def resume_writing(self):
        return None
