# Augmenting declarations for meshproxy/_core/router.py (single source: meshproxy._py.router is the
# same file uncompiled): compiled, route matching and decide() run as C over typed fields.
#
# decide(rc, req) is the engine's per-request call: it returns a Decision, shared and prebuilt
# whenever it does not depend on the request (hosts without a VirtualService, every destination of a
# route); only redirects and path rewrites build one per request.
cimport cython

from meshproxy._core.http1 cimport RequestParser as CRequestParser

cdef int M_EXACT, M_PREFIX, M_REGEX
cdef object _MISSING
cdef object _ANCHOR_BOTH, _UNANCHORED


@cython.final
cdef class Matcher:
    cdef public int kind
    cdef public str text
    cdef public bint ignore_case
    cdef public bytes value
    cdef public object regex
    cdef public object raw_match

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
    @cython.locals(q=Py_ssize_t)
    cpdef set_path(self, bytes path)
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
cdef class RetryRule:
    cdef public int attempts
    cdef public double per_try_timeout, backoff, max_backoff
    cdef public bint ignore_previous_hosts, remote_localities, statuses, replay
    cdef public frozenset codes
    cdef public int on

    cpdef bint retries_status(self, int status)


@cython.final
cdef class Decision:
    cdef public int action
    cdef public object cluster
    cdef public str cluster_name
    cdef public object route_name
    cdef public object entry
    cdef public int status
    cdef public str flags
    cdef public bytes body, extra
    cdef public HeaderEdit request_edit, response_edit
    cdef public object path
    cdef public tuple filters
    cdef public list shared_filters
    cdef public bint body_filters
    cdef public RetryRule retry
    cdef public double timeout

    cpdef Decision with_path(self, object path)


@cython.final
cdef class RouteEntry:
    cdef public object route
    cdef public str name, virtual_service, route_name
    cdef public int index
    cdef public list blocks, destinations, mirrors
    cdef public bint match_all, rewrites_path
    cdef public long total_weight
    cdef public object redirect, rewrite, fault
    cdef public Decision direct
    cdef public tuple local_filters
    cdef public RetryRule retry
    cdef public object rewrite_uri, rewrite_authority, rewrite_regex, rewrite_regex_sub
    cdef public object rewrite_regex_raw

    @cython.locals(b=MatchBlock)
    cpdef object first_match(self, RequestView req)
    cpdef Decision pick(self)
    @cython.locals(acc=long, x=double)
    cpdef Decision pick_destination(self, double r)
    @cython.locals(d=Decision)
    cpdef Decision decide(self, RequestView req)
    cpdef object rewritten_path(self, RequestView req, object block)


@cython.final
cdef class RouteTable:
    cdef public str name
    cdef public list entries
    cdef public list header_bits

    @cython.locals(e=RouteEntry)
    cpdef tuple match(self, RequestView req)
    @cython.locals(e=RouteEntry)
    cpdef Decision decide(self, RequestView req)
    @cython.locals(e=RouteEntry, b=MatchBlock, have="long long", bit="long long", name=bytes,
                   uri=bytes, prefix=bytes, parser=CRequestParser)
    cpdef RouteEntry find(self, RequestView req)


@cython.final
cdef class RouteContext:
    cdef public dict hosts, tables
    cdef public list wildcards
    cdef public Decision default

    @cython.locals(p=CRequestParser, host=bytes, d=Decision, table=RouteTable)
    cpdef Decision decide(self, RequestView req)



@cython.locals(d=Decision, t=RouteTable)
cpdef object host_target(RouteContext rc, bytes host)

cpdef Decision decide(RouteContext rc, RequestView req)
