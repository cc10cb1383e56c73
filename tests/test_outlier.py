"""``cluster.OutlierDetection``: a DestinationRule's ``outlierDetection`` with Envoy's semantics and
Istio's defaults, on both builds, with a controlled clock (``cluster._monotonic`` is patched; the
detector's ``tick(now)`` is given the same clock). Nothing is dialled.

Also: the schema (field paths, defaults), compiling into the snapshot, a reload keeping the state,
``/clusters`` fields and the metrics.
"""
import pytest

from control.config.networking import OUTLIER_DETECTION
from control.config.schema import INVALID, Reporter
from control.policy import outlier_detection, traffic_policy
from control.snapshot import Bootstrap, Snapshot
from control.snapshot import Cluster as SCluster
from control.snapshot import Endpoint as SEndpoint
from control.snapshot import OutlierDetection as SOutlier
from meshproxy import cluster_manager, telemetry
from meshproxy._py.cluster import H_OUTLIER


@pytest.fixture
def b(impl):
    return impl


class Clock:
    def __init__(self, b, monkeypatch):
        self.now = 1000.0
        monkeypatch.setattr(b.cluster, "_monotonic", lambda: self.now)

    def advance(self, s):
        self.now += s
        return self.now


@pytest.fixture
def clock(b, monkeypatch):
    return Clock(b, monkeypatch)


def make(b, n=3, min_health=0.0, **kw):
    """A ROUND_ROBIN cluster of ``n`` endpoints with an OutlierDetection(**kw)."""
    pools = {}

    def pool_for(address, port):
        key = b.cluster.pool_key(address, port)
        return pools.setdefault(key, b.cluster.Pool(key))

    c = b.cluster.Cluster("c", b.counters.ClusterStats("c"), policy="ROUND_ROBIN", pool_for=pool_for)
    c.detector = b.cluster.OutlierDetection(c, **kw)
    c.panic_threshold = min_health
    eps = [b.cluster.Endpoint("127.0.0.%d" % (10 + i), 8080, pool_for("127.0.0.%d" % (10 + i), 8080))
           for i in range(n)]
    c.set_endpoints(eps, [1] * n)
    return c, eps


def chosen(c, n=30):
    out = set()
    for _ in range(n):
        ep = c.choose(None)
        if ep is None:
            out.add(None)
            continue
        c.release(ep, c.gen)
        out.add(ep.host)
    return out


def ejected(ep):
    return bool(ep.health_flags & H_OUTLIER)


def put(det, ep, *results):
    for r in results:
        det.put_result(ep, r)


# -- detection ------------------------------------------------------------------------------------


def test_ejected_after_exactly_five_consecutive_5xx(b, clock):
    c, eps = make(b)
    det = c.detector
    assert det.wants_responses
    put(det, eps[0], 500, 503, 500, 599)
    assert not ejected(eps[0]) and eps[0].cons_5xx == 4
    det.put_result(eps[0], 500)
    assert ejected(eps[0]) and eps[0].ejections == 1 and list(det.ejected) == [eps[0]]
    assert eps[0].ejected_until == clock.now + 30.0 and eps[0].cons_5xx == 0
    assert eps[0].host not in chosen(c)
    assert det.enforced_total == 1 and det.enforced_5xx == 1
    assert det.counters()["ejections_active"] == 1


def test_four_5xx_and_a_success_do_not_eject(b, clock):
    c, eps = make(b)
    det = c.detector
    put(det, eps[0], 500, 500, 500, 500, 200, 500, 500, 500, 500)
    assert not ejected(eps[0]) and eps[0].cons_5xx == 4
    put(det, eps[0], 404, 500, 500, 500, 500)  # a 4xx is a success for outlier detection
    assert not ejected(eps[0])
    put(det, eps[0], 500)
    assert ejected(eps[0])


