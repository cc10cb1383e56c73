"""Edge cases of the engine: bodiless responses, close-delimited bodies, stale pooled
connections, early responses, pipelining after local replies, half-closed clients."""
import json
import os
import socket
import time

import pytest
from harness import ECHO_HOST, RawConn, echo_entry, free_port, hdr, service_entry

DEAD = "dead.default.svc.cluster.local"


@pytest.fixture
def s2(make_sidecar, echo):
    """A sidecar with the echo service and a service whose only endpoint is down."""
    return make_sidecar([echo_entry(echo), service_entry("dead", DEAD,
                                                        [("127.0.0.1", free_port())])])


def test_head_then_get_on_one_connection(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"HEAD /h HTTP/1.1\r\nHost: echo\r\n\r\n")
    st, headers, body, _ = c.read_response(method="HEAD")
    assert st == 200 and hdr(headers, "content-length") == ["12345"] and body == b""
    c.send(b"GET /after-head HTTP/1.1\r\nHost: echo\r\n\r\n")
    st, _, body, _ = c.read_response()
    assert st == 200 and json.loads(body)["target"] == "/after-head"
    c.close()
    assert echo.stats()["connections"] == 1


@pytest.mark.parametrize("code", [204, 304])
def test_bodiless_status_then_next_request(sidecar, echo, code):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /status/%d HTTP/1.1\r\nHost: echo\r\n\r\n" % code)
    st, _, body, _ = c.read_response()
    assert st == code and body == b""
    c.send(b"GET /next HTTP/1.1\r\nHost: echo\r\n\r\n")
    assert json.loads(c.read_response()[2])["target"] == "/next"
    c.close()


