"""Request smuggling vectors, sent raw: each is refused and closed; the backend sees nothing."""
import time

import pytest
from harness import RawConn, echo_entry

H = b"Host: echo\r\n"

# (id, bytes, expected status)
VECTORS = [
    ("cl-and-te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Content-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("two-cls", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n"
     b"abcde", 400),
    ("cl-list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 4, 5\r\n\r\nabcde", 400),
    ("te-not-last-chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n"
     b"\r\n0\r\n\r\n", 501),
    ("te-identity", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", 501),
    ("te-unknown", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
     501),
    ("te-chunked-twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-http10", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400),
    ("space-before-colon", b"POST / HTTP/1.1\r\n" + H + b"Content-Length : 5\r\n\r\nabcde", 400),
    ("tab-before-colon", b"GET / HTTP/1.1\r\n" + H + b"Transfer-Encoding\t: chunked\r\n\r\n",
     400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n  folded\r\n\r\n", 400),
    ("obs-fold-te", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\rX-B: 2\r\n\r\n", 400),
    ("bare-lf", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\nX-B: 2\r\n\r\n", 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("ctl-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    ("negative-cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    ("non-numeric-cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x10\r\n\r\n", 400),
    ("plus-cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nabcde", 400),
    ("huge-cl", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1" + b"0" * 19 + b"\r\n\r\n",
     400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: echo\r\nHost: other\r\n\r\n", 400),
    ("no-host-11", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("oversized-head", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * (61 * 1024) + b"\r\n\r\n",
     431),
    ("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i
                                                              for i in range(101)) + b"\r\n",
     431),
    ("oversized-request-line", b"GET /" + b"a" * 16384 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
]


def _assert_refused(s, data, status, backend):
    c = RawConn("127.0.0.1", s.outbound)
    try:
        c.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before we finished sending (the limits): still must have a status
    out = c.read_all()
    c.close()
    assert out.startswith(b"HTTP/1.1 %d " % status), out[:200]
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\nconnection: close" in head, head
    st = backend.stats()
    assert st["connections"] == 0 and st["heads"] == 0 and st["bytes"] == 0, st


@pytest.mark.parametrize("vid,data,status", VECTORS, ids=[v[0] for v in VECTORS])
def test_smuggling_vector_refused(shared_sidecar, echo, vid, data, status):
    sidecar = shared_sidecar
    _assert_refused(sidecar, data, status, echo)
    # and the sidecar goes on serving
    assert sidecar.request()[0] == 200


def test_smuggling_vectors_after_good_request_on_same_connection(sidecar, echo):
    """A bad request pipelined after a good one: the good one is answered, the bad one is not
    forwarded."""
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /good HTTP/1.1\r\nHost: echo\r\n\r\n"
           b"POST /evil HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    st, _, _, _ = c.read_response()
    assert st == 200
    rest = c.read_all()
    c.close()
    assert rest.startswith(b"HTTP/1.1 400 "), rest
    s = echo.stats()
    assert s["targets"] == ["/good"], s


@pytest.mark.parametrize("bad_chunk", [b"zz\r\n", b"-1\r\n", b" 5\r\nhello\r\n",
                                       b"5 \r\nhello\r\n", b"5\nhello\r\n",
                                       b"5\r\nhelloXX", b"11111111111111111\r\n"],
                         ids=["non-hex", "negative", "lead-space", "trail-space", "bare-lf",
                              "no-crlf-after-data", "too-long"])
def test_bad_chunk_size_not_forwarded(shared_sidecar, echo, bad_chunk):
    """Head and bad chunk in one segment: 400, and the backend sees nothing at all (not even the
    head), although a pooled upstream connection is ready to take it at once."""
    sidecar = shared_sidecar
    assert sidecar.request()[0] == 200  # warm the upstream pool
    echo.reset()
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"POST /chunky HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n"
           + bad_chunk + b"0\r\n\r\n")
    out = c.read_all()
    c.close()
    assert out.startswith(b"HTTP/1.1 400 "), out
    time.sleep(0.05)
    st = echo.stats()
    assert st["connections"] == 0 and st["heads"] == 0 and st["bytes"] == 0, st
    assert sidecar.request()[0] == 200


def test_bad_chunk_after_head_is_reset(shared_sidecar, echo):
    """A bad chunk that comes after the head was forwarded (a later segment): the request is
    reset and the backend never gets a complete request."""
    sidecar = shared_sidecar
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"POST /chunky HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n")
    time.sleep(0.2)
    c.send(b"zz\r\n")
    out = c.read_all()
    c.close()
    assert out == b"" or out.startswith(b"HTTP/1.1 400 "), out
    assert echo.stats()["requests"] == 0
    assert sidecar.request()[0] == 200


def test_configurable_limits(make_sidecar, echo, impl):
    s = make_sidecar([echo_entry(echo)],
                     boot={"limits": {"maxRequestHeadersKb": 2, "maxRequestLine": 100,
                                      "maxHeaders": 5}})
    # within the limits
    c = RawConn("127.0.0.1", s.outbound)
    c.send(b"GET /" + b"a" * 80 + b" HTTP/1.1\r\n" + H
           + b"".join(b"X-%d: 1\r\n" % i for i in range(4)) + b"\r\n")
    assert c.read_response()[0] == 200
    c.close()
    echo.reset()
    _assert_refused(s, b"GET /" + b"a" * 101 + b" HTTP/1.1\r\n" + H + b"\r\n", 414, echo)
    _assert_refused(s, b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * 2100 + b"\r\n\r\n", 431,
                    echo)
    _assert_refused(s, b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(5))
                    + b"\r\n", 431, echo)
