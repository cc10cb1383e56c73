"""Hypothesis properties of the http1 twins.

* any bytes either parse (or ask for more) or raise ``ProtocolError``, never anything else
  (request parser, response parser, chunked framer);
* feeding a valid generated head in pieces, at random split points, never changes the result;
* the pure-Python and compiled twins agree on every generated input: same outcome, same
  attributes, same ``headers()`` and same ``serialize()`` output (when the compiled one is built).

``http1`` is each build's module in turn and ``twins`` both at once (tests/conftest.py).
"""
import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshproxy.errors import ProtocolError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REQ_ATTRS = ("method", "target", "path", "host", "absolute", "version", "content_length", "chunked",
             "keep_alive", "upgrade", "expect_continue", "head_length", "header_count")
RESP_ATTRS = ("status", "version", "content_length", "chunked", "keep_alive", "upgrade", "head_length",
              "header_count")

# --- strategies ---------------------------------------------------------------------------------
TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
token = st.binary(min_size=1, max_size=12).map(lambda b: bytes(TCHARS[x % len(TCHARS)] for x in b))
vchar = st.integers(0x21, 0x7E) | st.integers(0x80, 0xFF)
value = st.lists(vchar | st.sampled_from([0x20, 0x09]), max_size=20).map(bytes).map(lambda v: v.strip(b" \t"))
ows = st.sampled_from([b"", b" ", b"\t", b"  "])
path = st.lists(st.integers(0x21, 0x7E), max_size=20).map(lambda b: b"/" + bytes(b))
host = st.sampled_from([b"example.com", b"A.example:8080", b"[::1]", b"x"])
framing = st.sampled_from([
    [], [b"Content-Length: 5"], [b"Content-Length: 0", b"content-length: 0"], [b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: Chunked, "], [b"Transfer-Encoding: chunked", b"transfer-encoding: ,"], [b"Connection: close"], [b"Connection: keep-alive"],
    [b"Connection: Upgrade, X-A", b"Upgrade: websocket"], [b"Expect: 100-continue"], [b"TE: trailers"],
    [b"Connection: x-a", b"X-A: 1"],
])


@st.composite
def header_lines(draw):
    lines = []
    for name, val in draw(st.lists(st.tuples(token, value), max_size=6)):
        if name.lower() in (b"host", b"content-length", b"transfer-encoding"):
            continue
        lines.append(name + b":" + draw(ows) + val + (draw(ows) if val else b""))
    lines += draw(framing)
    return draw(st.permutations(lines)) if lines else lines


@st.composite
def valid_request(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]) | token)
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    target = draw(path | st.builds(lambda h, p: b"http://" + h + p, host, path))
    lines = draw(header_lines())
    if version == b"1.0":
        lines = [line for line in lines if not line.lower().startswith(b"transfer-encoding")]
    lines.insert(draw(st.integers(0, len(lines))), b"Host: " + draw(host))
    lead = b"\r\n" * draw(st.integers(0, 2))
    return lead + method + b" " + target + b" HTTP/" + version + b"\r\n" + b"".join(
        line + b"\r\n" for line in lines) + b"\r\n"


@st.composite
def valid_response(draw):
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    status = draw(st.integers(100, 599))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Not Found", b" a\tb"]))
    lines = draw(header_lines())
    return b"HTTP/" + version + b" %d" % status + reason + b"\r\n" + b"".join(
        line + b"\r\n" for line in lines) + b"\r\n"


@st.composite
def chunked_body(draw):
    out = b""
    for data in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4)):
        size = b"%x" % len(data)
        if draw(st.booleans()):
            size = size.upper().rjust(draw(st.integers(1, 4)), b"0")
        ext = draw(st.sampled_from([b"", b";a=b", b";x"]))
        out += size + ext + b"\r\n" + data + b"\r\n"
    out += b"0\r\n"
    for name, val in draw(st.lists(st.tuples(token, value), max_size=2)):
        out += name + b": " + val + b"\r\n"
    return out + b"\r\n"


