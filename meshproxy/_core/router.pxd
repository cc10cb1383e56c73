# Augmenting declarations for meshproxy/_core/router.py (a link to meshproxy/_py/router.py):
# compiled, route matching runs as C over typed fields; the source stays plain Python (the twin).
cimport cython

from meshproxy._core.http1 cimport RequestParser as CRequestParser

cdef int M_EXACT, M_PREFIX, M_REGEX
cdef object _MISSING


@cython.final
cdef class Matcher:
    cdef public int kind
    cdef public str text
    cdef public bint ignore_case
    cdef public bytes value
    cdef public object regex

    cpdef bint test(self, bytes v)


@cython.final
cdef class RequestView:
    cdef public CRequestParser parser
    cdef public bytes scheme
    cdef public int port
    cdef bytes _path, _path_lower, _uri
    cdef dict _query, _headers
    cdef public object block

    cpdef reset(self, CRequestParser parser)
    cpdef bytes path(self)
    @cython.locals(u=bytes)
    cpdef bytes uri(self)
    cpdef bytes uri_lower(self)
    @cython.locals(cache=dict)
    cpdef object header(self, bytes name)
    cpdef object query(self, bytes name)


@cython.final
cdef class MatchBlock:
    cdef public str name
    cdef public bint ignore_case
    cdef public Matcher method, authority, scheme, uri
    cdef public list headers, query
    cdef public Py_ssize_t uri_prefix_len
    cdef public bytes only_prefix
    cdef public long long need_mask

    @cython.locals(uri=Matcher, matcher=Matcher, name=bytes, invert=bint)
    cpdef bint matches(self, RequestView req)


@cython.final
cdef class HeaderEdit:
    cdef public object drop
    cdef public bytes extra
    cdef public bint empty
    cdef public object ops


@cython.final
cdef class RouteEntry:
    cdef public object route
    cdef public str name, virtual_service
    cdef public int index
    cdef public list blocks, destinations, mirrors
    cdef public bint match_all
    cdef public long total_weight
    cdef public object request_edit, response_edit, redirect, direct, rewrite, fault
    cdef public bytes direct_body
    cdef public object rewrite_uri, rewrite_authority, rewrite_regex, rewrite_regex_sub

    @cython.locals(b=MatchBlock)
    cpdef object first_match(self, RequestView req)
    cpdef tuple pick(self)
    @cython.locals(acc=long, x=double)
    cpdef tuple pick_destination(self, double r)
    cpdef object rewritten_path(self, RequestView req, object block)


@cython.final
cdef class RouteTable:
    cdef public str name
    cdef public list entries
    cdef public list header_bits

    @cython.locals(e=RouteEntry)
    cpdef tuple match(self, RequestView req)
    @cython.locals(e=RouteEntry, b=MatchBlock, have="long long", bit="long long", name=bytes,
                   uri=bytes, prefix=bytes, parser=CRequestParser)
    cpdef RouteEntry find(self, RequestView req)
