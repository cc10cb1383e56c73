"""The proxy engine (``stream``, the HTTP/1 codec ``http1conn``, upstream connections, pools,
filters) driven with fake transports, on both builds: ``meshproxy._py`` (pure Python) and
``meshproxy._core`` (compiled). Objects of one build are never mixed with the other's.

No sockets, no subprocess. The client side is a ``FakeTransport`` handed to
``Http1Connection.connection_made``. Upstream connects are the engine's own
``conn.loop.create_task(up.connect(timeout))``, run on a real ``asyncio.new_event_loop()`` whose
``create_connection`` is replaced by one that makes a ``FakeTransport`` and calls the protocol's
``connection_made`` (or raises ``ConnectionRefusedError`` when told to). ``call_later`` (the fault
filter's delay, the mirror's timeout) is recorded and fired by the test. Everything is
deterministic: no real I/O, no real timers.
"""
import asyncio
import dataclasses
import re
import textwrap
import time

import pytest

from control import build_snapshot
from control.snapshot import Bootstrap
from control.snapshot import Cluster as SCluster
from control.snapshot import (RetryPolicy, Destination, DirectResponse, Fault, HeaderOps, Mirror, Redirect,
                              Route, RouteMatch, Snapshot, StringMatch, VirtualHost)
from control.snapshot import Endpoint as SEndpoint
from control.snapshot import Listener as SListener
from meshproxy import cluster_manager
from meshproxy._py import cluster as py_cluster  # constants only (cdef ints in the compiled build)
from meshproxy._py import stream as py_stream  # constants only
from meshproxy.filters import CONTINUE, STOP, FilterFactory, HttpFilter, build_chain

# -- both builds -----------------------------------------------------------------------------------

@pytest.fixture
def b(impl):
    """The modules of one build (tests/conftest.py's ``impl``: ``py`` or ``c``, checked)."""
    return impl


# -- fakes -----------------------------------------------------------------------------------------


class FakeTransport:
    """An asyncio transport that records what the engine does with it."""

    def __init__(self, peer, sock):
        self.extra = {"peername": peer, "sockname": sock}
        self.writes = []
        self.writes_after_close = []
        self.closed = False
        self.eof_written = False
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.buffer_size = 0
        self.protocol = None

    def write(self, data):
        if self.closed:
            self.writes_after_close.append(bytes(data))
            return
        self.writes.append(bytes(data))

    def take(self):
        """Everything written since the last take()."""
        out = b"".join(self.writes)
        self.writes.clear()
        return out

    def pause_reading(self):
        self.reading = False
        self.pauses += 1

    def resume_reading(self):
        self.reading = True
        self.resumes += 1

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def write_eof(self):
        self.eof_written = True

    def can_write_eof(self):
        return True

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)

    def get_write_buffer_size(self):
        return self.buffer_size


class Timer:
    def __init__(self, delay, callback, args):
        self.delay = delay
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.fired = False

    def cancel(self):
        self.cancelled = True

    def fire(self):
        assert not self.cancelled and not self.fired
        self.fired = True
        self.callback(*self.args)


class Loop:
    """What the engine uses as ``conn.loop``: tasks on a real asyncio loop (run by ``run()``),
    fake connections, recorded timers."""

    def __init__(self):
        self.aio = asyncio.new_event_loop()
        self.aio.create_connection = self.create_connection  # what UpstreamConnection.connect uses
        self.connects = []  # (host, port) of every connect attempt
        self.upstreams = []  # the FakeTransport of every connection made
        self.refuse = 0  # refuse this many of the next connects
        self.tasks = []
        self.timers = []

    def create_task(self, coro):
        t = self.aio.create_task(coro)
        self.tasks.append(t)
        return t

    def call_later(self, delay, callback, *args):
        t = Timer(delay, callback, args)
        self.timers.append(t)
        return t

    def settle(self):
        """Run tasks and fire due timers (retry backoffs) until nothing is left to do."""
        while True:
            self.run()
            due = [t for t in self.timers if not t.cancelled and not t.fired]
            if not due:
                return
            for t in due:
                t.fire()

    def run(self):
        """Run every task made so far (and those they make) to completion; re-raise errors."""
        while True:
            pending = [t for t in self.tasks if not t.done()]
            if not pending:
                break
            self.aio.run_until_complete(asyncio.wait(pending))
        for t in self.tasks:
            if not t.cancelled():
                t.result()

    async def create_connection(self, factory, host, port, **kw):
        self.connects.append((host, port))
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError(111, "refused (test)")
        proto = factory()
        t = FakeTransport((host, port), ("127.0.0.1", 50000 + len(self.upstreams)))
        t.protocol = proto
        self.upstreams.append(t)
        proto.connection_made(t)
        return t, proto

    def close(self):
        for t in self.tasks:
            t.cancel()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            self.aio.run_until_complete(asyncio.wait(pending))
        self.aio.close()


# -- snapshots -------------------------------------------------------------------------------------

WEB = "outbound|80||web.default.svc.cluster.local"
API = "outbound|80||api.default.svc.cluster.local"
TWO = "outbound|80||two.default.svc.cluster.local"
SHADOW = "outbound|80||shadow.default.svc.cluster.local"
GHOST = "outbound|80||ghost.default.svc.cluster.local"  # named by a route, not in the snapshot
ADDR = ("127.0.0.50", 8080)  # WEB and API's one endpoint
TWO_ADDRS = [("127.0.0.61", 8080), ("127.0.0.62", 8080)]
SHADOW_ADDR = ("127.0.0.70", 8080)
PEER = ("10.1.2.3", 40001)


def scluster(name, addrs, **kw):
    return SCluster(name=name, direction="outbound", service=name.rsplit("|", 1)[1],
                    namespace="default", port=80, port_name="http", protocol="HTTP",
                    endpoints=tuple(SEndpoint(a, p, p) for a, p in addrs), **kw)


def vhost(domains, *routes):
    return VirtualHost(domains[0], tuple(domains), tuple(routes))


def to(cluster, **kw):
    return Route(kw.pop("name", ""), destinations=(Destination(cluster),), **kw)


def default_snapshot():
    clusters = [scluster(WEB, [ADDR]), scluster(API, [ADDR]), scluster(TWO, TWO_ADDRS),
                scluster(SHADOW, [SHADOW_ADDR])]
    vhosts = [
        vhost(["web", "web:443"], to(WEB)),
        vhost(["api"], to(API)),
        vhost(["two"], to(TWO)),
        vhost(["edit"], Route(
            "edit", destinations=(Destination(WEB, request_headers=HeaderOps(
                add=(("x-dest", "web"),))),),
            request_headers=HeaderOps(set=(("x-route", "edit"),), remove=("x-debug",)),
            response_headers=HeaderOps(add=(("x-served", "web"),), remove=("server",)),
            virtual_service="default/edit")),
        vhost(["abort"], to(WEB, name="abort", fault=Fault(abort_status=418, abort_percent=100.0),
                            virtual_service="default/abort")),
        vhost(["delay"], to(WEB, name="delay", fault=Fault(delay=0.25, delay_percent=100.0),
                            virtual_service="default/delay")),
        vhost(["delaymirror"], to(WEB, name="dm", fault=Fault(delay=0.25, delay_percent=100.0),
                                  mirrors=(Mirror(SHADOW, 100.0),),
                                  virtual_service="default/dm")),
        vhost(["moved"], Route("moved", redirect=Redirect(uri="/new", authority="www.example.com",
                                                          port=8443, scheme="https", code=302),
                               virtual_service="default/moved")),
        vhost(["down"], Route("down", direct_response=DirectResponse(503, "back soon"),
                              virtual_service="default/down")),
        # (a match, so not the simple-host fast path, which skips hosts whose cluster is unknown)
        vhost(["ghost"], to(GHOST, name="ghost", virtual_service="default/ghost",
                            matches=(RouteMatch(uri=StringMatch("prefix", "/")),))),
        vhost(["retry"], to(TWO, name="retry", virtual_service="default/retry",
                            retries=RetryPolicy(attempts=2, retry_on=("5xx", "reset"),
                                                configured=True))),
        vhost(["retry503"], to(TWO, name="r503", virtual_service="default/r503",
                               retries=RetryPolicy(attempts=1, retry_on=("retriable-status-codes",),
                                                   status_codes=(503,), configured=True))),
        vhost(["slow"], to(TWO, name="slow", virtual_service="default/slow", timeout=0.5,
                           retries=RetryPolicy(attempts=0, configured=True))),
        vhost(["trytimeout"], to(TWO, name="tt", virtual_service="default/tt", timeout=2.0,
                                 retries=RetryPolicy(attempts=1, per_try_timeout=0.1,
                                                     retry_on=("5xx",), configured=True))),
        vhost(["noretry"], to(TWO, name="nr", virtual_service="default/nr",
                              retries=RetryPolicy(attempts=0, configured=True))),
        vhost(["table"],
              Route("api", matches=(RouteMatch(uri=StringMatch("prefix", "/api/")),),
                    destinations=(Destination(API),), virtual_service="default/table"),
              Route("rest", destinations=(Destination(WEB),), virtual_service="default/table",
                    index=1)),
    ]
    lst = SListener("virtualOutbound", "outbound", "127.0.0.1", 15001, tuple(vhosts))
    return Snapshot("test", Bootstrap(), (lst,), tuple(clusters))


