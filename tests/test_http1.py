"""HTTP/1 head parsers, serializer and chunked framer: both twins, one case table, h11 as oracle.

Every case in ``http1_cases`` is checked three ways (h11's ``tr()``): whole, fed byte by byte
(``parse`` on a growing buffer until it returns > 0 or raises), and with a second message
pipelined after it.
"""
import re

import h11
import pytest

from meshproxy.errors import ProtocolError

try:
    from http1_cases import CHUNKED_CASES, DIVERGENCES, REQUEST_CASES, RESPONSE_CASES
except ImportError:  # tests/ imported as a package
    from tests.http1_cases import CHUNKED_CASES, DIVERGENCES, REQUEST_CASES, RESPONSE_CASES


SECOND_REQUEST = b"GET /second HTTP/1.1\r\nHost: second.example\r\n\r\n"
SECOND_RESPONSE = b"HTTP/1.1 204 Second\r\nX-Second: 1\r\n\r\n"


# --- drivers ------------------------------------------------------------------------------------
def _outcome(parser, call):
    try:
        n = call()
    except ProtocolError as exc:
        return ("reject", exc.status_hint)
    return ("accept", n) if n else ("incomplete", 0)


def parse_whole(parser, raw):
    return _outcome(parser, lambda: parser.parse(raw))


def parse_bytewise(parser, raw):
    buf = bytearray()
    for byte in raw:
        buf.append(byte)
        out = _outcome(parser, lambda: parser.parse(buf))
        if out[0] != "incomplete":
            return out
    return ("incomplete", 0)


def check_accepted(parser, case, n):
    assert n == len(case.raw)
    assert parser.head_length == n
    for key, want in case.expect.items():
        got = parser.headers() if key == "headers" else getattr(parser, key)
        assert got == want, key


def check_case(parser_cls, case, second):
    whole = parse_whole(parser_cls(**case.kwargs), case.raw)
    if isinstance(case.expect, int):
        assert whole == ("reject", case.expect)
    else:
        assert whole[0] == "accept", whole
        parser = parser_cls(**case.kwargs)
        check_accepted(parser, case, parser.parse(case.raw))

    # byte by byte: same outcome, same attributes
    parser = parser_cls(**case.kwargs)
    bytewise = parse_bytewise(parser, case.raw)
    assert bytewise == whole
    if whole[0] == "accept":
        check_accepted(parser, case, bytewise[1])

    # pipelined: the returned length stops exactly at the end of the first head, and the parser,
    # reused, finds the second head at that offset
    parser = parser_cls(**case.kwargs)
    buf = case.raw + second
    out = parse_whole(parser, buf)
    assert out == whole
    if whole[0] == "accept":
        check_accepted(parser, case, out[1])
        assert parser.parse(buf, out[1]) == len(second)


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_request_case(http1, case):
    check_case(http1.RequestParser, case, SECOND_REQUEST)


@pytest.mark.parametrize("case", RESPONSE_CASES, ids=[c.id for c in RESPONSE_CASES])
def test_response_case(http1, case):
    check_case(http1.ResponseParser, case, SECOND_RESPONSE)


def test_second_request_attributes_after_reuse(http1):
    parser = http1.RequestParser()
    first = b"POST http://a.example/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    buf = first + b"abc" + SECOND_REQUEST
    assert parser.parse(buf) == len(first)
    assert (parser.absolute, parser.content_length, parser.expect_continue) == (True, 3, True)
    assert parser.parse(buf, len(first) + 3) == len(SECOND_REQUEST)
    assert (parser.method, parser.path, parser.host) == (b"GET", b"/second", b"second.example")
    assert (parser.absolute, parser.content_length, parser.expect_continue) == (False, -1, False)
    assert parser.get(b"content-length") is None


def test_get(http1):
    parser = http1.RequestParser()
    parser.parse(b"GET / HTTP/1.1\r\nHOST: a\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n")
    assert parser.get(b"host") == b"a"
    assert parser.get(b"x-dup") == b"1"
    assert parser.get(b"missing") is None


def test_constants(http1):
    assert http1.DEFAULT_MAX_HEAD_SIZE == 61440
    assert http1.DEFAULT_MAX_HEADERS == 100
    assert http1.DEFAULT_MAX_REQUEST_LINE == 16384


def test_incomplete_returns_zero(http1):
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    for end in range(len(raw)):
        assert http1.RequestParser().parse(raw[:end]) == 0
    assert http1.RequestParser().parse(raw, len(raw)) == 0


