"""Circuit breakers and retry budgets through a real sidecar (both builds), real clients, a real
backend that holds requests (``/sleep/<s>``) or fails every one.

* Istio's circuit-breaking task: ``maxConnections: 1``, ``http1MaxPendingRequests: 1``
  (``maxRequestsPerConnection: 1`` as in the task, and without it): of three concurrent requests
  one is answered 503 ``UO`` at once, the backend never sees two at a time, the breaker's
  counters and gauges say so, and it recovers. Under ``hey -c 3`` the same holds.
* ``http2MaxRequests``: the request over the limit is refused at once; the others are served.
* A retry budget of 20% during a full outage: retries add at most ~20% to the load the backend
  sees, against 4x without a budget (``attempts: 3``).
* ``maxRequestsPerConnection`` and ``maxConnectionDuration`` close upstream connections, counted.
* Inbound, a request the application never saw (its port refused the connection) is retried
  (Istio's ``reset-before-request`` default).
"""
import http.client
import json
import re
import shutil
import subprocess
import threading
import time

import pytest

from harness import doc, free_port, service_entry, workload_entry
from routing_backend import RoutingBackend

CB = "cb.default.svc.cluster.local"
CLUSTER = f"outbound|80||{CB}"


@pytest.fixture
def slow():
    """One routing backend (``/sleep/<s>`` holds a request)."""
    b = RoutingBackend("127.0.0.95", "slow")
    yield b
    b.stop()


def dr(policy, name="cb"):
    return doc("DestinationRule", name, {"host": CB, "trafficPolicy": policy})


def get(s, path, conn=None, timeout=10):
    """One request (a fresh connection unless ``conn``): (status, headers, body, seconds)."""
    c = conn or http.client.HTTPConnection(s.host, s.outbound, timeout=timeout)
    t0 = time.monotonic()
    c.request("GET", path, headers={"Host": CB})
    r = c.getresponse()
    body = r.read()
    took = time.monotonic() - t0
    if conn is None:
        c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body, took


def metric(s, name, cluster=CLUSTER):
    _, body = s.admin_get("/stats/prometheus")
    m = re.search(r'^%s\{cluster_name="%s"\} (\S+)$' % (name, re.escape(cluster)),
                  body.decode(), re.M)
    assert m, f"{name} for {cluster} not in the metrics"
    return float(m.group(1))


def breakers(s, cluster=CLUSTER):
    """The cluster's thresholds and the breakers' state, from ``/clusters?format=json``."""
    _, body = s.admin_get("/clusters?format=json")
    for c in json.loads(body)["cluster_statuses"]:
        if c["name"] == cluster:
            cb = c["circuit_breakers"]
            return {**cb["thresholds"][0], **cb["state"]}
    raise AssertionError(f"{cluster} not in /clusters")


def concurrent(s, paths, stagger=0.15):
    """Send each path on its own connection, ``stagger`` s apart; [(status, headers, seconds)]."""
    out = [None] * len(paths)

    def one(i):
        st, h, _, took = get(s, paths[i])
        out[i] = (st, h, took)

    threads = []
    for i in range(len(paths)):
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(stagger)
    for t in threads:
        t.join(30)
    return out