class Engine:
    """One listener of one build over a snapshot, with the cluster manager's pools."""

    def __init__(self, b, monkeypatch, snap, extra_filters=()):
        # The cluster manager imports meshproxy.core (one build for the process): point it at
        # this test's build so its clusters, endpoints and pools are of the same build.
        monkeypatch.setattr(cluster_manager, "cl", b.cluster)
        monkeypatch.setattr(cluster_manager, "counters", b.counters)
        self.b = b
        self.loop = Loop()
        self.cm = cluster_manager.ClusterManager(self.loop)
        self.clusters = self.cm.build(snap)
        self.chain_calls = []
        self.clients = []

        def chain(route, request_edit, response_edit):
            c = build_chain(route, request_edit, response_edit, self.clusters, extra_filters)
            self.chain_calls.append((route.name if route is not None else None, c))
            return c

        lst = snap.listeners[0]
        self.stats = b.counters.ClusterStats(lst.name)
        self.routes = b.router.build_route_context(lst, self.clusters, chain)
        self.ctx = b.stream.ListenerContext(lst.name, self.routes, self.stats)
        self.listener = b.http1conn.Listener(self.ctx, self.loop)

    def client(self, peer=PEER):
        """A new client connection: (its FakeTransport, its Http1Connection)."""
        t = FakeTransport(peer, ("127.0.0.1", 15001))
        self.clients.append(t)
        conn = self.listener.protocol_factory()
        t.protocol = conn
        conn.connection_made(t)
        return t, conn

    def route_host(self, host, cluster, filters=None, name="custom"):
        """Serve ``host`` with a hand-made Decision (a custom filter chain)."""
        d = self.b.router.Decision(self.b.router.A_ROUTE, cluster, cluster.name, name,
                                   filters=filters)
        self.routes.hosts[host] = d
        return d

    def pool(self, addr=ADDR):
        return self.cm.pool_for(*addr)


@pytest.fixture
def make_engine(b, monkeypatch):
    made = []

    def make(snap=None, extra_filters=()):
        e = Engine(b, monkeypatch, snap if snap is not None else default_snapshot(), extra_filters)
        made.append(e)
        return e

    yield make
    for e in made:
        e.loop.close()
        for t in e.clients + e.loop.upstreams:
            assert t.writes_after_close == [], "the engine wrote to a closed transport"


def get(host, path="/", headers=()):
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post_head(host, length, path="/submit"):
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n"
            .encode("latin-1"))


RID = rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
XF = b"x-forwarded-proto: http\r\nx-forwarded-for: 10.1.2.3\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: up\r\n\r\nhello"


def upstream_of(t):
    """The UpstreamConnection (protocol) of an upstream FakeTransport."""
    return t.protocol


def respond(t, data=OK):
    t.protocol.data_received(data)


def served(e, client, request, response=OK):
    """Send ``request``, run the connect, answer it; returns the upstream transport used."""
    before = len(e.loop.upstreams)
    client_t, conn = client
    conn.data_received(request)
    e.loop.run()
    up_t = e.loop.upstreams[-1] if len(e.loop.upstreams) > before else None
    if up_t is None:
        # reused: the pooled connection the stream is attached to
        up_t = conn.stream.upstream.transport
    respond(up_t, response)
    return up_t


# -- 1. stream lifecycle ---------------------------------------------------------------------------


