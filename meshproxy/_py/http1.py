"""Pure-Python twin of ``meshproxy._core.http1`` (the contract is ``meshproxy/_core/http1.pyi``).

This is the ``MESHPROXY_NO_EXTENSIONS=1`` data plane, so it is written for CPython speed: every
grammar is a regex compiled once and matched with ``pos``/``endpos`` on the caller's buffer (no
slicing, no ``str``), and the common case (a whole, valid head in one read) costs one ``find`` per
line plus one ``fullmatch`` per line.

Theory of operation
-------------------
A head is processed line by line, in order. A line is complete when its LF has arrived; for each
complete line the checks run in the order an incremental reader would meet them (size limit,
then syntax, then header semantics), so feeding a head whole or byte by byte gives the same
outcome. The incomplete last line (the "tail") is checked against the limits (431/414) and
against a *valid-prefix* regex, so a head that is already provably bad raises at once instead of
waiting for more bytes (RFC 9112 section 2.2 lets a server reject early; it also bounds the
work a slow sender can cause).

Re-parsing after ``parse`` returned 0 restarts from ``start`` unless no LF arrived since the last
call, in which case only the tail is rechecked (a slow sender costs one tail check per read, not
a rescan of the head). The buffer must only grow between such calls.
"""
import re
import uuid

from meshproxy.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_HEAD_SIZE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_REQUEST_LINE",
    "ChunkedFramer",
    "RequestParser",
    "ResponseParser",
    "request_id",
]

DEFAULT_MAX_HEAD_SIZE = 61440
DEFAULT_MAX_HEADERS = 100
DEFAULT_MAX_REQUEST_LINE = 16384
DEFAULT_MAX_TRAILER_SIZE = 16384

# Leading empty lines skipped before a request line (RFC 9112 section 2.2 says "at least one").
_MAX_LEADING_CRLF = 8

# --- grammar (RFC 9110 section 5.6.2, RFC 9112 sections 3, 4, 5, 7.1) -------------------------
# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#       / DIGIT / ALPHA
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# field-vchar = VCHAR / obs-text
_VCHAR = rb"[\x21-\x7e\x80-\xff]"

# request-line = method SP request-target SP HTTP-version
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/1\.([01])")


def _nested_prefix(*parts):
    """A regex matching every prefix of the concatenation of ``parts`` (each an atom)."""
    out = b""
    for part in reversed(parts):
        out = b"(?:" + part + out + b")?"
    return out


# Every prefix of a line that could still become a request line (for the incomplete tail); a CR
# is only a valid prefix where the line could end.
_REQUEST_LINE_PREFIX = re.compile(
    _nested_prefix(_TCHAR + rb"+", b" ", rb"[\x21-\x7e]+", b" ", *(bytes([c]) for c in b"HTTP/"),
                   b"[0-9]", rb"\.", rb"[0-9]\r?")
)
_ANY_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")

# status-line = HTTP-version SP status-code SP [ reason-phrase ]  (the SP before an empty reason
# is tolerated when missing, as most clients do)
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_STATUS_LINE_PREFIX = re.compile(
    _nested_prefix(*(bytes([c]) for c in b"HTTP/"), b"[0-9]", rb"\.", b"[0-9]", b" ", b"[0-9]",
                   b"[0-9]", rb"[0-9](?:\r| [\t\x20-\x7e\x80-\xff]*\r?)?")
)

# field-line = field-name ":" OWS field-value OWS
_HEADER_LINE = re.compile(
    rb"(" + _TCHAR + rb"+):[ \t]*((?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?)[ \t]*"
)
_HEADER_LINE_PREFIX = re.compile(rb"(?:" + _TCHAR + rb"+(?::[\t\x20-\x7e\x80-\xff]*)?)?\r?")
# A trailer line's prefix: a CR only as the whole (final, empty) line or after the colon (the
# compiled framer rejects a name followed by CR at once).
_TRAILER_LINE_PREFIX = re.compile(
    rb"\r|(?:" + _TCHAR + rb"+(?::[\t\x20-\x7e\x80-\xff]*\r?)?)?")
# What may follow a valid tail that is already past a header's colon / inside a request target.
_VALUE_CONT = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\r?")
_TARGET_CONT = re.compile(rb"[\x21-\x7e]*\r?")
_TAIL_VALUE, _TAIL_TARGET = 1, 2
_CTL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_HOST = re.compile(rb"[A-Za-z0-9.:_~!$&'()*+,;=%\[\]\-]*")
_AUTHORITY = re.compile(rb"[A-Za-z0-9.:_~!$&'()*+,;=%\[\]\-]+")
# absolute-form: scheme "://" authority path-abempty [ "?" query ]  (http and https only)
_ABSOLUTE = re.compile(rb"([Hh][Tt][Tt][Pp][Ss]?)://([^/?#]*)(.*)", re.S)
# authority-form = uri-host ":" port  (CONNECT only)
_AUTHORITY_FORM = re.compile(rb"[A-Za-z0-9.:_~!$&'()*+,;=%\[\]\-]*:[0-9]+")

