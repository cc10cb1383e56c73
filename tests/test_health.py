"""Active health checks: control.health.HealthChecker against tiny local servers, the HealthCheck
kind's validation and compilation, the H_ACTIVE_HC bit on both builds, explain and /clusters."""
import asyncio
import dataclasses
import textwrap

import pytest

from control import ConfigError, build_snapshot, load_config
from control.health import HealthChecker, Target
from control.snapshot import Bootstrap, HealthCheck, Snapshot
from control.snapshot import Cluster as SCluster
from control.snapshot import Endpoint as SEndpoint
from meshproxy import cluster_manager
from meshproxy._py.cluster import H_ACTIVE_HC, H_OUTLIER


# -- the checker against scripted servers ------------------------------------------------------

class Scripted:
    """A 127.0.0.1 server answering each connection with the next status of ``script`` (HTTP) or
    the next reply (TCP); ``served`` counts connections answered."""

    def __init__(self, script, tcp=False):
        self.script = list(script)
        self.tcp = tcp
        self.served = 0
        self.requests = []

    async def start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader, writer):
        try:
            if self.tcp:
                data = await reader.read(100)
                self.requests.append(data)
                reply = self.script[min(self.served, len(self.script) - 1)]
                self.served += 1
                writer.write(reply)
            else:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                status = self.script[min(self.served, len(self.script) - 1)]
                self.served += 1
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def close(self):
        self.server.close()


def run_checker(server_script, check, until_checks, tcp=False):
    """Run a HealthChecker over one target until it has made ``until_checks`` checks; returns
    ([(healthy, check number when reported)], the server)."""
    async def go():
        srv = await Scripted(server_script, tcp=tcp).start()
        events = []
        checker = None

        def on_change(t, healthy):
            events.append((healthy, checker.targets[t].checks))

        checker = HealthChecker(on_change)
        target = Target("127.0.0.1", srv.port, check, host="svc.example")
        checker.set_targets([target])
        while checker.targets[target].checks < until_checks:
            await asyncio.sleep(0.005)
        checker.close()
        srv.close()
        return events, srv
    return asyncio.run(go())


FAST = dict(interval=0.01, timeout=0.5, unhealthy_threshold=3, healthy_threshold=2)


def test_http_check_leaves_and_returns_after_exactly_the_thresholds():
    ok, bad = 200, 500
    #        1   2   3    4    5   6    7    8    9    10  11   12  13  14
    script = [ok, ok, bad, bad, ok, bad, bad, bad, bad, ok, bad, ok, ok, ok]
    check = HealthCheck(http_path="/healthz", request_headers=(("x-probe", "1"),), **FAST)
    events, srv = run_checker(script, check, len(script))
    # two failures then a success: still healthy; the third failure in a row (check 8) takes it
    # out; one success then a failure resets; the second success in a row (check 13) brings it back
    assert events == [(False, 8), (True, 13)]
    head = srv.requests[0].decode()
    assert head.startswith("GET /healthz HTTP/1.1\r\n")
    assert "\r\nHost: svc.example\r\n" in head and "\r\nx-probe: 1\r\n" in head


def test_http_expected_statuses_are_ranges():
    check = HealthCheck(http_path="/", expected_statuses=((200, 300), (404, 405)),
                        **dict(FAST, unhealthy_threshold=1, healthy_threshold=1))
    events, _ = run_checker([204, 404, 300, 299], check, 4)
    assert events == [(False, 3), (True, 4)]


def test_tcp_check_send_and_expect():
    check = HealthCheck(tcp=True, send="PING", expect="PONG",
                        **dict(FAST, unhealthy_threshold=2, healthy_threshold=1))
    script = [b"PONG", b"NOPE", b"xxPONGxx", b"NOPE", b"NOPE", b"PONG"]
    events, srv = run_checker(script, check, len(script), tcp=True)
    assert events == [(False, 5), (True, 6)]
    assert srv.requests[0] == b"PING"