def test_gateway_errors_are_off_unless_set(b, clock):
    c, eps = make(b, consecutive_5xx=0)
    put(c.detector, eps[0], *[502] * 20)
    assert not ejected(eps[0])
    c, eps = make(b, consecutive_5xx=0, consecutive_gateway=3)
    put(c.detector, eps[0], 502, 504, 500, 503, 503)  # a 500 is not a gateway error: reset
    assert not ejected(eps[0]) and eps[0].cons_gateway == 2
    put(c.detector, eps[0], 504)
    assert ejected(eps[0]) and c.detector.enforced_gateway == 1 and c.detector.enforced_5xx == 0


def test_local_origin_failures_count_as_5xx_without_the_split(b, clock):
    c, eps = make(b)
    det = c.detector
    R = b.cluster
    put(det, eps[0], R.RESULT_CONNECT_FAILED, R.RESULT_CONNECT_TIMEOUT, R.RESULT_RESET,
        R.RESULT_CONNECT_SUCCESS, R.RESULT_TIMEOUT)  # a connect success is neither
    assert eps[0].cons_5xx == 4 and not ejected(eps[0])
    det.put_result(eps[0], 500)
    assert ejected(eps[0])
    # gateway: a connect failure is a 503, a timeout a 504
    c, eps = make(b, consecutive_5xx=0, consecutive_gateway=2)
    put(c.detector, eps[0], R.RESULT_CONNECT_FAILED, R.RESULT_TIMEOUT)
    assert ejected(eps[0])


def test_split_counts_local_origin_failures_separately(b, clock):
    R = b.cluster
    c, eps = make(b, split=True, consecutive_local=3, max_ejection_percent=100.0)
    det = c.detector
    put(det, eps[0], R.RESULT_CONNECT_FAILED, R.RESULT_RESET, R.RESULT_CONNECT_SUCCESS)
    assert eps[0].cons_local == 0 and eps[0].cons_5xx == 0  # a connect success resets
    put(det, eps[0], 500, 500, 500, 500, R.RESULT_CONNECT_FAILED, R.RESULT_CONNECT_TIMEOUT)
    assert eps[0].cons_5xx == 4 and eps[0].cons_local == 2 and not ejected(eps[0])
    det.put_result(eps[0], R.RESULT_TIMEOUT)
    assert ejected(eps[0]) and det.enforced_local == 1
    # and the 5xx still count on their own
    put(det, eps[1], 500, 500, 500, 500, 500)
    assert ejected(eps[1]) and det.enforced_5xx == 1


# -- ejection time --------------------------------------------------------------------------------


def eject_5xx(det, ep):
    put(det, ep, 500, 500, 500, 500, 500)
    assert ejected(ep)


def test_back_on_the_interval_after_the_ejection_time_then_twice_as_long(b, clock):
    c, eps = make(b, interval=10.0, base_ejection_time=30.0, max_ejection_percent=100.0)
    det = c.detector
    det.tick(clock.now)  # the interval timer starts
    eject_5xx(det, eps[0])
    for _ in range(2):
        det.tick(clock.advance(10.0))
        assert ejected(eps[0])
    det.tick(clock.advance(10.0))  # 30 s
    assert not ejected(eps[0]) and eps[0].host in chosen(c) and eps[0].eject_multiplier == 1
    eject_5xx(det, eps[0])  # again within the interval: the multiplier is 2
    assert eps[0].eject_multiplier == 2 and eps[0].ejected_until == clock.now + 60.0
    for _ in range(5):
        det.tick(clock.advance(10.0))
        assert ejected(eps[0])
    det.tick(clock.advance(10.0))
    assert not ejected(eps[0])


def test_counters_reset_when_back(b, clock):
    c, eps = make(b, interval=1.0, base_ejection_time=1.0)
    det = c.detector
    eject_5xx(det, eps[0])
    put(det, eps[0], 500, 500)  # in-flight requests still report while ejected
    det.tick(clock.advance(1.0))
    assert not ejected(eps[0]) and eps[0].cons_5xx == 0