@pytest.mark.parametrize(
    "partial, hint",
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 61440, 431),  # 431 before the head ends
        (b"GET /" + b"a" * 16384, 414),  # 414 before the request line ends
        (b"GET / HTTP/1.1\r\nHost: a\nX", 400),  # bare LF
        (b"GET / HTTP/1.1\r\n X", 400),  # obs-fold
    ],
    ids=["431", "414", "bare_lf", "obs_fold"],
)
def test_raises_before_head_is_complete(http1, partial, hint):
    with pytest.raises(ProtocolError) as info:
        http1.RequestParser().parse(partial)
    assert info.value.status_hint == hint


# --- serialize ------------------------------------------------------------------------------------
def test_serialize_drops_hop_by_hop(http1):
    parser = http1.RequestParser()
    raw = (
        b"GET /p?q HTTP/1.1\r\n"
        b"Host: a.example\r\n"
        b"Connection: keep-alive, X-Private\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"
        b"x-private: secret\r\n"
        b"X-Kept: 1\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n"
    )
    assert parser.parse(raw) == len(raw)
    assert parser.upgrade is None
    assert parser.serialize() == (
        b"GET /p?q HTTP/1.1\r\nHost: a.example\r\nX-Kept: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def test_serialize_upgrade(http1):
    parser = http1.RequestParser()
    raw = (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, X-Drop\r\nUpgrade: WebSocket\r\n"
        b"X-Drop: 1\r\nSec-WebSocket-Key: k\r\n\r\n"
    )
    assert parser.parse(raw) == len(raw)
    assert parser.upgrade == b"websocket"
    assert parser.serialize(b"X-Request-Id: 1\r\n") == (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key: k\r\n"
        b"Connection: upgrade\r\nX-Request-Id: 1\r\n\r\n"
    )


def test_serialize_extra_path_case_version(http1):
    parser = http1.RequestParser()
    raw = b"POST HTTP://Example.com/a HTTP/1.0\r\nhOsT: Example.com\r\nX-MiXeD: V\r\nContent-Length: 0\r\n\r\n"
    assert parser.parse(bytearray(raw)) == len(raw)
    # absolute-form: the Host line is replaced by the target's authority (lowercased)
    assert parser.serialize() == b"POST /a HTTP/1.0\r\nX-MiXeD: V\r\nContent-Length: 0\r\nhost: example.com\r\n\r\n"
    assert parser.serialize(b"X-A: 1\r\nX-B: 2\r\n", path=b"/rewritten?x") == (
        b"POST /rewritten?x HTTP/1.0\r\nX-MiXeD: V\r\nContent-Length: 0\r\nhost: example.com\r\n"
        b"X-A: 1\r\nX-B: 2\r\n\r\n"
    )


def test_serialize_keeps_ows_as_received(http1):
    parser = http1.RequestParser()
    raw = b"GET / HTTP/1.1\r\nHost:a\r\nX-Sp:  v  \r\n\r\n"
    parser.parse(raw)
    assert parser.serialize() == raw


def test_serialize_pipelined_offset(http1):
    parser = http1.RequestParser()
    buf = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" + b"GET /2 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    first = parser.parse(buf)
    parser.parse(buf, first)
    assert parser.serialize() == b"GET /2 HTTP/1.1\r\nHost: b\r\n\r\n"


def test_serialize_response(http1):
    parser = http1.ResponseParser()
    raw = (
        b"HTTP/1.0 404 Not  Found\r\nConnection: keep-alive, X-A\r\nKeep-Alive: timeout=1\r\n"
        b"X-A: 1\r\nContent-Length: 0\r\nSet-Cookie: a=b\r\n\r\n"
    )
    assert parser.parse(raw) == len(raw)
    assert parser.serialize(b"X-Extra: 1\r\n") == (
        b"HTTP/1.1 404 Not  Found\r\nContent-Length: 0\r\nSet-Cookie: a=b\r\nX-Extra: 1\r\n\r\n"
    )


def test_serialize_response_without_reason(http1):
    # RFC 9112 section 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]; the
    # second SP is mandatory even when the reason is empty.
    parser = http1.ResponseParser()
    parser.parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
    assert parser.serialize() == b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"


def test_serialize_response_101(http1):
    parser = http1.ResponseParser()
    raw = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n"
    assert parser.parse(raw) == len(raw)
    assert parser.upgrade == b"websocket"
    assert parser.serialize() == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n"
        b"Connection: upgrade\r\n\r\n"
    )