def test_get_is_spliced_upstream_and_response_relayed(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(b"GET /x?y=1 HTTP/1.1\r\nHost: web\r\nUser-Agent: t/1\r\n\r\n")
    s = conn.stream
    assert type(s) is b.stream.Stream
    assert e.loop.connects == [], "connects go through loop.create_task, not inline"
    e.loop.run()
    assert e.loop.connects == [ADDR]
    (up_t,) = e.loop.upstreams
    head = up_t.take()
    assert re.fullmatch(rb"GET /x\?y=1 HTTP/1\.1\r\nHost: web\r\nUser-Agent: t/1\r\n" + XF
                        + rb"x-request-id: " + RID + rb"\r\n\r\n", head), head
    up = upstream_of(up_t)
    assert type(up) is b.stream.UpstreamConnection
    assert up.stream is s and s.upstream is up
    ep = e.clusters[WEB].endpoints[0]
    assert ep.rq_active == 1 and s.endpoint is ep
    assert client_t.writes == []
    respond(up_t)
    assert client_t.take() == OK
    assert not client_t.closed and conn.stream is None
    # counters back to rest
    cs = e.clusters[WEB].stats
    assert (cs.rq_total, cs.rq_active, cs.rq_completed) == (1, 0, 1)
    assert (cs.cx_total, cs.cx_active) == (1, 1)
    assert (e.stats.rq_total, e.stats.rq_active, e.stats.rq_completed) == (1, 0, 1)
    assert e.stats.bytes_tx == len(OK) and e.stats.bytes_rx > 0
    assert cs.snapshot()["codes"] == {200: 1}
    assert (ep.rq_active, ep.rq_total) == (0, 1)
    assert up.stream is None and e.pool().idle == [up]
    assert s.state == py_stream.S_DONE and s.status == 200


def test_keep_alive_request_reuses_the_pooled_upstream(b, make_engine):
    e = make_engine()
    client = e.client()
    client_t, conn = client
    up_t = served(e, client, get("web", "/one"))
    first = up_t.take()
    assert client_t.take() == OK
    up = upstream_of(up_t)
    conn.data_received(get("web", "/two"))
    assert conn.stream.upstream is up and up.reused
    e.loop.run()
    assert e.loop.connects == [ADDR], "the second request dialled again"
    second = up_t.take()
    assert second.startswith(b"GET /two HTTP/1.1\r\nHost: web\r\n" + XF + b"x-request-id: ")
    rid1 = re.search(rb"x-request-id: (" + RID + rb")", first).group(1)
    rid2 = re.search(rb"x-request-id: (" + RID + rb")", second).group(1)
    assert rid1 != rid2
    respond(up_t, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert client_t.take() == b"HTTP/1.1 204 No Content\r\n\r\n"
    cs = e.clusters[WEB].stats
    assert (cs.rq_total, cs.rq_active, cs.rq_completed, cs.cx_total) == (2, 0, 2, 1)
    assert e.pool().idle == [up] and e.pool().cx_total == 1 and e.pool().cx_active == 1
    assert e.clusters[WEB].endpoints[0].rq_active == 0


def test_client_forwarding_headers_are_extended_not_replaced(b, make_engine):
    e = make_engine()
    client = e.client()
    up_t = served(e, client, get("web", headers=[("X-Forwarded-For", "1.1.1.1"),
                                                 ("X-Forwarded-Proto", "https"),
                                                 ("X-Request-Id", "abc-123")]))
    head = up_t.take()
    assert head == (b"GET / HTTP/1.1\r\nHost: web\r\nX-Request-Id: abc-123\r\n"
                    b"x-forwarded-proto: http\r\nx-forwarded-for: 1.1.1.1, 10.1.2.3\r\n\r\n")


def test_response_in_pieces_and_chunked(b, make_engine):
    e = make_engine()
    client_t, conn = client = e.client()
    conn.data_received(get("web"))
    e.loop.run()
    up_t = e.loop.upstreams[0]
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r\n\r\n5\r\nhel",
             b"lo\r\n", b"0\r\n\r\n"]
    for p in parts[:-1]:
        respond(up_t, p)
        assert conn.stream is not None
    respond(up_t, parts[-1])
    assert client_t.take() == b"".join(parts)
    assert conn.stream is None
    assert e.pool().idle == [upstream_of(up_t)]


def test_request_body_is_forwarded(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(post_head("web", 10) + b"01234")
    e.loop.run()  # the body that came with the head waits in pending, then goes with it
    up_t = e.loop.upstreams[0]
    conn.data_received(b"56789")
    data = up_t.take()
    assert data.endswith(b"\r\n\r\n0123456789")
    assert data.startswith(b"POST /submit HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n" + XF)
    respond(up_t)
    assert client_t.take() == OK
    assert e.stats.bytes_rx == len(post_head("web", 10)) + 10


# -- 2. pools keyed by (address, port, transport, protocol) ----------------------------------------


def test_clusters_sharing_an_address_share_one_pool(b, make_engine):
    e = make_engine()
    web, api = e.clusters[WEB], e.clusters[API]
    assert type(web) is b.cluster.Cluster
    ew, ea = web.endpoints[0], api.endpoints[0]
    assert ew is not ea, "each cluster has its own Endpoint"
    pool = e.cm.pool_for(*ADDR)
    assert type(pool) is b.cluster.Pool
    assert ew.pool is pool and ea.pool is pool
    assert pool.key == (ADDR[0], ADDR[1], "plaintext", "http/1.1", "")
    mtls = e.cm.pool_for(ADDR[0], ADDR[1], transport="spiffe://x/ns/a/sa/b")
    assert mtls is not pool and mtls.key[2] == "spiffe://x/ns/a/sa/b"
    assert e.cm.pool_for(ADDR[0], ADDR[1], transport="spiffe://x/ns/a/sa/b") is mtls
    assert e.cm.pool_for(ADDR[0], ADDR[1], transport="spiffe://x/ns/a/sa/c") is not mtls
    assert e.cm.pool_for(ADDR[0], ADDR[1], protocol="h2") is not pool
    assert e.cm.pool_for(ADDR[0], ADDR[1] + 1) is not pool


def test_connection_released_by_one_cluster_serves_another_of_the_same_key(b, make_engine):
    e = make_engine()
    client_t, conn = client = e.client()
    up_t = served(e, client, get("web"))
    up = upstream_of(up_t)
    assert e.pool().idle == [up]
    up_t.take()
    client_t.take()
    # cluster API, same (address, port, transport, protocol): the same connection
    conn.data_received(get("api"))
    assert conn.stream.cluster is e.clusters[API]
    assert conn.stream.upstream is up
    assert up_t.take().startswith(b"GET / HTTP/1.1\r\nHost: api\r\n")
    respond(up_t)
    assert client_t.take() == OK
    assert e.loop.connects == [ADDR] and e.pool().idle == [up]
    # a cluster reaching the same address over another transport must not get it
    mtls_pool = e.cm.pool_for(ADDR[0], ADDR[1], transport="spiffe://x/ns/a/sa/b")
    cl = b.cluster.Cluster("mtls", b.counters.ClusterStats("mtls"), pool_for=e.cm.pool_for)
    cl.set_endpoints([b.cluster.Endpoint(ADDR[0], ADDR[1], mtls_pool)], [1])
    e.route_host(b"mtls", cl)
    conn.data_received(get("mtls"))
    assert conn.stream.upstream is not up
    e.loop.run()
    assert e.loop.connects == [ADDR, ADDR], "no new connection for another transport"
    up2_t = e.loop.upstreams[1]
    assert upstream_of(up2_t).pool is mtls_pool
    respond(up2_t)
    assert client_t.take() == OK
    assert e.pool().idle == [up], "the plaintext connection was taken by the mTLS cluster"
    assert mtls_pool.idle == [upstream_of(up2_t)]


# -- 3. per-cluster settings over a shared endpoint address ----------------------------------------

SHARED_YAML = textwrap.dedent("""\
    apiVersion: meshproxy.io/v1alpha1
    kind: Bootstrap
    metadata: {name: bootstrap}
    spec:
      upstream: {maxIdlePerEndpoint: 7}
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: fast}
    spec:
      hosts: [fast.default.svc.cluster.local]
      location: MESH_INTERNAL
      resolution: STATIC
      ports: [{number: 80, name: http, protocol: HTTP}]
      endpoints: [{address: 127.0.0.41, ports: {http: 8080}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: slow}
    spec:
      hosts: [slow.default.svc.cluster.local]
      location: MESH_INTERNAL
      resolution: STATIC
      ports: [{number: 80, name: http, protocol: HTTP}]
      endpoints: [{address: 127.0.0.41, ports: {http: 8080}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: fast}
    spec:
      host: fast.default.svc.cluster.local
      trafficPolicy:
        connectionPool:
          tcp: {connectTimeout: 1s}
          http: {idleTimeout: 5s}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: slow}
    spec:
      host: slow.default.svc.cluster.local
      trafficPolicy:
        connectionPool:
          tcp: {connectTimeout: 7s}
          http: {idleTimeout: 300s}
    """)
FAST = "outbound|80||fast.default.svc.cluster.local"
SLOW = "outbound|80||slow.default.svc.cluster.local"
SHARED = ("127.0.0.41", 8080)


@pytest.fixture
def shared_snapshot(tmp_path):
    p = tmp_path / "shared.yaml"
    p.write_text(SHARED_YAML)
    snap = build_snapshot(str(p))
    # maxIdlePerEndpoint is a bootstrap-wide setting: give the fast cluster its own.
    clusters = tuple(dataclasses.replace(c, max_idle_per_endpoint=1) if c.name == FAST else c
                     for c in snap.clusters)
    return dataclasses.replace(snap, clusters=clusters)


@pytest.mark.parametrize("order", ["fast-first", "slow-first"])
def test_shared_endpoint_keeps_each_clusters_settings(b, make_engine, monkeypatch,
                                                      shared_snapshot, order):
    """Regression: an endpoint shared by two clusters took whichever cluster was applied last."""
    snap = shared_snapshot
    if order == "slow-first":
        snap = dataclasses.replace(snap, clusters=snap.clusters[::-1])
    e = make_engine(snap)
    fast, slow = e.clusters[FAST], e.clusters[SLOW]
    assert (fast.connect_timeout, fast.idle_timeout, fast.max_idle) == (1.0, 5.0, 1)
    assert (slow.connect_timeout, slow.idle_timeout, slow.max_idle) == (7.0, 300.0, 7)
    assert fast.endpoints[0] is not slow.endpoints[0]
    pool = e.pool(SHARED)
    assert fast.endpoints[0].pool is pool and slow.endpoints[0].pool is pool

    timeouts = []
    real_wait_for = asyncio.wait_for

    async def wait_for(aw, timeout):
        timeouts.append(timeout)
        return await real_wait_for(aw, timeout)

    monkeypatch.setattr(asyncio, "wait_for", wait_for)
    c1, c2 = e.client(), e.client(("10.1.2.4", 40002))

    # SLOW dials with its connect timeout and keeps the connection for its idle timeout.
    t0 = time.monotonic()
    u1_t = served(e, c1, get("slow"))
    t1 = time.monotonic()
    assert timeouts == [7.0]
    u1 = upstream_of(u1_t)
    assert pool.idle == [u1]
    assert t0 + 300.0 <= u1.idle_deadline <= t1 + 300.0, "not SLOW's idle timeout"

    # FAST reuses that connection (same pool key) and releases it with its own idle timeout.
    t0 = time.monotonic()
    assert served(e, c1, get("fast")) is u1_t
    t1 = time.monotonic()
    assert timeouts == [7.0]
    assert pool.idle == [u1]
    assert t0 + 5.0 <= u1.idle_deadline <= t1 + 5.0, "not FAST's idle timeout"

    # Two concurrent requests through FAST: u1 and a new one dialled with FAST's timeout; FAST
    # keeps one idle connection, so the second released is closed.
    c1[1].data_received(get("fast"))
    c2[1].data_received(get("fast"))
    e.loop.run()
    assert timeouts == [7.0, 1.0]
    assert c1[1].stream.upstream is u1
    u2_t = e.loop.upstreams[1]
    respond(u1_t)
    respond(u2_t)
    assert u2_t.closed and not u1_t.closed
    assert pool.idle == [u1], "FAST keeps at most one idle connection"

    # The same through SLOW: both connections are kept, with SLOW's idle timeout.
    c1[1].data_received(get("slow"))
    c2[1].data_received(get("slow"))
    e.loop.run()
    assert timeouts == [7.0, 1.0, 7.0]
    assert c1[1].stream.upstream is u1
    u3_t = e.loop.upstreams[2]
    t0 = time.monotonic()
    respond(u1_t)
    respond(u3_t)
    t1 = time.monotonic()
    assert pool.idle == [u1, upstream_of(u3_t)], "SLOW keeps up to seven idle connections"
    for up in pool.idle:
        assert t0 + 300.0 <= up.idle_deadline <= t1 + 300.0, "not SLOW's idle timeout"
    assert not u3_t.closed
    assert e.loop.connects == [SHARED] * 3
    for c in (c1, c2):
        assert c[0].take() == OK * (4 if c is c1 else 2)
    assert fast.endpoints[0].rq_total == 3 and slow.endpoints[0].rq_total == 3


# -- 4. filters: stop and resume, local replies, response edits, built-in filters ------------------


class Stopper(HttpFilter):
    """Stops every request at its head; the test resumes it. ``config``: an event list."""

    def __init__(self, config):
        self.events = config
        self.events.append(("created", self))

    def on_request_head(self, stream):
        self.events.append(("head", stream))
        return STOP

    def on_complete(self, stream):
        self.events.append(("complete", stream.status))


class BodyWatcher(HttpFilter):
    """Records what it sees, in order."""

    def __init__(self, config):
        self.events = config

    def on_request_head(self, stream):
        self.events.append(("watch-head",))
        return CONTINUE

    def on_request_body(self, stream, data, end):
        self.events.append(("watch-body", bytes(data), end))
        return CONTINUE

    def on_response_body(self, stream, data, end):
        self.events.append(("watch-resp", bytes(data), end))
        return CONTINUE


class Denier(HttpFilter):
    def __init__(self, config):
        self.events = config

    def on_request_head(self, stream):
        stream.local_reply(403, b"denied", "", b"x-why: policy\r\n")
        return STOP

    def on_complete(self, stream):
        self.events.append(("complete", stream.status))


class ResponseTagger(HttpFilter):
    def __init__(self, config):
        self.events = config

    def on_response_head(self, stream):
        self.events.append(("response-head", stream.status))
        stream.add_response_headers(b"x-filter: yes\r\n", (b"server",))
        return CONTINUE


@pytest.mark.parametrize("pooled", [False, True], ids=["new-connection", "pooled-connection"])
def test_filter_stop_then_resume_forwards_the_request_intact(b, make_engine, pooled):
    e = make_engine()
    events = []
    e.route_host(b"stop", e.clusters[WEB], (FilterFactory(Stopper, events),))
    if pooled:
        warm = e.client(("10.9.9.9", 1))
        served(e, warm, get("web")).take()
        assert len(e.pool().idle) == 1
    n_up = len(e.loop.upstreams)
    writes_before = [len(t.writes) for t in e.loop.upstreams]
    client_t, conn = e.client()
    conn.data_received(post_head("stop", 11) + b"hello")
    conn.data_received(b" world")  # the rest of the body, sent while the filter holds the stream
    s = conn.stream
    e.loop.run()
    assert [ev[0] for ev in events] == ["created", "head"]
    assert s.state == py_stream.S_FILTERS and s.upstream is None
    assert len(e.loop.upstreams) == n_up, "dialled before resume"
    assert [len(t.writes) for t in e.loop.upstreams] == writes_before, "sent before resume"
    assert client_t.writes == []
    s.resume()
    e.loop.run()
    up_t = s.upstream.transport
    if pooled:
        assert len(e.loop.upstreams) == n_up and up_t is e.loop.upstreams[0]
    data = up_t.take()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /submit HTTP/1.1\r\nHost: stop\r\nContent-Length: 11\r\n")
    assert body == b"hello world"
    respond(up_t)
    assert client_t.take() == OK
    assert events[-1] == ("complete", 200)
    assert s.filters is not None and len(s.filters) == 1


def test_filter_local_reply_answers_without_upstream(b, make_engine):
    e = make_engine()
    events = []
    e.route_host(b"deny", e.clusters[WEB], (FilterFactory(Denier, events),))
    client_t, conn = e.client()
    conn.data_received(get("deny"))
    e.loop.run()
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n")
    assert b"x-why: policy\r\n" in out and out.endswith(b"\r\n\r\ndenied")
    assert e.loop.connects == []
    assert events == [("complete", 403)]
    cs = e.clusters[WEB].stats
    assert (cs.rq_total, cs.rq_active, cs.rq_completed) == (1, 0, 1)
    assert cs.snapshot()["codes"] == {403: 1}
    assert e.clusters[WEB].endpoints[0].rq_total == 0
    assert (e.stats.rq_active, e.stats.rq_completed) == (0, 1)
    # the connection stays usable
    assert not client_t.closed and conn.stream is None
    served(e, (client_t, conn), get("web"))
    assert client_t.take() == OK


def test_filter_adds_response_headers(b, make_engine):
    e = make_engine()
    events = []
    e.route_host(b"tag", e.clusters[WEB], (FilterFactory(ResponseTagger, events),))
    client_t, conn = e.client()
    served(e, (client_t, conn), get("tag"))
    assert events == [("response-head", 200)]
    assert client_t.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-filter: yes\r\n\r\nhello"


def test_fault_abort_answers_with_its_status_and_flag_fi(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("abort"))
    e.loop.run()
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 418 ")
    assert out.endswith(b"\r\n\r\nfault filter abort")
    assert e.loop.connects == []
    cs = e.clusters[WEB].stats.snapshot()
    assert cs["flags"] == {"FI|418": 1}
    assert cs["codes"] == {418: 1} and cs["rq_active"] == 0
    assert e.stats.snapshot()["codes"] == {418: 1}


def test_fault_delay_holds_the_request_then_lets_it_go(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(post_head("delay", 4) + b"ab")
    conn.data_received(b"cd")
    e.loop.run()
    (timer,) = e.loop.timers
    assert timer.delay == 0.25
    assert e.loop.connects == [] and client_t.writes == []
    timer.fire()
    e.loop.run()
    (up_t,) = e.loop.upstreams
    assert up_t.take().endswith(b"\r\n\r\nabcd")
    respond(up_t)
    assert client_t.take() == OK
    assert e.clusters[WEB].stats.snapshot()["flags"] == {"DI|200": 1}


def test_header_edit_filter_edits_upstream_and_response_heads(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    up_t = served(e, (client_t, conn), get("edit", headers=[("X-Debug", "1"), ("X-Route", "old")]))
    head = up_t.take()
    assert re.fullmatch(rb"GET / HTTP/1\.1\r\nHost: edit\r\n" + XF + rb"x-request-id: " + RID
                        + rb"\r\nx-route: edit\r\nx-dest: web\r\n\r\n", head), head
    assert client_t.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nx-served: web\r\n\r\nhello"


def test_body_filters_see_the_body_after_their_own_head(b, make_engine):
    """A filter's on_request_body must not run before its on_request_head: a STOP by an earlier
    filter (fault delay, an auth call) must hold the body back from the filters after it."""
    e = make_engine()
    events = []
    e.route_host(b"hold", e.clusters[WEB],
                 (FilterFactory(Stopper, events), FilterFactory(BodyWatcher, events)))
    client_t, conn = e.client()
    conn.data_received(post_head("hold", 4) + b"ab")
    conn.data_received(b"cd")
    s = conn.stream
    s.resume()
    e.loop.run()
    seen = [ev for ev in events if ev[0].startswith("watch")]
    assert seen[0] == ("watch-head",), f"body before head: {seen}"
    # after its head: the whole body (in one piece or as it came), then the end, once
    assert b"".join(ev[1] for ev in seen[1:-1]) == b"abcd" and seen[-1] == ("watch-body", b"", True)
    assert all(not ev[2] for ev in seen[1:-1])


def test_mirror_after_fault_delay_gets_the_whole_body(b, make_engine):
    """Route with a fault delay and a mirror (Istio allows both): the body that arrives during the
    delay must reach the mirror as well as the upstream."""
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(post_head("delaymirror", 4) + b"ab")
    conn.data_received(b"cd")
    (timer,) = [t for t in e.loop.timers if t.delay == 0.25]
    timer.fire()
    e.loop.run()
    by_addr = {t.extra["peername"]: t for t in e.loop.upstreams}
    assert set(by_addr) == {ADDR, SHADOW_ADDR}
    assert by_addr[ADDR].take().endswith(b"\r\n\r\nabcd")
    mirrored = by_addr[SHADOW_ADDR].take()
    assert b"Host: delaymirror-shadow\r\n" in mirrored.replace(b"host: ", b"Host: ")
    assert mirrored.endswith(b"\r\n\r\nabcd"), f"the mirror got {mirrored!r}"


# -- 5. upstream attach and release ----------------------------------------------------------------


def test_connection_close_response_closes_the_upstream(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    up_t = served(e, (client_t, conn), get("web"),
                  b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi")
    up = upstream_of(up_t)
    assert up.stream is None and up.closed and up_t.closed
    assert e.pool().idle == []
    assert client_t.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert not client_t.closed, "the client's connection is its own"
    up.connection_lost(None)
    assert e.pool().cx_active == 0
    cs = e.clusters[WEB].stats
    assert (cs.cx_active, cs.cx_destroy_remote) == (0, 0)


def test_close_delimited_response_ends_when_the_upstream_closes(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("web"))
    e.loop.run()
    (up_t,) = e.loop.upstreams
    respond(up_t, b"HTTP/1.1 200 OK\r\n\r\nsome")
    respond(up_t, b" bytes")
    assert conn.stream is not None
    up_t.protocol.connection_lost(None)
    assert client_t.take() == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nsome bytes"
    assert client_t.closed and e.pool().idle == []
    assert e.clusters[WEB].stats.rq_completed == 1


def test_stale_pooled_connection_is_retried_once_on_a_new_one(b, make_engine):
    e = make_engine()
    client_t, conn = client = e.client()
    old_t = served(e, client, get("web"))
    old_t.take()
    client_t.take()
    old = upstream_of(old_t)
    conn.data_received(get("web", "/again"))
    s = conn.stream
    assert s.upstream is old and old.reused
    head = old_t.take()
    old.connection_lost(None)  # the server had closed it: not one response byte
    assert s.upstream is not None and s.upstream is not old
    e.loop.run()
    assert e.loop.connects == [ADDR, ADDR]
    new_t = e.loop.upstreams[1]
    assert new_t.take() == head, "the retry must send the same head (same x-request-id)"
    respond(new_t)
    assert client_t.take() == OK
    assert s.retried and s.status == 200 and s.flags == ""
    assert e.pool().idle == [upstream_of(new_t)]
    cs = e.clusters[WEB].stats
    assert (cs.rq_total, cs.rq_completed, cs.rq_reset, cs.cx_destroy_remote) == (2, 2, 0, 1)
    assert e.clusters[WEB].endpoints[0].rq_active == 0


def test_stale_retry_happens_once(b, make_engine):
    e = make_engine()
    client_t, conn = client = e.client()
    served(e, client, get("web"))
    client_t.take()
    conn.data_received(get("web"))
    conn.stream.upstream.connection_lost(None)
    e.loop.run()
    retry = e.loop.upstreams[1]
    assert upstream_of(retry).reused is False
    retry.protocol.connection_lost(None)  # the new connection dies too: 503 UC now
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out.endswith(b"reset reason: connection termination")
    assert len(e.loop.connects) == 2
    cs = e.clusters[WEB].stats.snapshot()
    assert cs["flags"] == {"UC|503": 1} and cs["rq_reset"] == 1


def test_fresh_connection_lost_or_body_sent_is_not_retried(b, make_engine):
    e = make_engine()
    # a request with a body already sent on a pooled connection: not retried
    client_t, conn = client = e.client()
    served(e, client, get("web"))
    client_t.take()
    conn.data_received(post_head("web", 3) + b"abc")
    conn.stream.upstream.connection_lost(None)
    e.loop.run()
    assert len(e.loop.connects) == 1
    assert client_t.take().startswith(b"HTTP/1.1 503 ")
    # a brand-new connection that dies: not retried
    client2_t, conn2 = e.client(("10.1.2.4", 40002))
    conn2.data_received(get("web"))
    e.loop.run()
    assert len(e.loop.connects) == 2
    e.loop.upstreams[-1].protocol.connection_lost(None)
    e.loop.run()
    assert len(e.loop.connects) == 2
    assert client2_t.take().startswith(b"HTTP/1.1 503 ")
    assert e.clusters[WEB].endpoints[0].rq_active == 0


def test_connect_failure_retries_another_endpoint_and_releases_the_slot(b, make_engine):
    e = make_engine()
    two = e.clusters[TWO]
    e.loop.refuse = 1
    client_t, conn = e.client()
    conn.data_received(get("two"))
    s = conn.stream
    e.loop.run()
    (backoff,) = e.loop.timers  # Envoy's jittered backoff: at most 25 ms before the first retry
    assert 0 <= backoff.delay <= 0.025
    e.loop.settle()
    assert len(e.loop.connects) == 2 and e.loop.connects[0] != e.loop.connects[1]
    failed = next(ep for ep in two.endpoints if (ep.address, ep.port) == e.loop.connects[0])
    assert s.endpoint is not failed and s.flags == "", "URX only when the retries run out"
    assert failed.health_flags & py_cluster.H_OUTLIER, "a connect failure ejects the endpoint"
    assert failed.rq_active == 0
    respond(e.loop.upstreams[0])
    assert client_t.take() == OK
    assert [ep.rq_active for ep in two.endpoints] == [0, 0]
    assert two.stats.cx_connect_fail == 1
    snap = two.stats.snapshot()
    assert snap["flags"] == {} and (snap["rq_retry"], snap["rq_retry_success"]) == (1, 1)
    assert two.res.retries == 0


def test_endpoint_ejected_while_a_request_is_in_flight(b, make_engine):
    """Another endpoint of the cluster is ejected (its picker is rebuilt) while a request is in
    flight: the request must still finish normally when its response arrives."""
    snap = default_snapshot()
    three = scluster("outbound|80||three.default.svc.cluster.local",
                     [("127.0.0.81", 8080), ("127.0.0.82", 8080), ("127.0.0.83", 8080)])
    lst = snap.listeners[0]
    lst = dataclasses.replace(lst, virtual_hosts=lst.virtual_hosts + (
        vhost(["three"], to(three.name)),))
    e = make_engine(dataclasses.replace(snap, listeners=(lst,), clusters=snap.clusters + (three,)))
    cluster = e.clusters[three.name]
    client_t, conn = e.client()
    conn.data_received(get("three"))
    s = conn.stream
    e.loop.run()
    other = next(ep for ep in cluster.endpoints if ep is not s.endpoint)
    cluster.detector.put_result(other, b.cluster.RESULT_CONNECT_FAILED)  # e.g. another request's
    respond(e.loop.upstreams[0])  # today: ValueError from Cluster.release inside Stream.finish
    assert client_t.take() == OK
    assert conn.stream is None and s.status == 200
    assert [ep.rq_active for ep in cluster.endpoints] == [0, 0, 0]
    assert cluster.stats.rq_active == 0 and e.stats.rq_active == 0
    served(e, (client_t, conn), get("web"))  # the keep-alive connection goes on
    assert client_t.take() == OK


def test_connect_failure_everywhere_is_503_uf(b, make_engine):
    e = make_engine()
    e.loop.refuse = 10
    client_t, conn = e.client()
    conn.data_received(get("web"))
    e.loop.settle()
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert out.endswith(b"reset reason: connection failure")
    # Istio's default policy: two retries, to the only endpoint there is, then UF with URX
    assert len(e.loop.connects) == 3
    snap = e.clusters[WEB].stats.snapshot()
    assert snap["flags"] == {"UF,URX|503": 1}
    assert (snap["rq_retry"], snap["rq_retry_limit_exceeded"]) == (2, 1)
    assert e.clusters[WEB].endpoints[0].rq_active == 0 and e.clusters[WEB].res.retries == 0


def test_client_gone_mid_request_closes_the_upstream(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("web"))
    e.loop.run()
    (up_t,) = e.loop.upstreams
    respond(up_t, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
    conn.connection_lost(None)
    assert up_t.closed and e.pool().idle == []
    cs = e.clusters[WEB].stats.snapshot()
    assert cs["flags"] == {"DC|200": 1} and cs["rq_active"] == 0
    assert e.clusters[WEB].endpoints[0].rq_active == 0
    assert e.stats.rq_active == 0 and e.stats.cx_active == 0


def test_upstream_gone_mid_response_resets_the_client(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("web"))
    e.loop.run()
    (up_t,) = e.loop.upstreams
    respond(up_t, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
    up_t.protocol.connection_lost(None)
    assert client_t.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal"
    assert client_t.closed, "a cut response must close the client connection"
    cs = e.clusters[WEB].stats.snapshot()
    assert cs["flags"] == {"UC|200": 1} and cs["rq_reset"] == 1 and cs["rq_active"] == 0
    assert e.pool().idle == []


def test_invalid_response_is_502_upe(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("web"))
    e.loop.run()
    (up_t,) = e.loop.upstreams
    respond(up_t, b"HTTQ/9 nonsense\r\n\r\n")
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert out.endswith(b"upstream sent an invalid HTTP response")
    assert up_t.closed and e.pool().idle == []
    assert e.clusters[WEB].stats.snapshot()["flags"] == {"UPE|502": 1}
    assert not client_t.closed  # a GET was fully read: the client connection can go on
    served(e, (client_t, conn), get("web"))
    assert client_t.take() == OK


def test_interim_response_is_relayed_before_the_final_one(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n"
                       b"Expect: 100-continue\r\n\r\n")
    e.loop.run()
    (up_t,) = e.loop.upstreams
    respond(up_t, b"HTTP/1.1 100 Continue\r\n\r\n")
    assert client_t.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(b"ok")
    assert up_t.take().endswith(b"\r\n\r\nok")
    respond(up_t)
    assert client_t.take() == OK
    assert e.pool().idle == [upstream_of(up_t)]


def test_head_response_has_no_body(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n")
    e.loop.run()
    (up_t,) = e.loop.upstreams
    respond(up_t, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert client_t.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert conn.stream is None and e.pool().idle == [upstream_of(up_t)]


def test_upgrade_tunnels_both_ways_and_closes_when_both_ends_are_done(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\n"
                       b"Upgrade: websocket\r\n\r\n")
    e.loop.run()
    (up_t,) = e.loop.upstreams
    head = up_t.take()
    assert head.startswith(b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\n")
    assert b"\r\nconnection: upgrade\r\n" in head.lower()
    respond(up_t, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n\r\nfrom-up")
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and out.endswith(b"from-up")
    conn.data_received(b"from-client")
    assert up_t.take() == b"from-client"
    respond(up_t, b"more")
    assert client_t.take() == b"more"
    assert conn.eof_received() is True  # client half-closes: passed on, both stay open
    assert up_t.eof_written and not up_t.closed
    assert up_t.protocol.eof_received() is False  # and the upstream: the tunnel is over
    assert up_t.closed and client_t.closed
    cs = e.clusters[WEB].stats.snapshot()
    assert cs["codes"] == {101: 1} and cs["rq_active"] == 0
    assert e.clusters[WEB].endpoints[0].rq_active == 0
    assert e.pool().idle == []


# -- 6. backpressure -------------------------------------------------------------------------------


def test_client_backpressure_pauses_the_upstream(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("web"))
    e.loop.run()
    (up_t,) = e.loop.upstreams
    conn.pause_writing()
    assert not up_t.reading and up_t.pauses == 1
    conn.pause_writing()
    assert up_t.pauses == 1
    conn.resume_writing()
    assert up_t.reading and up_t.resumes == 1
    conn.pause_writing()
    assert not up_t.reading
    respond(up_t)  # the response ends while paused: a pooled connection must read again
    assert up_t.reading
    assert e.pool().idle == [upstream_of(up_t)]


def test_upstream_backpressure_pauses_the_client(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(post_head("web", 6) + b"abc")
    e.loop.run()
    (up_t,) = e.loop.upstreams
    up = upstream_of(up_t)
    up.pause_writing()
    assert not client_t.reading and client_t.pauses == 1
    up.resume_writing()
    assert client_t.reading and client_t.resumes == 1
    conn.data_received(b"def")
    respond(up_t)
    assert client_t.take() == OK


def test_connect_after_client_pause_starts_paused(b, make_engine):
    """The client's transport pauses writing while the stream's upstream is still connecting:
    the new connection must start with reading paused (the pause was recorded, never applied)."""
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("web"))
    conn.pause_writing()  # before the connection is made
    e.loop.run()
    (up_t,) = e.loop.upstreams
    assert not up_t.reading
    conn.resume_writing()
    assert up_t.reading


def test_pooled_upstream_for_a_paused_client_starts_paused(b, make_engine):
    """The client's transport is over its high-water mark when a (pipelined) request is routed to
    a pooled connection: that upstream must not be read either, as with a new connection."""
    e = make_engine()
    client_t, conn = client = e.client()
    up_t = served(e, client, get("web"))
    client_t.take()
    conn.pause_writing()
    assert up_t.reading  # idle, nothing to pause
    conn.data_received(get("web"))
    # The per-connection buffer limit: no pipelined request is served while the client does not
    # read, and the client is not read either.
    assert conn.stream is None, "a pipelined request served while the client cannot take more"
    assert not client_t.reading
    conn.resume_writing()
    assert client_t.reading
    assert conn.stream.upstream is upstream_of(up_t)
    assert up_t.reading
    conn.pause_writing()
    assert not up_t.reading, "pooled upstream reads while the client cannot take more"
    conn.resume_writing()
    assert up_t.reading


def test_local_replies_stop_while_the_client_does_not_read(b, make_engine):
    """Pipelined requests answered locally (404 NR) are not parsed while the client's transport
    is over its write limit: the replies cannot pile up in its write buffer."""
    e = make_engine()
    t = FakeTransport(PEER, ("127.0.0.1", 15001))
    conn = e.listener.protocol_factory()
    t.protocol = conn
    plain_write = t.write
    writes = [0]

    def write(data):  # the transport goes over its high-water mark on the 3rd reply
        plain_write(data)
        writes[0] += 1
        if writes[0] == 3:
            conn.pause_writing()

    t.write = write
    conn.connection_made(t)
    conn.data_received(get("nowhere.example.com") * 10)
    assert t.take().count(b"HTTP/1.1 404 ") == 3
    assert not t.reading, "the client is still read while it does not read its responses"
    conn.resume_writing()
    assert t.take().count(b"HTTP/1.1 404 ") == 7
    assert t.reading


def test_request_bytes_buffered_while_connecting_pause_the_client(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    big = 70000
    conn.data_received(post_head("web", big))
    conn.data_received(b"x" * 40000)
    assert client_t.reading
    conn.data_received(b"y" * 30000)
    assert not client_t.reading, "more than MAX_BUFFERED held without pausing the client"
    e.loop.run()
    assert client_t.reading
    (up_t,) = e.loop.upstreams
    assert up_t.take().endswith(b"x" * 40000 + b"y" * 30000)


# -- 7. route decisions ----------------------------------------------------------------------------


def view(b, raw, port=15001):
    p = b.http1.RequestParser()
    assert p.parse(raw) == len(raw)
    return b.router.RequestView(p, b"http", port)


def test_decide(b, make_engine):
    e = make_engine()
    rc = e.routes
    assert type(rc) is b.router.RouteContext
    d = rc.decide(view(b, get("nowhere.example.com")))
    assert (d.action, d.status, d.flags) == (b.router.A_LOCAL, 404, "NR")
    d = b.router.decide(rc, view(b, b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n"))
    assert (d.action, d.status) == (b.router.A_LOCAL, 405)
    d = rc.decide(view(b, get("ghost")))
    assert (d.action, d.status, d.flags, d.cluster_name) == (b.router.A_LOCAL, 503, "NC", GHOST)
    d = rc.decide(view(b, get("moved", "/old?q=1")))
    assert (d.action, d.status) == (b.router.A_LOCAL, 302)
    assert d.extra == b"location: https://www.example.com:8443/new?q=1\r\n"
    d = rc.decide(view(b, get("down")))
    assert (d.action, d.status, d.body) == (b.router.A_LOCAL, 503, b"back soon")
    d = rc.decide(view(b, get("web")))
    assert (d.action, d.cluster, d.filters) == (b.router.A_ROUTE, e.clusters[WEB], None)
    d = rc.decide(view(b, get("table", "/api/x")))
    assert d.cluster is e.clusters[API]
    d = rc.decide(view(b, get("table", "/other")))
    assert d.cluster is e.clusters[WEB]


@pytest.mark.parametrize("raw,status,flags,want", [
    (get("nowhere.example.com"), 404, "NR", []),
    (b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n", 405, "", []),
    (get("ghost"), 503, "NC", []),
    (get("moved", "/old?q=1"), 302, "", [b"location: https://www.example.com:8443/new?q=1\r\n"]),
    (get("down"), 503, "", [b"content-length: 9\r\n", b"\r\n\r\nback soon"]),
], ids=["no-route", "connect", "no-cluster", "redirect", "direct"])
def test_engine_answers_local_decisions(b, make_engine, raw, status, flags, want):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(raw)
    e.loop.run()
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 %d " % status), out
    for w in want:
        assert w in out, (w, out)
    assert e.loop.connects == []
    snap = e.stats.snapshot()
    assert snap["codes"] == {status: 1} and snap["rq_active"] == 0
    assert snap["flags"] == ({f"{flags}|{status}": 1} if flags else {})
    for c in e.clusters.values():
        assert c.stats.rq_total == 0


# -- 8. no filters: no filter objects --------------------------------------------------------------


@pytest.mark.parametrize("host,path,cluster", [("web", "/", WEB), ("table", "/api/v", API)],
                         ids=["simple-host", "route-table"])
def test_route_without_filters_creates_none(b, make_engine, host, path, cluster):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get(host, path))
    s = conn.stream
    assert s.decision.filters is None
    assert s.filters is None and not s.body_filters
    assert s.cluster is e.clusters[cluster]
    e.loop.run()
    respond(e.loop.upstreams[0])
    assert client_t.take() == OK
    assert s.filters is None
    # the chain builder was asked at apply time and built nothing for these routes
    assert (None, None) in e.chain_calls  # simple hosts
    assert ("api", None) in e.chain_calls and ("rest", None) in e.chain_calls



# -- retries ----------------------------------------------------------------------------------------

E500 = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom"
E503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"


def test_5xx_is_retried_on_the_other_endpoint_with_the_body_replayed(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(post_head("retry", 5) + b"hello")
    s = conn.stream
    e.loop.run()
    first = e.loop.upstreams[0]
    head = first.take()
    assert head.endswith(b"hello")
    respond(first, E500)
    assert client_t.take() == b"", "a retriable answer never reaches the client"
    assert first.closed
    e.loop.settle()
    second = e.loop.upstreams[1]
    assert e.loop.connects[0] != e.loop.connects[1], "the retry avoids the endpoint that failed"
    assert second.take() == head, "the same head (same x-request-id) and body are sent again"
    respond(second)
    assert client_t.take() == OK
    two = e.clusters[TWO]
    snap = two.stats.snapshot()
    assert (snap["rq_retry"], snap["rq_retry_success"], snap["codes"]) == (1, 1, {200: 1})
    assert s.flags == "" and two.res.retries == 0
    assert [ep.rq_active for ep in two.endpoints] == [0, 0]


def test_retries_exhausted_relays_the_last_answer_with_urx(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("retry"))
    for _ in range(3):  # the first attempt and two retries
        e.loop.settle()
        respond(conn.stream.upstream.transport, E500)
    assert client_t.take() == E500
    snap = e.clusters[TWO].stats.snapshot()
    assert snap["flags"] == {"URX|500": 1}
    assert (snap["rq_retry"], snap["rq_retry_limit_exceeded"], snap["rq_retry_success"]) == (2, 1, 0)


def test_retriable_status_codes_only_retry_their_codes(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("retry503"))
    e.loop.run()
    respond(e.loop.upstreams[0], E500)  # 500 is not in the list: relayed at once
    assert client_t.take() == E500
    conn.data_received(get("retry503"))
    e.loop.settle()
    respond(conn.stream.upstream.transport, E503)
    e.loop.settle()  # the retry may reuse the other endpoint's pooled connection
    respond(conn.stream.upstream.transport)
    assert client_t.take() == OK


def test_attempts_zero_disables_retries_even_for_connect_failures(b, make_engine):
    e = make_engine()
    e.loop.refuse = 1
    client_t, conn = e.client()
    conn.data_received(get("noretry"))
    e.loop.settle()
    assert len(e.loop.connects) == 1
    assert client_t.take().startswith(b"HTTP/1.1 503 ")
    assert e.clusters[TWO].stats.snapshot()["flags"] == {"UF|503": 1}


def test_reset_before_a_response_is_retried(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("retry"))
    e.loop.run()
    e.loop.upstreams[0].protocol.connection_lost(None)  # a fresh connection, no response byte
    e.loop.settle()
    respond(e.loop.upstreams[1])
    assert client_t.take() == OK
    assert e.clusters[TWO].stats.snapshot()["rq_retry"] == 1


def test_a_body_too_large_to_keep_is_not_retried(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    big = b.stream.MAX_REPLAY + 1 if hasattr(b.stream, "MAX_REPLAY") else 65537
    conn.data_received(post_head("retry", big) + b"x" * big)
    e.loop.run()
    respond(e.loop.upstreams[0], E500)
    assert client_t.take() == E500
    assert len(e.loop.connects) == 1
    assert e.clusters[TWO].stats.snapshot()["rq_retry"] == 0


def test_retry_budget_overflow_relays_the_answer(b, make_engine):
    e = make_engine()
    two = e.clusters[TWO]
    two.res.budget_percent = 0.0  # a budget of zero concurrent retries
    two.res.budget_min = 0
    client_t, conn = e.client()
    conn.data_received(get("retry"))
    e.loop.run()
    respond(e.loop.upstreams[0], E500)
    assert client_t.take() == E500
    snap = two.stats.snapshot()
    assert (snap["rq_retry"], snap["rq_retry_overflow"]) == (0, 1)
    # maxRetries is the separate breaker on concurrent retries
    two.res.budget_percent = -1.0
    two.res.max_retries = 0
    conn.data_received(get("retry"))
    e.loop.run()
    respond(conn.stream.upstream.transport, E500)
    assert client_t.take() == E500
    assert two.stats.snapshot()["rq_retry_overflow"] == 2


def test_retry_timer_is_cancelled_when_the_client_leaves(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("retry"))
    e.loop.run()
    respond(e.loop.upstreams[0], E500)
    (timer,) = [t for t in e.loop.timers if not t.fired]
    conn.connection_lost(None)
    assert timer.cancelled
    assert e.clusters[TWO].res.retries == 0
    assert [ep.rq_active for ep in e.clusters[TWO].endpoints] == [0, 0]



# -- circuit breakers (connectionPool limits), retry budget, retryRemoteLocalities ----------------

UO_HEAD = b"HTTP/1.1 503 Service Unavailable\r\n"


def overflowed(data):
    return (data.startswith(UO_HEAD) and b"x-envoy-overloaded: true\r\n" in data
            and data.endswith(b"reset reason: overflow"))


def test_max_requests_overflows_at_once(b, make_engine):
    e = make_engine()
    web = e.clusters[WEB]
    web.res.max_requests = 1  # http2MaxRequests: 1
    a_t, a = e.client()
    a.data_received(get("web"))
    e.loop.run()
    b_t, bc = e.client()
    bc.data_received(get("web"))
    assert overflowed(b_t.take()), "the second request in flight overflows, unqueued"
    assert len(e.loop.connects) == 1
    respond(e.loop.upstreams[0])
    assert a_t.take() == OK
    snap = web.stats.snapshot()
    assert snap["rq_pending_overflow"] == 1 and snap["flags"] == {"UO|503": 1}
    # below the limit again: served
    served(e, (b_t, bc), get("web"))
    assert b_t.take() == OK


def test_max_connections_queues_then_pending_overflows(b, make_engine):
    """Istio's circuit-breaking task: maxConnections 1, http1MaxPendingRequests 1."""
    e = make_engine()
    web = e.clusters[WEB]
    web.res.max_connections = 1
    web.res.max_pending = 1
    a_t, a = e.client()
    a.data_received(get("web", "/a"))
    assert web.stats.rq_pending_active == 1, "a request waiting for its new connection is pending"
    e.loop.run()
    assert web.stats.rq_pending_active == 0 and web.res.connections == 1
    b_t, bc = e.client()
    bc.data_received(get("web", "/b"))
    assert bc.stream.waiting == py_stream.W_QUEUE and web.res.waiting == [bc.stream]
    c_t, cc = e.client()
    cc.data_received(get("web", "/c"))
    assert overflowed(c_t.take()), "one more than http1MaxPendingRequests: 503 UO at once"
    e.loop.run()
    assert len(e.loop.connects) == 1, "never a second connection"
    up = e.loop.upstreams[0]
    assert up.take().startswith(b"GET /a ")
    respond(up)
    assert a_t.take() == OK
    assert up.take().startswith(b"GET /b "), "the freed connection goes to the queued request"
    respond(up)
    assert b_t.take() == OK
    snap = web.stats.snapshot()
    assert (snap["cx_overflow"], snap["rq_pending_overflow"], snap["rq_pending_total"],
            snap["rq_pending_active"]) == (1, 1, 2, 0)
    assert web.res.waiting == [] and web.res.connections == 1
    state = web.res.state(web.stats)
    assert state["cx_open"] == 1 and state["remaining_cx"] == 0 and state["remaining_pending"] == 1


def test_a_queued_request_connects_when_a_connection_closes(b, make_engine):
    e = make_engine()
    web = e.clusters[WEB]
    web.res.max_connections = 1
    a_t, a = e.client()
    a.data_received(get("web", "/a"))
    e.loop.run()
    b_t, bc = e.client()
    bc.data_received(get("web", "/b"))
    assert web.res.waiting == [bc.stream]
    up = e.loop.upstreams[0]
    up.protocol.connection_lost(None)  # the upstream went away mid-request
    assert a_t.take().startswith(b"HTTP/1.1 503 ")
    e.loop.run()
    assert len(e.loop.connects) == 2 and web.res.waiting == []
    assert e.loop.upstreams[1].take().startswith(b"GET /b ")
    respond(e.loop.upstreams[1])
    assert b_t.take() == OK
    assert web.res.connections == 1 and web.stats.rq_pending_active == 0


def test_a_queued_request_leaves_the_queue_when_its_client_goes(b, make_engine):
    e = make_engine()
    web = e.clusters[WEB]
    web.res.max_connections = 1
    a_t, a = e.client()
    a.data_received(get("web"))
    e.loop.run()
    b_t, bc = e.client()
    bc.data_received(get("web"))
    assert web.stats.rq_pending_active == 1
    bc.connection_lost(None)
    assert web.res.waiting == [] and web.stats.rq_pending_active == 0
    respond(e.loop.upstreams[0])
    assert a_t.take() == OK
    assert len(web.endpoints[0].pool.idle) == 1, "nobody waits: the connection goes idle"


def test_max_requests_per_connection_closes_after_the_response(b, make_engine):
    e = make_engine()
    web = e.clusters[WEB]
    web.max_requests_per_connection = 2
    client = e.client()
    up1 = served(e, client, get("web"))
    assert not up1.closed
    up2 = served(e, client, get("web"))
    assert up2 is up1 and up1.closed, "closed after its second request"
    assert web.stats.snapshot()["cx_max_requests"] == 1
    up3 = served(e, client, get("web"))
    assert up3 is not up1 and len(e.loop.connects) == 2


def test_max_connection_duration_closes_an_old_connection(b, make_engine):
    e = make_engine()
    web = e.clusters[WEB]
    web.max_connection_duration = 60.0
    client = e.client()
    up1 = served(e, client, get("web"))
    assert not up1.closed
    idle = web.endpoints[0].pool.idle
    assert idle and idle[0].idle_deadline <= up1.protocol.created + 60.0 + 0.01
    up1.protocol.created -= 61.0  # it has lived past maxConnectionDuration
    served(e, client, get("web"))
    assert up1.closed and web.stats.snapshot()["cx_max_duration_reached"] == 1
    # an idle one is swept at its duration
    up2 = served(e, client, get("web"))
    assert up2 is not up1
    (idle_up,) = web.endpoints[0].pool.idle
    assert idle_up is up2.protocol and not up2.closed and idle_up.expiring
    web.endpoints[0].pool.sweep(idle_up.created + 60.0 + 0.01)
    assert up2.closed and web.stats.snapshot()["cx_max_duration_reached"] == 2


def test_retry_budget_counts_active_and_pending_requests(b):
    stats = b.counters.ClusterStats("c")
    res = b.cluster.Resources()
    res.configure(b.cluster.MAX_UNLIMITED, b.cluster.MAX_UNLIMITED, b.cluster.MAX_UNLIMITED, 0,
                  20.0, 3, 0.0)
    for _ in range(20):
        stats.rq_start()
    for _ in range(10):
        stats.pending_start()
    # the budget replaces maxRetries (0 here): 20% of 30 = 6 concurrent retries
    res.retries = 5
    assert res.retry_allowed(stats)
    res.retries = 6
    assert not res.retry_allowed(stats)
    # never fewer than minRetryConcurrency
    quiet = b.counters.ClusterStats("q")
    res.retries = 2
    assert res.retry_allowed(quiet)
    res.retries = 3
    assert not res.retry_allowed(quiet)


def test_retry_budget_interval_counts_recent_requests(b):
    stats = b.counters.ClusterStats("c")
    res = b.cluster.Resources()
    res.configure(b.cluster.MAX_UNLIMITED, b.cluster.MAX_UNLIMITED, b.cluster.MAX_UNLIMITED,
                  b.cluster.MAX_UNLIMITED, 50.0, 1, 10.0)
    for _ in range(40):
        res.request_started()
    res.retries = 19  # 50% of the 40 started in the last 10 s, none active now
    assert res.retry_allowed(stats)
    res.retries = 20
    assert not res.retry_allowed(stats)


def test_max_retries_breaker_without_a_budget(b):
    stats = b.counters.ClusterStats("c")
    res = b.cluster.Resources()
    res.max_retries = 2
    res.retries = 1
    assert res.retry_allowed(stats)
    res.retries = 2
    assert not res.retry_allowed(stats)
    assert res.state(stats)["rq_retry_open"] == 1


def test_reset_before_request_retries_a_refused_connect(b, make_engine):
    """Istio's inbound default: retry reset-before-request twice (a connect the app refused)."""
    snap = default_snapshot()
    lst = snap.listeners[0]
    inbound = vhost(["inbound"], to(WEB, name="in", retries=RetryPolicy(
        attempts=2, retry_on=("reset-before-request",))))
    lst = dataclasses.replace(lst, virtual_hosts=lst.virtual_hosts + (inbound,))
    e = make_engine(dataclasses.replace(snap, listeners=(lst,)))
    e.loop.refuse = 2
    client_t, conn = e.client()
    conn.data_received(get("inbound"))
    e.loop.settle()
    assert len(e.loop.connects) == 3
    respond(e.loop.upstreams[0])
    assert client_t.take() == OK
    assert e.clusters[WEB].stats.snapshot()["rq_retry"] == 2
    # a reset after the request was written is not retried under reset-before-request
    # (a pooled connection found closed is re-dialled once, whatever the policy)
    conn.data_received(get("inbound"))
    e.loop.run()
    conn.stream.upstream.transport.protocol.connection_lost(None)
    e.loop.run()
    assert len(e.loop.connects) == 4
    e.loop.upstreams[-1].protocol.connection_lost(None)
    e.loop.settle()
    assert client_t.take().startswith(b"HTTP/1.1 503 ")
    assert len(e.loop.connects) == 4
    assert e.clusters[WEB].stats.snapshot()["rq_retry"] == 2


def test_retry_remote_localities_goes_to_the_next_priority(b, make_engine):
    far = ("127.0.0.63", 8080)
    snap = default_snapshot()
    clusters = tuple(c for c in snap.clusters if c.name != TWO) + (SCluster(
        name=TWO, direction="outbound", service="two", namespace="default", port=80,
        port_name="http", protocol="HTTP",
        endpoints=(SEndpoint(*TWO_ADDRS[0], 8080, priority=0),
                   SEndpoint(*TWO_ADDRS[1], 8080, priority=0),
                   SEndpoint(*far, 8080, priority=1))),)
    lst = snap.listeners[0]
    remote = vhost(["remote"], to(TWO, name="remote", retries=RetryPolicy(
        attempts=1, retry_on=("5xx",), retry_remote_localities=True, configured=True)))
    local = vhost(["local"], to(TWO, name="local", retries=RetryPolicy(
        attempts=1, retry_on=("5xx",), configured=True)))
    lst = dataclasses.replace(lst, virtual_hosts=lst.virtual_hosts + (remote, local))
    e = make_engine(dataclasses.replace(snap, listeners=(lst,), clusters=clusters))
    for host, want in (("remote", [far]), ("local", TWO_ADDRS)):
        client_t, conn = e.client()
        before = len(e.loop.connects)
        conn.data_received(get(host))
        e.loop.run()
        respond(e.loop.upstreams[-1], E500)
        e.loop.settle()
        assert len(e.loop.connects) == before + 2
        assert e.loop.connects[-1] in [tuple(a) for a in want], host
        respond(e.loop.upstreams[-1])
        assert client_t.take() == OK


# -- timeouts ---------------------------------------------------------------------------------------


def live_timers(e):
    return [t for t in e.loop.timers if not t.fired and not t.cancelled]


def test_route_timeout_answers_504_ut_and_closes_the_upstream(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("slow"))
    e.loop.run()
    (timer,) = live_timers(e)
    assert timer.delay == 0.5
    up_t = conn.stream.upstream.transport
    timer.fire()
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert out.endswith(b"upstream request timeout")
    assert up_t.closed
    snap = e.clusters[TWO].stats.snapshot()
    assert snap["flags"] == {"UT|504": 1} and snap["rq_timeout"] == 1
    assert conn.stream is None, "the keep-alive connection goes on"


def test_route_timeout_is_cancelled_by_the_response(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("slow"))
    e.loop.run()
    (timer,) = live_timers(e)
    respond(conn.stream.upstream.transport)
    assert client_t.take() == OK and timer.cancelled


def test_route_timeout_after_the_response_started_resets_the_client(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("slow"))
    e.loop.run()
    (timer,) = live_timers(e)
    respond(conn.stream.upstream.transport, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal")
    timer.fire()
    assert client_t.closed
    assert e.clusters[TWO].stats.snapshot()["flags"] == {"UT|200": 1}


def test_per_try_timeout_retries_then_the_route_timeout_holds(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(get("trytimeout"))
    e.loop.run()
    route_timer, try_timer = sorted(live_timers(e), key=lambda t: -t.delay)
    assert (route_timer.delay, try_timer.delay) == (2.0, 0.1)
    first = conn.stream.upstream.transport
    try_timer.fire()  # the first attempt is too slow: closed, retried elsewhere
    assert first.closed and client_t.take() == b""
    (backoff,) = [t for t in live_timers(e) if t.callback.__name__ == "_retry_now"]
    backoff.fire()
    e.loop.run()
    (second_try,) = [t for t in live_timers(e) if t is not route_timer]
    assert second_try.delay == 0.1
    second_try.fire()  # the retry is too slow as well, and none is left: 504 UT with URX
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 504 ")
    snap = e.clusters[TWO].stats.snapshot()
    assert snap["flags"] == {"UT,URX|504": 1} and snap["rq_retry"] == 1
    assert route_timer.cancelled


def test_a_route_timeout_waits_on_the_wheel_then_arms_one_precise_loop_timer(b, make_engine):
    """With a timing wheel (as the sidecar always has), a request's timeout costs no loop timer
    until one resolution plus DEADLINE_MARGIN before it; then one ``call_at`` at exactly its
    time. A request that ends first leaves nothing behind."""
    import importlib
    timers = importlib.import_module(b.stream.__name__.rsplit(".", 1)[0] + ".timers")
    e = make_engine()
    loop = e.loop
    loop.t = 1000.0
    loop.time = lambda: loop.t

    def call_at(when, callback, *args):
        h = Timer(when - loop.t, callback, args)
        h.when = when
        loop.timers.append(h)
        return h

    loop.call_at = call_at
    wheel = timers.TimerWheel(loop)
    e.listener.timers = wheel

    def precise():
        return [t for t in live_timers(e) if getattr(t, "when", None) is not None
                and t.callback != wheel._tick]

    def tick():
        loop.t = round(loop.t + wheel.resolution, 6)
        (h,) = [t for t in live_timers(e) if t.callback == wheel._tick]
        h.fired = True
        wheel._tick()

    client_t, conn = e.client()
    conn.data_received(get("slow"))  # timeout 0.5s, no retries
    e.loop.run()
    assert precise() == [] and len(wheel) == 1
    while not precise():
        assert loop.t < 1000.5
        tick()
    (h,) = precise()
    assert h.when == 1000.5 and loop.t >= 1000.5 - wheel.resolution - py_stream.DEADLINE_MARGIN
    loop.t = 1000.5
    h.fire()
    assert client_t.take().startswith(b"HTTP/1.1 504 ")
    assert e.clusters[TWO].stats.snapshot()["flags"] == {"UT|504": 1}
    # a request answered in time: its wheel timer is gone, no loop timer was ever armed
    client_t, conn = e.client()
    conn.data_received(get("slow"))
    e.loop.run()
    respond(e.loop.upstreams[-1])
    assert client_t.take() == OK
    assert precise() == [] and len(wheel) == 0
