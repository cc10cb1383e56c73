"""Proxying through the outbound listener: headers, keep-alive, pipelining, framing, upgrades."""
import base64
import json
import os
import re
import socket
import struct
import time
import uuid

import pytest
from harness import ECHO_HOST, RawConn, curl, hdr

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _h(doc, name):
    return [v for k, v in doc["headers"] if k.lower() == name.lower()]


# -- 1. basics ------------------------------------------------------------------------------------

def test_get_and_post(sidecar, echo):
    d = sidecar.get_json("/hello?x=1")
    assert d["method"] == "GET" and d["target"] == "/hello?x=1"
    assert _h(d, "host") == [ECHO_HOST]
    st, h, body = sidecar.request("POST", "/submit", body=b"payload-123",
                                  headers={"Content-Type": "text/plain"})
    assert st == 200
    d = json.loads(body)
    assert d["method"] == "POST" and d["body"] == "payload-123" and d["body_len"] == 11
    assert h["x-backend"] == "yes"
    assert echo.stats()["requests"] == 2


def test_short_host_names(sidecar, echo):
    for host in ("echo", "echo.default", "echo.default.svc", ECHO_HOST + ":80", "ECHO.Default"):
        st, _, _ = sidecar.request(host=host)
        assert st == 200, host


def test_curl_get_post(sidecar, echo, tmp_path):
    r = curl("-H", f"Host: {ECHO_HOST}", f"http://127.0.0.1:{sidecar.outbound}/curl")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target"] == "/curl"
    r = curl("-H", f"Host: {ECHO_HOST}", "--data-binary", "a=1&b=2",
             f"http://127.0.0.1:{sidecar.outbound}/form")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["method"] == "POST" and d["body"] == "a=1&b=2"