@pytest.mark.parametrize("per_connection", [1, 0], ids=["maxRequestsPerConnection1", "keepalive"])
def test_istio_circuit_breaking_task(make_sidecar, slow, per_connection):
    http_pool = {"http1MaxPendingRequests": 1}
    if per_connection:
        http_pool["maxRequestsPerConnection"] = per_connection
    s = make_sidecar([service_entry("cb", CB, [(slow.host, slow.port)]),
                      dr({"connectionPool": {"tcp": {"maxConnections": 1}, "http": http_pool},
                          "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s",
                                               "baseEjectionTime": "3m",
                                               "maxEjectionPercent": 100}})])
    slow.reset()
    # one in flight on the one connection, one pending, the third overflows
    res = concurrent(s, ["/sleep/0.6", "/sleep/0.6", "/sleep/0.6"])
    statuses = sorted(r[0] for r in res)
    assert statuses == [200, 200, 503], res
    uo = next(r for r in res if r[0] == 503)
    assert uo[1].get("x-envoy-overloaded") == "true"
    assert uo[2] < 0.3, "an overflow is answered at once, never queued"
    assert slow.stats()["max_active"] == 1, "the backend never saw two requests at a time"
    assert metric(s, "envoy_cluster_upstream_rq_pending_overflow") == 1
    assert metric(s, "envoy_cluster_upstream_cx_overflow") >= 1
    if per_connection:
        assert metric(s, "envoy_cluster_upstream_cx_max_requests") >= 1
    cb = breakers(s)
    assert (cb["max_connections"], cb["max_pending_requests"]) == (1, 1)
    _, text = s.admin_get("/clusters")
    assert f"{CLUSTER}::default_priority::max_connections::1\n" in text.decode()
    # and it recovers: sequential requests are all served
    for _ in range(5):
        assert get(s, "/")[0] == 200
    assert breakers(s)["remaining_pending"] == 1
    # the overflow is not the endpoint's fault: outlier detection (1 x 5xx ejects) left it alone
    assert get(s, "/")[0] == 200


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey is not installed")
def test_istio_circuit_breaking_task_under_hey(make_sidecar, slow):
    s = make_sidecar([service_entry("cb", CB, [(slow.host, slow.port)]),
                      dr({"connectionPool": {"tcp": {"maxConnections": 1},
                                             "http": {"http1MaxPendingRequests": 1,
                                                      "maxRequestsPerConnection": 1}}})])
    slow.reset()
    out = subprocess.run(["hey", "-n", "60", "-c", "3", "-t", "10", "-host", CB,
                          f"http://{s.host}:{s.outbound}/sleep/0.02"],
                         capture_output=True, text=True, timeout=60).stdout
    codes = dict((int(c), int(n)) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    print(out)
    assert set(codes) <= {200, 503} and sum(codes.values()) == 60, codes
    assert codes.get(503, 0) > 0, "three concurrent clients overflow one connection + one pending"
    assert codes.get(200, 0) > 0
    assert slow.stats()["max_active"] == 1
    assert metric(s, "envoy_cluster_upstream_rq_pending_overflow") == codes[503]


def test_http2_max_requests_refuses_the_one_over(make_sidecar, slow):
    s = make_sidecar([service_entry("cb", CB, [(slow.host, slow.port)]),
                      dr({"connectionPool": {"http": {"http2MaxRequests": 2}}})])
    res = concurrent(s, ["/sleep/0.6"] * 3)
    assert sorted(r[0] for r in res) == [200, 200, 503], res
    assert metric(s, "envoy_cluster_upstream_rq_pending_overflow") == 1
    assert breakers(s)["max_requests"] == 2


def test_retry_budget_caps_retries_during_a_full_outage(make_sidecar):
    """All endpoints answer 503; ``retries: {attempts: 3, retryOn: 5xx}``. Without a budget
    every request costs the backend four attempts; with ``retryBudget: {percent: 20}`` the
    retries in flight stay within 20% of the requests in flight, so the backend sees at most
    ~1.2 attempts per request."""
    down = RoutingBackend("127.0.0.96", "down", status=503, delay=0.005)
    try:
        vs = doc("VirtualService", "cb", {"hosts": [CB], "http": [{
            "retries": {"attempts": 3, "retryOn": "5xx"},
            "route": [{"destination": {"host": CB}}]}]})
        ratios = {}
        for budget in (False, True):
            docs = [service_entry("cb", CB, [(down.host, down.port)]), vs]
            if budget:
                docs.append(dr({"retryBudget": {"percent": 20, "minRetryConcurrency": 1}}))
            s = make_sidecar(docs)
            down.reset()
            sent = _load(s, clients=20, seconds=2.0)
            attempts = down.stats()["count"]
            ratios[budget] = attempts / sent
            retries = metric(s, "envoy_cluster_upstream_rq_retry")
            overflow = metric(s, "envoy_cluster_upstream_rq_retry_overflow")
            print(f"budget={budget}: {sent} requests, {attempts} attempts "
                  f"({ratios[budget]:.2f}/request), {retries:.0f} retries, {overflow:.0f} refused")
            if budget:
                assert overflow > 0
            else:
                assert overflow == 0
            s.stop()
        assert ratios[False] > 3.9, ratios
        assert ratios[True] <= 1.25, ratios
    finally:
        down.stop()


def _load(s, clients, seconds):
    """``clients`` keep-alive clients sending GETs for ``seconds``; how many answers came (all
    must be 503: the outage)."""
    stop = time.monotonic() + seconds
    counts = [0] * clients
    bad = []

    def run(i):
        conn = http.client.HTTPConnection(s.host, s.outbound, timeout=10)
        while time.monotonic() < stop:
            st, _, _, _ = get(s, "/", conn)
            if st != 503:
                bad.append(st)
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    assert not bad, bad[:5]
    return sum(counts)


def test_max_connection_duration_closes_old_connections(make_sidecar, slow):
    s = make_sidecar([service_entry("cb", CB, [(slow.host, slow.port)]),
                      dr({"connectionPool": {"tcp": {"maxConnectionDuration": "1s"}}})])
    conn = http.client.HTTPConnection(s.host, s.outbound, timeout=10)
    addrs = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.6:
        st, _, body, _ = get(s, "/", conn)
        assert st == 200
        addrs.add(json.loads(body)["peer"])  # the sidecar's end of its upstream connection
        time.sleep(0.1)
    conn.close()
    # about one upstream connection per second, never one older than 1 s (+ a request)
    assert 3 <= len(addrs) <= 4, addrs
    assert metric(s, "envoy_cluster_upstream_cx_max_duration_reached") >= 2


def test_inbound_retries_a_connection_the_application_refused(make_sidecar):
    """Istio >= 1.24: inbound routes retry ``reset-before-request`` twice: a connection the
    application's port refused is tried again, after Envoy's backoff (nothing was sent)."""
    addr = "127.0.0.97"
    app_port = free_port(addr)  # nothing listens there
    server = make_sidecar([], host=addr, workload="app", name="app", start=False)
    server.write_config([
        workload_entry("app", addr, ports={"http": app_port}, labels={"app": "app"}),
        service_entry("app", "app.default.svc.cluster.local", selector={"app": "app"})])
    server.start()
    c = http.client.HTTPConnection(addr, server.inbound, timeout=10)
    c.request("GET", "/", headers={"Host": "app.default.svc.cluster.local"})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 503
    cluster = f"inbound|{app_port}||"
    assert metric(server, "envoy_cluster_upstream_rq_retry", cluster) == 2
    assert metric(server, "envoy_cluster_upstream_cx_connect_fail", cluster) == 3
    assert metric(server, "envoy_cluster_upstream_rq_retry_limit_exceeded", cluster) == 1


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey is not installed")
def test_max_connections_queues_under_load_over_two_endpoints(make_sidecar, slow):
    """40 concurrent clients, two endpoints, ``maxConnections: 4`` and a pending limit that is
    never reached: every request is served (none lost, none stuck), the backends never see more
    than four requests at a time each, and requests did queue."""
    other = RoutingBackend("127.0.0.98", "other")
    try:
        s = make_sidecar([service_entry("cb", CB, [(slow.host, slow.port), (other.host, other.port)]),
                          dr({"connectionPool": {"tcp": {"maxConnections": 4},
                                                 "http": {"http1MaxPendingRequests": 1000}}})])
        slow.reset()
        other.reset()
        out = subprocess.run(["hey", "-n", "1200", "-c", "40", "-t", "20", "-host", CB,
                              f"http://{s.host}:{s.outbound}/sleep/0.005"],
                             capture_output=True, text=True, timeout=120).stdout
        codes = dict((int(c), int(n)) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
        assert codes == {200: 1200}, out
        # (the exact count is proven by the engine's unit tests; here: nothing lost or stuck)
        assert slow.stats()["max_active"] <= 4 and other.stats()["max_active"] <= 4
        assert slow.stats()["count"] > 0 and other.stats()["count"] > 0
        assert metric(s, "envoy_cluster_upstream_cx_overflow") > 0, "requests queued"
        assert metric(s, "envoy_cluster_upstream_rq_pending_overflow") == 0
        assert metric(s, "envoy_cluster_upstream_cx_active") <= 4
        cb = breakers(s)
        assert cb["waiting"] == 0 and cb["connections"] <= 4
    finally:
        other.stop()