NASTY = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b"\x00", b"\x7f", b"\xff", b"0", b"-",
         b"Content-Length: 1\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: a\r\n", b"HTTP/1.1", b"\r\n\r\n"]


@st.composite
def mutated(draw, base):
    raw = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            raw[pos:pos] = draw(st.sampled_from(NASTY) | st.binary(min_size=1, max_size=3))
        elif op == "delete":
            del raw[pos:pos + draw(st.integers(1, 3))]
        else:
            raw[pos:pos + 1] = draw(st.sampled_from(NASTY))
    return bytes(raw)


any_request = st.binary(max_size=200) | valid_request() | mutated(valid_request())
any_response = st.binary(max_size=200) | valid_response() | mutated(valid_response())
any_chunked = st.binary(max_size=100) | chunked_body() | mutated(chunked_body())


# --- drivers ------------------------------------------------------------------------------------
def outcome(parser, buf, attrs, start=0):
    """("accept", n, attributes, headers, serialize) / ("reject", hint) / ("incomplete",)."""
    try:
        n = parser.parse(buf, start)
    except ProtocolError as exc:
        return ("reject", exc.status_hint)
    if not n:
        return ("incomplete",)
    return ("accept", n, tuple(getattr(parser, a) for a in attrs), parser.headers(), parser.serialize())


def split_outcome(parser, raw, cuts, attrs):
    """Feed ``raw`` through a growing bytearray, calling parse at every cut and at the end."""
    buf = bytearray()
    for end in sorted(set(cuts)) + [len(raw)]:
        buf += raw[len(buf):end]
        out = outcome(parser, buf, attrs)
        if out[0] != "incomplete":
            return out
    return out


def framer_outcome(framer, raw, cuts):
    total = 0
    prev = 0
    try:
        for end in sorted(set(cuts)) + [len(raw)]:
            got = framer.feed(raw, prev, end)
            total += got
            if framer.done:
                return ("done", total)
            assert got == end - prev
            prev = end
    except ProtocolError as exc:
        return ("reject", exc.status_hint)
    return ("more", total)


# --- any bytes: parse or ProtocolError, nothing else --------------------------------------------
@MEDIUM
@given(raw=any_request, start=st.integers(0, 3))
def test_request_parser_never_leaks(http1, raw, start):
    outcome(http1.RequestParser(), raw, REQ_ATTRS, min(start, len(raw)))


@MEDIUM
@given(raw=any_response)
def test_response_parser_never_leaks(http1, raw):
    outcome(http1.ResponseParser(), raw, RESP_ATTRS)


@MEDIUM
@given(raw=any_chunked, cuts=st.lists(st.integers(0, 100), max_size=3))
def test_chunked_framer_never_leaks(http1, raw, cuts):
    framer_outcome(http1.ChunkedFramer(), raw, [c for c in cuts if c <= len(raw)])


# --- split points never change the result --------------------------------------------------------
@FAST
@given(raw=valid_request(), data=st.data())
def test_request_split_points(http1, raw, data):
    whole = outcome(http1.RequestParser(), raw, REQ_ATTRS)
    assert whole[0] == "accept" and whole[1] == len(raw), whole
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    assert split_outcome(http1.RequestParser(), raw, cuts, REQ_ATTRS) == whole


@FAST
@given(raw=valid_response(), data=st.data())
def test_response_split_points(http1, raw, data):
    whole = outcome(http1.ResponseParser(), raw, RESP_ATTRS)
    assert whole[0] == "accept" and whole[1] == len(raw), whole
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    assert split_outcome(http1.ResponseParser(), raw, cuts, RESP_ATTRS) == whole


@FAST
@given(raw=chunked_body(), data=st.data())
def test_chunked_split_points(http1, raw, data):
    assert framer_outcome(http1.ChunkedFramer(), raw, []) == ("done", len(raw))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    assert framer_outcome(http1.ChunkedFramer(), raw, cuts) == ("done", len(raw))