def test_ejection_time_capped_at_300s(b, clock):
    c, eps = make(b, interval=10.0, base_ejection_time=100.0)
    det = c.detector
    times = []
    for _ in range(6):
        eject_5xx(det, eps[0])
        times.append(eps[0].ejected_until - clock.now)
        clock.advance(eps[0].ejected_until - clock.now)
        det.tick(clock.now)
        assert not ejected(eps[0])
    assert times == [100.0, 200.0, 300.0, 300.0, 300.0, 300.0]
    assert eps[0].eject_multiplier == 4  # stops growing once past max + base
    # a base above the cap: the base is the cap
    c, eps = make(b, base_ejection_time=400.0)
    eject_5xx(c.detector, eps[0])
    assert eps[0].ejected_until - clock.now == 400.0


def test_multiplier_decays_one_per_healthy_interval(b, clock):
    c, eps = make(b, interval=10.0, base_ejection_time=10.0)
    det = c.detector
    for _ in range(3):
        eject_5xx(det, eps[0])
        det.tick(clock.advance(eps[0].ejected_until - clock.now))
    assert eps[0].eject_multiplier == 3 and not ejected(eps[0])
    det.tick(clock.advance(5.0))  # not an interval yet
    assert eps[0].eject_multiplier == 3
    det.tick(clock.advance(5.0))
    assert eps[0].eject_multiplier == 2
    det.tick(clock.advance(10.0))
    assert eps[0].eject_multiplier == 1
    eject_5xx(det, eps[0])
    assert eps[0].ejected_until - clock.now == 20.0
    det.tick(clock.advance(20.0))
    for _ in range(4):
        det.tick(clock.advance(10.0))
    assert eps[0].eject_multiplier == 0


# -- how many may be ejected ----------------------------------------------------------------------


def test_max_ejection_percent_10_of_10_hosts_is_one(b, clock):
    c, eps = make(b, n=10)
    det = c.detector
    eject_5xx(det, eps[0])
    put(det, eps[1], 500, 500, 500, 500, 500)
    assert not ejected(eps[1]) and det.overflow == 1 and eps[1].cons_5xx == 0
    assert [ejected(e) for e in eps].count(True) == 1


def test_max_ejection_percent_at_least_one_host(b, clock):
    c, eps = make(b, n=3)  # 10% of 3 is less than one host: one may still be ejected
    eject_5xx(c.detector, eps[0])
    put(c.detector, eps[1], 500, 500, 500, 500, 500)
    assert not ejected(eps[1])
    c, eps = make(b, n=4, max_ejection_percent=50.0)
    for e in eps[:2]:
        eject_5xx(c.detector, e)
    put(c.detector, eps[2], 500, 500, 500, 500, 500)
    assert not ejected(eps[2])


def test_min_health_percent_zero_never_panics(b, clock):
    c, eps = make(b, n=2, max_ejection_percent=100.0)
    for e in eps:
        eject_5xx(c.detector, e)
    assert chosen(c) == {None}  # Envoy's panic threshold 0: no healthy upstream


def test_min_health_percent_panics_below_it(b, clock):
    c, eps = make(b, n=4, min_health=60.0, max_ejection_percent=100.0)
    eject_5xx(c.detector, eps[0])  # 75% healthy
    assert chosen(c) == {e.host for e in eps[1:]}
    eject_5xx(c.detector, eps[1])  # 50% < 60%: balance over every host
    assert chosen(c) == {e.host for e in eps}


def test_without_outlier_detection_nothing_changes(b, clock):
    c = b.cluster.Cluster("c", b.counters.ClusterStats("c"))
    assert type(c.detector) is b.cluster.OutlierDetector and not c.detector.wants_responses
    assert c.panic_threshold < 0


# -- control: schema and snapshot ------------------------------------------------------------------


def check(spec):
    rep = Reporter(lambda p, m: (p, m))
    out = OUTLIER_DETECTION.check(spec, "spec.trafficPolicy.outlierDetection", rep)
    return out, [f"{p}: {m}" for p, m in rep.issues], [f"{p}: {m}" for p, m in rep.warnings]


