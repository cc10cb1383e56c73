"""ClusterStats twins: identical snapshots for the same calls, histogram edges, merge.

``counters`` is each build's module in turn and ``twins`` both at once (tests/conftest.py)."""
import pytest


def drive(m):
    """One fixed call sequence touching every method."""
    s = m.ClusterStats("outbound|80||echo.default.svc.cluster.local")
    for i in range(50):
        s.rq_start()
        status = (200, 200, 404, 503, 0, 999, -1)[i % 7]
        s.rq_end(status, i * 7919, i, 2 * i)
    s.rq_start()  # one still active
    for _ in range(3):
        s.cx_open()
    s.cx_close()
    s.cx_fail()
    s.cx_remote_close()
    s.timeout()
    s.reset()
    s.reset()
    s.flag("UF", 503)
    s.flag("UF", 503)
    s.flag("UH", 503)
    s.flag("NR", 404)
    return s


def test_twins_identical(twins):
    a, b = drive(twins.py.counters).snapshot(), drive(twins.c.counters).snapshot()
    assert a == b
    assert list(a) == list(b)


def test_constants_identical(twins):
    c_counters, py_counters = twins.c.counters, twins.py.counters
    assert c_counters.BUCKETS_MS == py_counters.BUCKETS_MS
    assert c_counters.BUCKETS_US == py_counters.BUCKETS_US
    assert (c_counters.N_BUCKETS, c_counters.N_CODES) == (py_counters.N_BUCKETS, py_counters.N_CODES)
    assert c_counters.merge is py_counters.merge


def test_bucket_constants(counters):
    assert counters.BUCKETS_MS == (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                               60000, 300000, 600000, 1800000, 3600000)
    assert counters.N_BUCKETS == 20


def test_snapshot_values(counters):
    snap = drive(counters).snapshot()
    assert snap["name"] == "outbound|80||echo.default.svc.cluster.local"
    assert snap["rq_total"] == 51 and snap["rq_active"] == 1 and snap["rq_completed"] == 50
    assert (snap["cx_total"], snap["cx_active"], snap["cx_connect_fail"], snap["cx_destroy_remote"]) == (3, 2, 1, 1)
    assert (snap["rq_timeout"], snap["rq_reset"]) == (1, 2)
    assert snap["bytes_rx"] == sum(range(50)) and snap["bytes_tx"] == 2 * sum(range(50))
    # 0, 999 and -1 all count in slot 0.
    assert snap["codes"] == {0: 21, 200: 15, 404: 7, 503: 7}
    assert snap["flags"] == {"UF|503": 2, "UH|503": 1, "NR|404": 1}
    lat = snap["latency"]
    assert lat["count"] == 50 and sum(lat["buckets"]) == 50 and len(lat["buckets"]) == 20
    assert lat["sum_ms"] == pytest.approx(sum(i * 7919 for i in range(50)) / 1000)


# (duration_us, expected bucket index): a value equal to a bound goes in that bound's bucket (le).
EDGES = [(0, 0), (500, 0), (501, 1), (1000, 1), (1001, 2), (5000, 2), (5001, 3), (100000, 6),
         (100001, 7), (3600000000, 18), (3600000001, 19), (10 ** 15, 19), (-5, 0)]


@pytest.mark.parametrize("duration_us,index", EDGES)
def test_histogram_edges(counters, duration_us, index):
    s = counters.ClusterStats("c")
    s.rq_start()
    s.rq_end(200, duration_us, 0, 0)
    buckets = s.snapshot()["latency"]["buckets"]
    expected = [0] * 20
    expected[index] = 1
    assert buckets == expected


def test_negative_bytes_ignored_and_gauges_can_go_negative(counters):
    s = counters.ClusterStats("c")
    s.rq_end(200, 10, -5, -6)  # an end without a start must not wrap around
    s.cx_close()
    snap = s.snapshot()
    assert snap["rq_active"] == -1 and snap["cx_active"] == -1
    assert snap["bytes_rx"] == 0 and snap["bytes_tx"] == 0


def test_readonly_and_types(counters):
    s = counters.ClusterStats("c")
    s.rq_start()
    assert s.rq_total == 1 and s.name == "c"
    with pytest.raises(AttributeError):
        s.rq_total = 5
    with pytest.raises(TypeError):
        counters.ClusterStats(None)


def test_empty_snapshot(counters):
    snap = counters.ClusterStats("x").snapshot()
    assert snap["codes"] == {} and snap["flags"] == {}
    assert snap["latency"] == {"buckets": [0] * 20, "sum_ms": 0.0, "count": 0}


def test_merge(counters):
    a, b = counters.ClusterStats("x"), counters.ClusterStats("x")
    for s, code, dur in ((a, 200, 400), (b, 200, 2000), (b, 503, 7000)):
        s.rq_start()
        s.rq_end(code, dur, 1, 1)
    a.flag("UF", 503)
    b.flag("UF", 503)
    b.cx_open()
    m = counters.merge([a.snapshot(), b.snapshot()])
    assert m["name"] == "x" and m["rq_total"] == 3 and m["cx_active"] == 1
    assert m["codes"] == {200: 2, 503: 1}
    assert m["flags"] == {"UF|503": 2}
    assert m["latency"]["count"] == 3
    assert m["latency"]["buckets"][0] == 1 and m["latency"]["buckets"][2] == 1 and m["latency"]["buckets"][3] == 1
    assert m["latency"]["sum_ms"] == pytest.approx(9.4)
    # merging one snapshot is the identity
    assert counters.merge([a.snapshot()]) == a.snapshot()


def test_merge_errors_and_merge_all(counters):
    with pytest.raises(ValueError):
        counters.merge([])
    with pytest.raises(ValueError):
        counters.merge([counters.ClusterStats("a").snapshot(), counters.ClusterStats("b").snapshot()])
    w1 = [counters.ClusterStats("a"), counters.ClusterStats("b")]
    w2 = [counters.ClusterStats("b"), counters.ClusterStats("a")]
    for s in w1 + w2:
        s.rq_start()
    merged = counters.merge_all([s.snapshot() for s in w1 + w2])
    assert [m["name"] for m in merged] == ["a", "b"]
    assert [m["rq_total"] for m in merged] == [2, 2]
