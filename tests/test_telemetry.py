"""Prometheus and Envoy text rendering: output parses, names, labels and values are right."""
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshproxy import telemetry
from meshproxy._py import counters

OUT = "outbound|80||echo.default.svc.cluster.local"
INB = "inbound|8080||"
WORKLOAD = {"name": "sleep", "namespace": "default", "app": "sleep"}


def stats(name, calls):
    s = counters.ClusterStats(name)
    for code, dur_us in calls:
        s.rq_start()
        s.rq_end(code, dur_us, 5, 7)
    return s


@pytest.fixture
def scrape():
    out = stats(OUT, [(200, 300), (200, 1000), (503, 20000), (503, 30000), (404, 10 ** 10)])
    out.flag("UF", 503)
    out.cx_open()
    out.rq_start()  # active
    inb = stats(INB, [(200, 2000)])
    black = stats("BlackHoleCluster", [(502, 100)])
    lst = stats("0.0.0.0_15001", [(200, 1), (404, 1), (503, 1)])
    lst.cx_open()
    clusters = [
        {"name": OUT, "direction": "outbound", "service": "echo.default.svc.cluster.local",
         "namespace": "default", "port": 80, "endpoints": 2},
        {"name": INB, "direction": "inbound", "service": "sleep", "namespace": "default",
         "port": 8080, "endpoints": [{"address": "127.0.0.1", "port": 8080, "health": "HEALTHY"},
                                     {"address": "127.0.0.9", "port": 8080, "health": "UNHEALTHY"}]},
    ]
    cs = [out.snapshot(), inb.snapshot(), black.snapshot()]
    ls = [lst.snapshot()]
    text = telemetry.render_prometheus(clusters, cs, ls, WORKLOAD).decode()
    fams = {}
    for f in text_string_to_metric_families(text):
        fams.setdefault(f.name, []).extend(f.samples)
    return text, fams, clusters, cs, ls


def samples(fams, family, name=None, **labels):
    return [s for s in fams[family] if (name is None or s.name == name)
            and all(s.labels.get(k) == v for k, v in labels.items())]


def test_parses_and_types(scrape):
    text, fams, *_ = scrape
    assert "# TYPE istio_requests_total counter" in text
    assert "# TYPE istio_request_duration_milliseconds histogram" in text
    assert "# TYPE envoy_cluster_upstream_rq counter" in text
    assert "# TYPE envoy_cluster_upstream_rq_active gauge" in text
    # Each family's samples are contiguous (a TYPE line appears once per family).
    types = [ln for ln in text.splitlines() if ln.startswith("# TYPE")]
    assert len(types) == len(set(types))


def test_istio_requests_outbound(scrape):
    _, fams, *_ = scrape
    got = {(s.labels["response_code"], s.labels["response_flags"]): s.value
           for s in samples(fams, "istio_requests", reporter="source")}
    assert got == {("200", "-"): 2, ("503", "-"): 1, ("503", "UF"): 1, ("404", "-"): 1}
    s = samples(fams, "istio_requests", reporter="source", response_code="200")[0]
    assert s.labels == {
        "reporter": "source", "source_workload": "sleep", "source_workload_namespace": "default",
        "source_principal": "unknown", "source_app": "sleep", "destination_workload": "unknown",
        "destination_workload_namespace": "default",
        "destination_service": "echo.default.svc.cluster.local", "destination_service_name": "echo",
        "destination_service_namespace": "default", "destination_app": "unknown",
        "request_protocol": "http", "response_code": "200", "response_flags": "-",
        "connection_security_policy": "unknown"}


def test_istio_requests_inbound(scrape):
    _, fams, *_ = scrape
    (s,) = samples(fams, "istio_requests", reporter="destination")
    assert s.value == 1
    assert s.labels["destination_workload"] == "sleep"
    assert s.labels["destination_app"] == "sleep"
    assert s.labels["destination_service"] == "sleep.default.svc.cluster.local"
    assert s.labels["destination_service_name"] == "sleep"
    assert s.labels["source_workload"] == "unknown"
    assert s.labels["connection_security_policy"] == "none"


def test_no_istio_metrics_for_unknown_clusters(scrape):
    _, fams, *_ = scrape
    assert all("BlackHole" not in str(s.labels) for s in fams["istio_requests"])
    assert samples(fams, "envoy_cluster_upstream_rq", "envoy_cluster_upstream_rq_total",
                   cluster_name="BlackHoleCluster")[0].value == 1


def test_istio_histogram(scrape):
    _, fams, *_ = scrape
    h = samples(fams, "istio_request_duration_milliseconds", reporter="source")
    buckets = {s.labels["le"]: s.value for s in h if s.name.endswith("_bucket")}
    assert list(buckets) == ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500",
                             "5000", "10000", "30000", "60000", "300000", "600000", "1800000",
                             "3600000", "+Inf"]
    assert buckets["0.5"] == 1 and buckets["1"] == 2 and buckets["25"] == 3 and buckets["50"] == 4
    assert buckets["3600000"] == 4 and buckets["+Inf"] == 5
    (count,) = [s.value for s in h if s.name.endswith("_count")]
    (total,) = [s.value for s in h if s.name.endswith("_sum")]
    assert count == 5
    assert total == pytest.approx((300 + 1000 + 20000 + 30000 + 10 ** 10) / 1000)


