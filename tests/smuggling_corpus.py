"""Request smuggling, desync and DoS vectors, run end to end by
``tests/integration/test_smuggling_corpus.py`` through a real sidecar (both builds) to a backend
that records the exact bytes it receives.

Each ``Vector(id, raw, status, forwarded)``:

* ``raw``: the bytes the client sends on a fresh connection;
* ``status``: the status the client must get (the sidecar's own reply for a refused request, the
  backend's 200 for a forwarded one);
* ``forwarded``: ``None`` when the backend must receive nothing at all, else the exact bytes it
  must receive (the canonical form), where the proxy's own lines are written ``XF`` (see
  ``canonical``).
"""
from typing import NamedTuple, Optional

HOST = b"echo.default.svc.cluster.local"
H = b"Host: " + HOST + b"\r\n"
# what the sidecar appends to every forwarded head (x-request-id: a fresh UUID, normalised)
XF = b"x-forwarded-proto: http\r\nx-forwarded-for: 127.0.0.1\r\nx-request-id: <id>\r\n"


class Vector(NamedTuple):
    id: str
    raw: bytes
    status: int
    forwarded: Optional[bytes] = None


def post(*lines, body=b"", first=b"POST /s HTTP/1.1"):
    return first + b"\r\n" + H + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


def chunked(body, *lines):
    return post(b"Transfer-Encoding: chunked", *lines, body=body)


def canonical(first, *lines, body=b"", te=True, host=True):
    """The head the backend must see: ``first``, the Host line as sent (``host``), ``lines``,
    the canonical Transfer-Encoding line (``te``), the proxy's lines, then ``body``."""
    return (first + b"\r\n" + (H if host else b"") + b"".join(line + b"\r\n" for line in lines)
            + (b"transfer-encoding: chunked\r\n" if te else b"") + XF + b"\r\n" + body)


BODY = b"5\r\nhello\r\n0\r\n\r\n"
BIG = 61 * 1024

