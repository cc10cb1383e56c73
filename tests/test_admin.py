"""Admin server: real sockets on 127.0.0.1, a fake provider, every endpoint, errors, keep-alive."""
import asyncio
import http.client
import json
import socket
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshproxy._py import counters
from meshproxy.admin import start_admin

CLUSTER = "outbound|80||echo.default.svc.cluster.local"


class FakeProvider:
    def __init__(self):
        self.is_ready = True
        self.state = "LIVE"
        self.quit_called = asyncio.Event()
        self.fail_config_dump = False
        s = counters.ClusterStats(CLUSTER)
        s.rq_start()
        s.rq_end(200, 1500, 10, 20)
        s.cx_open()
        lst = counters.ClusterStats("0.0.0.0_15001")
        lst.rq_start()
        lst.rq_end(200, 2000, 10, 20)
        self.snaps = ([s.snapshot()], [lst.snapshot()])

    def ready(self):
        return self.is_ready

    def config_dump(self):
        if self.fail_config_dump:
            raise RuntimeError("boom")
        return {"version": "v7", "clusters": [{"name": CLUSTER}]}

    def cluster_infos(self):
        return [{"name": CLUSTER, "direction": "outbound", "service": "echo.default.svc.cluster.local",
                 "namespace": "default", "port": 80, "lb_policy": "LEAST_REQUEST",
                 "endpoints": [{"address": "127.0.0.2", "port": 8080, "health": "HEALTHY", "weight": 1,
                                "locality": "us-east/zone-a/", "rq_active": 0, "cx_active": 1,
                                "rq_total": 1}]}]

    async def stats(self):
        return {"clusters": self.snaps[0], "listeners": self.snaps[1],
                "workload": {"name": "sleep", "namespace": "default", "app": "sleep"}}

    def server_info(self):
        return {"version": "0.1.0", "state": self.state, "uptime_s": 5, "concurrency": 1,
                "snapshot_version": "v7"}

    async def quit(self):
        self.quit_called.set()


class Harness:
    """Runs the admin server on a uvloop/asyncio loop in a thread; tests use blocking clients."""

    def __init__(self, loop_factory):
        self.loop = loop_factory()
        self.provider = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self, **kw):
        async def go():
            self.provider = FakeProvider()
            return await start_admin(None, "127.0.0.1", 0, self.provider, **kw)
        self.server = self.call(go())
        return self.server

    def stop(self):
        async def go():
            self.server.close()
            await self.server.wait_closed()
        self.call(go())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _uvloop():
    import uvloop
    return uvloop.new_event_loop()


@pytest.fixture(params=[_uvloop, asyncio.new_event_loop], ids=["uvloop", "asyncio"])
def admin(request):
    h = Harness(request.param)
    h.start(prometheus_port=0, status_port=0)
    yield h
    h.stop()


