"""Real faults between a real sidecar (both builds) and real backends (issue 9).

Every endpoint of the services below is a fault-injecting TCP proxy (faultproxy.py) on its own
127.0.0.13x address, forwarding to a routing backend on 127.0.0.12x, or a misbehaving backend
itself. The sidecar writes a JSON access log, where each request (its own path) shows its flags.

* cut (FIN on the request, or on accept) and reset (RST on the request): retried on the other
  endpoint, every request 200; without retries, 503 ``UC``.
* stall: the route timeout answers 504 ``UT`` within 50 ms of it; with ``perTryTimeout`` the
  stalled attempt is abandoned and retried on the good endpoint.
* drip (1 byte every 20 ms): a response that completes within the route timeout arrives whole;
  one that would not is cut at the timeout (``UT``), within 50 ms.
* reset after the response head: the client gets the head, the body is cut (``UC``); the
  sidecar serves the next request normally.
* misbehaving backends: one that never answers (504 ``UT``), one that answers 503 (retried
  elsewhere), two that do (the 503 after exactly three attempts, ``URX``).

Timing tolerances are test_resilience.py's: a deadline fires within 50 ms after its setting and
never more than 1 ms before (libuv counts whole milliseconds); the client's clock starts a little
before the sidecar's, so it only adds to what is measured.
"""
import http.client
import json
import re
import selectors
import socket
import subprocess
import threading
import time

import pytest

from faultproxy import FaultProxy
from harness import clean_env, doc, service_entry
from routing_backend import RoutingBackend

NS = "default.svc.cluster.local"
LATE = 0.05  # a deadline fires within this after its setting
EARLY = 0.001  # ... and never more than this before


def fqdn(name):
    return f"{name}.{NS}"


# -- what a test starts ---------------------------------------------------------------------------

