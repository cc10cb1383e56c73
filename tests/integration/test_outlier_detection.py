"""Outlier detection end to end: a real ``meshproxy run`` sidecar, a DestinationRule
``outlierDetection`` over two routing backends of which one answers 500.

After five consecutive 500s the bad endpoint gets no traffic, ``/clusters`` shows it ejected,
the metrics count it, the log says so; it returns after ``baseEjectionTime`` (on the 1 s interval),
and ejected again right away it stays out twice as long.
"""
import http.client
import json
import re
import time

import pytest
from harness import doc, service_entry
from routing_backend import RoutingBackend

HOST = "od.default.svc.cluster.local"
BASE = 2.0  # baseEjectionTime
INTERVAL = 1.0


@pytest.fixture
def pair():
    good = RoutingBackend("127.0.0.61", "good")
    bad = RoutingBackend("127.0.0.62", "bad", status=500)
    yield good, bad
    good.stop()
    bad.stop()


class Client:
    def __init__(self, sidecar):
        self.s = sidecar
        self.conn = None

    def served_by(self):
        """(status, x-served-by) of one keep-alive request."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.s.host, self.s.outbound, timeout=10)
            try:
                self.conn.request("GET", "/", headers={"Host": HOST})
                r = self.conn.getresponse()
                r.read()
                if r.will_close:
                    self.conn.close()
                    self.conn = None
                return r.status, r.getheader("x-served-by")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def until_ejected(self, already=0, limit=40):
        """Requests until the bad endpoint has answered five 500s in a row (``already`` of them
        before); the time of the 5th."""
        n = already
        for _ in range(limit):
            status, by = self.served_by()
            if by == "bad":
                assert status == 500
                n += 1
                if n == 5:
                    return time.monotonic()
        raise AssertionError(f"the bad endpoint answered only {n} times in {limit} requests")

    def until_back(self, timeout):
        """Poll (every 50 ms) until the bad endpoint answers again; the time it did. Everything
        before comes from the good one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, by = self.served_by()
            if by == "bad":
                return time.monotonic()
            assert (status, by) == (200, "good")
            time.sleep(0.05)
        raise AssertionError(f"the bad endpoint did not come back within {timeout}s")


def metric(sidecar, name):
    st, body = sidecar.admin_get("/stats/prometheus")
    assert st == 200
    m = re.search(r'^%s\{cluster_name="outbound\|80\|\|%s"\} (\S+)$' % (name, re.escape(HOST)),
                  body.decode(), re.M)
    assert m, f"{name} not in the metrics"
    return float(m.group(1))


def bad_host_status(sidecar, bad):
    st, body = sidecar.admin_get("/clusters?format=json")
    assert st == 200
    for c in json.loads(body)["cluster_statuses"]:
        if c["name"] == f"outbound|80||{HOST}":
            for h in c["host_statuses"]:
                if h["address"]["socket_address"]["port_value"] == bad.port:
                    return h
    raise AssertionError("the bad endpoint is not in /clusters")


def test_consecutive_5xx_ejects_and_the_second_ejection_lasts_twice_as_long(make_sidecar, pair):
    good, bad = pair
    docs = [
        service_entry("od", HOST, [(good.host, good.port), (bad.host, bad.port)]),
        doc("DestinationRule", "od", {"host": HOST, "trafficPolicy": {
            "loadBalancer": {"simple": "ROUND_ROBIN"},
            "outlierDetection": {"consecutive5xxErrors": 5, "interval": "1s",
                                 "baseEjectionTime": "2s", "maxEjectionPercent": 100}}}),
    ]
    s = make_sidecar(docs)
    c = Client(s)
    t_eject = c.until_ejected()
    # out of rotation: everything goes to the good endpoint
    for _ in range(10):
        assert c.served_by() == (200, "good")
    h = bad_host_status(s, bad)
    assert h["health_status"].get("failed_outlier_check") is True
    assert h["outlier_detection"]["ejected"] and h["outlier_detection"]["ejections"] == 1
    st, text = s.admin_get("/clusters")
    assert f"{bad.host}:{bad.port}::health_flags::/failed_outlier_check" in text.decode()
    assert metric(s, "envoy_cluster_outlier_detection_ejections_active") == 1
    assert metric(s, "envoy_cluster_outlier_detection_ejections_enforced_total") == 1
    s.wait_log(f"outlier: ejected {bad.host}:{bad.port} of outbound|80||{HOST} for 2s")

    # back after baseEjectionTime, on the interval timer
    t_back = c.until_back(BASE + INTERVAL + 3)
    first = t_back - t_eject
    # ejected again before an interval has passed healthy: twice the base ejection time
    # (the 500 that showed it back is the first of the five: its counts were reset on return)
    t_eject2 = c.until_ejected(already=1)
    h = bad_host_status(s, bad)
    assert h["health_status"].get("failed_outlier_check") is True
    assert h["outlier_detection"]["ejections"] == 2
    s.wait_log(f"outlier: ejected {bad.host}:{bad.port} of outbound|80||{HOST} for 4s")
    t_back2 = c.until_back(2 * BASE + INTERVAL + 3)
    second = t_back2 - t_eject2
    print(f"first ejection {first:.2f}s, second {second:.2f}s")
    assert BASE - 0.1 <= first <= BASE + INTERVAL + 0.6
    assert 2 * BASE - 0.1 <= second <= 2 * BASE + INTERVAL + 0.6
    assert metric(s, "envoy_cluster_outlier_detection_ejections_enforced_total") == 2
    assert metric(s, "envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx") == 2