def test_schema_defaults_and_errors():
    out, issues, _ = check({})
    assert issues == [] and outlier_detection(out) == SOutlier()
    assert SOutlier() == SOutlier(consecutive_5xx=5, consecutive_gateway=0, interval=10.0,
                                  base_ejection_time=30.0, max_ejection_time=300.0,
                                  max_ejection_percent=10, min_health_percent=0)
    out, issues, _ = check({"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "2s",
                            "maxEjectionPercent": 100, "minHealthPercent": 50,
                            "consecutiveGatewayErrors": 2})
    assert issues == []
    assert outlier_detection(out) == SOutlier(consecutive_5xx=3, consecutive_gateway=2, interval=1.0,
                                              base_ejection_time=2.0, max_ejection_percent=100,
                                              min_health_percent=50)
    out, issues, _ = check({"interval": "10", "baseEjectionTime": "0s", "maxEjectionPercent": 101,
                            "minHealthPercent": -1, "consecutive5xxErrors": -2,
                            "consecutiveErors": 1})
    p = "spec.trafficPolicy.outlierDetection."
    assert out is INVALID
    assert sorted(issues) == sorted([
        p + 'interval: "10" is not a duration (use a number and a unit: "5s", "1.5s", "100ms", "1m", "1h")',
        p + 'baseEjectionTime: "0s" must be greater than zero',
        p + "maxEjectionPercent: 101 is out of range (0-100)",
        p + "minHealthPercent: -1 is out of range (0-100)",
        p + "consecutive5xxErrors: -2 is out of range (must be >= 0)",
        p + 'consecutiveErors: unknown field (did you mean "consecutiveErrors"?)',
    ]), issues
    out, issues, warnings = check({"consecutiveLocalOriginFailures": 2})
    assert issues == [] and warnings == [
        p + "consecutiveLocalOriginFailures: takes effect only with splitExternalLocalOriginErrors: "
            "true (local-origin failures count as 5xx errors otherwise)"]
    out, issues, _ = check({"consecutiveLocalOriginFailures": 2, "splitExternalLocalOriginErrors": True})
    assert outlier_detection(out).consecutive_local_origin == 2
    assert outlier_detection(out).split_external_local_origin_errors


def test_traffic_policy_merges_outlier_detection_as_a_part():
    od = {"consecutive5xxErrors": 7}
    spec = {"trafficPolicy": {"outlierDetection": od}, "subsets": []}
    assert traffic_policy(spec, 80, None)["outlier_detection"].consecutive_5xx == 7
    assert "outlier_detection" not in traffic_policy({}, 80, None)
    sub = {"name": "v1", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 2}}}
    assert traffic_policy(spec, 80, sub)["outlier_detection"].consecutive_5xx == 2
    pls = {"trafficPolicy": {"outlierDetection": od, "portLevelSettings": [
        {"port": {"number": 80}, "outlierDetection": {"consecutive5xxErrors": 9}}]}}
    assert traffic_policy(pls, 80, None)["outlier_detection"].consecutive_5xx == 9
    assert traffic_policy(pls, 81, None)["outlier_detection"].consecutive_5xx == 7


def test_snapshot_round_trip_keeps_outlier_detection():
    cl = SCluster(name="outbound|80||web", direction="outbound", service="web", namespace="default",
                  port=80, port_name="http", protocol="HTTP",
                  outlier_detection=SOutlier(consecutive_5xx=2, interval=1.0))
    snap = Snapshot("v", Bootstrap(), (), (cl,))
    back = Snapshot.from_json(snap.to_json())
    assert back.clusters[0].outlier_detection == cl.outlier_detection
    assert snap.to_dict()["clusters"][0]["outlier_detection"]["consecutive_5xx"] == 2


# -- cluster manager: build, reload, /clusters, metrics ------------------------------------------------


def snapshot(addrs, od=SOutlier(max_ejection_percent=100, interval=1.0, base_ejection_time=2.0)):
    cl = SCluster(name="outbound|80||web", direction="outbound", service="web", namespace="default",
                  port=80, port_name="http", protocol="HTTP",
                  endpoints=tuple(SEndpoint(a, p, p) for a, p in addrs), outlier_detection=od)
    return Snapshot("v", Bootstrap(), (), (cl,))


@pytest.fixture
def cm(b, monkeypatch):
    monkeypatch.setattr(cluster_manager, "cl", b.cluster)
    monkeypatch.setattr(cluster_manager, "counters", b.counters)
    return cluster_manager.ClusterManager(None)


