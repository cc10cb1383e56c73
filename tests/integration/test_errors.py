"""Errors answered as Envoy does (status, body, response flag), and in the access log."""
import json
import time

import pytest
from harness import ECHO_HOST, RawConn, echo_entry, free_port, service_entry

DEAD = "dead.default.svc.cluster.local"
EMPTY = "empty.default.svc.cluster.local"


@pytest.fixture
def err_sidecar(make_sidecar, echo, tmp_path):
    docs = [echo_entry(echo),
            service_entry("dead", DEAD, [("127.0.0.1", free_port())]),
            service_entry("empty", EMPTY, [])]
    s = make_sidecar(docs, args=["--access-log", str(tmp_path / "access.log"),
                                 "--access-log-encoding", "JSON"])
    s.access_log = tmp_path / "access.log"
    return s


def access_records(s, n, timeout=5.0):
    """The first ``n`` access-log records (the log is flushed once a second)."""
    deadline = time.monotonic() + timeout
    recs = []
    while time.monotonic() < deadline:
        if s.access_log.exists():
            recs = [json.loads(x) for x in s.access_log.read_text().splitlines() if x.strip()]
            if len(recs) >= n:
                return recs
        time.sleep(0.1)
    raise AssertionError(f"expected {n} access-log records, got {recs}")


def test_unknown_host_404_nr(err_sidecar):
    st, h, body = err_sidecar.request(host="nope.example.com")
    assert st == 404
    r = access_records(err_sidecar, 1)[0]
    assert r["response_code"] == 404 and r["response_flags"] == "NR"
    assert r["authority"] == "nope.example.com"


def test_endpoint_down_503_uf(err_sidecar, echo):
    st, h, body = err_sidecar.request(host=DEAD)
    assert st == 503
    assert body.endswith(b"reset reason: connection failure"), body
    r = access_records(err_sidecar, 1)[0]
    # Istio's default retry policy tried twice more (the only endpoint), as Envoy reports it
    assert (r["response_code"], r["response_flags"]) == (503, "UF,URX")
    assert r["upstream_cluster"] == f"outbound|80||{DEAD}"


def test_no_endpoints_503_uh(err_sidecar):
    st, h, body = err_sidecar.request(host=EMPTY)
    assert st == 503 and body == b"no healthy upstream"
    r = access_records(err_sidecar, 1)[0]
    assert (r["response_code"], r["response_flags"]) == (503, "UH")


def test_upstream_closes_before_response_503_uc(err_sidecar, echo):
    st, h, body = err_sidecar.request(path="/close-before")
    assert st == 503
    assert b"reset reason: connection termination" in body
    r = access_records(err_sidecar, 1)[0]
    assert (r["response_code"], r["response_flags"]) == (503, "UC")
    # the sidecar still serves
    assert err_sidecar.request()[0] == 200


def test_invalid_upstream_response_502(err_sidecar, echo):
    st, h, body = err_sidecar.request(path="/invalid")
    assert st == 502
    r = access_records(err_sidecar, 1)[0]
    assert (r["response_code"], r["response_flags"]) == (502, "UPE")
    assert err_sidecar.request()[0] == 200


def test_upstream_closes_mid_response(err_sidecar, echo):
    c = RawConn("127.0.0.1", err_sidecar.outbound)
    c.send(b"GET /close-mid HTTP/1.1\r\nHost: echo\r\n\r\n")
    head = c.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    rest = c.read_all()  # the client must see the connection cut, not a hang
    assert rest == b"0123456789"
    c.close()
    r = access_records(err_sidecar, 1)[0]
    assert r["response_flags"] == "UC"


def test_access_log_success_record(err_sidecar, echo):
    st, _, _ = err_sidecar.request(path="/logged", headers={"User-Agent": "itest/1"})
    assert st == 200
    r = access_records(err_sidecar, 1)[0]
    assert r["response_code"] == 200 and r["response_flags"] in ("-", None, "")
    assert r["path"] == "/logged" and r["method"] == "GET" and r["user_agent"] == "itest/1"
    assert r["upstream_host"] == f"127.0.0.1:{echo.port}"


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,  # a TLS ClientHello
    b"GET\r\n\r\n",
    b"\xff\xfe\xfd\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: echo\r\n\r\n",
])
def test_bad_request_never_kills_the_worker(sidecar, echo, garbage):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(garbage)
    out = c.read_all()
    c.close()
    assert out == b"" or out.startswith(b"HTTP/1.1 4") or out.startswith(b"HTTP/1.1 505"), out
    assert sidecar.request()[0] == 200
    assert sidecar.proc.poll() is None
    assert echo.stats()["requests"] == 1


def test_bad_request_logged_as_dpe(err_sidecar, echo):
    c = RawConn("127.0.0.1", err_sidecar.outbound)
    c.send(b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    out = c.read_all()
    c.close()
    assert out.startswith(b"HTTP/1.1 400 ")
    r = access_records(err_sidecar, 1)[0]
    assert (r["response_code"], r["response_flags"]) == (400, "DPE")
    assert echo.stats()["connections"] == 0


def test_prometheus_counts_flags(err_sidecar, echo):
    from prometheus_client.parser import text_string_to_metric_families
    for host, path in ((DEAD, "/"), (EMPTY, "/"), (ECHO_HOST, "/close-before"),
                       (ECHO_HOST, "/invalid"), (ECHO_HOST, "/")):
        err_sidecar.request(host=host, path=path)
    st, body = err_sidecar.admin_get("/stats/prometheus", port=err_sidecar.prometheus)
    got = {}
    for fam in text_string_to_metric_families(body.decode()):
        for smp in fam.samples:
            if smp.name == "istio_requests_total":
                key = (smp.labels["destination_service_name"], smp.labels["response_code"],
                       smp.labels["response_flags"])
                got[key] = got.get(key, 0) + smp.value
    assert got == {("dead", "503", "UF,URX"): 1, ("empty", "503", "UH"): 1,
                   ("echo", "503", "UC"): 1, ("echo", "502", "UPE"): 1, ("echo", "200", "-"): 1}
