# cython: language_level=3
"""HTTP/1.1 heads and chunked framing, compiled. The contract (and its docs) is http1.pyi.

Theory of operation
-------------------
A parser validates a head line by line as bytes arrive: each call resumes at the first line it has
not seen yet (``_pos``), so a head fed byte by byte costs O(n) overall and a bad line is rejected
as soon as it is complete (and a limit as soon as it is passed). Nothing is copied while parsing:
each header line is recorded as offsets (``HeaderLine``) into the caller's buffer. Python objects
are made only for what routing needs (``host``, interned ``method``) and lazily for the rest.
``serialize`` sizes the outgoing head, allocates one bytes object and memcpy's the request line,
runs of kept header lines, the extra lines and the final CRLF into it (ARCHITECTURE.md section 3.6).
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_CheckExact, PyByteArray_GET_SIZE
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy

import os

from meshproxy.errors import ProtocolError

DEFAULT_MAX_HEAD_SIZE = 61440
DEFAULT_MAX_HEADERS = 100
DEFAULT_MAX_REQUEST_LINE = 16384
DEFAULT_MAX_TRAILER_SIZE = 16384

cdef enum HeaderKind:
    H_OTHER = 0
    H_HOST
    H_CONTENT_LENGTH
    H_TRANSFER_ENCODING
    H_CONNECTION
    H_UPGRADE
    H_KEEP_ALIVE
    H_PROXY_CONNECTION
    H_TE
    H_EXPECT
    H_XFF
    H_XFP
    H_REQUEST_ID

# tchar (RFC 9110 section 5.6.2) and field-value bytes, as lookup tables built at import.
cdef unsigned char TCHAR[256]
cdef unsigned char VCHAR_OK[256]   # allowed inside a field value: HTAB, SP, VCHAR, obs-text
cdef unsigned char HOST_OK[256]
cdef unsigned char LOWER[256]
cdef signed char HEXVAL[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        VCHAR_OK[c] = 1 if (c == 9 or (32 <= c <= 126) or c >= 128) else 0
        HOST_OK[c] = 0
        LOWER[c] = c + 32 if 65 <= c <= 90 else c
        HEXVAL[c] = -1
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TCHAR[c] = 1
    for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:_~!$&'()*+,;=%[]-":
        HOST_OK[c] = 1
    for c in range(10):
        HEXVAL[48 + c] = c
    for c in range(6):
        HEXVAL[97 + c] = 10 + c
        HEXVAL[65 + c] = 10 + c


_init_tables()

# Interned methods: the common ones cost no allocation per request.
cdef bytes _M_GET = b"GET"
cdef bytes _M_POST = b"POST"
cdef bytes _M_PUT = b"PUT"
cdef bytes _M_DELETE = b"DELETE"
cdef bytes _M_HEAD = b"HEAD"
cdef bytes _M_OPTIONS = b"OPTIONS"
cdef bytes _M_PATCH = b"PATCH"
cdef bytes _M_CONNECT = b"CONNECT"


cdef object _method(const char *p, Py_ssize_t n):
    if n == 3 and memcmp(p, b"GET", 3) == 0:
        return _M_GET
    if n == 4 and memcmp(p, b"POST", 4) == 0:
        return _M_POST
    if n == 4 and memcmp(p, b"HEAD", 4) == 0:
        return _M_HEAD
    if n == 3 and memcmp(p, b"PUT", 3) == 0:
        return _M_PUT
    if n == 6 and memcmp(p, b"DELETE", 6) == 0:
        return _M_DELETE
    if n == 7 and memcmp(p, b"OPTIONS", 7) == 0:
        return _M_OPTIONS
    if n == 5 and memcmp(p, b"PATCH", 5) == 0:
        return _M_PATCH
    if n == 7 and memcmp(p, b"CONNECT", 7) == 0:
        return _M_CONNECT
    return PyBytes_FromStringAndSize(p, n)


cdef inline bint _ieq(const char *p, Py_ssize_t n, const char *lit, Py_ssize_t litn) noexcept:
    """Case-insensitive compare of p[:n] with a lowercase literal."""
    cdef Py_ssize_t i
    if n != litn:
        return False
    for i in range(n):
        if LOWER[<unsigned char>p[i]] != <unsigned char>lit[i]:
            return False
    return True


cdef int _classify(const char *p, Py_ssize_t n) noexcept:
    if n == 4 and _ieq(p, n, b"host", 4):
        return H_HOST
    if n == 14 and _ieq(p, n, b"content-length", 14):
        return H_CONTENT_LENGTH
    if n == 17 and _ieq(p, n, b"transfer-encoding", 17):
        return H_TRANSFER_ENCODING
    if n == 10:
        if _ieq(p, n, b"connection", 10):
            return H_CONNECTION
        if _ieq(p, n, b"keep-alive", 10):
            return H_KEEP_ALIVE
    if n == 7 and _ieq(p, n, b"upgrade", 7):
        return H_UPGRADE
    if n == 16 and _ieq(p, n, b"proxy-connection", 16):
        return H_PROXY_CONNECTION
    if n == 2 and _ieq(p, n, b"te", 2):
        return H_TE
    if n == 6 and _ieq(p, n, b"expect", 6):
        return H_EXPECT
    if n == 15 and _ieq(p, n, b"x-forwarded-for", 15):
        return H_XFF
    if n == 17 and _ieq(p, n, b"x-forwarded-proto", 17):
        return H_XFP
    if n == 12 and _ieq(p, n, b"x-request-id", 12):
        return H_REQUEST_ID
    return H_OTHER


cdef object _lower_bytes(const char *p, Py_ssize_t n):
    cdef object out = PyBytes_FromStringAndSize(NULL, n)
    cdef char *o = PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(n):
        o[i] = <char>LOWER[<unsigned char>p[i]]
    return out


cdef bytes _TE_CHUNKED = b"transfer-encoding: chunked\r\n"


cdef object _err(str msg, int status=400):
    return ProtocolError(msg, status)


cdef class _HeadParser:
    """Shared line scanner and header interpretation for requests and responses."""

    def __cinit__(self, *args, **kwargs):
        self._hdrs = NULL

    def __dealloc__(self):
        if self._hdrs is not NULL:
            PyMem_Free(self._hdrs)
            self._hdrs = NULL

    cdef int _setup(self, Py_ssize_t max_head_size, Py_ssize_t max_headers,
                    Py_ssize_t max_first_line) except -1:
        if max_head_size < 64 or max_headers < 1 or max_first_line < 16:
            raise ValueError("limits too small")
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_first_line = max_first_line
        # Start small (most requests have few headers; 10,000 idle connections each holding a
        # 100-entry array cost ~5 KB apiece) and grow up to max_headers when a head needs it.
        self._cap = 16 if max_headers > 16 else max_headers
        self._hdrs = <HeaderLine *>PyMem_Malloc(self._cap * sizeof(HeaderLine))
        if self._hdrs is NULL:
            raise MemoryError()
        self._reset(0)
        return 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2
        cdef HeaderLine *n
        if cap > self.max_headers:
            cap = self.max_headers
        n = <HeaderLine *>PyMem_Realloc(self._hdrs, cap * sizeof(HeaderLine))
        if n is NULL:
            raise MemoryError()
        self._hdrs = n
        self._cap = cap
        return 0

    cdef void _reset(self, Py_ssize_t start) noexcept:
        self._start = start
        self._first_start = start
        self._first_end = start
        self._pos = start
        self._first_done = False
        self._complete = False
        self._nhdrs = 0
        self._nctok = 0
        self._host_idx = -1
        self._upgrade_idx = -1
        self._conn_close = False
        self._conn_keep_alive = False
        self._conn_upgrade = False
        self._te_seen = False
        self._te_chunked_count = 0
        self._te_last_chunked = False
        self._te_empty = False
        self._te_bad = 0
        self._te_elems = 0
        self._cl_seen = False
        self._cl = -1
        self._expect_continue = False
        self._nxff = 0
        self.content_length = -1
        self.chunked = False
        self.keep_alive = False
        self.head_length = 0
        self.header_count = 0

    def reset(self):
        """Forget any partial head (the next parse starts afresh)."""
        self._reset(0)
        self._buf = None

    cdef int _first_line(self, Py_ssize_t ls, Py_ssize_t le) except -1:
        # Subclasses implement the request-line / status-line rules.
        return 0

    cdef int _finish(self) except -1:
        # Subclasses apply their end-of-head rules (framing, keep-alive, upgrade).
        return 0

    cdef Py_ssize_t _scan(self, const char *p, Py_ssize_t n, Py_ssize_t start) except -2:
        """Resume scanning lines; return head length when complete, 0 when more is needed."""
        cdef Py_ssize_t pos, lf, ls, le
        cdef const char *hit
        cdef int skipped
        if start != self._start or self._complete:
            self._reset(start)
        pos = self._pos
        if not self._first_done:
            # Skip up to 8 empty lines before the request line (RFC 9112 section 2.2).
            skipped = <int>((pos - start) // 2) if self._is_request else 8
            while pos + 1 < n and p[pos] == b'\r' and p[pos + 1] == b'\n' and skipped < 8:
                pos += 2
                skipped += 1
            if pos < n and p[pos] == b'\n':
                raise _err("bare LF in head")
            self._first_start = pos
            self._pos = pos
        while True:
            ls = pos
            hit = <const char *>memchr(p + ls, b'\n', n - ls)
            if hit is NULL:
                # Incomplete line: enforce limits on what we have, and bare CR early.
                if not self._first_done and n - ls > self.max_first_line + 1:
                    raise self._first_line_too_long()
                if n - self._first_start > self.max_head_size:
                    raise _err("head larger than %d bytes" % self.max_head_size, 431)
                self._check_partial(p, ls, n)
                self._pos = ls
                return 0
            lf = hit - p
            if lf == ls or p[lf - 1] != b'\r':
                raise _err("bare LF in head")
            le = lf - 1
            if lf + 1 - self._first_start > self.max_head_size:
                raise _err("head larger than %d bytes" % self.max_head_size, 431)
            pos = lf + 1
            if not self._first_done:
                if le - ls > self.max_first_line:
                    raise self._first_line_too_long()
                self._first_line(ls, le)
                self._first_start = ls
                self._first_end = le
                self._first_done = True
                continue
            if le == ls:
                # The empty line: end of head.
                self._pos = pos
                self._finish()
                self._complete = True
                self.head_length = pos - start
                self.header_count = self._nhdrs
                return self.head_length
            self._header_line(ls, le)

    cdef object _first_line_too_long(self):
        return _err("request line longer than %d bytes" % self.max_first_line, 414)

    cdef int _check_partial_first(self, const char *p, Py_ssize_t ls, Py_ssize_t n) except -1:
        # Subclasses check what they can of an incomplete request/status line.
        return 0

    cdef int _check_partial(self, const char *p, Py_ssize_t ls, Py_ssize_t n) except -1:
        """Reject an incomplete line that can no longer become valid (cold: slow senders)."""
        cdef Py_ssize_t i = ls
        cdef unsigned char c
        if ls >= n:
            return 0
        c = <unsigned char>p[ls]
        if c == 13:
            if n - ls > 1:
                raise _err("bare CR in head")
            return 0
        for i in range(ls, n):
            c = <unsigned char>p[i]
            if c == 13 and i != n - 1:
                raise _err("bare CR in head")
            if (c < 32 and c != 9 and c != 13) or c == 127:
                raise _err("control character in head")
        if not self._first_done:
            return self._check_partial_first(p, ls, n)
        c = <unsigned char>p[ls]
        if c == 32 or c == 9:
            raise _err("obs-fold (line folding) in header")
        i = ls
        while i < n and TCHAR[<unsigned char>p[i]]:
            i += 1
        if i < n and p[i] != b':' and p[i] != b'\r':
            if p[i] == b' ' or p[i] == b'\t':
                raise _err("whitespace between header name and colon")
            raise _err("invalid header name")
        return 0

    cdef int _header_line(self, Py_ssize_t ls, Py_ssize_t le) except -1:
        cdef const char *p = self._p
        cdef Py_ssize_t i = ls, vs, ve
        cdef unsigned char c
        cdef HeaderLine *h
        if p[ls] == b' ' or p[ls] == b'\t':
            raise _err("obs-fold (line folding) in header")
        while i < le and TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == le or p[i] != b':':
            if i < le and (p[i] == b' ' or p[i] == b'\t'):
                raise _err("whitespace between header name and colon")
            if i < le and p[i] == b'\r':
                raise _err("bare CR in head")
            raise _err("invalid header name")
        if i == ls:
            raise _err("empty header name")
        if self._nhdrs >= self.max_headers:
            raise _err("more than %d headers" % self.max_headers, 431)
        if self._nhdrs >= self._cap:
            self._grow()
        h = &self._hdrs[self._nhdrs]
        h.line_start = ls
        h.name_end = i
        h.line_end = le + 2
        h.drop = False
        h.skip = False
        vs = i + 1
        while vs < le and (p[vs] == b' ' or p[vs] == b'\t'):
            vs += 1
        for i in range(vs, le):
            c = <unsigned char>p[i]
            if not VCHAR_OK[c]:
                if c == 13:
                    raise _err("bare CR in head")
                raise _err("control character in header value")
        ve = le
        while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
            ve -= 1
        h.value_start = vs
        h.value_end = ve
        h.kind = _classify(p + ls, h.name_end - ls)
        self._nhdrs += 1
        if h.kind != H_OTHER:
            self._interpret(h)
        return 0

    cdef int _interpret(self, HeaderLine *h) except -1:
        cdef const char *p = self._p
        cdef int kind = h.kind
        cdef Py_ssize_t i, ts, te, vs = h.value_start, ve = h.value_end
        cdef long long v
        if kind == H_XFF or kind == H_XFP or kind == H_REQUEST_ID:
            # Meaningful for requests only; RequestParser._finish marks X-Forwarded-* as dropped.
            self._nxff += kind == H_XFF
            return 0
        if kind == H_CONTENT_LENGTH:
            if ve == vs:
                raise _err("empty Content-Length")
            if ve - vs > 18:
                raise _err("Content-Length too large")
            v = 0
            for i in range(vs, ve):
                if p[i] < b'0' or p[i] > b'9':
                    raise _err("invalid Content-Length")
                v = v * 10 + (p[i] - 48)
            if self._te_seen:
                raise _err("Content-Length and Transfer-Encoding together")
            if self._cl_seen and v != self._cl:
                raise _err("repeated Content-Length with different values")
            self._cl_seen = True
            self._cl = v
        elif kind == H_TRANSFER_ENCODING:
            # rejected as soon as the line is complete, as the twin does
            if self._cl_seen:
                raise _err("Content-Length and Transfer-Encoding together")
            if self._is_request and self.version == 0:
                raise _err("Transfer-Encoding in an HTTP/1.0 request")
            self._te_seen = True
            if self._is_request:
                # Forwarded as one canonical line (serialize): the client's spelling never is.
                h.drop = True
                return self._request_codings(vs, ve)
            h.drop = False
            i = vs
            te = 0
            while True:
                while i < ve and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
                    i += 1
                if i >= ve:
                    break
                ts = i
                while i < ve and p[i] != b',' and p[i] != b' ' and p[i] != b'\t':
                    i += 1
                te = i
                self._coding(p + ts, te - ts)
                # only OWS may follow a coding before the next comma
                while i < ve and (p[i] == b' ' or p[i] == b'\t'):
                    i += 1
                if i < ve and p[i] != b',':
                    raise _err("invalid Transfer-Encoding")
            if te == 0:
                self._te_empty = True
        elif kind == H_CONNECTION:
            h.drop = True
            self._connection_tokens(vs, ve)
        elif kind == H_UPGRADE:
            h.drop = True
            self._upgrade_idx = self._nhdrs - 1
        elif kind == H_KEEP_ALIVE or kind == H_PROXY_CONNECTION or kind == H_TE:
            h.drop = True
        elif kind == H_HOST:
            if self._host_idx >= 0:
                raise _err("more than one Host header")
            for i in range(vs, ve):
                if not HOST_OK[<unsigned char>p[i]]:
                    raise _err("invalid Host header")
            self._host_idx = self._nhdrs - 1
        elif kind == H_EXPECT:
            if _ieq(p + vs, ve - vs, b"100-continue", 12):
                self._expect_continue = True
        return 0

    cdef int _request_codings(self, Py_ssize_t vs, Py_ssize_t ve) except -1:
        """A request's Transfer-Encoding must come to exactly one ``chunked`` (RFC 9112 section
        6.1; empty list elements are ignored, RFC 9110 section 5.6.1.2). The first fault, in
        order, is recorded and raised at the end of the head (``_finish``): any other coding is
        501 (as Envoy and h11 answer), ``chunked`` twice is 400."""
        cdef const char *p = self._p
        cdef Py_ssize_t i = vs, ts, te
        while i < ve:
            while i < ve and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
                i += 1
            if i >= ve:
                break
            ts = i
            while i < ve and p[i] != b',':
                i += 1
            te = i
            while te > ts and (p[te - 1] == b' ' or p[te - 1] == b'\t'):
                te -= 1
            self._te_elems += 1
            if _ieq(p + ts, te - ts, b"chunked", 7):
                self._te_chunked_count += 1
                if self._te_chunked_count > 1 and self._te_bad == 0:
                    self._te_bad = 400
            elif self._te_bad == 0:
                self._te_bad = 501
        return 0

    cdef int _coding(self, const char *c, Py_ssize_t n) except -1:
        if _ieq(c, n, b"chunked", 7):
            self._te_chunked_count += 1
            self._te_last_chunked = True
            return 0
        self._te_last_chunked = False
        if (_ieq(c, n, b"gzip", 4) or _ieq(c, n, b"x-gzip", 6) or _ieq(c, n, b"deflate", 7)
                or _ieq(c, n, b"compress", 8) or _ieq(c, n, b"x-compress", 10)
                or _ieq(c, n, b"identity", 8)):
            return 0
        raise _err("unknown transfer coding")

    cdef int _connection_tokens(self, Py_ssize_t vs, Py_ssize_t ve) except -1:
        cdef const char *p = self._p
        cdef Py_ssize_t i = vs, ts, te
        while i < ve:
            while i < ve and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
                i += 1
            if i >= ve:
                break
            ts = i
            while i < ve and p[i] != b',':
                i += 1
            te = i
            while te > ts and (p[te - 1] == b' ' or p[te - 1] == b'\t'):
                te -= 1
            if _ieq(p + ts, te - ts, b"close", 5):
                self._conn_close = True
            elif _ieq(p + ts, te - ts, b"keep-alive", 10):
                self._conn_keep_alive = True
            elif _ieq(p + ts, te - ts, b"upgrade", 7):
                self._conn_upgrade = True
            # every token may name a header (even "close": the twin drops such a header too)
            self._nctok += 1
        return 0

    cdef int _drop_listed(self, Py_ssize_t vs, Py_ssize_t ve) noexcept:
        """Mark as dropped every header named by a token of the Connection value [vs, ve)."""
        cdef const char *p = self._p
        cdef Py_ssize_t i = vs, ts, te, j
        cdef HeaderLine *h
        while i < ve:
            while i < ve and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
                i += 1
            if i >= ve:
                break
            ts = i
            while i < ve and p[i] != b',':
                i += 1
            te = i
            while te > ts and (p[te - 1] == b' ' or p[te - 1] == b'\t'):
                te -= 1
            for j in range(self._nhdrs):
                h = &self._hdrs[j]
                if h.kind != H_TRANSFER_ENCODING and h.kind != H_CONTENT_LENGTH \
                        and h.kind != H_HOST and h.kind != H_UPGRADE and h.kind != H_CONNECTION \
                        and _ieq_ci(p + h.line_start, h.name_end - h.line_start, p + ts, te - ts):
                    h.drop = True
        return 0

    cdef int _common_finish(self) except -1:
        cdef Py_ssize_t i, j
        cdef HeaderLine *h
        cdef const char *p = self._p
        if self._te_seen and self._is_request:
            if self._cl_seen:
                raise _err("Content-Length and Transfer-Encoding together")
            # the coding rules are checked by RequestParser._finish
        elif self._te_seen:
            if self._cl_seen:
                raise _err("Content-Length and Transfer-Encoding together")
            if self._te_empty and self._te_chunked_count == 0:
                raise _err("empty Transfer-Encoding")
            if self._te_chunked_count > 1:
                raise _err("chunked applied more than once")
            if not self._te_last_chunked:
                raise _err("Transfer-Encoding does not end in chunked")
            self.chunked = True
        self.content_length = self._cl if self._cl_seen else -1
        # Headers listed in Connection are hop-by-hop too (RFC 9110 section 7.6.1): every token,
        # however many (framing and routing headers excepted).
        if self._nctok:
            for i in range(self._nhdrs):
                h = &self._hdrs[i]
                if h.kind == H_CONNECTION:
                    self._drop_listed(h.value_start, h.value_end)
        return 0

    cdef int _begin(self, object buf) except -1:
        if PyBytes_CheckExact(buf):
            self._p = PyBytes_AS_STRING(buf)
            return 0
        if PyByteArray_CheckExact(buf):
            self._p = PyByteArray_AS_STRING(buf)
            return 0
        raise TypeError("buf must be bytes or bytearray")

    cdef Py_ssize_t _parse(self, object buf, Py_ssize_t start) except -1:
        cdef Py_ssize_t n, r
        self._begin(buf)
        n = len(buf)
        if start < 0 or start > n:
            raise ValueError("start out of range")
        self._buf = buf
        r = self._scan(self._p, n, start)
        return r

    # cold-path accessors
    def headers(self):
        cdef Py_ssize_t i
        cdef HeaderLine *h
        out = []
        if not self._complete:
            return out
        b = self._buf
        for i in range(self._nhdrs):
            h = &self._hdrs[i]
            out.append((bytes(b[h.line_start:h.name_end]), bytes(b[h.value_start:h.value_end])))
        return out

    def get(self, name):
        cdef Py_ssize_t i
        cdef HeaderLine *h
        cdef bytes lname = name
        if not self._complete:
            return None
        b = self._buf
        self._begin(b)
        for i in range(self._nhdrs):
            h = &self._hdrs[i]
            if _ieq(self._p + h.line_start, h.name_end - h.line_start,
                    <const char *>lname, len(lname)):
                return bytes(b[h.value_start:h.value_end])
        return None

    cpdef bint has(self, bytes name):
        """Whether a header named ``name`` (lowercase) is present; allocates nothing."""
        cdef Py_ssize_t i
        cdef HeaderLine *h
        if not self._complete:
            return False
        self._begin(self._buf)
        for i in range(self._nhdrs):
            h = &self._hdrs[i]
            if _ieq(self._p + h.line_start, h.name_end - h.line_start,
                    PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)):
                return True
        return False

    cpdef object get_all(self, bytes name):
        cdef Py_ssize_t i
        cdef HeaderLine *h
        cdef bytes lname = name
        if not self._complete:
            return None
        b = self._buf
        self._begin(b)
        vals = None
        for i in range(self._nhdrs):
            h = &self._hdrs[i]
            if _ieq(self._p + h.line_start, h.name_end - h.line_start,
                    <const char *>lname, len(lname)):
                if vals is None:
                    vals = []
                vals.append(bytes(b[h.value_start:h.value_end]))
        if vals is None:
            return None
        return vals[0] if len(vals) == 1 else b",".join(vals)

    cdef int _mark_skip(self, tuple drop) except -1:
        """Mark header lines whose (lowercase) name is in ``drop`` (route header edits)."""
        cdef Py_ssize_t i
        cdef HeaderLine *h
        cdef bytes name
        for i in range(self._nhdrs):
            h = &self._hdrs[i]
            for name in drop:
                if _ieq(self._p + h.line_start, h.name_end - h.line_start,
                        PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)):
                    h.skip = True
                    break
        return 0

    cdef void _clear_skip(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self._nhdrs):
            self._hdrs[i].skip = False

    cdef char *_finish_head(self, char *o, bint skipped, bint up, bytes pre, bytes extra,
                            Py_ssize_t elen) noexcept:
        """The end of every outgoing head: kept header lines, ``pre`` (lines the parser rewrote:
        Host, Transfer-Encoding), ``Connection: upgrade`` when upgrading, the caller's extra
        lines, the empty line. Returns the byte after it."""
        o = self._copy_kept(o)
        if skipped:
            self._clear_skip()
        if pre is not None and PyBytes_GET_SIZE(pre):
            memcpy(o, PyBytes_AS_STRING(pre), PyBytes_GET_SIZE(pre))
            o += PyBytes_GET_SIZE(pre)
        if up:
            memcpy(o, b"Connection: upgrade\r\n", 21)
            o += 21
        if elen:
            memcpy(o, PyBytes_AS_STRING(extra), elen)
            o += elen
        o[0] = b'\r'
        o[1] = b'\n'
        return o + 2

    cdef Py_ssize_t _kept_size(self) noexcept:
        cdef Py_ssize_t i, total = 0
        for i in range(self._nhdrs):
            if not self._hdrs[i].drop and not self._hdrs[i].skip:
                total += self._hdrs[i].line_end - self._hdrs[i].line_start
        return total

    cdef char *_copy_kept(self, char *o) noexcept:
        """Copy kept header lines, merging adjacent ones into one memcpy."""
        cdef Py_ssize_t i = 0, rs, re
        cdef const char *p = self._p
        while i < self._nhdrs:
            if self._hdrs[i].drop or self._hdrs[i].skip:
                i += 1
                continue
            rs = self._hdrs[i].line_start
            re = self._hdrs[i].line_end
            i += 1
            while i < self._nhdrs and not self._hdrs[i].drop and not self._hdrs[i].skip \
                    and self._hdrs[i].line_start == re:
                re = self._hdrs[i].line_end
                i += 1
            memcpy(o, p + rs, re - rs)
            o += re - rs
        return o


cdef inline bint _ieq_ci(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn) noexcept:
    cdef Py_ssize_t i
    if an != bn:
        return False
    for i in range(an):
        if LOWER[<unsigned char>a[i]] != LOWER[<unsigned char>b[i]]:
            return False
    return True


@cython.final
cdef class RequestParser(_HeadParser):
    def __init__(self, Py_ssize_t max_head_size=DEFAULT_MAX_HEAD_SIZE,
                 Py_ssize_t max_request_line=DEFAULT_MAX_REQUEST_LINE,
                 Py_ssize_t max_headers=DEFAULT_MAX_HEADERS):
        self._setup(max_head_size, max_headers, max_request_line)
        self._is_request = True

    cdef void _reset(self, Py_ssize_t start) noexcept:
        _HeadParser._reset(self, start)
        self.absolute = False
        self.expect_continue = False
        self.is_head = False
        self._asterisk = False
        self._connect = False
        self.method = None
        self.host = None
        self.upgrade = None
        self.request_id = None
        self.forwarded_for = None

    cpdef Py_ssize_t parse(self, object buf, Py_ssize_t start=0) except -1:
        return self._parse(buf, start)

    cdef int _check_partial_first(self, const char *p, Py_ssize_t ls, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = ls, v
        cdef const char *ver = b"HTTP/"
        if n > 0 and p[n - 1] == b'\r':
            n -= 1
        while i < n and TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == n:
            return 0
        if i == ls or p[i] != b' ':
            raise _err("invalid method")
        i += 1
        if i < n and p[i] == b' ':
            raise _err("malformed request line")
        while i < n and p[i] != b' ':
            if <unsigned char>p[i] < 0x21 or <unsigned char>p[i] > 0x7e:
                raise _err("invalid byte in request target")
            i += 1
        if i == n:
            return 0
        i += 1
        v = 0
        while i < n:
            if v < 5:
                if p[i] != ver[v]:
                    raise _err("malformed request line")
            elif v == 5 or v == 7:
                if p[i] < b'0' or p[i] > b'9':
                    raise _err("malformed request line")
            elif v == 6:
                if p[i] != b'.':
                    raise _err("malformed request line")
            else:
                raise _err("malformed request line")
            v += 1
            i += 1
        return 0

    cdef int _first_line(self, Py_ssize_t ls, Py_ssize_t le) except -1:
        cdef const char *p = self._p
        cdef Py_ssize_t i = ls, j, ts
        cdef unsigned char c
        while i < le and TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == ls or i == le or p[i] != b' ':
            raise _err("invalid method" if (i < le and p[i] != b' ') or i == ls else
                       "malformed request line")
        self._m_end = i
        i += 1
        ts = i
        while i < le:
            c = <unsigned char>p[i]
            if c == 32:
                break
            if c < 0x21 or c > 0x7e:
                raise _err("invalid byte in request target")
            i += 1
        if i == ts or i == le:
            raise _err("malformed request line")
        self._t_start = ts
        self._t_end = i
        i += 1
        # version: exactly "HTTP/1.1" or "HTTP/1.0"
        if le - i == 8 and p[i] == b'H' and p[i+1] == b'T' and p[i+2] == b'T' and p[i+3] == b'P' \
                and p[i+4] == b'/' and p[i+6] == b'.' and b'0' <= p[i+5] <= b'9' \
                and b'0' <= p[i+7] <= b'9':
            if p[i+5] != b'1' or (p[i+7] != b'1' and p[i+7] != b'0'):
                raise _err("HTTP version not supported", 505)
            self.version = 1 if p[i+7] == b'1' else 0
        else:
            raise _err("malformed request line")
        self._target_form()
        return 0

    cdef int _target_form(self) except -1:
        cdef const char *p = self._p
        cdef Py_ssize_t ts = self._t_start, te = self._t_end, i, a
        cdef Py_ssize_t ml = self._m_end - self._first_start
        self._path_start = ts
        self._connect = ml == 7 and memcmp(p + self._first_start, b"CONNECT", 7) == 0
        if self._connect:
            # authority-form (RFC 9112 section 3.2.3)
            for i in range(ts, te):
                if not HOST_OK[<unsigned char>p[i]] or p[i] == b'/':
                    raise _err("CONNECT needs an authority-form target")
            self._auth_start = ts
            self._auth_end = te
            return 0
        if p[ts] == b'/':
            return 0
        if te - ts == 1 and p[ts] == b'*':
            if not (ml == 7 and memcmp(p + self._first_start, b"OPTIONS", 7) == 0):
                raise _err("asterisk-form target is only for OPTIONS")
            self._asterisk = True
            return 0
        # absolute-form: http://authority[/path][?query]
        if te - ts >= 7 and _ieq(p + ts, 7, b"http://", 7):
            a = ts + 7
        elif te - ts >= 8 and _ieq(p + ts, 8, b"https://", 8):
            a = ts + 8
        else:
            raise _err("invalid request target")
        i = a
        while i < te and p[i] != b'/' and p[i] != b'?' and p[i] != b'#':
            # no '@': userinfo in an http(s) URI is an error (RFC 9110 section 4.2.4)
            if not HOST_OK[<unsigned char>p[i]]:
                raise _err("invalid authority in request target")
            i += 1
        if i == a:
            raise _err("empty authority in request target")
        self._auth_start = a
        self._auth_end = i
        self._path_start = i
        self.absolute = True
        return 0

    cdef int _finish(self) except -1:
        cdef const char *p = self._p
        cdef HeaderLine *h
        cdef Py_ssize_t i, s, e
        self._common_finish()
        if self._te_seen:
            if self.version == 0:
                raise _err("Transfer-Encoding in an HTTP/1.0 request")
            if self._te_bad == 501:
                raise _err("transfer coding other than chunked", 501)
            if self._te_bad:
                raise _err("chunked applied more than once")
            if self._te_elems == 0:
                raise _err("empty Transfer-Encoding")
            self.chunked = True
        if self.version == 1 and self._host_idx < 0:
            raise _err("missing Host header")
        if self.version == 1:
            self.keep_alive = not self._conn_close
        else:
            self.keep_alive = self._conn_keep_alive and not self._conn_close
        self.expect_continue = self._expect_continue
        if self._conn_upgrade and self._upgrade_idx >= 0:
            h = &self._hdrs[self._upgrade_idx]
            self.upgrade = _lower_bytes(p + h.value_start, h.value_end - h.value_start)
            h.drop = False
        self.method = _method(p + self._first_start, self._m_end - self._first_start)
        self.is_head = self.method is _M_HEAD
        # The fields routing and the proxy need, made once here (ARCHITECTURE.md 3.2).
        for i in range(self._nhdrs):
            h = &self._hdrs[i]
            if h.kind == H_XFF or h.kind == H_XFP:
                h.drop = True
            elif h.kind == H_REQUEST_ID and self.request_id is None:
                self.request_id = PyBytes_FromStringAndSize(p + h.value_start,
                                                            h.value_end - h.value_start)
        if self._nxff:
            self.forwarded_for = b", ".join([
                PyBytes_FromStringAndSize(p + self._hdrs[i].value_start,
                                          self._hdrs[i].value_end - self._hdrs[i].value_start)
                for i in range(self._nhdrs) if self._hdrs[i].kind == H_XFF])
        if self.absolute and self._host_idx >= 0:
            # RFC 9112 section 3.2.2: the target's authority replaces Host (serialize adds it)
            self._hdrs[self._host_idx].drop = True
        if self.absolute or self._connect:
            s = self._auth_start
            e = self._auth_end
        elif self._host_idx >= 0:
            s = self._hdrs[self._host_idx].value_start
            e = self._hdrs[self._host_idx].value_end
        else:
            return 0
        # Reuse the previous request's host object when the bytes are the same (keep-alive).
        last = self._last_host
        if last is not None and PyBytes_GET_SIZE(last) == e - s and \
                _ieq_ci(PyBytes_AS_STRING(last), e - s, p + s, e - s):
            self.host = last
        else:
            self.host = self._last_host = _lower_bytes(p + s, e - s)
        return 0

    @property
    def target(self):
        if not self._complete:
            return None
        return bytes(self._buf[self._t_start:self._t_end])

    @property
    def path(self):
        if not self._complete:
            return None
        self._begin(self._buf)
        if self.absolute:
            if self._path_start == self._t_end:
                return b"/"
            if self._p[self._path_start] != b'/':  # '?' or '#': origin-form needs a leading /
                return b"/" + PyBytes_FromStringAndSize(self._p + self._path_start,
                                                        self._t_end - self._path_start)
        return PyBytes_FromStringAndSize(self._p + self._path_start, self._t_end - self._path_start)

    cpdef bytes uri(self):
        """The path without its query string (what Istio's ``uri`` match sees)."""
        cdef const char *q
        cdef Py_ssize_t s, e
        if not self._complete:
            return None
        if self.absolute or self._asterisk or self._connect:
            path = self.path
            i = path.find(b"?")
            return path if i < 0 else path[:i]
        self._begin(self._buf)
        s = self._path_start
        e = self._t_end
        q = <const char *>memchr(self._p + s, b'?', e - s)
        if q is not NULL:
            e = q - self._p
        return PyBytes_FromStringAndSize(self._p + s, e - s)

    cpdef bytes serialize(self, bytes extra=b"", object path=None, tuple drop=None):
        cdef Py_ssize_t mlen, plen, size, elen = len(extra)
        cdef const char *pp
        cdef char *o
        cdef bint up = self.upgrade is not None
        if not self._complete:
            raise ValueError("no complete head to serialize")
        self._begin(self._buf)
        mlen = self._m_end - self._first_start
        if path is None:
            if self.absolute:
                path = self.path
            else:
                path = None
        if path is None:
            pp = self._p + self._path_start
            plen = self._t_end - self._path_start
        else:
            pp = <const char *>(<bytes>path)
            plen = len(<bytes>path)
        if drop:
            self._mark_skip(drop)
        pre = self._fixed_lines(drop)
        size = mlen + 1 + plen + 11 + self._kept_size() + elen + 2
        if pre is not None:
            size += PyBytes_GET_SIZE(pre)
        if up:
            size += 21
        out = PyBytes_FromStringAndSize(NULL, size)
        o = PyBytes_AS_STRING(out)
        # _p may have moved if buf is a bytearray that was resized; re-read it
        self._begin(self._buf)
        if path is None:
            pp = self._p + self._path_start
        memcpy(o, self._p + self._first_start, mlen)
        o += mlen
        o[0] = b' '
        o += 1
        memcpy(o, pp, plen)
        o += plen
        memcpy(o, b" HTTP/1.1\r\n" if self.version == 1 else b" HTTP/1.0\r\n", 11)
        o += 11
        self._finish_head(o, drop is not None, up, pre, extra, elen)
        return out

    cdef bytes _fixed_lines(self, tuple drop):
        """The header lines the parser itself writes: ``host: <authority>`` for an absolute-form
        target (unless the caller drops host, re-adding its own), the canonical
        ``transfer-encoding: chunked`` for a chunked request; None when there are none."""
        cdef bytes out = None
        if self.absolute and not (drop and b"host" in drop):
            out = b"host: " + self.host + b"\r\n"
        if self.chunked:
            out = _TE_CHUNKED if out is None else out + _TE_CHUNKED
        return out


@cython.final
cdef class ResponseParser(_HeadParser):
    def __init__(self, Py_ssize_t max_head_size=DEFAULT_MAX_HEAD_SIZE,
                 Py_ssize_t max_headers=DEFAULT_MAX_HEADERS):
        self._setup(max_head_size, max_headers, max_head_size)

    cdef void _reset(self, Py_ssize_t start) noexcept:
        _HeadParser._reset(self, start)
        self.status = 0
        self.upgrade = None

    cpdef Py_ssize_t parse(self, object buf, Py_ssize_t start=0) except -1:
        return self._parse(buf, start)

    cdef object _first_line_too_long(self):
        return _err("status line too long", 431)

    cdef int _first_line(self, Py_ssize_t ls, Py_ssize_t le) except -1:
        cdef const char *p = self._p
        cdef Py_ssize_t i = ls
        cdef unsigned char c
        if le - ls < 12 or not (p[i] == b'H' and p[i+1] == b'T' and p[i+2] == b'T'
                                and p[i+3] == b'P' and p[i+4] == b'/' and p[i+6] == b'.'):
            raise _err("malformed status line")
        if not (b'0' <= p[i+5] <= b'9' and b'0' <= p[i+7] <= b'9') or p[i+8] != b' ':
            raise _err("malformed status line")
        if p[i+5] != b'1' or (p[i+7] != b'1' and p[i+7] != b'0'):
            raise _err("HTTP version not supported", 505)
        self.version = 1 if p[i+7] == b'1' else 0
        i += 9
        if not (b'0' <= p[i] <= b'9' and b'0' <= p[i+1] <= b'9' and b'0' <= p[i+2] <= b'9'):
            raise _err("malformed status code")
        self.status = (p[i] - 48) * 100 + (p[i+1] - 48) * 10 + (p[i+2] - 48)
        if self.status < 100 or self.status > 599:
            raise _err("status code out of range")
        self._code_start = i
        i += 3
        if i < le:
            if p[i] != b' ':
                raise _err("malformed status line")
            for i in range(i + 1, le):
                c = <unsigned char>p[i]
                if not VCHAR_OK[c]:
                    raise _err("bare CR in head" if c == 13 else "control character in reason")
        return 0

    cdef int _finish(self) except -1:
        cdef HeaderLine *h
        self._common_finish()
        if self.version == 1:
            self.keep_alive = not self._conn_close
        else:
            self.keep_alive = self._conn_keep_alive and not self._conn_close
        if self.status == 101 and self._upgrade_idx >= 0:
            h = &self._hdrs[self._upgrade_idx]
            self.upgrade = _lower_bytes(self._p + h.value_start, h.value_end - h.value_start)
            h.drop = False
        return 0

    cpdef bytes serialize(self, bytes extra=b"", Py_ssize_t body=0, tuple drop=None):
        cdef Py_ssize_t slen, size, elen = len(extra), end
        cdef char *o
        cdef bint up = self.upgrade is not None
        if not self._complete:
            raise ValueError("no complete head to serialize")
        self._begin(self._buf)
        slen = self._first_end - self._code_start
        end = self._start + self.head_length
        if body < 0 or body > len(self._buf) - end:
            raise ValueError("body runs past the buffer")
        if drop:
            self._mark_skip(drop)
        size = 9 + slen + 2 + self._kept_size() + elen + 2 + body + (1 if slen == 3 else 0)
        if up:
            size += 21
        out = PyBytes_FromStringAndSize(NULL, size)
        o = PyBytes_AS_STRING(out)
        memcpy(o, b"HTTP/1.1 ", 9)
        o += 9
        memcpy(o, self._p + self._code_start, slen)
        o += slen
        if slen == 3:
            # RFC 9112 section 4: the SP before an (empty) reason phrase is mandatory.
            o[0] = b' '
            o += 1
        o[0] = b'\r'
        o[1] = b'\n'
        o += 2
        o = self._finish_head(o, drop is not None, up, None, extra, elen)
        if body:
            memcpy(o, self._p + end, body)
        return out


cdef enum ChunkState:
    CS_SIZE_FIRST = 0   # expecting the first hex digit of a size
    CS_SIZE             # in the hex digits
    CS_EXT              # in chunk extensions
    CS_SIZE_LF          # saw CR after the size line
    CS_DATA
    CS_DATA_CR
    CS_DATA_LF
    CS_TRAILER_START    # start of a trailer line or the final CRLF
    CS_TRAILER_NAME
    CS_TRAILER_VALUE
    CS_TRAILER_LF
    CS_FINAL_LF
    CS_DONE


@cython.final
cdef class ChunkedFramer:
    """Follows chunked framing; the docs are in http1.pyi."""

    def __init__(self, Py_ssize_t max_trailer_size=DEFAULT_MAX_TRAILER_SIZE):
        self.max_trailer_size = max_trailer_size
        self.reset()

    cpdef reset(self):
        self._state = CS_SIZE_FIRST
        self._remaining = 0
        self._digits = 0
        self._line_len = 0
        self._trailer_len = 0
        self._sec_start = -1
        self._in_sec = False
        self._has_fields = False
        self._tbuf = None
        self._trailers = None
        self.held = 0
        self.done = False

    cpdef object trailers(self):
        """Once ``done``: the trailer section to forward in place of the held bytes, or None."""
        return self._trailers

    cdef int _hold(self, const unsigned char *p, Py_ssize_t start, Py_ssize_t i) except -1:
        """The trailer-section bytes of this feed, [max(start, section start), i), are held
        (not part of what the caller forwards now); keep them for the rewrite."""
        cdef Py_ssize_t s = self._sec_start if self._sec_start >= 0 else start
        self.held = i - s
        if i > s:
            if self._tbuf is None:
                self._tbuf = bytearray()
            self._tbuf += PyBytes_FromStringAndSize(<const char *>p + s, i - s)
        return 0

    cdef int _section_done(self, const unsigned char *p, Py_ssize_t start,
                           Py_ssize_t i) except -1:
        if self._sec_start >= 0 and not self._has_fields:
            # The common case: no trailer fields, the whole section ("\r\n") in this feed:
            # forwarded in place (zero copy).
            self.held = 0
            return 0
        self._hold(p, start, i)
        self._trailers = filter_trailers(bytes(self._tbuf))
        self._tbuf = None
        return 0

    cpdef Py_ssize_t feed(self, object buf, Py_ssize_t start, Py_ssize_t end) except -1:
        cdef Py_buffer view
        cdef Py_ssize_t r
        if PyBytes_CheckExact(buf):
            if start < 0 or end > PyBytes_GET_SIZE(buf) or start > end:
                raise ValueError("range out of buffer")
            return self._feed(<const unsigned char *>PyBytes_AS_STRING(buf), start, end)
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            if start < 0 or end > view.len or start > end:
                raise ValueError("range out of buffer")
            r = self._feed(<const unsigned char *>view.buf, start, end)
        finally:
            PyBuffer_Release(&view)
        return r

    cdef Py_ssize_t _feed(self, const unsigned char *p, Py_ssize_t start,
                          Py_ssize_t end) except -1:
        cdef Py_ssize_t i = start
        cdef unsigned long long take
        cdef unsigned char c
        cdef int st = self._state
        cdef signed char hv
        self.held = 0
        if self.done:
            return 0
        self._sec_start = -1
        while i < end:
            if st == CS_DATA:
                take = <unsigned long long>(end - i)
                if take > self._remaining:
                    take = self._remaining
                self._remaining -= take
                i += <Py_ssize_t>take
                if self._remaining == 0:
                    st = CS_DATA_CR
                continue
            c = p[i]
            i += 1
            if st == CS_SIZE_FIRST or st == CS_SIZE:
                hv = HEXVAL[c]
                if hv >= 0:
                    self._digits += 1
                    if self._digits > 16:
                        self._state = st
                        raise _err("chunk size too long")
                    self._remaining = (self._remaining << 4) | <uint64_t>hv
                    st = CS_SIZE
                elif st == CS_SIZE_FIRST:
                    raise _err("invalid chunk size")
                elif c == b';':
                    st = CS_EXT
                elif c == b'\r':
                    st = CS_SIZE_LF
                else:
                    raise _err("invalid chunk size")
                self._line_len += 1
            elif st == CS_EXT:
                if c == b'\r':
                    st = CS_SIZE_LF
                elif c == b'\n':
                    raise _err("bare LF in chunk extension")
                elif c != 9 and (c < 32 or c == 127):
                    raise _err("control character in chunk extension")
                self._line_len += 1
                if self._line_len > self.max_trailer_size:
                    raise _err("chunk size line too long", 431)
            elif st == CS_SIZE_LF:
                if c != b'\n':
                    raise _err("bare CR in chunk size line")
                self._line_len = 0
                self._digits = 0
                if self._remaining == 0:
                    st = CS_TRAILER_START
                    self._sec_start = i
                    self._in_sec = True
                else:
                    st = CS_DATA
            elif st == CS_DATA_CR:
                if c != b'\r':
                    raise _err("chunk data not followed by CRLF")
                st = CS_DATA_LF
            elif st == CS_DATA_LF:
                if c != b'\n':
                    raise _err("chunk data not followed by CRLF")
                self._remaining = 0
                st = CS_SIZE_FIRST
            elif st == CS_TRAILER_START:
                self._trailer_len += 1
                if c == b'\r':
                    st = CS_FINAL_LF
                elif c == b' ' or c == b'\t':
                    raise _err("obs-fold in trailer")
                elif TCHAR[c]:
                    st = CS_TRAILER_NAME
                    self._has_fields = True
                else:
                    raise _err("invalid trailer")
            elif st == CS_TRAILER_NAME:
                self._trailer_len += 1
                if c == b':':
                    st = CS_TRAILER_VALUE
                elif not TCHAR[c]:
                    raise _err("invalid trailer name")
            elif st == CS_TRAILER_VALUE:
                self._trailer_len += 1
                if c == b'\r':
                    st = CS_TRAILER_LF
                elif not VCHAR_OK[c]:
                    raise _err("control character in trailer")
            elif st == CS_TRAILER_LF:
                self._trailer_len += 1
                if c != b'\n':
                    raise _err("bare CR in trailer")
                st = CS_TRAILER_START
            elif st == CS_FINAL_LF:
                if c != b'\n':
                    raise _err("bare CR after last chunk")
                self._state = CS_DONE
                self.done = True
                self._section_done(p, start, i)
                return i - start
            else:
                # CS_DONE: nothing more belongs to this body.
                return i - 1 - start
            if self._trailer_len > self.max_trailer_size:
                raise _err("trailers larger than %d bytes" % self.max_trailer_size, 431)
        self._state = st
        if self._in_sec:
            self._hold(p, start, i)
        return i - start


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


# request_id: xorshift128+ seeded from the OS, reseeded in forked children so workers never share
# a sequence. Formatting a UUID in C costs ~50 ns, against ~1.5 us for str(uuid.uuid4()).
cdef uint64_t _rng_s0 = 0, _rng_s1 = 0
cdef const char *_HEX = b"0123456789abcdef"


def _reseed():
    global _rng_s0, _rng_s1
    seed = os.urandom(16)
    _rng_s0 = int.from_bytes(seed[:8], "little") | 1
    _rng_s1 = int.from_bytes(seed[8:], "little") | 2


_reseed()
os.register_at_fork(after_in_child=_reseed)


cdef inline uint64_t _next64() noexcept:
    global _rng_s0, _rng_s1
    cdef uint64_t s1 = _rng_s0
    cdef uint64_t s0 = _rng_s1
    _rng_s0 = s0
    s1 ^= s1 << 23
    _rng_s1 = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
    return _rng_s1 + s0


def request_id():
    cdef unsigned char raw[16]
    cdef uint64_t a = _next64(), b = _next64()
    cdef int i, j = 0
    cdef object out = PyBytes_FromStringAndSize(NULL, 36)
    cdef char *o = PyBytes_AS_STRING(out)
    for i in range(8):
        raw[i] = (a >> (8 * i)) & 0xff
        raw[8 + i] = (b >> (8 * i)) & 0xff
    raw[6] = (raw[6] & 0x0f) | 0x40   # version 4
    raw[8] = (raw[8] & 0x3f) | 0x80   # RFC 4122 variant
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            o[j] = b'-'
            j += 1
        o[j] = _HEX[raw[i] >> 4]
        o[j + 1] = _HEX[raw[i] & 0x0f]
        j += 2
    return out
