"""Active health checks in a running sidecar: a HealthCheck over two endpoints, one flipped
unhealthy and back; traffic leaves it after unhealthyThreshold failed checks and returns after
healthyThreshold passed ones."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from harness import doc

HOST = "hc.default.svc.cluster.local"
CLUSTER = f"outbound|80||{HOST}"


class Flippable:
    """An HTTP server in this process: ``/healthz`` answers ``self.status``; anything else
    answers 200 with the server's name. Counts health checks by status."""

    def __init__(self, name):
        self.name = name
        self.status = 200
        self.checks = {200: 0, 503: 0}
        self.served = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path == "/healthz":
                    st = outer.status
                    outer.checks[st] += 1
                    body = b""
                else:
                    st = 200
                    outer.served += 1
                    body = outer.name.encode()
                self.send_response(st)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pair():
    a, b = Flippable("a"), Flippable("b")
    yield a, b
    a.close()
    b.close()


def served_by(s, n=20):
    seen = []
    for i in range(n):
        st, _, body = s.request(host=HOST, path=f"/r/{i}")
        assert st == 200, (st, body)
        seen.append(body.decode())
    return seen


def health_flags(s, port):
    text = s.admin_get("/clusters")[1].decode()
    key = f"{CLUSTER}::127.0.0.1:{port}::health_flags::"
    return next((ln[len(key):] for ln in text.splitlines() if ln.startswith(key)), None)


def wait_for(cond, timeout=8.0, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_health_check_removes_and_restores_an_endpoint(make_sidecar, pair, impl, concurrency):
    if concurrency == "2" and impl == "py":
        pytest.skip("the two-worker run is enough on one build")
    a, b = pair
    se = doc("ServiceEntry", "hc", {
        "hosts": [HOST], "resolution": "STATIC", "location": "MESH_INTERNAL",
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "endpoints": [{"address": "127.0.0.1", "ports": {"http": a.port}},
                      {"address": "127.0.0.1", "ports": {"http": b.port}}]})
    check = doc("HealthCheck", "hc", {
        "host": "hc", "http": {"path": "/healthz"}, "interval": "200ms", "timeout": "150ms",
        "unhealthyThreshold": 3, "healthyThreshold": 2, "noTrafficInterval": "200ms"},
        api="meshproxy.io/v1alpha1")
    s = make_sidecar([se, check], args=["--concurrency", concurrency])
    dump = json.loads(s.admin_get("/config_dump")[1])
    c = next(x for x in dump["snapshot"]["clusters"] if x["name"] == CLUSTER)
    assert c["health_check"]["source"] == "default/hc" and c["health_check"]["unhealthy_threshold"] == 3
    assert set(served_by(s)) == {"a", "b"}
    assert health_flags(s, b.port) == "healthy"

    mark = len(s.log())
    b.status = 503
    wait_for(lambda: health_flags(s, b.port) == "/failed_active_hc")
    # reported unhealthy after exactly three failed checks, never fewer
    assert b.checks[503] >= 3
    s.wait_log(f"127.0.0.1:{b.port} unhealthy after 3 failed checks", after=mark)
    assert "unhealthy after 2" not in s.log()[mark:]
    served = b.served
    assert set(served_by(s)) == {"a"} and b.served == served
    assert health_flags(s, a.port) == "healthy"

    mark = len(s.log())
    b.status = 200
    wait_for(lambda: health_flags(s, b.port) == "healthy")
    assert b.checks[200] >= 2
    s.wait_log(f"127.0.0.1:{b.port} healthy after 2 passed checks", after=mark)
    wait_for(lambda: "b" in served_by(s, 10), timeout=3)
