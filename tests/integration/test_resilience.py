"""Timeouts and retries through a real sidecar (both builds), against real backends that fail.

* a backend killed under steady load: with ``retries: {attempts: 3, retryOn:
  5xx,reset,connect-failure}`` no client request fails;
* a dead endpoint under ``retryOn: 5xx``: its connect failures are retried elsewhere;
* ``timeout``: 504 UT within 50 ms of the setting; ``perTryTimeout``: the slow attempt is
  abandoned and retried elsewhere, within 50 ms of the setting.
"""
import http.client
import threading
import time

import pytest

from harness import doc, service_entry
from routing_backend import RoutingBackend

RS = "rs.default.svc.cluster.local"


@pytest.fixture
def pair():
    """Two routing backends of one service, on their own loopback addresses."""
    made = [RoutingBackend("127.0.0.91", "a"), RoutingBackend("127.0.0.92", "b")]
    try:
        yield made
    finally:
        for b in made:
            b.stop()


def vs(http):
    return doc("VirtualService", "rs", {"hosts": [RS], "http": http})


def sidecar(make_sidecar, backends, http, *extra):
    docs = [service_entry("rs", RS, [(b.host, b.port) for b in backends]), vs(http)]
    return make_sidecar(docs + list(extra))


def get(s, path, conn=None, timeout=10):
    """One request (a fresh connection unless ``conn``): (status, headers dict, body, seconds)."""
    c = conn or http.client.HTTPConnection(s.host, s.outbound, timeout=timeout)
    t0 = time.monotonic()
    c.request("GET", path, headers={"Host": RS})
    r = c.getresponse()
    body = r.read()
    took = time.monotonic() - t0
    if conn is None:
        c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body, took


def stats(s):
    _, body = s.admin_get("/stats/prometheus")
    return body.decode()


def test_backend_killed_under_load_loses_no_request(make_sidecar, pair):
    s = sidecar(make_sidecar, pair, [{
        "retries": {"attempts": 3, "retryOn": "5xx,reset,connect-failure"},
        "route": [{"destination": {"host": RS}}]}])
    failures, served, lock = [], [], threading.Lock()
    stop = threading.Event()

    def client():
        conn = http.client.HTTPConnection(s.host, s.outbound, timeout=10)
        n = 0
        while not stop.is_set() and n < 400:
            n += 1
            try:
                status, headers, _, _ = get(s, "/x", conn)
            except (OSError, http.client.HTTPException) as e:  # never retried by the client
                with lock:
                    failures.append(repr(e))
                return
            with lock:
                (served if status == 200 else failures).append(
                    headers.get("x-served-by") if status == 200 else status)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(served) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    pair[1].stop()  # killed mid-load: its pooled connections reset, new ones are refused
    killed_at = len(served)
    for t in threads:
        t.join(30)
    stop.set()
    print("served", len(served), "killed after", killed_at, "failures", failures[:5])
    assert not failures, failures[:5]
    assert len(served) == 1600
    assert served[-100:] == ["a"] * 100, "after the kill every request ends on the live backend"
    assert "envoy_cluster_upstream_rq_retry" in stats(s)


def test_connect_failures_count_as_5xx_and_are_retried(make_sidecar, pair):
    # retryOn 5xx covers local-origin failures too (Envoy): a dead endpoint is never seen
    s = sidecar(make_sidecar, pair, [
        {"match": [{"uri": {"prefix": "/"}}],
         "retries": {"attempts": 2, "retryOn": "5xx"},
         "route": [{"destination": {"host": RS}}]}])
    pair[1].stop()
    for _ in range(20):
        status, headers, _, _ = get(s, "/y")
        assert status == 200 and headers["x-served-by"] == "a"
    text = stats(s)
    assert 'envoy_cluster_upstream_rq_retry{cluster_name="outbound|80||%s"}' % RS in text


def test_route_timeout_fires_within_50ms(make_sidecar, pair):
    s = sidecar(make_sidecar, pair, [{
        "timeout": "300ms", "retries": {"attempts": 0},
        "route": [{"destination": {"host": RS}}]}])
    conn = http.client.HTTPConnection(s.host, s.outbound, timeout=10)
    assert get(s, "/warm", conn)[0] == 200  # connected: only the timeout is timed below
    for _ in range(3):
        status, _, body, took = get(s, "/sleep/2", conn)
        assert status == 504 and body == b"upstream request timeout", (status, body)
        # (libuv's timers count whole milliseconds: a deadline may come up to 1 ms early)
        assert 0.299 <= took < 0.35, took
    conn.close()
    _, body = s.admin_get("/stats/prometheus")
    assert 'response_flags="UT"' in body.decode()


def test_per_try_timeout_retries_elsewhere_within_50ms(make_sidecar):
    slow = RoutingBackend("127.0.0.93", "slow", delay=2.0)
    fast = RoutingBackend("127.0.0.94", "fast")
    try:
        s = sidecar(make_sidecar, [slow, fast], [{
            "timeout": "5s",
            "retries": {"attempts": 2, "perTryTimeout": "200ms", "retryOn": "5xx"},
            "route": [{"destination": {"host": RS}}]}],
            doc("DestinationRule", "rs", {"host": RS, "trafficPolicy": {
                "loadBalancer": {"simple": "ROUND_ROBIN"}}}))
        saw_retry = False
        conn = http.client.HTTPConnection(s.host, s.outbound, timeout=10)
        for _ in range(6):
            status, headers, body, took = get(s, "/z", conn)
            assert status == 200 and headers["x-served-by"] == "fast", (status, body)
            if took >= 0.2:
                saw_retry = True
                assert took < 0.25 + 0.05, took  # the 200 ms try, the backoff, the fast answer
        conn.close()
        assert saw_retry, "round robin sent some requests to the slow endpoint first"
        assert fast.stats()["count"] == 6
    finally:
        slow.stop()
        fast.stop()