def test_tcp_connect_only_and_refused_and_timeout():
    async def go():
        checker = HealthChecker(lambda t, h: None)
        srv = await Scripted([b""], tcp=True).start()
        port = srv.port
        t = Target("127.0.0.1", port, HealthCheck(tcp=True, timeout=0.5))
        assert await checker.check_once(t) is True
        srv.close()
        await srv.server.wait_closed()
        assert await checker.check_once(t) is False  # refused

        async def silent(reader, writer):
            await reader.read()  # never answers; returns when the checker gives up
            writer.close()
        quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
        qport = quiet.sockets[0].getsockname()[1]
        t2 = Target("127.0.0.1", qport, HealthCheck(http_path="/", timeout=0.1))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await checker.check_once(t2) is False
        assert loop.time() - t0 < 0.5
        await asyncio.sleep(0.1)  # the silent handler sees the checker's close
        quiet.close()
    asyncio.run(go())


def test_no_traffic_interval_and_jitter():
    c = HealthCheck(http_path="/", interval=1.0, interval_jitter=0.5, no_traffic_interval=30.0)
    t = Target("127.0.0.1", 1, c)
    active = {"v": False}
    checker = HealthChecker(lambda t, h: None, active=lambda t: active["v"], rand=lambda: 0.5)
    assert checker._next_interval(t) == 30.0
    active["v"] = True
    assert checker._next_interval(t) == 1.25


def test_set_targets_keeps_state_of_kept_targets():
    async def go():
        c = HealthCheck(http_path="/", interval=10, timeout=0.2)
        a, b = Target("127.0.0.1", 1, c), Target("127.0.0.1", 2, c)
        checker = HealthChecker(lambda t, h: None)
        checker.set_targets([a, b])
        st = checker.targets[a]
        checker.set_targets([a])
        assert checker.targets[a] is st and b not in checker.targets
        assert checker.healthy(b)  # unknown: healthy
        checker.close()
    asyncio.run(go())


# -- the HealthCheck kind ------------------------------------------------------------------------