@FAST
@given(raw=mutated(valid_request()), data=st.data())
def test_request_split_points_keep_status_hint(http1, raw, data):
    # on arbitrary input only the outcome kind, the length and the status hint are compared
    whole = outcome(http1.RequestParser(), raw, REQ_ATTRS)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=4))
    assert split_outcome(http1.RequestParser(), raw, cuts, REQ_ATTRS)[:2] == whole[:2]


# --- the twins agree ----------------------------------------------------------------------------
def _settled(a, b):
    """Both twins reached a verdict (the "raise at once" rule is checked on its own below)."""
    return a[0] != "incomplete" and b[0] != "incomplete"


@MEDIUM
@given(raw=any_request)
def test_twins_agree_on_requests(twins, raw):
    raw += b"\r\n\r\n"  # most inputs then hold a complete head
    a = outcome(twins.py.http1.RequestParser(), raw, REQ_ATTRS)
    b = outcome(twins.c.http1.RequestParser(), raw, REQ_ATTRS)
    if _settled(a, b):
        assert a == b


@MEDIUM
@given(raw=any_response)
def test_twins_agree_on_responses(twins, raw):
    raw += b"\r\n\r\n"
    a = outcome(twins.py.http1.ResponseParser(), raw, RESP_ATTRS)
    b = outcome(twins.c.http1.ResponseParser(), raw, RESP_ATTRS)
    if _settled(a, b):
        assert a == b


@MEDIUM
@given(raw=any_request)
def test_twins_agree_on_early_rejection(twins, raw):
    # Contract: parse "raises at once when what it has already proves the head bad".
    py, c = twins.py.http1, twins.c.http1
    assert outcome(py.RequestParser(), raw, REQ_ATTRS) == outcome(c.RequestParser(), raw, REQ_ATTRS)


@MEDIUM
@given(raw=any_chunked, cuts=st.lists(st.integers(0, 100), max_size=3))
def test_twins_agree_on_chunked(twins, raw, cuts):
    cuts = [c for c in cuts if c <= len(raw)]
    py, c = twins.py.http1, twins.c.http1
    assert framer_outcome(py.ChunkedFramer(), raw, cuts) == framer_outcome(c.ChunkedFramer(), raw, cuts)


# --- the twins agree on what is forwarded ---------------------------------------------------------
def forwarded_body(framer, raw, cuts):
    """What a codec forwards for ``raw`` fed in pieces: per feed the bytes before ``held``, then
    the rewritten trailer section once done; or the rejection."""
    out = b""
    prev = 0
    try:
        for end in sorted(set(cuts)) + [len(raw)]:
            k = framer.feed(raw, prev, end)
            assert 0 <= framer.held <= k
            out += raw[prev:prev + k - framer.held]
            if framer.done:
                t = framer.trailers()
                return ("done", prev + k, out + (t if t is not None else b""))
            prev = end
    except ProtocolError as exc:
        return ("reject", exc.status_hint)
    return ("more", out)


@MEDIUM
@given(raw=any_request, extra=st.sampled_from([b"", b"x-e: 1\r\n", b"host: rewritten\r\n"]))
def test_twins_agree_on_serialized_heads(twins, raw, extra):
    raw += b"\r\n\r\n"
    out = []
    for mod in (twins.py.http1, twins.c.http1):
        p = mod.RequestParser()
        try:
            n = p.parse(raw)
        except ProtocolError as exc:
            out.append(("reject", exc.status_hint))
            continue
        if not n:
            out.append(("incomplete",))
            continue
        out.append(("accept", p.serialize(extra), p.serialize(extra, b"/p", (b"host", b"x-a")),
                    p.serialize(extra, None, (b"transfer-encoding",))))
    if _settled(*out):
        assert out[0] == out[1]


