"""Reload (SIGHUP), drain (SIGTERM) and the multi-process model (--concurrency 2)."""
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from harness import ECHO_HOST, RawConn, echo_entry, service_entry
from prometheus_client.parser import text_string_to_metric_families

NEW = "new.default.svc.cluster.local"


def requests_total(s):
    st, body = s.admin_get("/stats/prometheus", port=s.prometheus)
    assert st == 200
    total = 0
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "istio_requests":  # the parser strips _total from counters
            total += sum(x.value for x in fam.samples if x.name == "istio_requests_total")
    return total


# -- 7. reload ------------------------------------------------------------------------------------

def test_sighup_applies_changed_config(sidecar, echo):
    assert sidecar.request(host=NEW)[0] == 404
    mark = len(sidecar.log())
    sidecar.write_config([echo_entry(echo), echo_entry(echo, host=NEW, name="new")])
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_log("reloaded snapshot", after=mark)
    d = sidecar.get_json("/n", host=NEW)
    assert d["target"] == "/n"
    dump = json.loads(sidecar.admin_get("/config_dump")[1])
    assert any(c["service"] == NEW for c in dump["snapshot"]["clusters"])


def test_sighup_invalid_config_keeps_serving(sidecar, echo):
    mark = len(sidecar.log())
    bad = echo_entry(echo).replace('"resolution"', '"resolutoin"')
    sidecar.write_config([bad])
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_log("reload rejected, keeping snapshot", after=mark)
    log = sidecar.log()[mark:]
    assert "spec.resolutoin: unknown field" in log, log
    assert sidecar.proc.poll() is None
    assert sidecar.request()[0] == 200
    # a YAML syntax error too
    mark = len(sidecar.log())
    sidecar.write_config([], raw="apiVersion: [unclosed\n")
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_log("reload rejected, keeping snapshot", after=mark)
    assert sidecar.request()[0] == 200


def _load(s, stop, results, new_conn_every=5):
    c = None
    i = 0
    while not stop.is_set():
        try:
            if c is None or i % new_conn_every == 0:
                if c is not None:
                    c.close()
                c = http.client.HTTPConnection("127.0.0.1", s.outbound, timeout=5)
            c.request("GET", f"/load/{i}", headers={"Host": ECHO_HOST})
            r = c.getresponse()
            body = r.read()
            results.append(r.status if json.loads(body)["target"] == f"/load/{i}" else -1)
            if r.getheader("connection", "").lower() == "close":
                c.close()
                c = None
        except Exception as e:  # noqa: BLE001 - every failure is counted
            results.append(repr(e))
            if c is not None:
                c.close()
            c = None
        i += 1
    if c is not None:
        c.close()


def test_reload_under_load_loses_nothing(sidecar, echo):
    stop = threading.Event()
    results = [[], []]
    threads = [threading.Thread(target=_load, args=(sidecar, stop, r)) for r in results]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for k in range(5):
            mark = len(sidecar.log())
            docs = [echo_entry(echo)]
            if k % 2 == 0:
                docs.append(echo_entry(echo, host=NEW, name="new"))
            sidecar.write_config(docs)
            sidecar.signal(signal.SIGHUP)
            sidecar.wait_log("reloaded snapshot", after=mark)
            time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join()
    flat = results[0] + results[1]
    failed = [r for r in flat if r != 200]
    assert len(flat) > 50
    assert not failed, failed[:10]


# -- 8. drain -------------------------------------------------------------------------------------

