# Declarations of meshproxy/_core/http1.pyx, so the engine (conn) can cimport the parsers and
# reach their fields and cpdef methods with C calls. Contract and docs: http1.pyi.
#
# Error sentinels: methods returning int/Py_ssize_t use ``except -1`` (``_scan`` uses -2, because
# -1 is never a valid length but 0 means "need more"), so a ProtocolError propagates as an
# exception without a per-call PyErr_Occurred check.

ctypedef struct HeaderLine:
    Py_ssize_t line_start   # first byte of the name
    Py_ssize_t name_end     # the colon
    Py_ssize_t value_start  # first byte of the value (after OWS)
    Py_ssize_t value_end    # one past the value's last byte (before OWS)
    Py_ssize_t line_end     # one past the LF
    int kind
    bint drop               # hop-by-hop: not forwarded
    bint skip               # named in serialize()'s ``drop`` argument (reset after each call)


cdef class _HeadParser:
    cdef:
        # limits
        Py_ssize_t max_head_size
        Py_ssize_t max_headers
        Py_ssize_t max_first_line
        bint _is_request          # requests may start with empty lines (RFC 9112 section 2.2)
        # the buffer of the last parse and where the head starts/ends in it
        object _buf
        const char *_p  # valid only while a method runs (re-read by _begin)
        Py_ssize_t _start
        Py_ssize_t _first_start   # first byte of the request/status line (after skipped CRLFs)
        Py_ssize_t _first_end     # CR of the request/status line
        Py_ssize_t _pos           # next unscanned line
        bint _first_done
        bint _complete
        # headers
        HeaderLine *_hdrs
        Py_ssize_t _cap           # entries allocated in _hdrs (grows up to max_headers)
        Py_ssize_t _nhdrs
        # Connection tokens that name other headers (hop-by-hop by listing): how many; the
        # names are re-read from the Connection lines at the end of the head (no limit)
        int _nctok
        # interpretation
        int _host_idx
        int _upgrade_idx
        bint _conn_close
        bint _conn_keep_alive
        bint _conn_upgrade
        bint _te_seen
        int _te_chunked_count
        bint _te_last_chunked
        bint _te_empty
        int _te_bad               # requests: first Transfer-Encoding fault (0, 400 or 501)
        int _te_elems             # requests: non-empty Transfer-Encoding list elements
        bint _cl_seen
        long long _cl
        bint _expect_continue
        int _nxff
        readonly int version
        readonly long long content_length
        readonly bint chunked
        readonly bint keep_alive
        readonly Py_ssize_t head_length
        readonly Py_ssize_t header_count

    cdef int _setup(self, Py_ssize_t max_head_size, Py_ssize_t max_headers,
                    Py_ssize_t max_first_line) except -1
    cdef void _reset(self, Py_ssize_t start) noexcept
    cdef int _grow(self) except -1
    # per complete line; raise ProtocolError
    cdef int _first_line(self, Py_ssize_t ls, Py_ssize_t le) except -1
    cdef int _header_line(self, Py_ssize_t ls, Py_ssize_t le) except -1
    cdef int _interpret(self, HeaderLine *h) except -1
    cdef int _coding(self, const char *c, Py_ssize_t n) except -1
    cdef int _connection_tokens(self, Py_ssize_t vs, Py_ssize_t ve) except -1
    cdef int _request_codings(self, Py_ssize_t vs, Py_ssize_t ve) except -1
    cdef int _drop_listed(self, Py_ssize_t vs, Py_ssize_t ve) noexcept
    # end-of-head rules
    cdef int _finish(self) except -1
    cdef int _common_finish(self) except -1
    # returns head length, 0 for "need more"
    cdef Py_ssize_t _scan(self, const char *p, Py_ssize_t n, Py_ssize_t start) except -2
    cdef object _first_line_too_long(self)
    cdef int _check_partial(self, const char *p, Py_ssize_t ls, Py_ssize_t n) except -1
    cdef int _check_partial_first(self, const char *p, Py_ssize_t ls, Py_ssize_t n) except -1
    cdef int _begin(self, object buf) except -1
    cdef Py_ssize_t _parse(self, object buf, Py_ssize_t start) except -1
    cdef Py_ssize_t _kept_size(self) noexcept
    cpdef bint has(self, bytes name)
    cpdef object get_all(self, bytes name)
    cdef char *_copy_kept(self, char *o) noexcept
    cdef char *_finish_head(self, char *o, bint skipped, bint up, bytes pre, bytes extra,
                            Py_ssize_t elen) noexcept
    cdef int _mark_skip(self, tuple drop) except -1
    cdef void _clear_skip(self) noexcept


cdef class RequestParser(_HeadParser):
    cdef:
        Py_ssize_t _m_end       # method is [first_start, _m_end)
        Py_ssize_t _t_start
        Py_ssize_t _t_end
        Py_ssize_t _path_start  # origin-form part of the target (absolute-form: after authority)
        Py_ssize_t _auth_start
        Py_ssize_t _auth_end
        bint _asterisk
        bint _connect
        object _last_host
        readonly bint absolute
        readonly bint expect_continue
        readonly bint is_head
        readonly object method
        readonly object host
        readonly object upgrade
        readonly object request_id
        readonly object forwarded_for

    cpdef Py_ssize_t parse(self, object buf, Py_ssize_t start=*) except -1
    cpdef bytes serialize(self, bytes extra=*, object path=*, tuple drop=*)
    cpdef bytes uri(self)
    cdef bytes _fixed_lines(self, tuple drop)
    cdef int _target_form(self) except -1


cdef class ResponseParser(_HeadParser):
    cdef:
        readonly int status
        Py_ssize_t _code_start   # status code and reason: [_code_start, _first_end)
        readonly object upgrade

    cpdef Py_ssize_t parse(self, object buf, Py_ssize_t start=*) except -1
    cpdef bytes serialize(self, bytes extra=*, Py_ssize_t body=*, tuple drop=*)


cdef class ChunkedFramer:
    cdef:
        int _state
        unsigned long long _remaining
        int _digits
        Py_ssize_t _line_len
        Py_ssize_t _trailer_len
        Py_ssize_t max_trailer_size
        Py_ssize_t _sec_start     # where the trailer section began in this feed (-1: earlier)
        bint _in_sec              # inside the trailer section (after the last chunk's line)
        bint _has_fields          # the trailer section has at least one field line
        object _tbuf              # trailer-section bytes held from earlier feeds (bytearray)
        object _trailers          # the trailer section to forward, once done (None: as is)
        readonly bint done
        readonly Py_ssize_t held

    cpdef reset(self)
    cpdef object trailers(self)
    cdef int _hold(self, const unsigned char *p, Py_ssize_t start, Py_ssize_t i) except -1
    cdef int _section_done(self, const unsigned char *p, Py_ssize_t start,
                           Py_ssize_t i) except -1
    cpdef Py_ssize_t feed(self, object buf, Py_ssize_t start, Py_ssize_t end) except -1
    cdef Py_ssize_t _feed(self, const unsigned char *p, Py_ssize_t start,
                          Py_ssize_t end) except -1