def test_envoy_cluster_metrics(scrape):
    text, fams, *_ = scrape
    lab = f'cluster_name="{OUT}"'
    assert f"envoy_cluster_upstream_rq_total{{{lab}}} 6" in text
    assert f"envoy_cluster_upstream_rq_active{{{lab}}} 1" in text
    assert f"envoy_cluster_upstream_cx_total{{{lab}}} 1" in text
    assert f"envoy_cluster_upstream_cx_active{{{lab}}} 1" in text
    assert f"envoy_cluster_upstream_cx_connect_fail{{{lab}}} 0" in text
    assert f"envoy_cluster_upstream_rq_timeout{{{lab}}} 0" in text
    assert f'envoy_cluster_upstream_rq{{{lab},envoy_response_code="503"}} 2' in text
    assert f'envoy_cluster_upstream_rq_xx{{{lab},envoy_response_code_class="5"}} 2' in text
    assert f'envoy_cluster_upstream_rq_xx{{{lab},envoy_response_code_class="2"}} 2' in text
    assert f'envoy_cluster_upstream_rq_time_bucket{{{lab},le="+Inf"}} 5' in text
    assert f'envoy_cluster_membership_total{{cluster_name="{INB}"}} 2' in text
    assert f'envoy_cluster_membership_healthy{{cluster_name="{INB}"}} 1' in text


def test_envoy_listener_metrics(scrape):
    text, *_ = scrape
    lab = 'envoy_http_conn_manager_prefix="0.0.0.0_15001"'
    assert f"envoy_http_downstream_rq_total{{{lab}}} 3" in text
    assert f"envoy_http_downstream_cx_total{{{lab}}} 1" in text
    assert f"envoy_http_downstream_cx_active{{{lab}}} 1" in text
    assert f"envoy_http_downstream_rq_active{{{lab}}} 0" in text
    for cls in "245":
        assert f'envoy_http_downstream_rq_xx{{{lab},envoy_response_code_class="{cls}"}} 1' in text
    assert "envoy_http_downstream_cx_connect_fail" not in text


def test_label_escaping():
    name = 'we"ird\\name\nx'
    s = stats(name, [(200, 1)])
    text = telemetry.render_prometheus([], [s.snapshot()], [], None).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["envoy_cluster_upstream_rq_active"].samples[0].labels["cluster_name"] == name


def test_no_workload_gives_unknown():
    s = stats(OUT, [(200, 1)])
    info = [{"name": OUT, "direction": "outbound", "service": "api.example.com", "namespace": "",
             "port": 443, "endpoints": 1}]
    text = telemetry.render_prometheus(info, [s.snapshot()], [], None).decode()
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "istio_requests"]
    labels = fam.samples[0].labels
    assert labels["source_workload"] == "unknown" and labels["source_app"] == "unknown"
    assert labels["destination_service"] == "api.example.com"
    assert labels["destination_service_name"] == "api.example.com"


def test_empty():
    assert telemetry.render_prometheus([], [], [], None) == b""
    assert telemetry.render_envoy_text([], []) == b""


def test_merged_input_matches_single():
    a = stats(OUT, [(200, 100)])
    b = stats(OUT, [(200, 100)])
    c = stats(OUT, [(200, 100), (200, 100)])
    merged = counters.merge_all([a.snapshot(), b.snapshot()])
    assert telemetry.render_prometheus([], merged, [], None) == \
        telemetry.render_prometheus([], [c.snapshot()], [], None)


def test_envoy_text(scrape):
    _, _, clusters, cs, ls = scrape
    text = telemetry.render_envoy_text(cs, ls, clusters).decode()
    lines = text.splitlines()
    assert lines == sorted(lines)
    for line in (f"cluster.{OUT}.upstream_rq_total: 6", f"cluster.{OUT}.upstream_rq_503: 2",
                 f"cluster.{OUT}.upstream_rq_5xx: 2", f"cluster.{OUT}.upstream_rq_active: 1",
                 f"cluster.{OUT}.upstream_cx_total: 1", f"cluster.{INB}.membership_healthy: 1",
                 "http.0.0.0.0_15001.downstream_rq_total: 3", "http.0.0.0.0_15001.downstream_rq_4xx: 1",
                 "http.0.0.0.0_15001.downstream_cx_active: 1"):
        assert line in lines, line
    (rq_time,) = [ln for ln in lines if ln.startswith(f"cluster.{OUT}.upstream_rq_time:")]
    assert rq_time.split(": ", 1)[1].startswith("P0(nan,0) P25(nan,")
    empty = telemetry.render_envoy_text([counters.ClusterStats("e").snapshot()], []).decode()
    assert "cluster.e.upstream_rq_time: No recorded values" in empty