class SocketBackend:
    """A plain socket server on its own thread: accepts connections and reads them; answers
    each request head with ``answer`` (bytes), or never (``answer=None``: a hung backend)."""

    def __init__(self, host, answer=None):
        self.answer = answer
        self.sock = socket.create_server((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        bufs = {}
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.05):
                s = key.fileobj
                if s is self.sock:
                    c, _ = s.accept()
                    self.accepted += 1
                    bufs[c] = b""
                    self._sel.register(c, selectors.EVENT_READ)
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(s)
                    s.close()
                    del bufs[s]
                    continue
                bufs[s] += data
                while b"\r\n\r\n" in bufs[s]:  # (GET requests only: no body to skip)
                    _, _, bufs[s] = bufs[s].partition(b"\r\n\r\n")
                    if self.answer is not None:
                        s.sendall(self.answer)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()

    def stop(self):
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def lab():
    """Starts backends and proxies for a test; stops them all (last first) at its end."""

    class Lab:
        def __init__(self):
            self.made = []

        def backend(self, host, name, **kw):
            return self._keep(RoutingBackend(host, name, **kw))

        def socket_backend(self, host, answer=None):
            return self._keep(SocketBackend(host, answer))

        def proxy(self, to, host, mode="pass", **params):
            return self._keep(FaultProxy((to.host, to.port), host=host, mode=mode, **params))

        def _keep(self, x):
            self.made.append(x)
            return x

    lab = Lab()
    try:
        yield lab
    finally:
        for x in reversed(lab.made):
            x.stop()


def start_sidecar(make_sidecar, tmp_path, services, rr=()):
    """A sidecar with one ServiceEntry per ``services`` item, ``name: (endpoints, http)``, and
    a VirtualService of those ``http`` routes when given (``route`` filled in); ``rr``: names
    balanced ROUND_ROBIN (the first attempts alternate, so the faulty endpoint surely gets
    some)."""
    docs = []
    for name, (endpoints, routes) in services.items():
        host = fqdn(name)
        docs.append(service_entry(name, host, [(e.host, e.port) for e in endpoints]))
        if routes is not None:
            docs.append(doc("VirtualService", name, {"hosts": [host], "http": [
                dict(r, route=[{"destination": {"host": host}}]) for r in routes]}))
    for name in rr:
        docs.append(doc("DestinationRule", name, {"host": fqdn(name), "trafficPolicy": {
            "loadBalancer": {"simple": "ROUND_ROBIN"}}}))
    s = make_sidecar(docs, args=["--access-log", str(tmp_path / "access.log"),
                                 "--access-log-encoding", "JSON"])
    s.access_log = tmp_path / "access.log"
    return s


# -- what a test looks at -------------------------------------------------------------------------

def get(s, name, path, conn=None, timeout=10):
    """One GET to service ``name`` (a new connection unless ``conn``):
    (status, headers dict, body, seconds)."""
    c = conn or http.client.HTTPConnection(s.host, s.outbound, timeout=timeout)
    t0 = time.monotonic()
    try:
        c.request("GET", path, headers={"Host": fqdn(name)})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body, time.monotonic() - t0
    finally:
        if conn is None:
            c.close()


def record(s, path, timeout=5.0):
    """The access-log record of the request for ``path`` (the log is flushed once a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if s.access_log.exists():
            for line in s.access_log.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    if r["path"] == path:
                        return r
        time.sleep(0.1)
    raise AssertionError(f"no access-log record for {path}:\n"
                         + (s.access_log.read_text() if s.access_log.exists() else ""))


def retries(s, name):
    """The cluster's ``envoy_cluster_upstream_rq_retry`` counter."""
    _, body = s.admin_get("/stats/prometheus")
    m = re.search(r'^envoy_cluster_upstream_rq_retry\{cluster_name="outbound\|80\|\|%s"\} (\S+)$'
                  % re.escape(fqdn(name)), body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


def cut_read(s, name, path, timeout=10):
    """A GET whose response is expected to be cut after its head: (status, body bytes received,
    the exception that ended the read, seconds until then)."""
    c = http.client.HTTPConnection(s.host, s.outbound, timeout=timeout)
    t0 = time.monotonic()
    try:
        c.request("GET", path, headers={"Host": fqdn(name)})
        r = c.getresponse()
        try:
            body = r.read()
        except http.client.IncompleteRead as e:
            return r.status, e.partial, e, time.monotonic() - t0
        except ConnectionResetError as e:
            return r.status, b"", e, time.monotonic() - t0
        raise AssertionError(f"the response arrived whole: {r.status} {body!r}")
    finally:
        c.close()


# -- cut and reset --------------------------------------------------------------------------------

def retried_or_503_uc(make_sidecar, tmp_path, lab, faults, retry_on):
    """Service ``rt``: a faulty proxy and a good one, ``attempts: 3, retryOn: retry_on``;
    service ``nr``: the faulty proxy only, no retries. For each fault (mode, params): ten
    requests to ``rt`` are all 200 from the good backend (the faulty one never sees a request);
    one to ``nr`` is 503 UC."""
    good = lab.backend("127.0.0.120", "good")
    behind = lab.backend("127.0.0.121", "behind")
    bad = lab.proxy(behind, "127.0.0.130")
    ok = lab.proxy(good, "127.0.0.131")
    s = start_sidecar(make_sidecar, tmp_path, {
        "rt": ([bad, ok], [{"retries": {"attempts": 3, "retryOn": retry_on}}]),
        "nr": ([bad], [{"retries": {"attempts": 0}}])}, rr=["rt"])
    for i, (mode, params) in enumerate(faults):
        bad.set_mode(mode, **params)
        tried, retried = bad.accepted, retries(s, "rt")
        for j in range(10):
            status, headers, body, _ = get(s, "rt", f"/rt/{i}/{j}")
            assert (status, headers.get("x-served-by")) == (200, "good"), (mode, status, body)
        assert bad.accepted - tried >= 3, "round robin sent first attempts to the faulty proxy"
        assert retries(s, "rt") - retried == bad.accepted - tried, "one retry per fault met"
        status, _, body, _ = get(s, "nr", f"/nr/{i}")
        assert status == 503, (mode, status, body)
        assert body.endswith(b"reset reason: connection termination"), body
    assert good.stats()["count"] == 10 * len(faults)
    _, text = s.admin_get("/stats/prometheus")
    assert re.search(r'istio_requests_total\{[^}]*destination_service_name="nr"[^}]*'
                     r'response_flags="UC"[^}]*\} %d' % len(faults), text.decode())
    assert behind.stats()["count"] == 0  # nothing was ever forwarded through the faults
    for i, (mode, _) in enumerate(faults):
        r = record(s, f"/nr/{i}")
        assert (r["response_code"], r["response_flags"]) == (503, "UC"), (mode, r)
        r = record(s, f"/rt/{i}/0")
        assert (r["response_code"], r["response_flags"]) == (200, "-"), (mode, r)


def test_cut_is_retried_elsewhere_or_answered_503_uc(make_sidecar, tmp_path, lab):
    retried_or_503_uc(make_sidecar, tmp_path, lab, [("cut", {}), ("cut", {"on_accept": True})],
                      "5xx,reset,connect-failure")


def test_reset_is_retried_elsewhere_or_answered_503_uc(make_sidecar, tmp_path, lab):
    retried_or_503_uc(make_sidecar, tmp_path, lab, [("reset", {})], "reset")


# -- stall ----------------------------------------------------------------------------------------

def test_stall_times_out_504_ut_or_is_retried_after_the_per_try_timeout(make_sidecar, tmp_path,
                                                                        lab):
    good = lab.backend("127.0.0.120", "good")
    behind = lab.backend("127.0.0.121", "behind")
    stalled = lab.proxy(behind, "127.0.0.130", "stall")
    ok = lab.proxy(good, "127.0.0.131")
    s = start_sidecar(make_sidecar, tmp_path, {
        "st": ([stalled], [{"timeout": "0.5s"}]),
        "pt": ([stalled, ok], [{"timeout": "5s", "retries": {
            "attempts": 2, "perTryTimeout": "0.3s", "retryOn": "reset"}}])}, rr=["pt"])
    for i in range(2):
        status, _, body, took = get(s, "st", f"/st/{i}")
        assert (status, body) == (504, b"upstream request timeout")
        assert 0.5 - EARLY <= took < 0.5 + LATE, took
    tried = stalled.accepted
    slow = 0
    for i in range(4):
        status, headers, body, took = get(s, "pt", f"/pt/{i}")
        assert (status, headers.get("x-served-by")) == (200, "good"), (status, body)
        if took >= 0.3 - EARLY:
            slow += 1
            # the stalled try, the backoff (at most 25 ms), the good answer
            assert took < 0.3 + 0.025 + LATE, took
    print(f"{slow} of 4 retried after the stalled try; stalled {stalled.accepted - tried}")
    assert slow >= 2, "round robin sent some first attempts to the stalled endpoint"
    assert stalled.accepted - tried == slow, "each slow request is one stalled attempt"
    assert behind.stats()["count"] == 0 and good.stats()["count"] == 4
    assert record(s, "/st/0")["response_flags"] == "UT"
    assert record(s, "/pt/0")["response_code"] == 200


# -- drip -----------------------------------------------------------------------------------------

# A small answer, so that 1 byte every 20 ms takes ~2 s: the head (39 bytes) ~0.8 s, the whole
# (99 bytes) ~2 s. (A routing backend's answer, ~700 bytes through a sidecar, would take 14 s.)
DRIP_BODY = b"0123456789" * 6
DRIP_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(DRIP_BODY), DRIP_BODY)


def test_dripped_response_arrives_whole_or_is_cut_at_the_timeout(make_sidecar, tmp_path, lab):
    b = lab.socket_backend("127.0.0.122", DRIP_ANSWER)
    p = lab.proxy(b, "127.0.0.132", "drip", n=1, interval=0.02)
    s = start_sidecar(make_sidecar, tmp_path, {"dr": ([p], [
        {"match": [{"uri": {"prefix": "/slow"}}], "timeout": "1.2s"},
        {"timeout": "5s"}])})
    status, _, body, took = get(s, "dr", "/whole")
    assert (status, body) == (200, DRIP_BODY)
    assert took >= (len(DRIP_ANSWER) - 1) * 0.02 - EARLY, "the answer was dripped"
    # the head has come by ~0.8 s, the body stops at 1.2 s with ~20 of its 60 bytes
    status, partial, exc, took = cut_read(s, "dr", "/slow")
    print(f"cut after {took:.3f}s with {len(partial)} body bytes: {exc!r}")
    assert status == 200
    assert DRIP_BODY.startswith(partial) and len(partial) < len(DRIP_BODY), partial
    assert 1.2 - EARLY <= took < 1.2 + LATE, (took, exc)
    r = record(s, "/slow")
    assert (r["response_code"], r["response_flags"]) == (200, "UT"), r
    assert record(s, "/whole")["response_flags"] == "-"


# -- reset after the response head ----------------------------------------------------------------

def test_reset_after_headers_cuts_the_body_uc_and_the_next_request_is_served(make_sidecar,
                                                                             tmp_path, lab):
    good = lab.backend("127.0.0.120", "good")
    p = lab.proxy(good, "127.0.0.130", "reset_after_headers")
    s = start_sidecar(make_sidecar, tmp_path, {"ra": ([p], None)})
    status, partial, exc, _ = cut_read(s, "ra", "/cut")
    assert status == 200 and partial == b"", (status, partial, exc)
    # curl's raw view: the head (with the backend's headers), then a transfer cut short
    # (18: partial file, 56: failure receiving data)
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "-H", f"Host: {fqdn('ra')}",
                          f"http://{s.host}:{s.outbound}/curl"],
                         capture_output=True, env=clean_env(), timeout=20)
    print(f"http.client: {exc!r}; curl: exit {out.returncode}, {out.stderr!r}")
    assert out.returncode in (18, 56), out
    assert out.stdout.startswith(b"HTTP/1.1 200") and b"x-served-by: good" in out.stdout, out
    assert out.stdout.endswith(b"\r\n\r\n"), "nothing of the body"
    p.set_mode("pass")
    status, headers, body, _ = get(s, "ra", "/next")
    assert (status, headers["x-served-by"]) == (200, "good")
    assert json.loads(body)["target"] == "/next"
    for path in ("/cut", "/curl"):
        r = record(s, path)
        assert (r["response_code"], r["response_flags"]) == (200, "UC"), r
    assert record(s, "/next")["response_flags"] == "-"
    assert good.stats()["count"] == 3