@MEDIUM
@given(raw=any_chunked, cuts=st.lists(st.integers(0, 100), max_size=3))
def test_twins_agree_on_forwarded_bodies(twins, raw, cuts):
    cuts = [c for c in cuts if c <= len(raw)]
    assert forwarded_body(twins.py.http1.ChunkedFramer(), raw, cuts) == \
        forwarded_body(twins.c.http1.ChunkedFramer(), raw, cuts)


# --- differential against h11 (the oracle) ------------------------------------------------------
def h11_request(raw):
    """h11's view of a request head: (method, target, [(name, value)]) or None (rejected)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    try:
        conn.receive_data(raw)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return "incomplete"
    return event


def h11_divergence(raw):
    """Whether ``raw`` falls in a documented divergence class (docs/http1-divergences.md) for
    which h11 rejects what we accept: leading empty lines, a Transfer-Encoding list that is not
    one line reading exactly "chunked", a repeated Content-Length."""
    if raw.startswith(b"\r\n"):
        return True
    lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    te = [ln.partition(b":")[2].strip(b" \t").lower() for ln in lines
          if ln.partition(b":")[0].lower() == b"transfer-encoding"]
    cl = [ln for ln in lines if ln.partition(b":")[0].lower() == b"content-length"]
    return (te and te != [b"chunked"]) or len(cl) > 1


@MEDIUM
@given(raw=valid_request())
def test_h11_agrees_on_generated_requests(http1, raw):
    """Generated valid heads: both twins and h11 accept, with the same method, target and
    headers (h11 lowercases a Transfer-Encoding value), unless a documented divergence."""
    p = http1.RequestParser()
    assert p.parse(raw) == len(raw)
    event = h11_request(raw)
    if h11_divergence(raw):
        return
    assert event is not None and event != "incomplete", raw
    ours = [(n, v.lower() if n.lower() == b"transfer-encoding" else v) for n, v in p.headers()]
    assert (event.method, event.target, list(event.headers.raw_items())) == (p.method, p.target, ours)


@MEDIUM
@given(raw=mutated(valid_request()))
def test_we_are_stricter_than_h11(http1, raw):
    """Arbitrary heads: whatever we accept, h11 accepts too (we are the stricter side), unless a
    documented divergence; and then it reads the same method and target."""
    raw += b"\r\n\r\n"
    p = http1.RequestParser()
    try:
        n = p.parse(raw)
    except ProtocolError:
        return
    if not n or h11_divergence(raw[:n]):
        return
    event = h11_request(raw[:n])
    assert event is not None and event != "incomplete", raw
    assert (event.method, event.target) == (p.method, p.target)


def h11_body(raw):
    """h11 reading ``raw`` as a chunked request body byte by byte: ("done", body bytes consumed,
    data, trailers) or ("reject",) or ("more",)."""
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    assert isinstance(conn.next_event(), h11.Request)
    data = b""
    try:
        for i in range(len(raw)):
            conn.receive_data(raw[i:i + 1])
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    break
                if isinstance(ev, h11.Data):
                    data += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    return ("done", i + 1, data, [(n.lower(), v) for n, v in ev.headers.raw_items()])
    except h11.RemoteProtocolError:
        return ("reject",)
    return ("more",)


@MEDIUM
@given(raw=chunked_body() | mutated(chunked_body()))
def test_framer_byte_by_byte_against_h11(http1, raw):
    """The chunked framer fed byte by byte against h11: a body we accept, h11 accepts, ending at
    the same byte; what we forward, read by h11, is the same data with h11's trailers minus the
    forbidden fields. (h11 is laxer, e.g. whitespace after a chunk size: checked one way only.)"""
    ours = forwarded_body(http1.ChunkedFramer(), raw, range(1, len(raw)))
    if ours[0] != "done":
        return
    theirs = h11_body(raw)
    assert theirs[0] == "done" and theirs[1] == ours[1], (raw, theirs, ours)
    again = h11_body(ours[2])
    assert again[0] == "done" and again[2] == theirs[2]
    assert again[3] == [(n, v) for n, v in theirs[3] if n not in http1.TRAILER_FORBIDDEN]