def test_sigterm_drains_in_flight_request(make_sidecar, echo):
    """SIGTERM with several long requests in flight loses none of them within drainDuration."""
    s = make_sidecar(boot={"drainDuration": "3s"})
    delays = ("0.5", "1.0", "1.5")
    out = {}

    def slow(d):
        c = RawConn("127.0.0.1", s.outbound, timeout=10)
        c.send(b"GET /delay/%s HTTP/1.1\r\nHost: echo\r\n\r\n" % d.encode())
        resp = c.read_response()
        out[d] = (resp, c.is_closed())
        c.close()

    idle = RawConn("127.0.0.1", s.outbound)
    idle.send(b"GET /idle HTTP/1.1\r\nHost: echo\r\n\r\n")
    assert idle.read_response()[0] == 200
    threads = [threading.Thread(target=slow, args=(d,)) for d in delays]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while echo.stats()["heads"] < 1 + len(delays) and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    s.wait_log("draining")
    # new connections are refused once draining
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.outbound), timeout=2).close()
    # the idle keep-alive connection is closed at once
    assert idle.is_closed(1.0)
    idle.close()
    for t in threads:
        t.join(10)
    for d in delays:
        (st, headers, body, _), closed = out[d]
        assert st == 200 and json.loads(body)["target"] == f"/delay/{d}"
        assert [v.lower() for k, v in headers if k.lower() == "connection"] == ["close"]
        assert closed
    rc = s.proc.wait(10)
    took = time.monotonic() - t0
    assert rc == 0
    assert took < 3.0, f"exited {took:.2f}s after SIGTERM, drainDuration is 3s"