# -- connection pool limits (circuit breakers) ------------------------------------------------------

POOL_KEYS = {"cx_overflow": 3, "rq_pending_overflow": 4, "rq_pending_total": 9, "rq_pending_active": 2,
             "cx_max_requests": 5, "cx_max_duration_reached": 6}
BREAKERS = {"max_connections": 1, "max_pending_requests": 1, "max_requests": 4294967295,
            "max_retries": 4294967295, "cx_open": 1, "rq_pending_open": 1, "rq_open": 0, "rq_retry_open": 0,
            "remaining_cx": 0, "remaining_pending": 0, "remaining_rq": 4294967293, "remaining_retries": 4294967295}


def pool_scrape(cb=BREAKERS):
    snap = dict(stats(OUT, [(200, 100), (503, 100)]).snapshot(), **POOL_KEYS)
    old = stats(INB, [(200, 100)]).snapshot()  # a snapshot without the new keys: zeros
    for key in POOL_KEYS:
        old.pop(key, None)
    lst = dict(stats("0.0.0.0_15001", [(200, 1)]).snapshot(), cx_overflow=7)
    info = [{"name": OUT, "direction": "outbound", "service": "echo.default.svc.cluster.local",
             "namespace": "default", "port": 80, "endpoints": 1, "circuit_breakers": cb},
            {"name": INB, "direction": "inbound", "service": "echo", "namespace": "default",
             "port": 8080, "endpoints": 1}]
    return info, [snap, old], [lst]


def test_pool_limit_counters_prometheus():
    info, cs, ls = pool_scrape()
    text = telemetry.render_prometheus(info, cs, ls, WORKLOAD).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}  # parses
    for key, n in POOL_KEYS.items():
        assert f'envoy_cluster_upstream_{key}{{cluster_name="{OUT}"}} {n}' in text
        assert f'envoy_cluster_upstream_{key}{{cluster_name="{INB}"}} 0' in text
    assert "# TYPE envoy_cluster_upstream_rq_pending_active gauge" in text
    for key in ("cx_overflow", "rq_pending_overflow", "rq_pending_total", "cx_max_requests",
                "cx_max_duration_reached"):
        assert f"# TYPE envoy_cluster_upstream_{key} counter" in text
    # the listener keeps its own overflow counter, and gets none of the upstream pool stats
    assert 'envoy_listener_downstream_cx_overflow{envoy_listener_address="0.0.0.0_15001"} 7' in text
    assert "envoy_http_downstream_rq_pending" not in text and "envoy_http_downstream_cx_max" not in text
    assert "envoy_http_downstream_cx_overflow" not in text
    assert fams["envoy_cluster_upstream_rq_pending_active"].type == "gauge"


def test_circuit_breaker_gauges_prometheus():
    info, cs, ls = pool_scrape()
    text = telemetry.render_prometheus(info, cs, ls, WORKLOAD).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for key in ("cx_open", "rq_pending_open", "rq_open", "rq_retry_open", "remaining_cx", "remaining_pending",
                "remaining_rq", "remaining_retries"):
        name = f"envoy_cluster_circuit_breakers_default_{key}"
        assert fams[name].type == "gauge"
        assert [(s.labels, s.value) for s in fams[name].samples] == [({"cluster_name": OUT}, BREAKERS[key])]
    assert f'envoy_cluster_circuit_breakers_default_cx_open{{cluster_name="{OUT}"}} 1' in text
    assert f'envoy_cluster_circuit_breakers_default_remaining_rq{{cluster_name="{OUT}"}} 4294967293' in text
    assert "circuit_breakers_default_max" not in text  # the limits themselves are in /clusters only
    # no circuit_breakers (or None): nothing rendered
    info, cs, ls = pool_scrape(cb=None)
    assert b"circuit_breakers" not in telemetry.render_prometheus(info, cs, ls, WORKLOAD)


def test_pool_limits_envoy_text():
    info, cs, ls = pool_scrape()
    lines = telemetry.render_envoy_text(cs, ls, info).decode().splitlines()
    assert lines == sorted(lines)
    for key, n in POOL_KEYS.items():
        assert f"cluster.{OUT}.upstream_{key}: {n}" in lines
        assert f"cluster.{INB}.upstream_{key}: 0" in lines
    for key in ("cx_open", "rq_pending_open", "rq_open", "rq_retry_open", "remaining_cx", "remaining_pending",
                "remaining_rq", "remaining_retries"):
        assert f"cluster.{OUT}.circuit_breakers.default.{key}: {BREAKERS[key]}" in lines
    assert not any(ln.startswith(f"cluster.{INB}.circuit_breakers") for ln in lines)
    assert "listener.0.0.0.0_15001.downstream_cx_overflow: 7" in lines
    assert not any(ln.startswith("http.0.0.0.0_15001.") and ("pending" in ln or "overflow" in ln
                                                             or "cx_max" in ln) for ln in lines)