REFUSED = [
    # --- Content-Length / Transfer-Encoding conflicts (CL.TE, TE.CL) ----------------------------
    Vector("cl-then-te", post(b"Content-Length: 4", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    Vector("te-then-cl", post(b"Transfer-Encoding: chunked", b"Content-Length: 4", body=b"0\r\n\r\n"), 400),
    Vector("cl-te-http10", post(b"Content-Length: 4", b"Transfer-Encoding: chunked",
                                first=b"POST /s HTTP/1.0", body=b"0\r\n\r\n"), 400),
    Vector("te-gzip-cl", post(b"Transfer-Encoding: gzip", b"Content-Length: 5", body=b"hello"), 400),
    # --- Content-Length syntax ------------------------------------------------------------------
    Vector("cl-duplicate-different", post(b"Content-Length: 4", b"Content-Length: 5", body=b"abcde"), 400),
    Vector("cl-comma-list", post(b"Content-Length: 5, 5", body=b"hello"), 400),
    Vector("cl-comma-different", post(b"Content-Length: 4, 5", body=b"hello"), 400),
    Vector("cl-plus", post(b"Content-Length: +5", body=b"hello"), 400),
    Vector("cl-minus", post(b"Content-Length: -5", body=b"hello"), 400),
    Vector("cl-hex", post(b"Content-Length: 0x5", body=b"hello"), 400),
    Vector("cl-decimal-point", post(b"Content-Length: 5.0", body=b"hello"), 400),
    Vector("cl-inner-space", post(b"Content-Length: 5 5", body=b"hello"), 400),
    Vector("cl-empty", post(b"Content-Length: ", body=b"hello"), 400),
    Vector("cl-19-digits", post(b"Content-Length: 1" + b"0" * 18, body=b"hello"), 400),
    Vector("cl-space-before-colon", post(b"Content-Length : 5", body=b"hello"), 400),
    Vector("cl-vtab-value", post(b"Content-Length: \x0b5", body=b"hello"), 400),
    # --- Transfer-Encoding ----------------------------------------------------------------------
    Vector("te-gzip-chunked", post(b"Transfer-Encoding: gzip, chunked", body=BODY), 501),
    Vector("te-identity-chunked", post(b"Transfer-Encoding: identity, chunked", body=BODY), 501),
    Vector("te-chunked-gzip", post(b"Transfer-Encoding: chunked, gzip", body=BODY), 501),
    Vector("te-gzip-then-chunked-lines", post(b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked",
                                              body=BODY), 501),
    Vector("te-xchunked", post(b"Transfer-Encoding: xchunked", body=BODY), 501),
    Vector("te-chunked-param", post(b"Transfer-Encoding: chunked;q=1", body=BODY), 501),
    Vector("te-quoted", post(b'Transfer-Encoding: "chunked"', body=BODY), 501),
    Vector("te-identity-only", post(b"Transfer-Encoding: identity", body=b""), 501),
    Vector("te-chunked-twice", post(b"Transfer-Encoding: chunked, chunked", body=BODY), 400),
    Vector("te-chunked-twice-lines", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked",
                                          body=BODY), 400),
    Vector("te-empty", post(b"Transfer-Encoding: ", body=BODY), 400),
    Vector("te-http10", post(b"Transfer-Encoding: chunked", first=b"POST /s HTTP/1.0", body=BODY), 400),
    Vector("te-space-before-colon", post(b"Transfer-Encoding : chunked", body=BODY), 400),
    Vector("te-tab-before-colon", post(b"Transfer-Encoding\t: chunked", body=BODY), 400),
    Vector("te-obs-fold", post(b"Transfer-Encoding:", b" chunked", body=BODY), 400),
    Vector("te-vtab", post(b"Transfer-Encoding: \x0bchunked", body=BODY), 400),
    Vector("cl-duplicate-beside-te-lookalike", post(b"Transfer_Encoding: chunked", b"Content-Length: 5",
                                                b"Content-Length: 6", body=b"hello!"), 400),
    # --- line endings, control bytes ------------------------------------------------------------
    Vector("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n folded\r\n\r\n", 400),
    Vector("bare-lf-header", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\nX-B: 2\r\n\r\n", 400),
    Vector("bare-lf-request-line", b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    Vector("bare-lf-end", b"GET / HTTP/1.1\r\n" + H + b"\n", 400),
    Vector("bare-cr-header", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\rX-B: 2\r\n\r\n", 400),
    Vector("bare-cr-request-line", b"GET /\r HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    Vector("nul-in-name", b"GET / HTTP/1.1\r\n" + H + b"X-\x00A: a\r\n\r\n", 400),
    Vector("nul-in-target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("ctl-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    Vector("del-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    Vector("esc-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x1b[0mb\r\n\r\n", 400),
    # --- header names ---------------------------------------------------------------------------
    Vector("header-name-space", b"GET / HTTP/1.1\r\n" + H + b"X A: 1\r\n\r\n", 400),
    Vector("header-name-empty", b"GET / HTTP/1.1\r\n" + H + b": 1\r\n\r\n", 400),
    Vector("header-name-utf8", b"GET / HTTP/1.1\r\n" + H + b"X-\xc3\xa9: 1\r\n\r\n", 400),
    Vector("header-no-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A 1\r\n\r\n", 400),
    Vector("header-name-slash", b"GET / HTTP/1.1\r\n" + H + b"X/A: 1\r\n\r\n", 400),
    # --- Host and targets -----------------------------------------------------------------------
    Vector("two-hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: other\r\n\r\n", 400),
    Vector("no-host-11", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    Vector("host-userinfo", b"GET / HTTP/1.1\r\nHost: x@" + HOST + b"\r\n\r\n", 400),
    Vector("host-slash", b"GET / HTTP/1.1\r\nHost: " + HOST + b"/x\r\n\r\n", 400),
    Vector("host-space-inside", b"GET / HTTP/1.1\r\nHost: echo .default\r\n\r\n", 400),
    Vector("absolute-userinfo", b"GET http://evil@" + HOST + b"/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("absolute-empty-authority", b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("absolute-other-scheme", b"GET ftp://" + HOST + b"/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("absolute-backslash", b"GET http://" + HOST + b"\\@evil/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("asterisk-not-options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("connect-origin-form", b"CONNECT /x HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("relative-target", b"GET x/y HTTP/1.1\r\n" + H + b"\r\n", 400),
    # --- request-line oddities ------------------------------------------------------------------
    Vector("double-space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("tab-separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("trailing-space", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    Vector("lowercase-version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    Vector("version-2", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    Vector("version-09", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    Vector("no-version", b"GET /\r\n" + H + b"\r\n", 400),
    Vector("method-not-token", b"G(ET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    Vector("nine-leading-crlf", b"\r\n" * 9 + b"GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    # --- limits (DoS) ---------------------------------------------------------------------------
    Vector("oversized-head", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * BIG + b"\r\n\r\n", 431),
    Vector("too-many-headers", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
           + b"\r\n", 431),
    Vector("oversized-request-line", b"GET /" + b"a" * 16384 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    # --- chunked bodies (the head and the bad chunk arrive together: nothing may be forwarded) --
    Vector("chunk-size-17-digits", chunked(b"1" + b"0" * 16 + b"\r\n"), 400),
    Vector("chunk-size-overflow-64bit", chunked(b"fffffffffffffffff\r\n"), 400),
    Vector("chunk-size-negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-size-hex-prefix", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-size-space-before", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-size-space-after", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-size-empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-size-bare-lf", chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-size-bare-cr", chunked(b"5\rX\r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-ext-bare-lf", chunked(b"5;a=b\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-ext-ctl", chunked(b"5;a\x01b\r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-ext-too-long", chunked(b"5;" + b"e" * 17000 + b"\r\nhello\r\n0\r\n\r\n"), 431),
    Vector("chunk-data-too-long", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400),
    Vector("chunk-data-no-crlf", chunked(b"5\r\nhelloXX0\r\n\r\n"), 400),
    Vector("chunk-data-bare-lf", chunked(b"5\r\nhello\n0\r\n\r\n"), 400),
    Vector("last-chunk-bare-lf", chunked(b"5\r\nhello\r\n0\r\n\n"), 400),
    Vector("trailer-obs-fold", chunked(b"0\r\nX-T: a\r\n b\r\n\r\n"), 400),
    Vector("trailer-no-colon", chunked(b"0\r\nbogus\r\n\r\n"), 400),
    Vector("trailer-space-before-colon", chunked(b"0\r\nX-T : a\r\n\r\n"), 400),
    Vector("trailer-nul", chunked(b"0\r\nX-T: a\x00\r\n\r\n"), 400),
    Vector("trailer-bare-lf", chunked(b"0\r\nX-T: a\n\r\n"), 400),
    Vector("trailers-too-large", chunked(b"0\r\nX-T: " + b"a" * 17000 + b"\r\n\r\n"), 431),
]

FORWARDED = [
    # --- Transfer-Encoding spellings: one canonical line upstream --------------------------------
    Vector("te-capitalised", post(b"Transfer-Encoding: Chunked", body=BODY), 200,
           canonical(b"POST /s HTTP/1.1", body=BODY)),
    Vector("te-upper", post(b"Transfer-Encoding: CHUNKED", body=BODY), 200,
           canonical(b"POST /s HTTP/1.1", body=BODY)),
    Vector("te-leading-comma", post(b"Transfer-Encoding: ,chunked", body=BODY), 200,
           canonical(b"POST /s HTTP/1.1", body=BODY)),
    Vector("te-trailing-comma", post(b"Transfer-Encoding: chunked,", body=BODY), 200,
           canonical(b"POST /s HTTP/1.1", body=BODY)),
    Vector("te-then-empty-line", post(b"Transfer-Encoding: chunked", b"Transfer-Encoding:", body=BODY),
           200, canonical(b"POST /s HTTP/1.1", body=BODY)),
    Vector("te-ows", post(b"Transfer-Encoding: \t chunked \t", body=BODY), 200,
           canonical(b"POST /s HTTP/1.1", body=BODY)),
    # --- absolute-form: routed and forwarded by the target's authority ---------------------------
    Vector("absolute-host-mismatch", b"GET http://" + HOST + b"/x HTTP/1.1\r\nHost: internal-admin.example"
           b"\r\n\r\n", 200, canonical(b"GET /x HTTP/1.1", b"host: " + HOST, te=False, host=False)),
    Vector("absolute-no-path", b"GET http://" + HOST + b" HTTP/1.1\r\n" + H + b"\r\n", 200,
           canonical(b"GET / HTTP/1.1", b"host: " + HOST, te=False, host=False)),
    Vector("absolute-query-only", b"GET http://" + HOST + b"?a=1 HTTP/1.1\r\n" + H + b"\r\n", 200,
           canonical(b"GET /?a=1 HTTP/1.1", b"host: " + HOST, te=False, host=False)),
    Vector("absolute-upper", b"GET HTTP://ECHO.default.svc.cluster.local/Y HTTP/1.1\r\nHost: x\r\n\r\n",
           200, canonical(b"GET /Y HTTP/1.1", b"host: " + HOST, te=False, host=False)),
    Vector("absolute-http10-no-host", b"GET http://" + HOST + b"/z HTTP/1.0\r\n\r\n", 200,
           canonical(b"GET /z HTTP/1.0", b"host: " + HOST, te=False, host=False)[:-2]
           + b"connection: keep-alive\r\n\r\n"),
    # --- hop-by-hop: every Connection token honoured ---------------------------------------------
    Vector("connection-many-tokens", b"GET / HTTP/1.1\r\n" + H + b"Connection: "
           + b", ".join(b"x-h%d" % i for i in range(40)) + b"\r\n"
           + b"".join(b"X-H%d: v\r\n" % i for i in range(40)) + b"X-Kept: 1\r\n\r\n", 200,
           canonical(b"GET / HTTP/1.1", b"X-Kept: 1", te=False)),
    Vector("connection-names-framing", post(b"Connection: content-length, host", b"Content-Length: 5",
                                            body=b"hello"), 200,
           canonical(b"POST /s HTTP/1.1", b"Content-Length: 5", te=False, body=b"hello")),
    Vector("hop-by-hop-dropped", b"GET / HTTP/1.1\r\n" + H + b"Keep-Alive: timeout=5\r\n"
           b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Kept: 1\r\n\r\n", 200,
           canonical(b"GET / HTTP/1.1", b"X-Kept: 1", te=False)),
    Vector("xff-spoof-appended", b"GET / HTTP/1.1\r\n" + H + b"X-Forwarded-For: 6.6.6.6\r\n"
           b"X-Forwarded-Proto: https\r\n\r\n", 200,
           canonical(b"GET / HTTP/1.1", te=False).replace(b"for: 127.0.0.1", b"for: 6.6.6.6, 127.0.0.1")),
    # --- chunked bodies: framing forwarded as is, forbidden trailers dropped ----------------------
    Vector("trailers-forbidden-dropped", chunked(
        b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n"
        b"Host: evil\r\nAuthorization: Basic eA==\r\nCookie: a=b\r\nX-After: 2\r\n\r\n"), 200,
           canonical(b"POST /s HTTP/1.1", body=b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-After: 2\r\n\r\n")),
    Vector("trailers-allowed-kept", chunked(b"3\r\nabc\r\n0\r\nX-Checksum: 9\r\n\r\n"), 200,
           canonical(b"POST /s HTTP/1.1", body=b"3\r\nabc\r\n0\r\nX-Checksum: 9\r\n\r\n")),
    Vector("chunk-extensions", chunked(b"3;name=v;x\r\nabc\r\n0;last\r\n\r\n"), 200,
           canonical(b"POST /s HTTP/1.1", body=b"3;name=v;x\r\nabc\r\n0;last\r\n\r\n")),
    Vector("chunk-leading-zeros", chunked(b"0003\r\nabc\r\n000\r\n\r\n"), 200,
           canonical(b"POST /s HTTP/1.1", body=b"0003\r\nabc\r\n000\r\n\r\n")),
    Vector("leading-crlf-skipped", b"\r\n\r\nGET /l HTTP/1.1\r\n" + H + b"\r\n", 200,
           canonical(b"GET /l HTTP/1.1", te=False)),
]

# forwarded first: the refused vectors then meet a warm upstream pool (a head would go at once)
VECTORS = FORWARDED + REFUSED