def test_absolute_form_as_http_proxy(sidecar, echo):
    r = curl("-x", f"http://127.0.0.1:{sidecar.outbound}", f"http://{ECHO_HOST}/x?y=2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["target"] == "/x?y=2"  # origin-form upstream
    # http_proxy in the environment, as an app would use the sidecar
    import subprocess
    from harness import clean_env
    env = clean_env(http_proxy=f"http://127.0.0.1:{sidecar.outbound}")
    r = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://{ECHO_HOST}/env"],
                       capture_output=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target"] == "/env"


def test_header_case_hop_by_hop_and_forwarded(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /h HTTP/1.1\r\nHost: " + ECHO_HOST.encode() + b"\r\n"
           b"X-MiXeD-CaSe: Value\r\n"
           b"Connection: keep-alive, X-Drop-Me\r\n"
           b"X-Drop-Me: secret\r\n"
           b"Keep-Alive: timeout=5\r\n"
           b"Proxy-Connection: keep-alive\r\n"
           b"TE: trailers\r\n"
           b"X-Forwarded-For: 10.1.2.3\r\n"
           b"\r\n")
    st, headers, body, _ = c.read_response()
    c.close()
    assert st == 200
    d = json.loads(body)
    names = [k for k, _ in d["headers"]]
    assert "X-MiXeD-CaSe" in names
    for hop in ("connection", "x-drop-me", "keep-alive", "proxy-connection", "te"):
        assert not _h(d, hop), (hop, d["headers"])
    assert _h(d, "x-forwarded-for") == ["10.1.2.3, 127.0.0.1"]
    assert _h(d, "x-forwarded-proto") == ["http"]


def test_forwarded_for_added(sidecar, echo):
    d = sidecar.get_json("/")
    assert _h(d, "x-forwarded-for") == ["127.0.0.1"]
    assert _h(d, "x-forwarded-proto") == ["http"]


def test_request_id(sidecar, echo):
    d = sidecar.get_json("/")
    rid = _h(d, "x-request-id")
    assert len(rid) == 1 and UUID4.match(rid[0]), rid
    d2 = sidecar.get_json("/")
    assert _h(d2, "x-request-id") != rid
    mine = str(uuid.uuid4())
    d = sidecar.get_json("/", headers={"X-Request-Id": mine})
    assert _h(d, "x-request-id") == [mine]


# -- 2. connections -------------------------------------------------------------------------------

def test_keep_alive_reuses_one_upstream_connection(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    conns = set()
    for i in range(10):
        c.send(b"GET /ka/%d HTTP/1.1\r\nHost: echo\r\n\r\n" % i)
        st, _, body, _ = c.read_response()
        assert st == 200
        d = json.loads(body)
        assert d["target"] == f"/ka/{i}"
        conns.add(d["conn"])
    c.close()
    s = echo.stats()
    assert s["requests"] == 10
    assert s["connections"] == 1 and len(conns) == 1


def test_pipelining_in_order(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"".join(b"GET /p/%d HTTP/1.1\r\nHost: echo\r\n\r\n" % i for i in range(3))
           + b"POST /p/3 HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\n\r\nabc")
    for i in range(4):
        st, _, body, _ = c.read_response()
        assert st == 200
        d = json.loads(body)
        assert d["target"] == f"/p/{i}"
    assert d["body"] == "abc"
    c.close()
    assert echo.stats()["requests"] == 4


def test_http10_without_keep_alive(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /old HTTP/1.0\r\nHost: echo\r\n\r\n")
    st, headers, body, head = c.read_response()
    assert st == 200 and json.loads(body)["target"] == "/old"
    assert c.is_closed(), "HTTP/1.0 without keep-alive must close"
    c.close()


def test_http10_keep_alive(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    for i in range(3):
        c.send(b"GET /old/%d HTTP/1.0\r\nHost: echo\r\nConnection: keep-alive\r\n\r\n" % i)
        st, headers, body, head = c.read_response()
        assert st == 200 and json.loads(body)["target"] == f"/old/{i}"
        assert [v.lower() for v in hdr(headers, "connection")] == ["keep-alive"]
    assert not c.is_closed(0.3)
    c.close()
    assert echo.stats()["connections"] == 1


def test_http10_no_host_header(sidecar, echo):
    # No Host: no virtual host matches -> 404 NR, not a crash
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    st, _, _, _ = c.read_response()
    assert st == 404
    c.close()


def test_connection_close_honoured(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /c HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
    st, headers, body, _ = c.read_response()
    assert st == 200
    assert [v.lower() for v in hdr(headers, "connection")] == ["close"]
    assert c.is_closed()
    c.close()


# -- 3. framing -----------------------------------------------------------------------------------

def test_chunked_request_byte_exact(sidecar, echo):
    body = b"4\r\nWiki\r\n5;name=val\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n"
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"POST /chunks HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n")
    c.send(body[:7])
    c.send(body[7:])
    st, _, rbody, _ = c.read_response()
    d = json.loads(rbody)
    assert st == 200
    assert d["raw_body"].encode("latin-1") == body
    assert d["body"] == "Wikipedia in\r\n\r\nchunks."
    # the connection is still usable after the chunked body
    c.send(b"GET /after HTTP/1.1\r\nHost: echo\r\n\r\n")
    assert json.loads(c.read_response()[2])["target"] == "/after"
    c.close()


def test_chunked_response_with_trailers_byte_exact(sidecar, echo):
    from backend import CHUNKED_BODY
    c = RawConn("127.0.0.1", sidecar.outbound)
    for _ in range(2):
        c.send(b"GET /chunked HTTP/1.1\r\nHost: echo\r\n\r\n")
        st, headers, body, _ = c.read_response()
        assert st == 200
        assert hdr(headers, "transfer-encoding") == ["chunked"]
        assert body == CHUNKED_BODY
    c.close()


def test_curl_chunked_trailers(sidecar, echo):
    r = curl("--raw", "-H", "Host: echo", f"http://127.0.0.1:{sidecar.outbound}/chunked")
    assert r.returncode == 0, r.stderr
    from backend import CHUNKED_BODY
    assert r.stdout == CHUNKED_BODY


def test_expect_100_continue_curl(sidecar, echo, tmp_path):
    f = tmp_path / "upload.bin"
    data = os.urandom(200_000)
    f.write_bytes(data)
    r = curl("-v", "-H", "Host: echo", "-H", "Expect: 100-continue", "--data-binary", f"@{f}",
             f"http://127.0.0.1:{sidecar.outbound}/upload")
    assert r.returncode == 0, r.stderr
    assert b"HTTP/1.1 100 Continue" in r.stderr
    d = json.loads(r.stdout)
    assert d["body_len"] == len(data)


def test_expect_100_continue_raw(sidecar, echo):
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"PUT /e HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    head = c.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 100 Continue\r\n"), head
    c.send(b"hello")
    st, _, body, _ = c.read_response()
    assert st == 200 and json.loads(body)["body"] == "hello"
    c.close()


def _ws_frame(opcode, payload, mask=True):
    b0 = 0x80 | opcode
    n = len(payload)
    if n < 126:
        hdr_ = bytes([b0, (0x80 if mask else 0) | n])
    elif n < 65536:
        hdr_ = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack(">H", n)
    else:
        hdr_ = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack(">Q", n)
    if not mask:
        return hdr_ + payload
    key = os.urandom(4)
    return hdr_ + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _ws_read(c):
    b0, b1 = c.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", c.read_exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", c.read_exact(8))[0]
    assert not b1 & 0x80, "server frames are not masked"
    return b0 & 0x0F, c.read_exact(n)


def test_websocket_echo(sidecar, echo):
    key = base64.b64encode(os.urandom(16))
    c = RawConn("127.0.0.1", sidecar.outbound)
    c.send(b"GET /ws HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    st, headers, _, _ = c.read_response()
    assert st == 101
    assert [v.lower() for v in hdr(headers, "upgrade")] == ["websocket"]
    import hashlib
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert hdr(headers, "sec-websocket-accept") == [acc.decode()]
    msgs = [(0x1, b"hello"), (0x2, os.urandom(300)), (0x1, b"x" * 70000), (0x9, b"ping")]
    # several frames in one write, then one by one
    c.send(b"".join(_ws_frame(op, p) for op, p in msgs[:2]))
    for op, p in msgs[:2]:
        assert _ws_read(c) == (op, p)
    for op, p in msgs[2:]:
        c.send(_ws_frame(op, p))
        rop, rp = _ws_read(c)
        assert rp == p and rop == (0xA if op == 0x9 else op)
    c.send(_ws_frame(0x8, b"\x03\xe8bye"))
    assert _ws_read(c) == (0x8, b"\x03\xe8bye")
    assert c.is_closed(), "close frame echoed, then both sides close"
    c.close()
    assert echo.stats()["requests"] == 1
    # the finished tunnel must not leave connections open in the sidecar
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        active = _cx_active(sidecar)
        if active == {"downstream": 0, "upstream": 0}:
            break
        time.sleep(0.05)
    assert active == {"downstream": 0, "upstream": 0}, active


def _cx_active(s):
    st, body = s.admin_get("/stats")
    out = {}
    for line in body.decode().splitlines():
        name, _, v = line.rpartition(": ")
        if name.endswith(".downstream_cx_active"):
            out["downstream"] = out.get("downstream", 0) + int(v)
        elif name.endswith(".upstream_cx_active"):
            out["upstream"] = out.get("upstream", 0) + int(v)
    return out


def test_websocket_frames_sent_with_the_upgrade_request(sidecar, echo):
    """A client that does not wait for the 101: its first frames arrive with the request head
    and must reach the app after the switch, in order."""
    c = RawConn("127.0.0.1", sidecar.outbound)
    frames = [(0x1, b"early-1"), (0x1, b"early-2")]
    c.send(b"GET /ws HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
           + b"".join(_ws_frame(op, p) for op, p in frames))
    st, _, _, _ = c.read_response()
    assert st == 101
    for op, p in frames:
        assert _ws_read(c) == (op, p)
    c.send(_ws_frame(0x8, b""))
    assert _ws_read(c) == (0x8, b"")
    c.close()