def test_reload_keeps_state_and_clusters_shows_it(b, cm, clock):
    addrs = [("127.0.0.21", 80), ("127.0.0.22", 80)]
    snap = snapshot(addrs)
    old = cm.build(snap)["outbound|80||web"]
    cm.clusters = {old.name: old}
    assert type(old.detector) is b.cluster.OutlierDetection and old.panic_threshold == 0.0
    ep = old.endpoints[0]
    eject_5xx(old.detector, ep)
    put(old.detector, old.endpoints[1], 500, 500)
    new = cm.build(snapshot(addrs, SOutlier(max_ejection_percent=100, interval=1.0,
                                            base_ejection_time=5.0)))["outbound|80||web"]
    cm.clusters = {new.name: new}
    assert new.detector is not old.detector and list(new.detector.ejected) == [ep]
    assert new.detector.enforced_total == 1 and new.endpoints[1].cons_5xx == 2
    assert chosen(new) == {new.endpoints[1].host}
    info = cm.cluster_infos(snap)[0]
    assert info["outlier_detection"]["ejections_active"] == 1
    assert info["outlier_detection"]["ejections_enforced_total"] == 1
    assert info["outlier_detection"]["settings"]["base_ejection_time"] == 5.0
    e0, e1 = info["endpoints"]
    assert e0["health_flags"] == ["/failed_outlier_check"] and e1["health_flags"] == []
    assert e0["outlier_detection"]["ejected"] and e0["outlier_detection"]["ejections"] == 1
    assert e1["outlier_detection"]["consecutive_5xx"] == 2
    stats = [new.stats.snapshot()]
    text = telemetry.render_envoy_text(stats, [], [info]).decode()
    assert "cluster.outbound|80||web.outlier_detection.ejections_active: 1" in text
    assert "cluster.outbound|80||web.outlier_detection.ejections_enforced_total: 1" in text
    prom = telemetry.render_prometheus([info], stats, [], None).decode()
    assert 'envoy_cluster_outlier_detection_ejections_active{cluster_name="outbound|80||web"} 1' in prom
    assert ('envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name="outbound|80||web"} 1'
            in prom)
    cm.tick(clock.advance(2.0))
    assert not ejected(ep) and cm.cluster_infos(snap)[0]["outlier_detection"]["ejections_active"] == 0
    # dropping outlierDetection: the base detector, the counters go on
    plain = cm.build(snapshot(addrs, None))["outbound|80||web"]
    assert type(plain.detector) is b.cluster.OutlierDetector and plain.panic_threshold < 0
    assert plain.detector.enforced_total == 1


MESH = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.31}, {address: 127.0.0.32}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 5s,
                       baseEjectionTime: 1m, maxEjectionPercent: 50}
  subsets:
  - name: v1
    labels: {}
    trafficPolicy: {outlierDetection: {splitExternalLocalOriginErrors: true}}
"""


def test_compiled_into_the_snapshot_config_dump_and_explain(tmp_path):
    from control import build_snapshot
    from meshproxy.explain import explain
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    snap = build_snapshot(str(path))
    web = snap.cluster("outbound|80||web.default.svc.cluster.local")
    assert web.outlier_detection == SOutlier(consecutive_5xx=3, consecutive_gateway=2, interval=5.0,
                                             base_ejection_time=60.0, max_ejection_percent=50)
    v1 = snap.cluster("outbound|80|v1|web.default.svc.cluster.local")
    assert v1 is None or v1.outlier_detection == SOutlier(split_external_local_origin_errors=True)
    dumped = [c for c in snap.to_dict()["clusters"] if c["name"] == web.name][0]
    assert dumped["outlier_detection"]["base_ejection_time"] == 60.0
    lines, _ = explain(snap, "GET", "http://web.default.svc.cluster.local/", [])
    assert ("  outlier   eject after 3 consecutive 5xx, 2 consecutive gateway errors; interval 5s, "
            "baseEjectionTime 1m (max 5m), maxEjectionPercent 50%, minHealthPercent 0%") in lines, lines