# -- misbehaving backends -------------------------------------------------------------------------

def test_misbehaving_backends(make_sidecar, tmp_path, lab):
    hung = lab.socket_backend("127.0.0.125")
    good = lab.backend("127.0.0.120", "good")
    bad1 = lab.backend("127.0.0.122", "bad1", status=503)
    bad2 = lab.backend("127.0.0.123", "bad2", status=503)
    retry = {"retries": {"attempts": 2, "retryOn": "5xx"}}
    s = start_sidecar(make_sidecar, tmp_path, {
        "hang": ([hung], [{"timeout": "0.5s"}]),
        "mix": ([bad1, good], [retry]),
        "all5": ([bad1, bad2], [retry])}, rr=["mix"])
    # a backend that accepts and reads, never answers
    status, _, body, took = get(s, "hang", "/hang")
    assert (status, body) == (504, b"upstream request timeout")
    assert 0.5 - EARLY <= took < 0.5 + LATE, took
    assert hung.accepted == 1
    # one endpoint answers 503: retried on the other
    for i in range(6):
        status, headers, body, _ = get(s, "mix", f"/mix/{i}")
        assert (status, headers.get("x-served-by")) == (200, "good"), (status, body)
    assert bad1.stats()["count"] >= 2 and good.stats()["count"] == 6
    # both do: the last 503 reaches the client after three attempts
    bad1.reset()
    status, headers, body, _ = get(s, "all5", "/all5")
    assert status == 503 and headers["x-served-by"] in ("bad1", "bad2"), (status, body)
    assert bad1.stats()["count"] + bad2.stats()["count"] == 3
    assert bad1.stats()["count"] >= 1 and bad2.stats()["count"] >= 1  # retried elsewhere
    assert record(s, "/hang")["response_flags"] == "UT"
    assert record(s, "/mix/0")["response_flags"] == "-"
    r = record(s, "/all5")
    assert (r["response_code"], r["response_flags"]) == (503, "URX"), r