def test_connection_cannot_strip_framing_headers(http1):
    # "Connection: content-length" must not make the proxy forward a body without its framing
    # (a smuggling vector): framing and routing headers survive being named in Connection.
    parser = http1.RequestParser()
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, Host\r\nContent-Length: 2\r\n\r\n"
    assert parser.parse(raw) == len(raw)
    assert parser.serialize() == b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n"


# --- h11 oracle ---------------------------------------------------------------------------------
def h11_request(raw):
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    try:
        conn.receive_data(raw)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, h11.Request), event
    return event


def h11_response(raw):
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    # propose an upgrade so that a 101 is acceptable to h11
    conn.send(h11.Request(method="GET", target="/", headers=[
        ("Host", "a"), ("Connection", "upgrade"), ("Upgrade", "websocket")]))
    conn.send(h11.EndOfMessage())
    try:
        conn.receive_data(raw)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    assert isinstance(event, (h11.Response, h11.InformationalResponse)), event
    return event


def _agree_request(http1, case):
    event = h11_request(case.raw)
    parser = http1.RequestParser(**case.kwargs)
    ours = parse_whole(parser, case.raw)
    if event is None or ours[0] != "accept":
        return (event is None) == (ours[0] != "accept")
    return (event.method, event.target, list(event.headers.raw_items())) == (
        parser.method, parser.target, parser.headers())


def _agree_response(http1, case):
    event = h11_response(case.raw)
    parser = http1.ResponseParser(**case.kwargs)
    ours = parse_whole(parser, case.raw)
    if event is None or ours[0] != "accept":
        return (event is None) == (ours[0] != "accept")
    return (event.status_code, list(event.headers.raw_items())) == (parser.status, parser.headers())


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_h11_oracle_request(http1, case):
    agree = _agree_request(http1, case)
    if case.id in DIVERGENCES:
        assert not agree, f"h11 now agrees; drop {case.id!r} from DIVERGENCES"
    else:
        assert agree


@pytest.mark.parametrize("case", RESPONSE_CASES, ids=[c.id for c in RESPONSE_CASES])
def test_h11_oracle_response(http1, case):
    agree = _agree_response(http1, case)
    if case.id in DIVERGENCES:
        assert not agree, f"h11 now agrees; drop {case.id!r} from DIVERGENCES"
    else:
        assert agree


def test_divergences_name_real_cases():
    ids = {c.id for c in REQUEST_CASES + RESPONSE_CASES}
    assert set(DIVERGENCES) <= ids
    assert all(reason.strip() for reason in DIVERGENCES.values())


# --- chunked framer -----------------------------------------------------------------------------
def _framer_outcome(framer, calls):
    """Run ``feed`` for each (buf, start, end); returns ("done", total) / ("reject", hint) / ("more", total)."""
    total = 0
    try:
        for buf, start, end in calls:
            got = framer.feed(buf, start, end)
            if framer.done:
                return ("done", total + got)
            assert got == end - start
            total += got
    except ProtocolError as exc:
        return ("reject", exc.status_hint)
    return ("more", total)


def _expected_chunked(case):
    return ("reject", case.expect) if isinstance(case.expect, int) else ("done", len(case.raw))


@pytest.mark.parametrize("case", CHUNKED_CASES, ids=[c.id for c in CHUNKED_CASES])
def test_chunked_case(http1, case):
    raw = case.raw
    want = _expected_chunked(case)
    # whole
    assert _framer_outcome(http1.ChunkedFramer(**case.kwargs), [(raw, 0, len(raw))]) == want
    # byte by byte
    calls = [(raw, i, i + 1) for i in range(len(raw))]
    assert _framer_outcome(http1.ChunkedFramer(**case.kwargs), calls) == want
    # split at every offset (same buffer, then two separate buffers)
    for k in range(len(raw) + 1):
        framer = http1.ChunkedFramer(**case.kwargs)
        assert _framer_outcome(framer, [(raw, 0, k), (raw, k, len(raw))]) == want, k
        framer = http1.ChunkedFramer(**case.kwargs)
        assert _framer_outcome(framer, [(raw[:k], 0, k), (raw[k:], 0, len(raw) - k)]) == want, k
    # trailing next-message bytes: the count stops exactly at the end of the body
    buf = b"xx" + raw + SECOND_REQUEST
    framer = http1.ChunkedFramer(**case.kwargs)
    assert _framer_outcome(framer, [(buf, 2, len(buf))]) == want