def test_sigterm_cuts_requests_longer_than_drain(make_sidecar, echo):
    s = make_sidecar(boot={"drainDuration": "500ms"})
    c = RawConn("127.0.0.1", s.outbound, timeout=10)
    c.send(b"GET /delay/5 HTTP/1.1\r\nHost: echo\r\n\r\n")
    deadline = time.monotonic() + 5
    while echo.stats()["heads"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    assert s.proc.wait(5) == 0
    assert time.monotonic() - t0 < 2.0
    assert c.is_closed(1)
    c.close()


# -- 9. concurrency -------------------------------------------------------------------------------

def _gone(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return True


def test_concurrency_two_workers(make_sidecar, echo):
    s = make_sidecar(args=["--concurrency", "2"])
    dump = json.loads(s.admin_get("/config_dump")[1])
    pids = [w["pid"] for w in dump["workers"]]
    assert len(pids) == 2 and all(pids)
    n = 40
    for i in range(n):
        # a new client connection each time: SO_REUSEPORT spreads them over the workers
        st, _, body = s.request(path=f"/w/{i}")
        assert st == 200
    st = echo.stats()
    assert st["requests"] == n
    # each worker keeps its own pooled upstream connection: two workers served -> two
    assert st["connections"] == 2, st
    assert requests_total(s) == n
    # /clusters sums the workers' per-endpoint numbers (polled once a second)
    host = f"outbound|80||{ECHO_HOST}::127.0.0.1:{echo.port}::rq_total::"
    deadline = time.monotonic() + 4
    while True:
        text = s.admin_get("/clusters")[1].decode()
        if f"{host}{n}\n" in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f"{host}{n}\n" in text, text
    info = json.loads(s.admin_get("/server_info")[1])
    assert info["concurrency"] == 2
    # SIGTERM stops the supervisor and every worker
    assert s.stop() == 0
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids), pids


def test_concurrency_reload_reaches_every_worker(make_sidecar, echo):
    s = make_sidecar(args=["--concurrency", "2"])
    mark = len(s.log())
    s.write_config([echo_entry(echo), echo_entry(echo, host=NEW, name="new")])
    s.signal(signal.SIGHUP)
    s.wait_log("reloaded snapshot", after=mark)
    for i in range(20):
        assert s.request(host=NEW)[0] == 200
    dump = json.loads(s.admin_get("/config_dump")[1])
    assert len({w["snapshot_version"] for w in dump["workers"]}) == 1
    assert dump["workers"][0]["snapshot_version"] == dump["snapshot"]["version"]


def test_killed_worker_is_restarted(make_sidecar, echo):
    s = make_sidecar(args=["--concurrency", "2"])
    dump = json.loads(s.admin_get("/config_dump")[1])
    old = [w["pid"] for w in dump["workers"]]
    os.kill(old[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    new = old
    while time.monotonic() < deadline:
        new = [w["pid"] for w in json.loads(s.admin_get("/config_dump")[1])["workers"]]
        if old[0] not in new and all(new):
            break
        time.sleep(0.1)
    assert old[0] not in new and old[1] in new, (old, new)
    s.wait_log(f"worker 0 (pid {old[0]}) exited")
    time.sleep(0.5)  # the new worker applies the snapshot and binds
    for i in range(20):
        assert s.request(path=f"/after-kill/{i}")[0] == 200


def test_reload_moves_outbound_port(sidecar, echo):
    from harness import free_port
    old_port = sidecar.outbound
    assert sidecar.request()[0] == 200
    sidecar.outbound = free_port()
    mark = len(sidecar.log())
    sidecar.write_config([echo_entry(echo)])
    sidecar.signal(signal.SIGHUP)
    sidecar.wait_log("reloaded snapshot", after=mark)
    assert sidecar.request()[0] == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", old_port), timeout=2).close()


def test_reload_to_busy_port_keeps_old_listener(sidecar, echo):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        old_port = sidecar.outbound
        sidecar.outbound = busy.getsockname()[1]
        mark = len(sidecar.log())
        sidecar.write_config([echo_entry(echo), echo_entry(echo, host=NEW, name="new")])
        sidecar.signal(signal.SIGHUP)
        sidecar.wait_log("reload rejected", after=mark)
        sidecar.outbound = old_port
        assert sidecar.request()[0] == 200
        assert sidecar.request(host=NEW)[0] == 404  # nothing of the rejected config applied
    finally:
        busy.close()


def test_ready_is_503_while_draining_and_quitquitquit(make_sidecar, echo):
    s = make_sidecar(boot={"drainDuration": "2s"})
    c = RawConn("127.0.0.1", s.outbound, timeout=10)
    c.send(b"GET /delay/1.0 HTTP/1.1\r\nHost: echo\r\n\r\n")
    deadline = time.monotonic() + 5
    while echo.stats()["heads"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    conn = http.client.HTTPConnection("127.0.0.1", s.admin, timeout=5)
    conn.request("POST", "/quitquitquit")
    assert conn.getresponse().status == 200
    conn.close()
    time.sleep(0.2)
    assert s.admin_get("/ready")[0] == 503
    assert c.read_response()[0] == 200
    c.close()
    assert s.proc.wait(5) == 0


def test_concurrency_sigterm_drains_in_flight(make_sidecar, echo):
    s = make_sidecar(args=["--concurrency", "2"], boot={"drainDuration": "3s"})
    out = {}

    def slow():
        c = RawConn("127.0.0.1", s.outbound, timeout=10)
        c.send(b"GET /delay/1.0 HTTP/1.1\r\nHost: echo\r\n\r\n")
        out["resp"] = c.read_response()
        c.close()

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 5
    while echo.stats()["heads"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    t.join(10)
    assert out["resp"][0] == 200
    assert s.proc.wait(10) == 0
    assert time.monotonic() - t0 < 3.5


# -- 10. lifecycle: /drain_listeners, exit on zero connections, /healthcheck/fail, wait-ready ----

def _post(s, path):
    conn = http.client.HTTPConnection("127.0.0.1", s.admin, timeout=5)
    try:
        conn.request("POST", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _in_flight(echo, s, path=b"/delay/1.0", n=1):
    """``n`` connections with a slow request each, once the backend has seen them all."""
    before = echo.stats()["heads"]
    conns = []
    for _ in range(n):
        c = RawConn("127.0.0.1", s.outbound, timeout=10)
        c.send(b"GET " + path + b" HTTP/1.1\r\nHost: echo\r\n\r\n")
        conns.append(c)
    deadline = time.monotonic() + 5
    while echo.stats()["heads"] < before + n and time.monotonic() < deadline:
        time.sleep(0.02)
    return conns


def test_drain_listeners_stops_accepting_and_keeps_running(make_sidecar, echo):
    s = make_sidecar()
    assert s.request()[0] == 200
    [c] = _in_flight(echo, s)
    assert _post(s, "/drain_listeners")[0] == 200
    time.sleep(0.2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.outbound), timeout=2).close()
    assert s.admin_get("/ready")[0] == 503
    assert s.admin_get("/healthz/ready", port=s.status)[0] == 503
    st, headers, body, _ = c.read_response()
    assert st == 200 and ("connection", "close") in [(k.lower(), v) for k, v in headers]
    c.close()
    time.sleep(0.5)
    # without exitOnZeroActiveConnections the process keeps running (admin answers) until SIGTERM
    assert s.proc.poll() is None
    assert json.loads(s.admin_get("/server_info")[1])["state"] == "DRAINING"


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_exit_on_zero_active_connections(make_sidecar, echo, monkeypatch, concurrency, impl):
    if concurrency == "2" and impl == "py":
        pytest.skip("the two-worker run is enough on one build")
    if concurrency == "1":
        monkeypatch.setenv("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "true")  # Istio's variable
        s = make_sidecar(boot={"drainDuration": "10s"})
    else:
        s = make_sidecar(args=["--concurrency", "2"],
                         boot={"drainDuration": "10s", "exitOnZeroActiveConnections": True})
    conns = _in_flight(echo, s, b"/delay/1.0", n=2)
    assert _post(s, "/drain_listeners")[0] == 200
    time.sleep(0.3)
    assert s.proc.poll() is None  # two requests are still in flight
    for c in conns:
        assert c.read_response()[0] == 200
        t_last = time.monotonic()
        c.close()
    rc = s.proc.wait(5)
    assert rc == 0
    assert time.monotonic() - t_last < 1.5, "did not exit as soon as the last connection closed"
    s.wait_log("no active connection left")


def test_healthcheck_fail_and_ok(make_sidecar, echo):
    s = make_sidecar()
    assert _post(s, "/healthcheck/fail") == (200, b"OK\n")
    assert s.admin_get("/ready") == (503, b"HEALTHCHECK_FAILED\n")
    assert s.admin_get("/healthz/ready", port=s.status)[0] == 503
    assert s.request()[0] == 200  # traffic is still served
    assert _post(s, "/healthcheck/ok") == (200, b"OK\n")
    assert s.admin_get("/ready") == (200, b"LIVE\n")
    assert s.admin_get("/healthz/ready", port=s.status)[0] == 200


def _wait_ready(*args):
    from harness import PY, ROOT, clean_env
    return subprocess.Popen([PY, "-m", "meshproxy", "wait-ready"] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                            cwd=str(ROOT), text=True)


def test_wait_ready_blocks_until_the_sidecar_serves(make_sidecar, echo):
    s = make_sidecar(start=False)
    url = f"http://127.0.0.1:{s.status}/healthz/ready"
    w = _wait_ready("--timeout", "15", "--url", url)
    time.sleep(1.0)
    assert w.poll() is None  # nothing listens yet
    s.start(wait=False)
    out, err = w.communicate(timeout=20)
    assert w.returncode == 0, err
    # ready means serving: the listener is bound and the snapshot applied
    assert s.request()[0] == 200
    s.wait_ready()


def test_wait_ready_times_out(tmp_path):
    from harness import free_port
    t0 = time.monotonic()
    w = _wait_ready("--timeout", "1", "--url", f"http://127.0.0.1:{free_port()}/healthz/ready")
    out, err = w.communicate(timeout=15)
    assert w.returncode == 1 and "not ready after 1s" in err
    assert time.monotonic() - t0 < 10
    w = _wait_ready("--url", "ftp://x/")
    assert w.wait(15) == 2
