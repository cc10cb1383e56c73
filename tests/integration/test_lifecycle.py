"""Reload (SIGHUP), drain (SIGTERM) and the multi-process model (--concurrency 2)."""
import http.client
import json
import os
import signal
import socket
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
    s = make_sidecar(boot={"drainDuration": "3s"})
    out = {}

    def slow():
        c = RawConn("127.0.0.1", s.outbound, timeout=10)
        c.send(b"GET /delay/1.0 HTTP/1.1\r\nHost: echo\r\n\r\n")
        out["resp"] = c.read_response()
        out["closed"] = c.is_closed()
        c.close()

    idle = RawConn("127.0.0.1", s.outbound)
    idle.send(b"GET /idle HTTP/1.1\r\nHost: echo\r\n\r\n")
    assert idle.read_response()[0] == 200
    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 5
    while echo.stats()["heads"] < 2 and time.monotonic() < deadline:
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
    t.join(10)
    st, headers, body, _ = out["resp"]
    assert st == 200 and json.loads(body)["target"] == "/delay/1.0"
    assert [v.lower() for k, v in headers if k.lower() == "connection"] == ["close"]
    assert out["closed"]
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