def test_chunked_reset_reuses_framer(http1):
    framer = http1.ChunkedFramer()
    body = b"3\r\nabc\r\n0\r\n\r\n"
    assert framer.feed(body, 0, len(body)) == len(body) and framer.done
    framer.reset()
    assert not framer.done
    assert framer.feed(body, 0, 5) == 5 and not framer.done
    assert framer.feed(body, 5, len(body)) == len(body) - 5 and framer.done


def test_chunked_large_chunk_counts(http1):
    framer = http1.ChunkedFramer()
    head = b"ffffffffffffffff\r\n"
    assert framer.feed(head, 0, len(head)) == len(head)
    data = b"z" * 4096
    assert framer.feed(data, 0, len(data)) == len(data) and not framer.done


def test_chunked_default_trailer_limit(http1):
    framer = http1.ChunkedFramer()
    body = b"0\r\nX: " + b"a" * 16384 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        framer.feed(body, 0, len(body))
    assert info.value.status_hint == 431


# --- request ids --------------------------------------------------------------------------------
UUID4 = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_request_id(http1):
    ids = [http1.request_id() for _ in range(2000)]
    for rid in ids[:200]:
        assert type(rid) is bytes and len(rid) == 36
        assert UUID4.fullmatch(rid), rid
    assert len(set(ids)) == len(ids)


# --- framing defects (each test failed on the code before the fix) ----------------------------
def test_absolute_form_replaces_host(http1):
    """Defect 1: RFC 9112 section 3.2.2: an absolute-form target's authority replaces Host; the
    request is forwarded in origin form with a single Host line."""
    parser = http1.RequestParser()
    raw = (b"GET http://echo.default.svc.cluster.local/x?y=1 HTTP/1.1\r\n"
           b"Host: internal-admin.example\r\nX-A: 1\r\n\r\n")
    assert parser.parse(raw) == len(raw)
    assert parser.host == b"echo.default.svc.cluster.local"
    assert parser.path == b"/x?y=1"
    out = parser.serialize(b"x-extra: 1\r\n")
    assert out == (b"GET /x?y=1 HTTP/1.1\r\nX-A: 1\r\nhost: echo.default.svc.cluster.local\r\n"
                   b"x-extra: 1\r\n\r\n")
    assert b"internal-admin" not in out
    # a route that rewrites the authority drops host and adds its own: one Host line still
    out = parser.serialize(b"host: rewritten\r\n", None, (b"host",))
    assert out == b"GET /x?y=1 HTTP/1.1\r\nX-A: 1\r\nhost: rewritten\r\n\r\n"


@pytest.mark.parametrize("te_lines", [
    [b"Chunked"], [b"CHUNKED"], [b",chunked"], [b"chunked,"], [b" , chunked ,, "],
    [b"chunked", b""], [b"", b"chunked"],
], ids=["Chunked", "CHUNKED", "leading-comma", "trailing-comma", "empty-elements", "then-empty",
        "empty-then"])
def test_transfer_encoding_forwarded_canonical(http1, te_lines):
    """Defect 2: whatever the client wrote, one canonical ``transfer-encoding: chunked``."""
    parser = http1.RequestParser()
    raw = (b"POST /u HTTP/1.1\r\nHost: a\r\n"
           + b"".join(b"Transfer-Encoding: " + v + b"\r\n" for v in te_lines)
           + b"X-After: 1\r\n\r\n")
    assert parser.parse(raw) == len(raw)
    assert parser.chunked
    assert parser.serialize() == (b"POST /u HTTP/1.1\r\nHost: a\r\nX-After: 1\r\n"
                                  b"transfer-encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("te_lines,hint", [
    ([b"identity, chunked"], 501), ([b"gzip, chunked"], 501), ([b"gzip"], 501),
    ([b"gzip", b"chunked"], 501), ([b"chunked", b"gzip"], 501), ([b"chunked, identity"], 501),
    ([b"chunked;ext=1"], 501), ([b"x-chunked"], 501), ([b"chunked", b"chunked"], 400),
    ([b"chunked, chunked"], 400), ([b""], 400), ([b","], 400),
])
def test_transfer_encoding_rejected(http1, te_lines, hint):
    """Defect 2: a request's codings must come to exactly one chunked (501 for another coding,
    as Envoy; 400 for chunked twice or an empty list)."""
    raw = (b"POST /u HTTP/1.1\r\nHost: a\r\n"
           + b"".join(b"Transfer-Encoding: " + v + b"\r\n" for v in te_lines) + b"\r\n")
    assert parse_whole(http1.RequestParser(), raw) == ("reject", hint)
    assert parse_bytewise(http1.RequestParser(), raw) == ("reject", hint)