def test_close_delimited_upstream_response(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /http10 HTTP/1.1\r\nHost: echo\r\n\r\n")
    st, headers, body, head = c.read_response()
    assert st == 200
    assert body == b"old-style body delimited by close"
    # the client cannot know the end otherwise: the sidecar says close and closes
    assert [v.lower() for v in hdr(headers, "connection")] == ["close"]
    c.close()


def test_stale_pooled_connection_is_retried(sidecar, echo):
    for i in range(5):
        # the backend closes its side just after each response: the pooled connection goes
        # stale; the next request must not fail because of it
        st, _, body = sidecar.request(path="/close-after")
        assert st == 200 and body == b"bye", (i, st, body)
        time.sleep(0.1)
    c = RawConn("127.0.0.1", sidecar.outbound)
    for i in range(3):
        c.send(b"GET /close-after HTTP/1.1\r\nHost: echo\r\n\r\n")
        st, _, body, _ = c.read_response()
        assert st == 200, (i, body)
        c.send(b"GET /x HTTP/1.1\r\nHost: echo\r\n\r\n")
        st, _, body, _ = c.read_response()
        assert st == 200, (i, body)
    c.close()


def test_early_response_before_body(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"POST /early HTTP/1.1\r\nHost: echo\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
    st, headers, body, _ = c.read_response()
    assert st == 413 and body == b"too big"
    assert [v.lower() for v in hdr(headers, "connection")] == ["close"]
    try:
        c.send(b"b" * 1000)
    except OSError:
        pass
    assert c.is_closed()
    c.close()
    assert sidecar.request()[0] == 200


def test_upstream_response_with_cl_and_te_is_502(sidecar, echo):
    st, _, body = sidecar.request(path="/bad-framing")
    assert st == 502
    assert sidecar.request()[0] == 200


def test_bad_chunk_in_response_cuts_the_client(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /bad-chunks HTTP/1.1\r\nHost: echo\r\n\r\n")
    out = c.read_all()
    c.close()
    # the head may have been sent already; the client must never see a complete body
    assert not out.endswith(b"0\r\n\r\n"), out
    assert sidecar.request()[0] == 200


def test_pipelined_after_local_replies(s2, echo):
    c = RawConn("127.0.0.1", s2.outbound)
    c.send(b"GET /1 HTTP/1.1\r\nHost: nope.example\r\n\r\n"
           b"GET /2 HTTP/1.1\r\nHost: " + DEAD.encode() + b"\r\n\r\n"
           b"GET /3 HTTP/1.1\r\nHost: echo\r\n\r\n"
           b"GET /4 HTTP/1.1\r\nHost: nope.example\r\n\r\n"
           b"GET /5 HTTP/1.1\r\nHost: echo\r\n\r\n")
    got = []
    for _ in range(5):
        st, _, body, _ = c.read_response()
        got.append(st)
    assert got == [404, 503, 200, 404, 200]
    c.close()
    assert echo.stats()["targets"] == ["/3", "/5"]


def test_body_to_dead_endpoint(s2, echo):
    c = RawConn("127.0.0.1", s2.outbound)
    c.send(b"POST / HTTP/1.1\r\nHost: " + DEAD.encode() + b"\r\nContent-Length: 200000\r\n\r\n")
    try:
        c.send(os.urandom(200000))
    except OSError:
        pass
    st, headers, body, _ = c.read_response()
    assert st == 503
    c.close()
    assert s2.request()[0] == 200


def test_first_request_with_large_body_on_new_upstream(sidecar, echo):
    data = os.urandom(5 << 20)
    st, _, body = sidecar.request("POST", "/fresh", body=data)
    assert st == 200 and json.loads(body)["body_len"] == len(data)


def test_pipelined_bodies_while_response_pending(sidecar, echo):
    n = 4
    body = b"p" * 300_000
    req = b"".join(b"POST /pb/%d HTTP/1.1\r\nHost: echo\r\nContent-Length: %d\r\n\r\n" % (i, len(body))
                   + body for i in range(n))
    c = RawConn("127.0.0.1", sidecar.outbound, timeout=10)
    import threading
    t = threading.Thread(target=c.send, args=(req,))
    t.start()
    for i in range(n):
        st, _, rb, _ = c.read_response()
        d = json.loads(rb)
        assert st == 200 and d["target"] == f"/pb/{i}" and d["body_len"] == len(body)
    t.join()
    c.close()


def test_half_closed_client_gets_its_response(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /delay/0.2 HTTP/1.1\r\nHost: echo\r\n\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    st, headers, body, _ = c.read_response()
    assert st == 200 and json.loads(body)["target"] == "/delay/0.2"
    assert c.is_closed()
    c.close()


def test_client_disconnects_mid_request(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /delay/0.3 HTTP/1.1\r\nHost: echo\r\n\r\n")
    time.sleep(0.1)
    c.close()
    time.sleep(0.4)
    assert sidecar.request()[0] == 200


def test_upgrade_refused_by_upstream_is_a_normal_response(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /not-ws HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    st, _, body, _ = c.read_response()
    assert st == 200 and json.loads(body)["target"] == "/not-ws"
    c.send(b"GET /after HTTP/1.1\r\nHost: echo\r\n\r\n")
    st, _, body, _ = c.read_response()
    assert st == 200 and json.loads(body)["target"] == "/after"
    c.close()


def test_chunked_request_empty_and_zero_length(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"POST /e HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
           b"POST /z HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\n\r\n")
    d1 = json.loads(c.read_response()[2])
    d2 = json.loads(c.read_response()[2])
    assert (d1["target"], d1["raw_body"]) == ("/e", "0\r\n\r\n")
    assert (d2["target"], d2["body_len"]) == ("/z", 0)
    c.close()


def test_chunked_upload_with_expect_continue(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"POST /ce HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n"
           b"Expect: 100-continue\r\n\r\n")
    assert c.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 100")
    c.send(b"3\r\nabc\r\n0\r\n\r\n")
    d = json.loads(c.read_response()[2])
    assert d["body"] == "abc"
    c.close()


def test_upstream_connection_close_keeps_client_alive(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    for i in range(3):
        c.send(b"GET /resp-close HTTP/1.1\r\nHost: echo\r\n\r\n")
        st, headers, body, _ = c.read_response()
        assert st == 200 and body == b"closing"
        # Connection is hop-by-hop: the upstream's close is not the client's
        assert not hdr(headers, "connection"), headers
    c.send(b"GET /last HTTP/1.1\r\nHost: echo\r\n\r\n")
    assert json.loads(c.read_response()[2])["target"] == "/last"
    c.close()
    assert echo.stats()["connections"] == 4


def test_pipelined_after_connection_close_not_forwarded(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /a HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n"
           b"GET /b HTTP/1.1\r\nHost: echo\r\n\r\n")
    st, _, body, _ = c.read_response()
    assert st == 200 and json.loads(body)["target"] == "/a"
    assert c.read_all() == b""
    c.close()
    assert echo.stats()["targets"] == ["/a"]


def test_several_forwarded_for_headers_joined(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET / HTTP/1.1\r\nHost: echo\r\nX-Forwarded-For: 1.1.1.1\r\n"
           b"X-Forwarded-For: 2.2.2.2, 3.3.3.3\r\nX-Forwarded-Proto: https\r\n\r\n")
    d = json.loads(c.read_response()[2])
    c.close()
    xff = [v for k, v in d["headers"] if k.lower() == "x-forwarded-for"]
    assert xff == ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]
    assert [v for k, v in d["headers"] if k.lower() == "x-forwarded-proto"] == ["http"]


def _cx_active(s):
    st, body = s.admin_get("/stats")
    n = {}
    for line in body.decode().splitlines():
        name, _, v = line.rpartition(": ")
        for k in ("downstream_cx_active", "upstream_rq_active"):
            if name.endswith("." + k):
                n[k] = n.get(k, 0) + int(v)
    return n


def test_half_close_mid_body_resets_the_request(sidecar, echo):
    """A client that shuts its side before the body is complete can never finish the request:
    the sidecar must reset it, not leave the client, itself and the upstream waiting."""
    c = RawConn("127.0.0.1", sidecar.outbound, timeout=3)
    c.send(b"POST /hc HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\n12345")
    c.sock.shutdown(socket.SHUT_WR)
    out = c.read_all()  # a timeout here is the bug
    c.close()
    assert out == b"" or out.startswith(b"HTTP/1.1 4"), out
    deadline = time.monotonic() + 2
    while _cx_active(sidecar) != {"downstream_cx_active": 0, "upstream_rq_active": 0}:
        assert time.monotonic() < deadline, _cx_active(sidecar)
        time.sleep(0.05)
    assert echo.stats()["requests"] == 0


def test_no_1xx_to_http10_client(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"POST /e10 HTTP/1.0\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    time.sleep(0.2)
    c.send(b"hello")
    out = c.read_all()
    c.close()
    # RFC 9110 15.2: a server must not send a 1xx response to an HTTP/1.0 client
    assert out.startswith(b"HTTP/1.1 200 "), out[:80]
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["body"] == "hello"


def test_request_on_dead_pooled_connection_is_retried_once(sidecar, echo):
    """The pooled upstream connection is closed by the server when the request arrives (no
    response byte): a GET is retried once on a new connection; the client sees 200."""
    c = RawConn("127.0.0.1", sidecar.outbound)
    for i in range(3):
        c.send(b"GET /flaky-reuse HTTP/1.1\r\nHost: echo\r\n\r\n")
        st, _, body, _ = c.read_response()
        assert st == 200, (i, body)
        assert json.loads(body)["nreq"] == 1
    c.close()
    st = echo.stats()
    assert st["heads"] == 5 and st["connections"] == 3, st  # two retries on new connections
