"""One table of HTTP/1 inputs that drives both http1 twins and the h11 oracle (h11's SIMPLE_CASES).

Each case is ``Case(id, raw, expect, kwargs)``:

* ``raw``: the bytes of one complete message head (request or response) or chunked body;
* ``expect``: a dict of expected attributes when the input is accepted (only the keys given are
  checked; ``"headers"`` is the ``headers()`` list), or an ``int`` status_hint when it must raise
  ``ProtocolError``;
* ``kwargs``: parser constructor arguments (small limits keep limit cases fast).

``DIVERGENCES`` lists the ids where h11 (the oracle) is expected to disagree, each with a reason.
"""
from typing import NamedTuple, Union


class Case(NamedTuple):
    id: str
    raw: bytes
    expect: Union[dict, int]
    kwargs: dict = {}


def req(*lines: bytes, first: bytes = b"GET / HTTP/1.1") -> bytes:
    """A request head: ``first`` line, header lines, empty line."""
    return b"".join(line + b"\r\n" for line in (first, *lines)) + b"\r\n"


def resp(*lines: bytes, first: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return req(*lines, first=first)


H = b"Host: example.com"

# Attributes of a plain accepted HTTP/1.1 GET, overridden per case.
_GET = dict(
    method=b"GET",
    target=b"/",
    path=b"/",
    host=b"example.com",
    absolute=False,
    version=1,
    content_length=-1,
    chunked=False,
    keep_alive=True,
    upgrade=None,
    expect_continue=False,
)


def ok(**kw) -> dict:
    d = dict(_GET)
    d.update(kw)
    return d


_MANY = [b"X-H%d: v%d" % (i, i) for i in range(99)]

REQUEST_CASES = [
    # --- accepted ------------------------------------------------------------------------------
    Case("simple_get", req(H), ok(headers=[(b"Host", b"example.com")], header_count=1)),
    Case("get_query", req(H, first=b"GET /a/b?c=d&e HTTP/1.1"), ok(target=b"/a/b?c=d&e", path=b"/a/b?c=d&e")),
    Case("http10_no_host", req(first=b"GET /x HTTP/1.0"),
         ok(target=b"/x", path=b"/x", host=None, version=0, keep_alive=False, headers=[])),
    Case("http10_keep_alive", req(b"Connection: Keep-Alive", H, first=b"GET / HTTP/1.0"),
         ok(version=0, keep_alive=True)),
    Case("http10_close", req(b"Connection: close", H, first=b"GET / HTTP/1.0"), ok(version=0, keep_alive=False)),
    Case("http11_close", req(H, b"Connection: close"), ok(keep_alive=False)),
    Case("http11_close_in_list", req(H, b"Connection: foo, CLOSE"), ok(keep_alive=False)),
    Case("absolute_http", req(b"Host: other", first=b"GET http://Example.COM/p?q=1 HTTP/1.1"),
         ok(target=b"http://Example.COM/p?q=1", path=b"/p?q=1", absolute=True)),
    Case("absolute_https_port", req(H, first=b"GET https://example.com:8443/a HTTP/1.1"),
         ok(target=b"https://example.com:8443/a", path=b"/a", host=b"example.com:8443", absolute=True)),
    Case("absolute_empty_path", req(H, first=b"GET http://example.com HTTP/1.1"),
         ok(target=b"http://example.com", path=b"/", absolute=True)),
    Case("absolute_query_no_path", req(H, first=b"GET http://example.com?x=1 HTTP/1.1"),
         ok(target=b"http://example.com?x=1", path=b"/?x=1", absolute=True)),
    Case("absolute_upper_scheme", req(H, first=b"GET HTTP://example.com/z HTTP/1.1"),
         ok(target=b"HTTP://example.com/z", path=b"/z", absolute=True)),
    Case("options_asterisk", req(H, first=b"OPTIONS * HTTP/1.1"), ok(method=b"OPTIONS", target=b"*", path=b"*")),
    Case("connect_authority", req(b"Host: example.com:443", first=b"CONNECT example.com:443 HTTP/1.1"),
         ok(method=b"CONNECT", target=b"example.com:443", path=b"example.com:443", host=b"example.com:443")),
    Case("leading_crlf", b"\r\n\r\n" + req(H), ok(head_length=len(req(H)) + 4)),
    Case("eight_leading_crlf", b"\r\n" * 8 + req(H), ok()),
    Case("header_name_case_kept", req(b"hOsT: Example.com", b"X-MiXeD-CaSe: V"),
         ok(headers=[(b"hOsT", b"Example.com"), (b"X-MiXeD-CaSe", b"V")])),
    Case("ows_trimmed", req(H, b"X-A: \t v \t", b"X-B:v", b"X-C:", b"X-D:  a \t b  "),
         ok(headers=[(b"Host", b"example.com"), (b"X-A", b"v"), (b"X-B", b"v"), (b"X-C", b""), (b"X-D", b"a \t b")])),
    Case("obs_text_value", req(H, b"X-O: caf\xc3\xa9 \x80\xff"),
         ok(headers=[(b"Host", b"example.com"), (b"X-O", b"caf\xc3\xa9 \x80\xff")])),
    Case("many_headers", req(H, *_MANY), ok(header_count=100)),
    Case("custom_method", req(H, first=b"M-SEARCH / HTTP/1.1"), ok(method=b"M-SEARCH")),
    Case("post_content_length", req(H, b"Content-Length: 5", first=b"POST /u HTTP/1.1"),
         ok(method=b"POST", target=b"/u", path=b"/u", content_length=5)),
    Case("content_length_zero_padded", req(H, b"Content-Length: 007"), ok(content_length=7)),
    Case("content_length_18_digits", req(H, b"Content-Length: 999999999999999999"),
         ok(content_length=999999999999999999)),
    Case("content_length_repeated_same", req(H, b"Content-Length: 5", b"content-length: 5"), ok(content_length=5)),
    Case("chunked", req(H, b"Transfer-Encoding: chunked"), ok(chunked=True)),
    Case("chunked_case_insensitive", req(H, b"Transfer-Encoding: Chunked"), ok(chunked=True)),
    Case("te_leading_empty_element", req(H, b"Transfer-Encoding: ,chunked"), ok(chunked=True)),
    Case("te_trailing_empty_element", req(H, b"Transfer-Encoding: chunked, "), ok(chunked=True)),
    Case("te_chunked_then_empty_line", req(H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: "), ok(chunked=True)),
    Case("te_upper_case", req(H, b"Transfer-Encoding: CHUNKED"), ok(chunked=True)),
    Case("expect_continue", req(H, b"Expect: 100-Continue", b"Content-Length: 3"),
         ok(expect_continue=True, content_length=3)),
    Case("upgrade_websocket", req(H, b"Connection: Upgrade", b"Upgrade: WebSocket"), ok(upgrade=b"websocket")),
    Case("upgrade_without_connection", req(H, b"Upgrade: websocket"), ok(upgrade=None)),
    Case("host_ipv6", req(b"Host: [::1]:8080"), ok(host=b"[::1]:8080")),
    Case("host_uppercase_lowered", req(b"Host: EXAMPLE.com"), ok(host=b"example.com")),
    Case("host_empty", req(b"Host:"), ok(host=b"")),
    Case("tab_in_value", req(H, b"X-T: a\tb"), ok()),
    # --- smuggling vectors and syntax errors ---------------------------------------------------
    Case("cl_and_te", req(H, b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400),
    Case("te_and_cl", req(H, b"Transfer-Encoding: chunked", b"Content-Length: 5"), 400),
    Case("cl_differ", req(H, b"Content-Length: 5", b"Content-Length: 6"), 400),
    Case("cl_comma_same", req(H, b"Content-Length: 5, 5"), 400),
    Case("cl_comma_differ", req(H, b"Content-Length: 5,6"), 400),
    Case("cl_negative", req(H, b"Content-Length: -1"), 400),
    Case("cl_non_numeric", req(H, b"Content-Length: abc"), 400),
    Case("cl_plus_sign", req(H, b"Content-Length: +5"), 400),
    Case("cl_space_inside", req(H, b"Content-Length: 1 2"), 400),
    Case("cl_hex", req(H, b"Content-Length: 0x5"), 400),
    Case("cl_empty", req(H, b"Content-Length:"), 400),
    Case("cl_19_digits", req(H, b"Content-Length: 1000000000000000000"), 400),
    # a request's Transfer-Encoding must be exactly one "chunked": another coding is 501 (Envoy,
    # h11), "chunked" twice 400
    Case("gzip_then_chunked", req(H, b"Transfer-Encoding: gzip, chunked"), 501),
    Case("te_split_over_headers", req(H, b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"), 501),
    Case("te_identity_chunked", req(H, b"Transfer-Encoding: identity ,chunked"), 501),
    Case("te_not_last_chunked", req(H, b"Transfer-Encoding: chunked, gzip"), 501),
    Case("te_gzip_only", req(H, b"Transfer-Encoding: gzip"), 501),
    Case("te_unknown_coding", req(H, b"Transfer-Encoding: foo, chunked"), 501),
    Case("te_xchunked", req(H, b"Transfer-Encoding: xchunked"), 501),
    Case("te_chunked_param", req(H, b"Transfer-Encoding: chunked;q=1"), 501),
    Case("te_chunked_space_junk", req(H, b"Transfer-Encoding: chunked x"), 501),
    Case("te_twice_then_gzip", req(H, b"Transfer-Encoding: chunked, chunked, gzip"), 400),
    Case("te_only_commas", req(H, b"Transfer-Encoding: , ,"), 400),
    Case("absolute_userinfo", req(H, first=b"GET http://user@example.com/ HTTP/1.1"), 400),
    Case("te_chunked_twice", req(H, b"Transfer-Encoding: chunked, chunked"), 400),
    Case("te_chunked_twice_headers", req(H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400),
    Case("te_empty", req(H, b"Transfer-Encoding: "), 400),
    Case("te_http10", req(H, b"Transfer-Encoding: chunked", first=b"POST / HTTP/1.0"), 400),
    Case("ws_before_colon", req(b"Host : example.com"), 400),
    Case("tab_before_colon_cl", req(H, b"Content-Length\t: 5"), 400),
    Case("obs_fold", req(H, b"X-A: a", b" b"), 400),
    Case("obs_fold_tab", req(H, b"X-A: a", b"\tb"), 400),
    Case("obs_fold_first_line", req(b" X: a", H), 400),
    Case("bare_lf_request_line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    Case("bare_lf_header", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    Case("bare_lf_end", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
    Case("bare_lf_leading", b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Case("bare_cr_value", req(H, b"X: a\rb"), 400),
    Case("bare_cr_request_line", b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    Case("nul_in_value", req(H, b"X: a\x00b"), 400),
    Case("ctl_in_value", req(H, b"X: a\x01b"), 400),
    Case("del_in_value", req(H, b"X: a\x7fb"), 400),
    Case("esc_in_value", req(H, b"X: \x1b[31m"), 400),
    Case("empty_header_name", req(H, b": v"), 400),
    Case("header_without_colon", req(H, b"NoColon"), 400),
    Case("bad_header_name_char", req(H, b"X(y): v"), 400),
    Case("missing_host_http11", req(), 400),
    Case("two_hosts", req(H, b"Host: evil.com"), 400),
    Case("two_hosts_same", req(H, H), 400),
    Case("host_space_inside", req(b"Host: exa mple.com"), 400),
    Case("host_slash", req(b"Host: example.com/x"), 400),
    Case("host_userinfo", req(b"Host: user@example.com"), 400),
    Case("version_http2", req(H, first=b"GET / HTTP/2.0"), 505),
    Case("version_http12", req(H, first=b"GET / HTTP/1.2"), 505),
    Case("version_http09", req(H, first=b"GET / HTTP/0.9"), 505),
    Case("version_garbage", req(H, first=b"GET / HTTX/1.1"), 400),
    Case("version_lowercase", req(H, first=b"GET / http/1.1"), 400),
    Case("version_two_digits", req(H, first=b"GET / HTTP/1.10"), 400),
    Case("version_missing", req(H, first=b"GET /"), 400),
    Case("bad_method_char", req(H, first=b"G(T / HTTP/1.1"), 400),
    Case("empty_method", req(H, first=b" / HTTP/1.1"), 400),
    Case("double_space", req(H, first=b"GET  / HTTP/1.1"), 400),
    Case("trailing_space", req(H, first=b"GET / HTTP/1.1 "), 400),
    Case("tab_separator", req(H, first=b"GET\t/ HTTP/1.1"), 400),
    Case("target_non_ascii", req(H, first=b"GET /caf\xc3\xa9 HTTP/1.1"), 400),
    Case("asterisk_not_options", req(H, first=b"GET * HTTP/1.1"), 400),
    Case("connect_origin_form", req(H, first=b"CONNECT / HTTP/1.1"), 400),
    Case("authority_form_not_connect", req(H, first=b"GET example.com:80 HTTP/1.1"), 400),
    Case("absolute_empty_authority", req(H, first=b"GET http:///p HTTP/1.1"), 400),
    Case("absolute_other_scheme", req(H, first=b"GET ftp://example.com/ HTTP/1.1"), 400),
    Case("relative_target", req(H, first=b"GET index.html HTTP/1.1"), 400),
    Case("nine_leading_crlf", b"\r\n" * 9 + req(H), 400),
    Case("empty_line_then_space", b" \r\n" + req(H), 400),
    # --- limits ----------------------------------------------------------------------------------
    Case("head_too_large", req(H, b"X: " + b"a" * 61440), 431),
    Case("head_at_limit", req(H, b"X: " + b"a" * 200), ok(head_length=len(req(H, b"X: " + b"a" * 200))),
         dict(max_head_size=len(req(H, b"X: " + b"a" * 200)))),
    Case("head_one_over_limit", req(H, b"X: " + b"a" * 200), 431,
         dict(max_head_size=len(req(H, b"X: " + b"a" * 200)) - 1)),
    Case("request_line_too_long", req(H, first=b"GET /" + b"a" * 16384 + b" HTTP/1.1"), 414),
    Case("request_line_at_limit", req(H, first=b"GET /" + b"a" * 86 + b" HTTP/1.1"),
         ok(target=b"/" + b"a" * 86, path=b"/" + b"a" * 86),
         dict(max_request_line=100)),
    Case("request_line_one_over", req(H, first=b"GET /" + b"a" * 87 + b" HTTP/1.1"), 414,
         dict(max_request_line=100)),
    Case("too_many_headers", req(H, *_MANY, b"X-Last: 1"), 431),
    Case("headers_at_small_limit", req(H, b"A: 1", b"B: 2"), ok(header_count=3), dict(max_headers=3)),
    Case("headers_over_small_limit", req(H, b"A: 1", b"B: 2", b"C: 3"), 431, dict(max_headers=3)),
]

_RESP = dict(status=200, version=1, content_length=-1, chunked=False, keep_alive=True, upgrade=None)


def rok(**kw) -> dict:
    d = dict(_RESP)
    d.update(kw)
    return d


RESPONSE_CASES = [
    Case("resp_200_cl", resp(b"Content-Length: 2"), rok(content_length=2, headers=[(b"Content-Length", b"2")])),
    Case("resp_no_reason", resp(b"Content-Length: 0", first=b"HTTP/1.1 200"), rok(content_length=0)),
    Case("resp_empty_reason", resp(b"Content-Length: 0", first=b"HTTP/1.1 404 "), rok(status=404, content_length=0)),
    Case("resp_long_reason", resp(b"Content-Length: 0", first=b"HTTP/1.1 503 Service \tUnavailable \xff"),
         rok(status=503, content_length=0)),
    Case("resp_100", resp(first=b"HTTP/1.1 100 Continue"), rok(status=100)),
    Case("resp_103", resp(b"Link: </s.css>; rel=preload", first=b"HTTP/1.1 103 Early Hints"), rok(status=103)),
    Case("resp_204", resp(first=b"HTTP/1.1 204 No Content"), rok(status=204)),
    Case("resp_304", resp(b"ETag: \"x\"", first=b"HTTP/1.1 304 Not Modified"), rok(status=304)),
    Case("resp_close_delimited", resp(b"Connection: close"), rok(keep_alive=False)),
    Case("resp_chunked", resp(b"Transfer-Encoding: chunked"), rok(chunked=True)),
    Case("resp_http10", resp(b"Content-Length: 1", first=b"HTTP/1.0 200 OK"),
         rok(version=0, keep_alive=False, content_length=1)),
    Case("resp_http10_keep_alive", resp(b"Content-Length: 1", b"Connection: keep-alive", first=b"HTTP/1.0 200 OK"),
         rok(version=0, keep_alive=True, content_length=1)),
    Case("resp_101_upgrade", resp(b"Upgrade: WebSocket", b"Connection: Upgrade", first=b"HTTP/1.1 101 Switching Protocols"),
         rok(status=101, upgrade=b"websocket")),
    Case("resp_200_upgrade_header_ignored", resp(b"Upgrade: h2c", b"Content-Length: 0"),
         rok(upgrade=None, content_length=0)),
    Case("resp_599", resp(first=b"HTTP/1.1 599 Custom"), rok(status=599)),
    Case("resp_cl_and_te", resp(b"Content-Length: 2", b"Transfer-Encoding: chunked"), 400),
    Case("resp_cl_differ", resp(b"Content-Length: 2", b"Content-Length: 3"), 400),
    Case("resp_cl_comma", resp(b"Content-Length: 2, 2"), 400),
    Case("resp_te_not_chunked", resp(b"Transfer-Encoding: gzip"), 400),
    Case("resp_status_2_digits", resp(first=b"HTTP/1.1 20 OK"), 400),
    Case("resp_status_4_digits", resp(first=b"HTTP/1.1 2000 OK"), 400),
    Case("resp_status_99", resp(first=b"HTTP/1.1 099 Low"), 400),
    Case("resp_status_600", resp(first=b"HTTP/1.1 600 High"), 400),
    Case("resp_bad_version", resp(first=b"HTTP/2.0 200 OK"), 505),
    Case("resp_garbage_version", resp(first=b"HTTQ/1.1 200 OK"), 400),
    Case("resp_ctl_in_reason", resp(first=b"HTTP/1.1 200 O\x01K"), 400),
    Case("resp_bare_lf", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", 400),
    Case("resp_obs_fold", resp(b"X: a", b" b"), 400),
    Case("resp_ws_before_colon", resp(b"Content-Length : 0"), 400),
    Case("resp_too_many_headers", resp(b"A: 1", b"B: 2"), 431, dict(max_headers=1)),
    Case("resp_head_too_large", resp(b"X: " + b"a" * 300), 431, dict(max_head_size=256)),
]

# Chunked bodies: raw body bytes; expect is the number of body bytes (= len(raw)) or a status hint.
CHUNKED_CASES = [
    Case("single_chunk", b"5\r\nhello\r\n0\r\n\r\n", {}),
    Case("multiple_chunks", b"5\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n", {}),
    Case("upper_hex", b"A\r\n0123456789\r\n0\r\n\r\n", {}),
    Case("leading_zeros", b"0005\r\nhello\r\n000\r\n\r\n", {}),
    Case("sixteen_digits", b"0000000000000005\r\nhello\r\n0\r\n\r\n", {}),
    Case("extension", b"5;name=value\r\nhello\r\n0;last\r\n\r\n", {}),
    Case("extension_quoted", b"5;a=\"b c\";d\r\nhello\r\n0\r\n\r\n", {}),
    Case("trailers", b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Other:  d \r\n\r\n", {}),
    Case("empty_body", b"0\r\n\r\n", {}),
    Case("data_with_crlf_inside", b"4\r\n\r\n\r\n\r\n0\r\n\r\n", {}),
    Case("bad_hex", b"5g\r\nhello\r\n0\r\n\r\n", 400),
    Case("not_hex", b"zz\r\nhello\r\n0\r\n\r\n", 400),
    Case("empty_size", b"\r\nhello\r\n0\r\n\r\n", 400),
    Case("too_many_hex_digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    Case("space_before_size", b" 5\r\nhello\r\n0\r\n\r\n", 400),
    Case("space_after_size", b"5 \r\nhello\r\n0\r\n\r\n", 400),
    Case("space_before_ext", b"5 ;a\r\nhello\r\n0\r\n\r\n", 400),
    Case("tab_after_size", b"5\t\r\nhello\r\n0\r\n\r\n", 400),
    Case("negative_size", b"-5\r\nhello\r\n0\r\n\r\n", 400),
    Case("hex_prefix", b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    Case("missing_crlf_after_data", b"5\r\nhelloX\r\n0\r\n\r\n", 400),
    Case("lf_only_after_data", b"5\r\nhello\n0\r\n\r\n", 400),
    Case("data_too_long", b"3\r\nhello\r\n0\r\n\r\n", 400),
    Case("bare_lf_size", b"5\nhello\r\n0\r\n\r\n", 400),
    Case("bare_lf_end", b"5\r\nhello\r\n0\r\n\n", 400),
    Case("bare_cr_size", b"5\rX\r\nhello\r\n0\r\n\r\n", 400),
    Case("ctl_in_extension", b"5;a\x01\r\nhello\r\n0\r\n\r\n", 400),
    Case("trailer_obs_fold", b"0\r\nX: a\r\n b\r\n\r\n", 400),
    Case("trailer_no_colon", b"0\r\nbogus\r\n\r\n", 400),
    Case("trailer_ws_before_colon", b"0\r\nX : a\r\n\r\n", 400),
    Case("trailer_ctl", b"0\r\nX: a\x00\r\n\r\n", 400),
    Case("size_line_too_long", b"5;" + b"e" * 100 + b"\r\nhello\r\n0\r\n\r\n", 431, dict(max_trailer_size=64)),
    Case("trailers_too_large", b"0\r\nX: " + b"a" * 100 + b"\r\n\r\n", 431, dict(max_trailer_size=64)),
    Case("trailers_at_limit", b"0\r\nX: " + b"a" * 57 + b"\r\n\r\n", {}, dict(max_trailer_size=64)),
]

# Case id -> why h11 (the oracle) disagrees with the contract. Checked in both directions: a case
# listed here must disagree, a case not listed must agree.
_H11_LIMITS = "h11 has no request-line, header-count or head-size limit of its own (only max_incomplete_event_size)"
_H11_TARGET = "h11 does not check the request-target form (RFC 9112 section 3.2)"
_H11_HOST = "h11 does not check the characters of Host"
_H11_TE_LIST = ("h11 takes Transfer-Encoding as one line whose whole value is 'chunked'; we read the "
                "lines as one list and ignore empty elements (RFC 9110 section 5.6.1.2)")
_H11_CTL = "h11 accepts control bytes other than NUL, CR and LF in field values"
_H11_LF = "h11 accepts a bare LF as a line ending; we reject it (request-smuggling vector)"
_H11_FOLD = "h11 unfolds obs-fold lines; RFC 9112 section 5.2 lets a recipient reject them, we do"
_H11_CLTE = "h11 ignores Content-Length when Transfer-Encoding is present; we reject both together"
_H11_VERSION = "h11 accepts any HTTP/d.d version; we accept only 1.0 and 1.1 (505 otherwise)"
_H11_LEADING = "h11 does not skip empty lines before the request line; RFC 9112 section 2.2 says to"

DIVERGENCES = {
    # requests
    "leading_crlf": _H11_LEADING,
    "eight_leading_crlf": _H11_LEADING,
    "chunked_case_insensitive": "h11 lowercases the Transfer-Encoding value it reports; we keep header bytes as sent",
    "content_length_repeated_same": "h11 collapses equal repeated Content-Length headers into one; we keep every line",
    "te_leading_empty_element": _H11_TE_LIST,
    "te_trailing_empty_element": _H11_TE_LIST,
    "te_chunked_then_empty_line": _H11_TE_LIST,
    "te_upper_case": "h11 lowercases the Transfer-Encoding value it reports; we keep header bytes as sent",
    "absolute_userinfo": _H11_TARGET,
    "cl_and_te": _H11_CLTE,
    "te_and_cl": _H11_CLTE,
    "cl_comma_same": "h11 accepts a comma list of equal Content-Length values; we reject any comma list",
    "cl_19_digits": "h11 has no Content-Length digit limit; we cap at 18 digits (fits int64)",
    "te_http10": "h11 accepts Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1 says to treat it as faulty)",
    "obs_fold": _H11_FOLD,
    "obs_fold_tab": _H11_FOLD,
    "bare_lf_request_line": _H11_LF,
    "bare_lf_header": _H11_LF,
    "bare_lf_end": _H11_LF,
    "ctl_in_value": _H11_CTL,
    "del_in_value": _H11_CTL,
    "esc_in_value": _H11_CTL,
    "host_space_inside": _H11_HOST,
    "host_slash": _H11_HOST,
    "host_userinfo": _H11_HOST,
    "version_http2": _H11_VERSION,
    "version_http12": _H11_VERSION,
    "version_http09": _H11_VERSION,
    "asterisk_not_options": _H11_TARGET,
    "connect_origin_form": _H11_TARGET,
    "authority_form_not_connect": _H11_TARGET,
    "absolute_empty_authority": _H11_TARGET,
    "absolute_other_scheme": _H11_TARGET,
    "relative_target": _H11_TARGET,
    "head_too_large": _H11_LIMITS,
    "head_one_over_limit": _H11_LIMITS,
    "request_line_too_long": _H11_LIMITS,
    "request_line_one_over": _H11_LIMITS,
    "too_many_headers": _H11_LIMITS,
    "headers_over_small_limit": _H11_LIMITS,
    # responses
    "resp_cl_and_te": _H11_CLTE,
    "resp_cl_comma": "h11 accepts a comma list of equal Content-Length values; we reject any comma list",
    "resp_status_600": "h11 accepts any 3-digit status code; we require 100-599 (RFC 9110 section 15)",
    "resp_bad_version": _H11_VERSION,
    "resp_ctl_in_reason": "h11 accepts control bytes in the reason phrase",
    "resp_bare_lf": _H11_LF,
    "resp_obs_fold": _H11_FOLD,
    "resp_too_many_headers": _H11_LIMITS,
    "resp_head_too_large": _H11_LIMITS,
}