def get(port, path, method="GET", conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    if conn is None:
        c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body


def test_ready_states(admin):
    port = admin.server.port
    assert get(port, "/ready")[0::2] == (200, b"LIVE\n")
    admin.provider.is_ready = False
    assert get(port, "/ready")[0::2] == (503, b"PRE_INITIALIZING\n")
    admin.provider.is_ready = True
    admin.provider.state = "DRAINING"
    assert get(port, "/ready")[0::2] == (503, b"DRAINING\n")
    assert get(port, "/healthz/ready")[0] == 503


def test_index_lists_endpoints(admin):
    status, _, body = get(admin.server.port, "/")
    assert status == 200
    for path in ("/ready", "/stats", "/stats/prometheus", "/config_dump", "/clusters", "/server_info",
                 "/quitquitquit"):
        assert path.encode() in body


def test_stats_prometheus_parses(admin):
    status, headers, body = get(admin.server.port, "/stats/prometheus")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    rq = fams["istio_requests"].samples
    assert rq[0].labels["response_code"] == "200" and rq[0].value == 1
    assert rq[0].labels["reporter"] == "source" and rq[0].labels["source_workload"] == "sleep"
    assert b'envoy_cluster_upstream_rq_total{cluster_name="%s"} 1' % CLUSTER.encode() in body
    assert b'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="0.0.0.0_15001"} 1' in body


def test_stats_text_and_filter_and_json(admin):
    port = admin.server.port
    status, _, body = get(port, "/stats")
    assert status == 200
    lines = body.decode().splitlines()
    assert lines == sorted(lines)
    assert f"cluster.{CLUSTER}.upstream_rq_total: 1" in lines
    assert f"cluster.{CLUSTER}.upstream_rq_200: 1" in lines
    assert "http.0.0.0.0_15001.downstream_rq_2xx: 1" in lines
    status, _, body = get(port, "/stats?filter=upstream_rq_total$")
    assert body.decode().splitlines() == [f"cluster.{CLUSTER}.upstream_rq_total: 1"]
    status, headers, body = get(port, "/stats?format=json&filter=cx_active")
    assert headers["content-type"] == "application/json"
    assert {"name": f"cluster.{CLUSTER}.upstream_cx_active", "value": 1} in json.loads(body)["stats"]
    assert get(port, "/stats?filter=(")[0] == 400
    assert get(port, "/stats?format=prometheus")[2].startswith(b"# HELP")


def test_config_dump_and_server_info(admin):
    port = admin.server.port
    status, headers, body = get(port, "/config_dump")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["version"] == "v7"
    assert b"\n  " in body  # pretty
    status, _, body = get(port, "/server_info")
    assert status == 200 and json.loads(body)["state"] == "LIVE"


def test_provider_error_is_500_without_traceback(admin):
    admin.provider.fail_config_dump = True
    status, _, body = get(admin.server.port, "/config_dump")
    assert status == 500
    assert b"Traceback" not in body and b"RuntimeError" in body
    assert get(admin.server.port, "/ready")[0] == 200


def test_clusters_text_and_json(admin):
    port = admin.server.port
    status, _, body = get(port, "/clusters")
    assert status == 200
    lines = body.decode().splitlines()
    host = f"{CLUSTER}::127.0.0.2:8080"
    for line in (f"{host}::rq_active::0", f"{host}::cx_active::1", f"{host}::rq_total::1",
                 f"{host}::health_flags::healthy", f"{host}::weight::1", f"{host}::region::us-east",
                 f"{host}::zone::zone-a"):
        assert line in lines
    status, _, body = get(port, "/clusters?format=json")
    doc = json.loads(body)
    hs = doc["cluster_statuses"][0]["host_statuses"][0]
    assert hs["address"]["socket_address"] == {"address": "127.0.0.2", "port_value": 8080}
    assert hs["health_status"]["eds_health_status"] == "HEALTHY"


def test_quitquitquit(admin):
    port = admin.server.port
    status, headers, _ = get(port, "/quitquitquit")
    assert status == 405 and "POST" in headers["allow"]
    assert not admin.provider.quit_called.is_set()
    status, _, body = get(port, "/quitquitquit", method="POST")
    assert (status, body) == (200, b"OK\n")

    async def wait():
        await asyncio.wait_for(admin.provider.quit_called.wait(), 5)
    admin.call(wait())


def test_404_405_and_head(admin):
    port = admin.server.port
    assert get(port, "/nope")[0] == 404
    assert get(port, "/ready", method="POST")[0] == 405
    assert get(port, "/stats", method="DELETE")[0] == 405
    status, headers, body = get(port, "/ready", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == "5"


def test_keep_alive(admin):
    c = http.client.HTTPConnection("127.0.0.1", admin.server.port, timeout=5)
    for _ in range(3):
        assert get(admin.server.port, "/ready", conn=c)[0] == 200
    assert get(admin.server.port, "/nope", conn=c)[0] == 404
    assert get(admin.server.port, "/server_info", conn=c)[0] == 200
    c.close()


def _raw(port, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02 garbage garbage\r\n\r\n",
    b"GET /ready HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /ready HTTP/9.9\r\n\r\n",
    b"GET /ready HTTP/1.1\r\n\r\n",  # no Host
])
def test_garbage_gets_400_and_server_survives(admin, garbage):
    out = _raw(admin.server.port, garbage)
    expected = b"HTTP/1.1 505 " if b"HTTP/9.9" in garbage else b"HTTP/1.1 400 "
    assert out.startswith(expected), out
    assert get(admin.server.port, "/ready")[0] == 200


def test_huge_head_gets_431_or_400(admin):
    out = _raw(admin.server.port, b"GET /ready HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 200000 + b"\r\n\r\n")
    assert out[:12] in (b"HTTP/1.1 431", b"HTTP/1.1 400"), out[:40]
    assert get(admin.server.port, "/ready")[0] == 200


def test_client_disconnect_mid_request(admin):
    with socket.create_connection(("127.0.0.1", admin.server.port), timeout=5) as s:
        s.sendall(b"GET /ready HTTP/1.1\r\nHo")
    assert get(admin.server.port, "/ready")[0] == 200


def test_prometheus_and_status_ports_serve_only_their_path(admin):
    srv = admin.server
    assert srv.prometheus_port and srv.status_port
    assert get(srv.prometheus_port, "/stats/prometheus")[0] == 200
    assert get(srv.prometheus_port, "/ready")[0] == 404
    assert get(srv.prometheus_port, "/quitquitquit", method="POST")[0] == 404
    assert get(srv.status_port, "/healthz/ready")[0::2] == (200, b"LIVE\n")
    assert get(srv.status_port, "/stats")[0] == 404


def test_ports_not_bound_unless_asked():
    h = Harness(asyncio.new_event_loop)
    try:
        srv = h.start()
        assert srv.prometheus_port is None and srv.status_port is None
        assert get(srv.port, "/ready")[0] == 200
    finally:
        h.stop()


def test_close_stops_listening():
    h = Harness(asyncio.new_event_loop)
    srv = h.start()
    port = srv.port
    h.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