# chunk-size [ chunk-ext ] CRLF; chunk-ext is "; then anything but CTLs other than HTAB"
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*)?")
_CHUNK_SIZE_PREFIX = re.compile(rb"(?:[0-9A-Fa-f]{1,16}(?:;[\t\x20-\x7e\x80-\xff]*)?\r?)?")

_KNOWN_CODINGS = frozenset(
    (b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress", b"identity")
)
_NEVER_HOP = frozenset((b"content-length", b"transfer-encoding", b"host"))
_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"))
# Request headers the proxy re-adds itself (see the module doc of http1.pyi).
_PROXY_SET = frozenset((b"x-forwarded-for", b"x-forwarded-proto"))

# Header names with meaning for framing or routing, dispatched once per header line.
_H_HOST, _H_CL, _H_TE, _H_CONNECTION, _H_UPGRADE, _H_EXPECT = range(1, 7)
_SPECIAL = {
    b"host": _H_HOST,
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONNECTION,
    b"upgrade": _H_UPGRADE,
    b"expect": _H_EXPECT,
}

_CRLF = b"\r\n"
_TE_CHUNKED = b"transfer-encoding: chunked\r\n"
_HOST_SET = frozenset((b"host",))
_TE_SET = frozenset((b"transfer-encoding",))
_CONNECTION_UPGRADE = b"Connection: upgrade\r\n"


def _list_elements(value):
    """The non-empty, OWS-trimmed, lowercased elements of a comma list (RFC 9110 section 5.6.1)."""
    out = []
    for item in bytes(value).split(b","):
        item = item.strip(b" \t")
        if item:
            out.append(item.lower())
    return out


def _bad_header_line(buf, p, le, trailer=False):
    """Why the header line ``buf[p:le]`` does not match the grammar (cold path)."""
    what = "trailer" if trailer else "header"
    first = buf[p]
    if first == 32 or first == 9:
        return ProtocolError(f"obs-fold in {what}")
    if buf.find(b"\r", p, le) >= 0:
        return ProtocolError(f"bare CR in {what}")
    colon = buf.find(b":", p, le)
    if colon < 0:
        return ProtocolError(f"{what} line without colon")
    if colon == p:
        return ProtocolError(f"empty {what} name")
    last = buf[colon - 1]
    if last == 32 or last == 9:
        return ProtocolError(f"whitespace before colon in {what}")
    if re.fullmatch(_TCHAR + rb"+", buf[p:colon]) is None:
        return ProtocolError(f"bad {what} name")
    if _CTL_IN_VALUE.search(buf, colon + 1, le) is not None:
        return ProtocolError(f"control byte in {what} value")
    return ProtocolError(f"bad {what} line")


def _first_bad_offset(prefix_re, buf, p, le):
    """Length of the shortest prefix of ``buf[p:le]`` that ``prefix_re`` rejects, else None."""
    m = prefix_re.match(buf, p, le)
    end = m.end() if m is not None else p
    if end < le:
        return end - p + 1
    return None


class _HeadParser:
    """What request and response heads share: header lines, framing headers, serialization."""

    __slots__ = (
        "version",
        "content_length",
        "chunked",
        "keep_alive",
        "upgrade",
        "head_length",
        "header_count",
        "_max_head_size",
        "_max_headers",
        "_buf",
        "_end",
        "_lines",
        "_conn_names",
        "_resume",
    )

    _is_request = False

    def __init__(self, max_head_size, max_headers):
        self._max_head_size = max_head_size
        self._max_headers = max_headers
        self.version = 1
        self.content_length = -1
        self.chunked = False
        self.keep_alive = False
        self.upgrade = None
        self.head_length = 0
        self.header_count = 0
        self._buf = b""
        self._end = 0
        # one (line start, line end after CRLF, name end, value start, value end, lowercased name)
        # per header line
        self._lines = []
        self._conn_names = frozenset()
        # (start, buffer length, offset after the last LF, first line done) after a 0 return
        self._resume = None

    # -- hooks ---------------------------------------------------------------------------------
    def _first_line(self, buf, hs, le, n):  # pragma: no cover - overridden
        raise NotImplementedError

    def _first_line_tail(self, buf, hs, n):  # pragma: no cover - overridden
        raise NotImplementedError

    def _request_line_size(self, buf, hs, n):
        pass

    def _skip_leading(self, buf, start, n):
        return start

    def _finish(self, st):  # pragma: no cover - overridden
        raise NotImplementedError

    # -- the shared line loop ------------------------------------------------------------------
    def parse(self, buf, start=0):
        n = len(buf)
        if start < 0:
            raise ProtocolError("negative start offset")
        if start >= n:
            return 0
        resume = self._resume
        if (
            resume is not None
            and resume[0] == start
            and resume[1] <= n
            and buf.find(b"\n", resume[2], n) < 0
        ):
            # Only the incomplete last line grew: recheck the tail alone.
            _, old_n, p, first_done, hs, count, mode = resume
            self._resume = None
            mode = self._check_tail(buf, hs, p, n, first_done, count, old_n, mode)
            self._resume = (start, n, p, first_done, hs, count, mode)
            return 0
        self._resume = None
        try:
            return self._parse(buf, start, n)
        except ProtocolError:
            self._resume = None
            raise
        except (IndexError, ValueError, TypeError, OverflowError) as exc:  # defensive: never leak
            self._resume = None
            raise ProtocolError(f"malformed head ({type(exc).__name__})") from exc

    def _check_tail(self, buf, hs, p, n, first_done, count, old_n=-1, mode=0):
        """Checks on the incomplete line ``buf[p:n]`` (no LF in it yet); returns the tail mode.

        The mode says which part of the line the tail was in when it was last found valid
        (``_TAIL_VALUE``: past a header's colon; ``_TAIL_TARGET``: inside the request target), so
        that only the bytes added since ``old_n`` need checking on the next call.
        """
        if n - hs > self._max_head_size:
            raise ProtocolError("head too large", 431)
        if mode and old_n > p:
            q = old_n - 1 if buf[old_n - 1] == 13 else old_n
            cont = _VALUE_CONT if mode == _TAIL_VALUE else _TARGET_CONT
            if cont.fullmatch(buf, q, n) is not None:
                if not first_done:
                    self._request_line_size(buf, hs, n)
                return mode
        if not first_done:
            self._first_line_tail(buf, hs, n)
            if self._is_request and buf.count(b" ", hs, n) == 1:
                return _TAIL_TARGET
            return 0
        if p >= n:
            return 0
        if count >= self._max_headers and buf[p] != 13:
            raise ProtocolError("too many headers", 431)
        if _HEADER_LINE_PREFIX.fullmatch(buf, p, n) is None:
            raise _bad_header_line(buf, p, n) if buf.find(b"\r", p, n - 1) < 0 else ProtocolError(
                "bare CR in header"
            )
        return _TAIL_VALUE if buf.find(b":", p, n) >= 0 else 0

    def _parse(self, buf, start, n):
        hs = self._skip_leading(buf, start, n)
        if hs < 0:
            return 0
        max_head = self._max_head_size
        max_headers = self._max_headers
        find = buf.find
        header_line = _HEADER_LINE.fullmatch
        special = _SPECIAL

        lf = find(b"\n", hs, n)
        if lf < 0:
            self._resume = None
            mode = self._check_tail(buf, hs, hs, n, False, 0)
            self._resume = (start, n, hs, False, hs, 0, mode)
            return 0
        if lf == hs or buf[lf - 1] != 13:
            self._limit_before_bad(hs, lf + 1, lf - hs + 1)
            raise ProtocolError("bare LF in head")
        st = _State()
        self._first_line(buf, hs, lf - 1, st)
        p = lf + 1
        lines = []
        count = 0
        while True:
            lf = find(b"\n", p, n)
            if lf < 0:
                mode = self._check_tail(buf, hs, p, n, True, count)
                self._resume = (start, n, p, True, hs, count, mode)
                return 0
            e = lf + 1
            if lf == p or buf[lf - 1] != 13:
                if count >= max_headers and lf != p:
                    raise ProtocolError("too many headers", 431)
                self._limit_before_bad(hs, e, lf - hs + 1)
                raise ProtocolError("bare LF in head")
            le = lf - 1
            if le == p:
                if e - hs > max_head:
                    raise ProtocolError("head too large", 431)
                break
            if count >= max_headers and buf[p] != 13:
                raise ProtocolError("too many headers", 431)
            m = header_line(buf, p, le)
            if e - hs > max_head:
                if m is None:
                    bad = _first_bad_offset(_HEADER_LINE_PREFIX, buf, p, le)
                    if bad is not None and p + bad - hs <= max_head:
                        raise _bad_header_line(buf, p, le)
                raise ProtocolError("head too large", 431)
            if m is None:
                raise _bad_header_line(buf, p, le)
            ne = m.end(1)
            lname = m.group(1).lower()
            vs = m.start(2)
            ve = m.end(2)
            lines.append((p, e, ne, vs, ve, lname))
            count += 1
            kind = special.get(lname)
            if kind is not None:
                self._special(buf, kind, vs, ve, st)
            p = e

        self._resume = None
        self._buf = buf
        self._lines = lines
        self.header_count = count
        self.head_length = e - start
        self._end = e
        self._finish(st)
        return e - start

    def _limit_before_bad(self, hs, e, bad_at):
        """A line ending at ``e`` is bad from its ``bad_at``-th byte (counted from ``hs``): an
        incremental reader meets the 431 first if the limit is passed before that byte."""
        if e - hs > self._max_head_size and bad_at > self._max_head_size:
            raise ProtocolError("head too large", 431)

    def _special(self, buf, kind, vs, ve, st):
        if kind == _H_CL:
            if _CONTENT_LENGTH.fullmatch(buf, vs, ve) is None:
                if buf.find(b",", vs, ve) >= 0:
                    raise ProtocolError("comma list in Content-Length")
                if ve - vs > 18 and re.fullmatch(rb"[0-9]+", buf[vs:ve]):
                    raise ProtocolError("Content-Length too large")
                raise ProtocolError("bad Content-Length")
            value = int(buf[vs:ve])
            if st.te:
                raise ProtocolError("Content-Length and Transfer-Encoding together")
            if st.content_length >= 0 and st.content_length != value:
                raise ProtocolError("conflicting Content-Length values")
            st.content_length = value
        elif kind == _H_TE:
            if st.content_length >= 0:
                raise ProtocolError("Content-Length and Transfer-Encoding together")
            if self._is_request and st.version == 0:
                raise ProtocolError("Transfer-Encoding in an HTTP/1.0 request")
            st.te = True
            if self._is_request:
                # Exactly one "chunked" (RFC 9112 section 6.1; empty elements ignored, RFC 9110
                # section 5.6.1.2); the first fault is raised at the end of the head: another
                # coding 501 (as Envoy and h11), "chunked" twice 400.
                for coding in _list_elements(buf[vs:ve]):
                    st.codings += 1
                    if coding == b"chunked":
                        if st.chunked and not st.te_bad:
                            st.te_bad = 400
                        st.chunked = True
                    elif not st.te_bad:
                        st.te_bad = 501
                return
            for coding in _list_elements(buf[vs:ve]):
                if coding not in _KNOWN_CODINGS:
                    raise ProtocolError("unknown transfer coding")
                if st.chunked:
                    if coding == b"chunked":
                        raise ProtocolError("chunked applied twice")
                    raise ProtocolError("Transfer-Encoding does not end in chunked")
                if coding == b"chunked":
                    st.chunked = True
                st.codings += 1
        elif kind == _H_CONNECTION:
            st.connection.extend(_list_elements(buf[vs:ve]))
        elif kind == _H_UPGRADE:
            if st.upgrade is None:
                st.upgrade = bytes(buf[vs:ve]).lower()
        elif kind == _H_EXPECT:
            if buf[vs:ve].lower() == b"100-continue":
                st.expect_continue = True
        else:  # _H_HOST
            if not self._is_request:
                return
            st.host_count += 1
            if st.host_count > 1:
                raise ProtocolError("more than one Host header")
            if _HOST.fullmatch(buf, vs, ve) is None:
                raise ProtocolError("bad character in Host")
            st.host = bytes(buf[vs:ve]).lower()

    def _finish_framing(self, st):
        if st.te and self._is_request:
            if st.te_bad == 501:
                raise ProtocolError("transfer coding other than chunked", 501)
            if st.te_bad:
                raise ProtocolError("chunked applied twice")
            if st.codings == 0:
                raise ProtocolError("empty Transfer-Encoding")
        elif st.te:
            if st.codings == 0:
                raise ProtocolError("empty Transfer-Encoding")
            if not st.chunked:
                raise ProtocolError("Transfer-Encoding does not end in chunked")
        conn = st.connection
        # Framing and routing headers are never dropped because a Connection header names them:
        # "Connection: content-length" must not let a client strip the framing upstream sees.
        self._conn_names = frozenset(conn) - _NEVER_HOP
        self.version = st.version
        self.content_length = st.content_length
        self.chunked = st.chunked
        if st.version == 1:
            self.keep_alive = b"close" not in conn
        else:
            self.keep_alive = b"keep-alive" in conn and b"close" not in conn

    # -- cold path accessors -------------------------------------------------------------------
    def headers(self):
        buf = self._buf
        return [(bytes(buf[p:ne]), bytes(buf[vs:ve])) for p, _, ne, vs, ve, _ in self._lines]

    def get(self, name):
        buf = self._buf
        for _, _, _, vs, ve, lname in self._lines:
            if lname == name:
                return bytes(buf[vs:ve])
        return None

    def has(self, name):
        return any(lname == name for _, _, _, _, _, lname in self._lines)

    def get_all(self, name):
        buf = self._buf
        vals = [bytes(buf[vs:ve]) for _, _, _, vs, ve, lname in self._lines if lname == name]
        if not vals:
            return None
        return vals[0] if len(vals) == 1 else b",".join(vals)

    def _copy_lines(self, out, keep_upgrade, also_drop=frozenset()):
        """Append the kept header lines to ``out``, coalescing adjacent ones into one slice."""
        buf = self._buf
        drop = _HOP_BY_HOP | self._conn_names | also_drop
        if keep_upgrade:
            drop = drop - {b"upgrade"}
        run_start = run_end = -1
        for p, e, _, _, _, lname in self._lines:
            if lname in drop and not (keep_upgrade and lname == b"upgrade"):
                continue
            if p == run_end:
                run_end = e
            else:
                if run_start >= 0:
                    out.append(buf[run_start:run_end])
                run_start, run_end = p, e
        if run_start >= 0:
            out.append(buf[run_start:run_end])


class _State:
    """Per-parse scratch values (kept off the parser so a failed parse leaves no trace)."""

    __slots__ = (
        "version",
        "content_length",
        "te",
        "chunked",
        "codings",
        "connection",
        "upgrade",
        "expect_continue",
        "host_count",
        "host",
        "extra",
        "te_bad",
    )

    def __init__(self):
        self.version = 1
        self.content_length = -1
        self.te = False
        self.chunked = False
        self.codings = 0
        self.connection = []
        self.upgrade = None
        self.expect_continue = False
        self.host_count = 0
        self.host = None
        self.extra = None
        self.te_bad = 0


class RequestParser(_HeadParser):
    """Parses request heads; see ``meshproxy/_core/http1.pyi``."""

    __slots__ = (
        "method",
        "target",
        "path",
        "host",
        "absolute",
        "expect_continue",
        "is_head",
        "request_id",
        "forwarded_for",
        "_max_request_line",
    )

    _is_request = True

    def __init__(
        self,
        max_head_size=DEFAULT_MAX_HEAD_SIZE,
        max_request_line=DEFAULT_MAX_REQUEST_LINE,
        max_headers=DEFAULT_MAX_HEADERS,
    ):
        super().__init__(max_head_size, max_headers)
        self._max_request_line = max_request_line
        self.method = b""
        self.target = b""
        self.path = b""
        self.host = None
        self.absolute = False
        self.expect_continue = False
        self.is_head = False
        self.request_id = None
        self.forwarded_for = None

    def _skip_leading(self, buf, start, n):
        # RFC 9112 section 2.2: ignore at least one empty line before the request line.
        pos = start
        skipped = 0
        while pos < n:
            c = buf[pos]
            if c == 13:
                if pos + 1 >= n:
                    return -1
                if buf[pos + 1] != 10:
                    raise ProtocolError("bare CR in head")
                if skipped == _MAX_LEADING_CRLF:
                    raise ProtocolError("too many empty lines before the request line")
                skipped += 1
                pos += 2
            elif c == 10:
                raise ProtocolError("bare LF in head")
            else:
                return pos
        return -1

    def _line_limit_at(self, buf, hs):
        """Prefix length (from ``hs``) at which an incremental reader sees the 414."""
        at = self._max_request_line + 1
        if buf[hs + at - 1] == 13:
            at += 1
        return at

    def _request_line_size(self, buf, hs, n):
        size = n - hs
        if buf[n - 1] == 13:
            size -= 1
        if size > self._max_request_line:
            raise ProtocolError("request line too long", 414)

    def _first_line_tail(self, buf, hs, n):
        self._request_line_size(buf, hs, n)
        if _REQUEST_LINE_PREFIX.fullmatch(buf, hs, n) is None:
            if buf.find(b"\r", hs, n - 1) >= 0:
                raise ProtocolError("bare CR in head")
            raise self._bad_request_line(buf, hs, n, partial=True)

    def _first_line(self, buf, hs, le, st):
        max_head = self._max_head_size
        size = le - hs
        m = _REQUEST_LINE.fullmatch(buf, hs, le)
        if size > self._max_request_line or size + 2 > max_head:
            # Which limit (or syntax error) would an incremental reader have met first?
            candidates = []
            if size + 2 > max_head:
                candidates.append((max_head + 1, 0))
            if size > self._max_request_line:
                candidates.append((self._line_limit_at(buf, hs), 1))
            if m is None:
                bad = _first_bad_offset(_REQUEST_LINE_PREFIX, buf, hs, le)
                if bad is not None:
                    candidates.append((bad, 2))
            _, which = min(candidates)
            if which == 0:
                raise ProtocolError("head too large", 431)
            if which == 1:
                raise ProtocolError("request line too long", 414)
        if m is None:
            if buf.find(b"\r", hs, le) >= 0:
                raise ProtocolError("bare CR in head")
            raise self._bad_request_line(buf, hs, le, partial=False)
        method = m.group(1)
        target = m.group(2)
        st.version = version = 1 if buf[le - 1] == 49 else 0
        st.extra = (method, target, version)
        self._classify_target(method, target, st)

    @staticmethod
    def _bad_request_line(buf, hs, le, partial):
        parts = bytes(buf[hs:le]).split(b" ")
        if b"" in parts[:-1] or (not partial and b"" in parts):
            return ProtocolError("bad spacing in request line")
        if re.fullmatch(_TCHAR + rb"+", parts[0]) is None:
            return ProtocolError("bad method")
        if len(parts) > 3:
            return ProtocolError("too many spaces in request line")
        if len(parts) >= 2 and re.fullmatch(rb"[\x21-\x7e]*", parts[1]) is None:
            return ProtocolError("bad byte in request target")
        if partial:
            return ProtocolError("bad HTTP version")
        if len(parts) < 3:
            return ProtocolError("request line without version")
        if _ANY_VERSION.fullmatch(parts[2]) is not None:
            return ProtocolError("HTTP version not supported", 505)
        return ProtocolError("bad HTTP version")

    @staticmethod
    def _classify_target(method, target, st):
        first = target[0]
        if first == 47:  # "/": origin-form
            if method == b"CONNECT":
                raise ProtocolError("CONNECT needs an authority-form target")
            pass
        elif target == b"*":
            if method != b"OPTIONS":
                raise ProtocolError("asterisk-form target outside OPTIONS")
        elif method == b"CONNECT":
            if _AUTHORITY_FORM.fullmatch(target) is None:
                raise ProtocolError("bad CONNECT target")
        else:
            m = _ABSOLUTE.fullmatch(target)
            if m is None:
                raise ProtocolError("bad request target")
            authority = m.group(2)
            if not authority:
                raise ProtocolError("empty authority in absolute-form target")
            if _AUTHORITY.fullmatch(authority) is None:
                raise ProtocolError("bad authority in absolute-form target")

    def _finish(self, st):
        method, target, version = st.extra
        # Framing first, then Host: the compiled twin's order (a bad Transfer-Encoding is 501
        # even when Host is missing too).
        self._finish_framing(st)
        if version == 1 and st.host_count == 0:
            raise ProtocolError("missing Host header")
        self.method = method
        self.target = target
        self.absolute = False
        host = st.host
        if target[0] == 47 or target == b"*" or method == b"CONNECT":
            path = target
        else:
            m = _ABSOLUTE.fullmatch(target)
            host = m.group(2).lower()
            path = m.group(3)
            if not path:
                path = b"/"
            elif path[0] != 47:  # "http://a?q" -> "/?q"
                path = b"/" + path
            self.absolute = True
        self.path = path
        self.host = host
        self.upgrade = st.upgrade if b"upgrade" in st.connection else None
        self.expect_continue = st.expect_continue
        self.is_head = method == b"HEAD"
        buf = self._buf
        rid = None
        xff = []
        for _, _, _, vs, ve, lname in self._lines:
            if lname == b"x-request-id":
                if rid is None:
                    rid = bytes(buf[vs:ve])
            elif lname == b"x-forwarded-for":
                xff.append(bytes(buf[vs:ve]))
        self.request_id = rid
        self.forwarded_for = b", ".join(xff) if xff else None

    def uri(self):
        path = self.path
        i = path.find(b"?")
        return path if i < 0 else path[:i]

    def serialize(self, extra=b"", path=None, drop=None):
        out = [
            self.method,
            b" ",
            self.path if path is None else path,
            b" HTTP/1.1\r\n" if self.version == 1 else b" HTTP/1.0\r\n",
        ]
        upgrade = self.upgrade is not None
        also = _PROXY_SET | frozenset(drop) if drop else _PROXY_SET
        # Lines the parser rewrites: an absolute-form target's authority replaces Host (RFC 9112
        # section 3.2.2), a chunked request carries one canonical Transfer-Encoding line.
        if self.absolute:
            also = also | _HOST_SET
        if self.chunked:
            also = also | _TE_SET
        self._copy_lines(out, upgrade, also)
        if self.absolute and not (drop and b"host" in drop):
            out.append(b"host: " + self.host + _CRLF)
        if self.chunked:
            out.append(_TE_CHUNKED)
        if upgrade:
            out.append(_CONNECTION_UPGRADE)
        if extra:
            out.append(extra)
        out.append(_CRLF)
        return b"".join(out)


class ResponseParser(_HeadParser):
    """Parses response heads; see ``meshproxy/_core/http1.pyi``."""

    __slots__ = ("status", "_reason")

    def __init__(self, max_head_size=DEFAULT_MAX_HEAD_SIZE, max_headers=DEFAULT_MAX_HEADERS):
        super().__init__(max_head_size, max_headers)
        self.status = 0
        self._reason = b""

    def _first_line_tail(self, buf, hs, n):
        if _STATUS_LINE_PREFIX.fullmatch(buf, hs, n) is None:
            if buf.find(b"\r", hs, n - 1) >= 0:
                raise ProtocolError("bare CR in head")
            raise ProtocolError("bad status line")

    def _first_line(self, buf, hs, le, st):
        m = _STATUS_LINE.fullmatch(buf, hs, le)
        if le + 2 - hs > self._max_head_size:
            bad = None if m is not None else _first_bad_offset(_STATUS_LINE_PREFIX, buf, hs, le)
            if bad is None or bad > self._max_head_size:
                raise ProtocolError("head too large", 431)
        if m is None:
            if buf.find(b"\r", hs, le) >= 0:
                raise ProtocolError("bare CR in head")
            raise ProtocolError("bad status line")
        if m.group(1) != b"1" or m.group(2) not in (b"0", b"1"):
            # Same rule as the request line: a well-formed version other than 1.0/1.1 is 505.
            raise ProtocolError("HTTP version not supported", 505)
        status = int(m.group(3))
        if status < 100 or status > 599:
            raise ProtocolError("status code out of range")
        st.version = 1 if m.group(2) == b"1" else 0
        st.extra = (status, m.group(4) or b"")

    def _finish(self, st):
        self._finish_framing(st)
        self.status, self._reason = st.extra
        self.upgrade = st.upgrade if self.status == 101 else None

    def serialize(self, extra=b"", body=0, drop=None):
        status = self.status
        out = [b"HTTP/1.1 %d " % status, self._reason, _CRLF]
        upgrade = self.upgrade is not None
        self._copy_lines(out, upgrade, frozenset(drop) if drop else frozenset())
        if upgrade:
            out.append(_CONNECTION_UPGRADE)
        if extra:
            out.append(extra)
        out.append(_CRLF)
        if body:
            end = self._end
            if body < 0 or end + body > len(self._buf):
                raise ValueError("body runs past the buffer")
            out.append(self._buf[end:end + body])
        return b"".join(out)


# --- chunked body framing ---------------------------------------------------------------------
_CS_SIZE, _CS_DATA, _CS_DATA_CR, _CS_DATA_LF, _CS_TRAILER, _CS_DONE = range(6)


class ChunkedFramer:
    """Follows a chunked body without decoding it; see ``meshproxy/_core/http1.pyi``.

    States: SIZE (reading a chunk-size line), DATA (skipping ``_remaining`` bytes), DATA_CR and
    DATA_LF (the CRLF after chunk data), TRAILER (reading trailer lines), DONE. A line split
    across ``feed`` calls is kept in ``_line`` (bounded by ``max_trailer_size``).
    """

    __slots__ = ("done", "held", "_max", "_state", "_remaining", "_line", "_line_mode",
                 "_trailer_bytes", "_sec_start", "_in_sec", "_has_fields", "_tbuf", "_trailers")

    def __init__(self, max_trailer_size=DEFAULT_MAX_TRAILER_SIZE):
        self._max = max_trailer_size
        self.reset()

    def reset(self):
        self.done = False
        self._state = _CS_SIZE
        self._remaining = 0
        self._line = bytearray()
        self._line_mode = 0
        self._trailer_bytes = 0
        # The trailer section (after the last chunk's size line) is held back from what the
        # caller forwards (``held``) and forwarded rewritten (``trailers()``) without the
        # fields that must not be trailers, unless it is only the final CRLF within one feed.
        self.held = 0
        self._sec_start = -1
        self._in_sec = False
        self._has_fields = False
        self._tbuf = None
        self._trailers = None

    def trailers(self):
        """Once ``done``: the trailer section to forward in place of the held bytes, or None."""
        return self._trailers

    def _hold(self, buf, start, i):
        s = self._sec_start if self._sec_start >= 0 else start
        self.held = i - s
        if i > s:
            if self._tbuf is None:
                self._tbuf = bytearray()
            self._tbuf += buf[s:i]

    def _section_done(self, buf, start, i):
        if self._sec_start >= 0 and not self._has_fields:
            self.held = 0
            return
        self._hold(buf, start, i)
        self._trailers = filter_trailers(bytes(self._tbuf))
        self._tbuf = None

    def feed(self, buf, start, end):
        try:
            return self._feed(buf, start, end)
        except ProtocolError:
            raise
        except (IndexError, ValueError, TypeError, OverflowError) as exc:  # defensive: never leak
            raise ProtocolError(f"malformed chunked body ({type(exc).__name__})") from exc

    def _feed(self, buf, start, end):
        self.held = 0
        if self.done:
            return 0
        if start < 0 or end > len(buf):
            raise ProtocolError("feed range outside the buffer")
        self._sec_start = -1
        p = start
        state = self._state
        while p < end:
            if state == _CS_DATA:
                take = end - p
                if take >= self._remaining:
                    p += self._remaining
                    self._remaining = 0
                    state = _CS_DATA_CR
                else:
                    self._remaining -= take
                    p = end
            elif state == _CS_DATA_CR:
                if buf[p] != 13:
                    self._state = state
                    raise ProtocolError("missing CRLF after chunk data")
                p += 1
                state = _CS_DATA_LF
            elif state == _CS_DATA_LF:
                if buf[p] != 10:
                    self._state = state
                    raise ProtocolError("missing CRLF after chunk data")
                p += 1
                state = _CS_SIZE
            else:
                self._state = state
                lf = buf.find(b"\n", p, end)
                if lf < 0:
                    self._partial(buf, p, end)
                    p = end
                    break
                was = self._state
                state = self._line_done(buf, p, lf)
                p = lf + 1
                if state == _CS_TRAILER:
                    if was == _CS_SIZE:
                        self._sec_start = p
                        self._in_sec = True
                    else:
                        self._has_fields = True
                elif state == _CS_DONE:
                    self._state = state
                    self.done = True
                    self._section_done(buf, start, p)
                    return p - start
        self._state = state
        if self._in_sec:
            self._hold(buf, start, p)
        return p - start

    def _partial(self, buf, p, end):
        line = self._line
        old = len(line)
        line += buf[p:end]
        size = len(line)
        if self._state == _CS_SIZE:
            if size - (line[-1] == 13) > self._max:
                raise ProtocolError("chunk size line too long", 431)
        elif self._trailer_bytes + size > self._max:
            raise ProtocolError("trailer section too large", 431)
        if self._line_mode and old:
            # Already past ";" (size line) or ":" (trailer): only the new bytes need a look.
            q = old - 1 if line[old - 1] == 13 else old
            if _VALUE_CONT.fullmatch(line, q) is not None:
                return
        if self._state == _CS_SIZE:
            if _CHUNK_SIZE_PREFIX.fullmatch(line) is None:
                raise _bad_size_line(line, 0, size, partial=True)
            self._line_mode = line.find(b";") >= 0
        else:
            if _TRAILER_LINE_PREFIX.fullmatch(line) is None:
                if line.find(b"\r", 0, size - 1) >= 0 or line.find(b":") < 0:
                    raise ProtocolError("bare CR in trailer")
                raise _bad_header_line(line, 0, size, trailer=True)
            self._line_mode = line.find(b":") >= 0

    def _line_done(self, buf, p, lf):
        """A line ends at ``buf[lf]`` (its earlier part may be in ``_line``); returns the state."""
        if self._line:
            line = self._line
            line += buf[p:lf + 1]
            self._line = bytearray()
            self._line_mode = 0
            buf, p, lf = line, 0, len(line) - 1
        if lf == p or buf[lf - 1] != 13:
            raise ProtocolError("bare LF in chunked body")
        le = lf - 1
        if self._state == _CS_SIZE:
            if le - p > self._max:
                raise ProtocolError("chunk size line too long", 431)
            m = _CHUNK_SIZE_LINE.fullmatch(buf, p, le)
            if m is None:
                raise _bad_size_line(buf, p, le, partial=False)
            size = int(m.group(1), 16)
            if size == 0:
                return _CS_TRAILER
            self._remaining = size
            return _CS_DATA
        # trailer section
        self._trailer_bytes += lf + 1 - p
        if self._trailer_bytes > self._max:
            raise ProtocolError("trailer section too large", 431)
        if le == p:
            return _CS_DONE
        if _HEADER_LINE.fullmatch(buf, p, le) is None:
            raise _bad_header_line(buf, p, le, trailer=True)
        return _CS_TRAILER


# Fields that must not be trailers (RFC 9110 section 6.5.1: framing, routing, authentication,
# request modifiers, response control, content format; plus hop-by-hop and the headers the proxy
# sets itself). A chunked body's trailer section is forwarded without them.
TRAILER_FORBIDDEN = frozenset((
    b"transfer-encoding", b"content-length", b"trailer", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"upgrade", b"authorization", b"proxy-authorization",
    b"www-authenticate", b"proxy-authenticate", b"cookie", b"set-cookie", b"expect",
    b"max-forwards", b"range", b"if-match", b"if-none-match", b"if-modified-since",
    b"if-unmodified-since", b"if-range", b"cache-control", b"content-type", b"content-encoding",
    b"content-range", b"age", b"expires", b"date", b"location", b"retry-after", b"vary",
    b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id",
))


def filter_trailers(section):
    """A validated trailer section (field lines, then the empty line) without the forbidden
    fields (cold: only bodies that have trailers come here)."""
    out = []
    pos = 0
    end = len(section) - 2  # the final empty line
    while pos < end:
        eol = section.index(b"\r\n", pos) + 2
        name = section[pos:section.index(b":", pos)].lower()
        if name not in TRAILER_FORBIDDEN:
            out.append(section[pos:eol])
        pos = eol
    out.append(b"\r\n")
    return b"".join(out)


def _bad_size_line(buf, p, le, partial):
    if p == le:
        return ProtocolError("missing chunk size")
    first = buf[p]
    if first in b" \t":
        return ProtocolError("whitespace before chunk size")
    i = p
    while i < le and buf[i] in b"0123456789abcdefABCDEF":
        i += 1
    if i == p:
        return ProtocolError("bad chunk size")
    if i - p > 16:
        return ProtocolError("too many hex digits in chunk size")
    if i < le and buf[i] in b" \t":
        return ProtocolError("whitespace after chunk size")
    if i < le and buf[i] == 13 and (not partial or i + 1 < le):
        return ProtocolError("bare CR in chunk size line")
    if i < le and buf[i] != 59:  # ";"
        return ProtocolError("bad chunk size")
    return ProtocolError("control byte in chunk extension")


def request_id():
    """A new random version-4 UUID as 36 ASCII bytes (for ``x-request-id``)."""
    return str(uuid.uuid4()).encode("ascii")