def test_response_transfer_encoding_unchanged(http1):
    """Responses keep their codings (the proxy does not decode): gzip, chunked is forwarded."""
    parser = http1.ResponseParser()
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    assert parser.parse(raw) == len(raw) and parser.chunked
    assert parser.serialize() == raw


@pytest.mark.parametrize("n", [1, 16, 17, 40, 90])
def test_every_connection_token_is_hop_by_hop(http1, n):
    """Defect 4: the compiled parser honoured only the first 16 Connection tokens."""
    names = [b"X-Hop-%d" % i for i in range(n)]
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + b", ".join(names) + b"\r\n"
           + b"".join(name + b": v\r\n" for name in names) + b"X-Kept: 1\r\n\r\n")
    parser = http1.RequestParser(max_headers=256)
    assert parser.parse(raw) == len(raw)
    assert parser.serialize() == b"GET / HTTP/1.1\r\nHost: a\r\nX-Kept: 1\r\n\r\n"
    # several Connection lines too
    raw = (b"GET / HTTP/1.1\r\nHost: a\r\n"
           + b"".join(b"Connection: " + name + b"\r\n" for name in names)
           + b"".join(name.lower() + b": v\r\n" for name in names) + b"X-Kept: 1\r\n\r\n")
    assert parser.parse(raw) == len(raw)
    assert parser.serialize() == b"GET / HTTP/1.1\r\nHost: a\r\nX-Kept: 1\r\n\r\n"


def forward_chunked(framer, raw, cuts):
    """What a codec forwards for ``raw`` fed in pieces split at ``cuts``: per feed the bytes up
    to ``held``, then the rewritten trailer section once done."""
    out = b""
    bounds = [0] + sorted(cuts) + [len(raw)]
    for a, b in zip(bounds, bounds[1:]):
        buf = raw[a:b]
        k = framer.feed(buf, 0, len(buf))
        assert 0 <= framer.held <= k
        out += buf[:k - framer.held]
        if framer.done:
            t = framer.trailers()
            if t is not None:
                out += t
            break
    return out


TRAILER_BODY = (b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nTransfer-Encoding: chunked\r\n"
                b"content-length: 5\r\nHost: evil\r\nAuthorization: Bearer x\r\n"
                b"Cookie: a=b\r\nX-Other: d\r\nProxy-Authorization: y\r\n\r\n")
TRAILER_FORWARDED = b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Other: d\r\n\r\n"


def test_forbidden_trailers_dropped(http1):
    """Defect 5: framing, routing and authentication fields are dropped from trailers, whole,
    byte by byte and at every split."""
    raw = TRAILER_BODY
    assert forward_chunked(http1.ChunkedFramer(), raw, []) == TRAILER_FORWARDED
    assert forward_chunked(http1.ChunkedFramer(), raw, range(1, len(raw))) == TRAILER_FORWARDED
    for k in range(len(raw) + 1):
        assert forward_chunked(http1.ChunkedFramer(), raw, [k]) == TRAILER_FORWARDED, k


@pytest.mark.parametrize("raw", [b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n",
                                 b"3;x=1\r\nabc\r\n0;y\r\n\r\n",
                                 b"0\r\nX-Sum: abc\r\n\r\n"])
def test_allowed_trailers_forwarded_as_is(http1, raw):
    assert forward_chunked(http1.ChunkedFramer(), raw, []) == raw
    for k in range(len(raw) + 1):
        assert forward_chunked(http1.ChunkedFramer(), raw, [k]) == raw, k
    assert forward_chunked(http1.ChunkedFramer(), raw, range(1, len(raw))) == raw


def test_no_trailers_zero_copy(http1):
    """A body without trailers in one feed: nothing held, nothing rewritten (zero copy)."""
    framer = http1.ChunkedFramer()
    body = b"5\r\nhello\r\n0\r\n\r\n"
    assert framer.feed(body, 0, len(body)) == len(body) and framer.done
    assert framer.held == 0 and framer.trailers() is None