SE = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
"""


def hc(spec):
    return ("---\napiVersion: meshproxy.io/v1alpha1\nkind: HealthCheck\n"
            "metadata: {name: echo-hc, namespace: default}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec), "  "))


def config_issues(tmp_path, text):
    p = tmp_path / "mesh.yaml"
    p.write_text(text)
    cfg = load_config(str(p))
    if cfg.issues:
        return [str(i) for i in cfg.issues]
    try:
        build_snapshot(str(p))
    except ConfigError as e:
        return [str(i) for i in e.issues]
    return []


@pytest.mark.parametrize("spec, expected", [
    ("host: echo\nhttp: {path: /h}\ntcp: {}\n", "spec.http: exactly one of http and tcp"),
    ("host: echo\n", "spec.http: exactly one of http and tcp"),
    ("host: echo\nhttp: {}\n", "spec.http.path: required field is missing"),
    ("host: echo\nhttp: {path: healthz}\n", 'spec.http.path: "healthz" is not a request path'),
    ("host: echo\nhttp: {path: /h, expectedStatuses: [{start: 300, end: 200}]}\n",
     "spec.http.expectedStatuses[0]: empty range"),
    ("host: echo\nhttp: {path: /h, expectedStatuses: [{start: 200, end: 700}]}\n",
     "spec.http.expectedStatuses[0].end: 700 is out of range"),
    ("host: echo\nhttp: {path: /h, requestHeaders: {'bad name': x}}\n",
     "spec.http.requestHeaders.bad name"),
    ("host: echo\ntcp: {}\nintervall: 1s\n", 'spec.intervall: unknown field (did you mean "interval"?)'),
    ("host: echo\ntcp: {}\ninterval: 1s\ntimeout: 2s\n", "spec.timeout: must not be longer than interval"),
    ("host: echo\ntcp: {}\nunhealthyThreshold: 0\n", "spec.unhealthyThreshold: 0 is out of range"),
    ("host: echo\ntcp: {}\ninterval: fast\n", "spec.interval:"),
    ("host: nothere\ntcp: {}\n", 'spec.host: "nothere" is not a ServiceEntry host'),
    ("host: echo\nport: 8080\ntcp: {}\n", "spec.port: 8080 is not a port of echo.default.svc.cluster.local"),
    ("host: echo\nsubset: v9\ntcp: {}\n", 'spec.subset: echo.default.svc.cluster.local has no subset "v9"'),
])
def test_validation_names_the_field(tmp_path, spec, expected):
    issues = config_issues(tmp_path, SE + hc(spec))
    assert any(expected in i and "HealthCheck default/echo-hc" in i for i in issues), issues


def test_two_equally_specific_health_checks_conflict(tmp_path):
    text = SE + hc("host: echo\ntcp: {}\n") + hc("host: echo\ntcp: {}\n").replace("echo-hc", "other")
    issues = config_issues(tmp_path, text)
    assert any("spec.host: cluster outbound|80||echo.default.svc.cluster.local is already "
               "health-checked by HealthCheck default/echo-hc" in i for i in issues), issues


def test_compiled_into_the_cluster_and_the_dump(tmp_path):
    p = tmp_path / "mesh.yaml"
    p.write_text(SE + hc("""\
        host: echo
        http:
          path: /healthz
          host: probe.local
          expectedStatuses: [{start: 200, end: 300}]
          requestHeaders: {x-probe: "1"}
        interval: 200ms
        timeout: 100ms
        intervalJitter: 50ms
        unhealthyThreshold: 2
        healthyThreshold: 1
        noTrafficInterval: 1s
        """))
    snap = build_snapshot(str(p))
    c = snap.cluster("outbound|80||echo.default.svc.cluster.local")
    assert c.health_check == HealthCheck(
        source="default/echo-hc", http_path="/healthz", http_host="probe.local",
        expected_statuses=((200, 300),), request_headers=(("x-probe", "1"),), interval=0.2,
        timeout=0.1, interval_jitter=0.05, unhealthy_threshold=2, healthy_threshold=1,
        no_traffic_interval=1.0)
    d = snap.to_dict()
    dumped = next(x for x in d["clusters"] if x["name"] == c.name)["health_check"]
    assert dumped["http_path"] == "/healthz" and dumped["unhealthy_threshold"] == 2
    assert Snapshot.from_dict(d).cluster(c.name).health_check == c.health_check


def test_defaults_and_tcp(tmp_path):
    p = tmp_path / "mesh.yaml"
    p.write_text(SE + hc("host: echo.default.svc.cluster.local\ntcp: {send: PING, expect: PONG}\n"))
    h = build_snapshot(str(p)).cluster("outbound|80||echo.default.svc.cluster.local").health_check
    assert h == HealthCheck(source="default/echo-hc", tcp=True, send="PING", expect="PONG")
    assert (h.interval, h.timeout, h.unhealthy_threshold, h.healthy_threshold,
            h.no_traffic_interval) == (10.0, 1.0, 3, 2, 60.0)


def test_explain_prints_the_health_check(tmp_path):
    from meshproxy.explain import explain

    p = tmp_path / "mesh.yaml"
    p.write_text(SE + hc("host: echo\nhttp: {path: /healthz}\ninterval: 2s\n"))
    lines, _ = explain(build_snapshot(str(p)), "GET", "http://echo.default.svc.cluster.local/", [])
    health = [ln for ln in lines if ln.strip().startswith("health")]
    assert health == ["  health    HTTP GET /healthz expects 200 every 2s (timeout 1s, no traffic "
                      "60s): out after 3 failed, back after 2 passed (HealthCheck default/echo-hc)"]


# -- the H_ACTIVE_HC bit on both builds ----------------------------------------------------------

@pytest.fixture
def cm(impl, monkeypatch):
    monkeypatch.setattr(cluster_manager, "cl", impl.cluster)
    monkeypatch.setattr(cluster_manager, "counters", impl.counters)
    return cluster_manager.ClusterManager(None)


def _snap(check=None):
    c = SCluster(name="outbound|80||web", direction="outbound", service="web", namespace="default",
                 port=80, port_name="http", protocol="HTTP", lb_policy="ROUND_ROBIN",
                 endpoints=(SEndpoint("127.0.0.31", 80, 80), SEndpoint("127.0.0.32", 80, 80)),
                 health_check=check)
    return Snapshot("v", Bootstrap(), (), (c,))


def _picks(c, n=20):
    out = set()
    for _ in range(n):
        ep = c.choose(None)
        out.add(ep.address)
        c.release(ep, c.gen)
    return out


def test_both_bits_keep_an_endpoint_out_until_both_clear(impl, cm):
    c = cm.build(_snap())["outbound|80||web"]
    cm.clusters = {c.name: c}
    ep = c.endpoints[0]
    cm.set_active_health(c.name, ep.address, ep.port, False)
    assert ep.health_flags == H_ACTIVE_HC and _picks(c) == {"127.0.0.32"}
    c.detector.put_result(ep, impl.cluster.RESULT_CONNECT_FAILED)  # ejected as well
    assert ep.health_flags == H_ACTIVE_HC | H_OUTLIER
    cm.set_active_health(c.name, ep.address, ep.port, True)  # the health check passes again...
    assert ep.health_flags == H_OUTLIER and not ep.healthy
    assert _picks(c) == {"127.0.0.32"}  # ...but the ejection is not over
    infos = cm.cluster_infos(_snap())
    assert infos[0]["endpoints"][0]["health_flags"] == ["/failed_outlier_check"]
    cm.tick(ep.ejected_until)
    assert ep.healthy and _picks(c) == {"127.0.0.31", "127.0.0.32"}
    assert cm.cluster_infos(_snap())[0]["endpoints"][0]["health_flags"] == []


def test_commit_reconciles_the_bit_with_the_checker(impl, cm):
    async def go():
        cm.loop = asyncio.get_running_loop()
        check = HealthCheck(http_path="/", interval=60, timeout=0.2, no_traffic_interval=60)
        snap = _snap(check)
        clusters = cm.build(snap)
        await cm.commit(snap, clusters)
        assert cm.checker is not None and len(cm.checker.targets) == 2
        t = next(t for t in cm.checker.targets if t.address == "127.0.0.31")
        assert t.host == "web"
        cm.checker.targets[t].healthy = False  # as if it had failed its threshold
        cm._hc_changed(t, False)
        c = cm.clusters["outbound|80||web"]
        assert c.endpoints[0].health_flags == H_ACTIVE_HC
        info = cm.cluster_infos(snap)[0]["endpoints"]
        assert [e["health_flags"] for e in info] == [["/failed_active_hc"], []]
        # a reload keeps it out; dropping the HealthCheck brings it back
        snap2 = _snap(check)
        await cm.commit(snap2, cm.build(snap2))
        assert cm.clusters["outbound|80||web"].endpoints[0].health_flags == H_ACTIVE_HC
        snap3 = _snap(None)
        await cm.commit(snap3, cm.build(snap3))
        assert cm.clusters["outbound|80||web"].endpoints[0].health_flags == 0
        assert cm.checker.targets == {}
        cm.close()
    asyncio.run(go())


def test_admin_renders_health_flags():
    from meshproxy.admin import _json_health, _text_health_flags

    assert _text_health_flags({"health_flags": []}) == "healthy"
    assert _text_health_flags({"health_flags": ["/failed_active_hc", "/failed_outlier_check"]}) \
        == "/failed_active_hc/failed_outlier_check"
    assert _json_health({"health_flags": ["/failed_active_hc"]}) == {
        "eds_health_status": "HEALTHY", "failed_active_health_check": True}
    assert dataclasses.is_dataclass(HealthCheck)
