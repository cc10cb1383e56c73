"""HTTP route tables: Istio VirtualService matching, compiled from the Snapshot at apply time.

One source, two builds: Cython compiles this file with ``router.pxd``; ``meshproxy._py.router`` is
the same file uncompiled. ``decide()`` is the one route decision: the engine calls it per request
and ``meshproxy explain`` calls it too, so what explain prints is what the data plane does.

Theory of operation
-------------------
A host whose only route is "everything goes to one cluster" costs one dict lookup: the
RouteContext maps it straight to a prebuilt Decision. Other hosts map to a ``RouteTable``: the
VirtualService's ``http[]`` routes in order, first match wins (Istio). Each ``RouteEntry`` holds its
``MatchBlock``s (OR); each block holds the conditions that must all hold (AND): uri, scheme,
method, authority, headers, withoutHeaders, queryParams. ``port``, ``sourceLabels`` and
``sourceNamespace`` were decided at compile time (control drops blocks that cannot match this
sidecar).

Per request the engine builds one ``RequestView`` over the parsed head; it fetches the path, a
header value or the query string only when a condition needs it, once. Conditions are ordered
cheapest first inside a block (method, authority, uri, headers, query), and regexes were compiled
at config time.

Regexes are RE2 (the ``google-re2`` binding), compiled as Envoy compiles them: UTF-8 mode over the
raw bytes of the request, full match for StringMatch ``regex``, RE2::GlobalReplace for
``uriRegexRewrite``. RE2 never backtracks, so a match costs time linear in the value whatever the
pattern and the input (``(a+)+b`` against 60 KiB of ``a`` is a fraction of a millisecond).
``control.regex`` validates the same patterns with the same options.
"""
from random import random as _random

from control.snapshot import INBOUND_RETRY_POLICY, RetryPolicy

DEFAULT_POLICY = RetryPolicy()

M_EXACT = 0
M_PREFIX = 1
M_REGEX = 2

_KINDS = {"exact": M_EXACT, "prefix": M_PREFIX, "regex": M_REGEX}
_MISSING = object()

_ANCHOR_BOTH = None
_UNANCHORED = None
_RE2 = []  # the google-re2 module, imported with the first regex (a sidecar without one never
#            loads it: about 3.5 MB less resident memory)


def _re2_module():
    """google-re2, imported on first use; also finds the binding's C++ entry point (one call per
    match, no generator nor Match object) when this layout of the binding has it."""
    global _ANCHOR_BOTH, _UNANCHORED
    if not _RE2:
        import re2
        try:
            from re2 import _re2 as ext
            _ANCHOR_BOTH = ext.RE2.Anchor.ANCHOR_BOTH
            _UNANCHORED = ext.RE2.Anchor.UNANCHORED
        except (ImportError, AttributeError):  # pragma: no cover - another google-re2 layout
            _ANCHOR_BOTH = _UNANCHORED = None
        _RE2.append(re2)
    return _RE2[0]


def compile_regex(pattern, ignore_case=False, capture=True):
    """An RE2 pattern (str) compiled as Envoy does: UTF-8, case-insensitive on request.

    ``capture=False`` for a yes/no match: RE2 then answers from its DFA alone, where groups would
    make it run its NFA over the whole value for their positions (0.2 ms instead of 30 ms for
    ``(a+)+b`` against 60,000 bytes that match)."""
    re2 = _re2_module()
    o = re2.Options()
    o.log_errors = False
    if ignore_case:
        o.case_sensitive = False
    if not capture:
        o.never_capture = True
    return re2.compile(pattern.encode("utf-8"), o)


def raw_match(rx):
    """``rx``'s C++ ``Match(anchor, text, pos, endpos) -> spans`` or None (use the public API)."""
    if _ANCHOR_BOTH is None:
        return None  # pragma: no cover
    raw = getattr(rx, "_regexp", None)
    return getattr(raw, "Match", None)


class Matcher:
    """A compiled Istio StringMatch over bytes."""

    def __init__(self, kind, value, ignore_case=False):
        self.kind = _KINDS[kind]
        self.text = value
        self.ignore_case = ignore_case
        v = value.encode("utf-8")
        if ignore_case and self.kind != M_REGEX:
            v = v.lower()
        self.value = v
        self.regex = compile_regex(value, ignore_case, False) if self.kind == M_REGEX else None
        self.raw_match = raw_match(self.regex) if self.kind == M_REGEX else None

    def test(self, v):
        kind = self.kind
        if kind == M_EXACT:
            return v == self.value
        if kind == M_PREFIX:
            return v.startswith(self.value)
        m = self.raw_match
        if m is not None:
            return m(_ANCHOR_BOTH, v, 0, len(v))[0][0] >= 0
        return self.regex.fullmatch(v) is not None

    def describe(self):
        return "%s %r" % (("exact", "prefix", "regex")[self.kind], self.text)


class RequestView:
    """Lazily computed request attributes a match may need (one per routed request)."""

    def __init__(self, parser, scheme, port):
        self.parser = parser
        self.scheme = scheme
        self.port = port
        self._path = None
        self._path_lower = None
        self._uri = None
        self._query = None
        self._headers = None
        self.block = None  # set by RouteTable.find: the MatchBlock that matched (True: match-all)

    def reset(self, parser):
        """Reuse this view for the next request on the same connection."""
        self.parser = parser
        self._path = None
        self._path_lower = None
        self._uri = None
        self._query = None
        self._headers = None
        self.block = None

    def set_path(self, path):
        """Report ``path`` (origin form, with its query) instead of the request's own: the codec
        sets the normalised path here, so matching, rewrites and redirects see what goes upstream."""
        self._path = path
        self._path_lower = None
        q = path.find(b"?")
        self._uri = path if q < 0 else path[:q]

    def path(self):
        """The path and query (origin form): as sent, or as normalised (``set_path``)."""
        path = self._path
        if path is None:
            path = self._path = self.parser.path
        return path

    def uri(self):
        """Istio's ``uri`` match target: the path without the query string."""
        u = self._uri
        if u is None:
            u = self._uri = self.parser.uri()
        return u

    def uri_lower(self):
        u = self._path_lower
        if u is None:
            u = self._path_lower = self.uri().lower()
        return u

    def header(self, name):
        """The value of header ``name`` (lowercase bytes), or None; several values joined by ','."""
        cache = self._headers
        if cache is None:
            cache = self._headers = {}
        else:
            v = cache.get(name, _MISSING)
            if v is not _MISSING:
                return v
        if name == b"host" or name == b":authority":
            v = self.parser.host
        elif name == b":method":
            v = self.parser.method
        elif name == b":path":
            v = self.path()
        elif name == b":scheme":
            v = self.scheme
        else:
            v = self.parser.get_all(name)
        cache[name] = v
        return v

    def query(self, name):
        q = self._query
        if q is None:
            q = self._query = parse_query(self.path())
        return q.get(name)


def parse_query(path):
    """``a=1&b=2`` of a path as {name: value} (first value wins; percent-encoding kept)."""
    out = {}
    i = path.find(b"?")
    if i < 0:
        return out
    qs = path[i + 1:]
    h = qs.find(b"#")
    if h >= 0:
        qs = qs[:h]
    for part in qs.split(b"&"):
        if not part:
            continue
        eq = part.find(b"=")
        if eq < 0:
            name, value = part, b""
        else:
            name, value = part[:eq], part[eq + 1:]
        if name not in out:
            out[name] = value
    return out


class MatchBlock:
    """One HTTPMatchRequest: every condition must hold."""

    def __init__(self, m):
        self.name = m.name
        self.ignore_case = m.ignore_uri_case
        self.method = Matcher(m.method.kind, m.method.value) if m.method else None
        self.authority = Matcher(m.authority.kind, m.authority.value, True) \
            if m.authority else None
        self.scheme = Matcher(m.scheme.kind, m.scheme.value) if m.scheme else None
        self.uri = Matcher(m.uri.kind, m.uri.value, m.ignore_uri_case) if m.uri else None
        self.headers = [(h.name.encode("latin-1"),
                         Matcher(h.match.kind, h.match.value) if h.match else None, h.invert)
                        for h in m.headers]
        self.query = [(q.name.encode("utf-8"),
                       Matcher(q.match.kind, q.match.value) if q.match else None)
                      for q in m.query_params]
        self.uri_prefix_len = len(m.uri.value.encode()) \
            if m.uri is not None and m.uri.kind == "prefix" else -1
        # Fast paths for RouteTable.find: a block that is only a case-sensitive uri prefix is
        # tested inline; ``need_mask`` has a bit per header this block requires to be present,
        # so a request lacking one skips the block with one AND (bits set by RouteTable).
        only = (self.uri is not None and self.uri.kind == M_PREFIX and not self.ignore_case
                and self.method is None and self.authority is None and self.scheme is None
                and not self.headers and not self.query)
        self.only_prefix = self.uri.value if only else None
        self.need_mask = 0

    def matches(self, req):
        if self.method is not None and not self.method.test(req.parser.method):
            return False
        if self.authority is not None:
            host = req.parser.host
            if host is None or not self.authority.test(host):
                return False
        if self.scheme is not None and not self.scheme.test(req.scheme):
            return False
        uri = self.uri
        if uri is not None:
            if not uri.test(req.uri_lower() if self.ignore_case else req.uri()):
                return False
        for name, matcher, invert in self.headers:
            v = req.header(name)
            if invert:
                # withoutHeaders: the request must not have a matching header
                if v is not None and (matcher is None or matcher.test(v)):
                    return False
            elif v is None or (matcher is not None and not matcher.test(v)):
                return False
        for name, matcher in self.query:
            v = req.query(name)
            if v is None or (matcher is not None and not matcher.test(v)):
                return False
        return True

    def describe(self):
        """The block's conditions in words (for ``meshproxy explain``)."""
        parts = []
        if self.method is not None:
            parts.append("method " + self.method.describe())
        if self.authority is not None:
            parts.append("authority " + self.authority.describe())
        if self.scheme is not None:
            parts.append("scheme " + self.scheme.describe())
        if self.uri is not None:
            parts.append("uri " + self.uri.describe()
                         + (" (ignoreUriCase)" if self.ignore_case else ""))
        for name, matcher, invert in self.headers:
            what = "present" if matcher is None else matcher.describe()
            parts.append(("without header %s %s" if invert else "header %s %s")
                         % (_s(name), what))
        for name, matcher in self.query:
            parts.append("query %s %s" % (_s(name), "present" if matcher is None
                                          else matcher.describe()))
        return ", ".join(parts) or "everything"

    def why_not(self, req):
        """The first condition that fails, in words (for ``meshproxy explain``), or None."""
        p = req.parser
        if self.method is not None and not self.method.test(p.method):
            return "method %s does not match %s" % (_s(p.method), self.method.describe())
        if self.authority is not None:
            if p.host is None or not self.authority.test(p.host):
                return "authority %s does not match %s" % (_s(p.host), self.authority.describe())
        if self.scheme is not None and not self.scheme.test(req.scheme):
            return "scheme %s does not match %s" % (_s(req.scheme), self.scheme.describe())
        if self.uri is not None:
            u = req.uri_lower() if self.ignore_case else req.uri()
            if not self.uri.test(u):
                return "uri %s does not match %s%s" % (_s(req.uri()), self.uri.describe(),
                                                       " (ignoreUriCase)" if self.ignore_case else "")
        for name, matcher, invert in self.headers:
            v = req.header(name)
            if invert:
                if v is not None and (matcher is None or matcher.test(v)):
                    return "header %s is %s (withoutHeaders%s)" % (
                        _s(name), _s(v), "" if matcher is None else " " + matcher.describe())
            elif v is None:
                return "header %s is absent" % _s(name)
            elif matcher is not None and not matcher.test(v):
                return "header %s: %s does not match %s" % (_s(name), _s(v), matcher.describe())
        for name, matcher in self.query:
            v = req.query(name)
            if v is None:
                return "query parameter %s is absent" % _s(name)
            if matcher is not None and not matcher.test(v):
                return "query parameter %s: %s does not match %s" % (_s(name), _s(v),
                                                                    matcher.describe())
        return None


class HeaderEdit:
    """Compiled HeaderOps: names to drop from the head, lines to append."""

    def __init__(self, ops):
        drop = [n.encode("latin-1") for n in ops.remove]
        drop += [n.encode("latin-1") for n, _ in ops.set]
        self.drop = tuple(dict.fromkeys(drop)) if drop else None
        lines = [b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1"))
                 for n, v in tuple(ops.set) + tuple(ops.add)]
        self.extra = b"".join(lines)
        self.empty = self.drop is None and not self.extra
        self.ops = ops

    @staticmethod
    def merge(a, b):
        """``a`` then ``b`` (route-level then destination-level), or None when both are empty."""
        if a is None or a.empty:
            return b if b is not None and not b.empty else None
        if b is None or b.empty:
            return a
        m = HeaderEdit.__new__(HeaderEdit)
        drop = (a.drop or ()) + (b.drop or ())
        m.drop = tuple(dict.fromkeys(drop)) or None
        m.extra = a.extra + b.extra
        m.empty = False
        m.ops = (a.ops, b.ops)
        return m


# Retry conditions (bits of RetryRule.on), Envoy's names.
R_5XX = 1
R_GATEWAY_ERROR = 2
R_RESET = 4
R_CONNECT_FAILURE = 8
R_RETRIABLE_4XX = 16
R_REFUSED_STREAM = 32
R_STATUS_CODES = 64
R_RETRIABLE_HEADERS = 128
R_RESET_BEFORE_REQUEST = 256
R_GRPC = 512  # cancelled, deadline-exceeded, internal, resource-exhausted, unavailable

_RETRY_BITS = {"5xx": R_5XX, "gateway-error": R_GATEWAY_ERROR, "reset": R_RESET,
               "connect-failure": R_CONNECT_FAILURE, "retriable-4xx": R_RETRIABLE_4XX,
               "refused-stream": R_REFUSED_STREAM, "retriable-status-codes": R_STATUS_CODES,
               "retriable-headers": R_RETRIABLE_HEADERS,
               "reset-before-request": R_RESET_BEFORE_REQUEST, "cancelled": R_GRPC,
               "deadline-exceeded": R_GRPC, "internal": R_GRPC, "resource-exhausted": R_GRPC,
               "unavailable": R_GRPC}

#: Conditions a connect failure satisfies, and a reset (connection lost before a response).
RETRY_ON_CONNECT_FAILURE = (R_CONNECT_FAILURE | R_5XX | R_GATEWAY_ERROR | R_RESET
                            | R_RESET_BEFORE_REQUEST)
RETRY_ON_RESET = R_RESET | R_5XX | R_GATEWAY_ERROR


class RetryRule:
    """A route's retry policy as the engine uses it (from ``control.snapshot.RetryPolicy``).

    ``on`` holds the conditions as bits; ``statuses`` is True when some response status can be
    retried (the engine looks at the status only then); ``replay`` is True when a request may be
    retried after it was sent, so the engine keeps its body (up to ``MAX_REPLAY`` bytes). gRPC
    conditions apply to gRPC responses, which arrive with the HTTP/2 codec.
    """

    def __init__(self, policy):
        self.attempts = policy.attempts
        self.per_try_timeout = policy.per_try_timeout
        self.backoff = policy.backoff
        self.max_backoff = policy.backoff * 10.0  # Envoy's default cap: ten times the base
        self.ignore_previous_hosts = policy.ignore_previous_hosts
        self.remote_localities = policy.retry_remote_localities
        self.codes = frozenset(policy.status_codes)
        on = 0
        for cond in policy.retry_on:
            on |= _RETRY_BITS.get(cond, 0)
        if not self.codes:
            on &= ~R_STATUS_CODES
        if self.attempts <= 0:
            on = 0
        self.on = on
        self.statuses = (on & (R_5XX | R_GATEWAY_ERROR | R_RETRIABLE_4XX | R_STATUS_CODES)) != 0
        self.replay = (on & (R_5XX | R_GATEWAY_ERROR | R_RESET | R_RETRIABLE_4XX
                             | R_STATUS_CODES)) != 0

    def retries_status(self, status):
        """True when a response with ``status`` is to be retried."""
        on = self.on
        if on & R_5XX and status >= 500:
            return True
        if on & R_GATEWAY_ERROR and (status == 502 or status == 503 or status == 504):
            return True
        if on & R_RETRIABLE_4XX and status == 409:
            return True
        return (on & R_STATUS_CODES) != 0 and status in self.codes


class Decision:
    """What to do with a request: route it to a cluster, or answer it here.

    ``action`` is ``A_ROUTE`` (``cluster``, the route's header edits, rewritten ``path``) or
    ``A_LOCAL`` (``status``, ``flags``, ``body`` and ``extra`` header lines). ``filters`` is the
    route's filter chain (a tuple of factories with ``create()``) or None: a route with no filters
    costs nothing per request. Decisions that do not depend on the request are built once, at
    apply time, and shared by every request they apply to.
    """

    def __init__(self, action, cluster=None, cluster_name="", route_name="default", entry=None,
                 status=0, flags="", body=b"", extra=b"", request_edit=None, response_edit=None,
                 path=None, filters=None, retry=None, timeout=0.0):
        self.action = action
        self.retry = retry if retry is not None else DEFAULT_RETRY
        self.timeout = timeout  # the route's timeout in seconds (0: none)
        self.cluster = cluster
        self.cluster_name = cluster_name
        self.route_name = route_name
        self.entry = entry
        self.status = status
        self.flags = flags
        self.body = body
        self.extra = extra
        self.request_edit = request_edit
        self.response_edit = response_edit
        self.path = path
        self.filters = filters
        self.body_filters = False
        # When every filter of the chain is stateless, one list of instances serves every
        # request (nothing made per request).
        self.shared_filters = None
        if filters is not None:
            shared = True
            for f in filters:
                if f.body:
                    self.body_filters = True
                if f.shared is None:
                    shared = False
            if shared:
                self.shared_filters = [f.shared for f in filters]

    def with_path(self, path):
        """This decision with the upstream path replaced (a rewrite)."""
        d = Decision(self.action, self.cluster, self.cluster_name, self.route_name, self.entry,
                     self.status, self.flags, self.body, self.extra, self.request_edit,
                     self.response_edit, path, self.filters, self.retry, self.timeout)
        return d

    def describe(self):
        if self.action == A_ROUTE:
            return "route to %s" % self.cluster_name
        return "answer %d%s" % (self.status, " (%s)" % self.flags if self.flags else "")


A_ROUTE = 0
A_LOCAL = 1

#: Istio's default retry policy (a route without ``retries``): connect failures, twice.
DEFAULT_RETRY = RetryRule(RetryPolicy())
#: Istio's inbound default (reset-before-request, 2 attempts).
INBOUND_RETRY = RetryRule(INBOUND_RETRY_POLICY)


def _retry_rule(policy):
    """The engine's rule for a route's policy (the two defaults are shared)."""
    if policy == DEFAULT_POLICY:
        return DEFAULT_RETRY
    if policy == INBOUND_RETRY_POLICY:
        return INBOUND_RETRY
    return RetryRule(policy)

#: No virtual host for the Host (and no default cluster), or no route matched: 404 NR.
NO_ROUTE = Decision(A_LOCAL, status=404, flags="NR", route_name=None)
#: CONNECT is not proxied (no CONNECT tunnelling in this release): 405.
CONNECT_NOT_ALLOWED = Decision(A_LOCAL, status=405, route_name=None)


class RouteEntry:
    """One HTTPRoute, compiled: what to match and what to do.

    ``chain(route, request_edit, response_edit)`` builds a filter chain (a tuple of factories) or
    returns None; it is called at apply time, once per destination (header edits differ between
    destinations) and once for routes that answer locally.
    """

    def __init__(self, route, clusters, chain=None):
        """``clusters``: name -> the data plane's Cluster object (from the same snapshot)."""
        self.route = route
        self.name = route.name
        self.virtual_service = route.virtual_service
        self.index = route.index
        self.route_name = route.name or "%s/%d" % (route.virtual_service, route.index)
        self.blocks = [MatchBlock(m) for m in route.matches]
        self.match_all = not self.blocks
        req = HeaderEdit(route.request_headers)
        resp = HeaderEdit(route.response_headers)
        rw = route.rewrite
        self.rewrite = rw
        self.rewrite_uri = rw.uri.encode("utf-8") if rw is not None and rw.uri else None
        self.rewrite_authority = rw.authority.encode("latin-1") \
            if rw is not None and rw.authority else None
        self.rewrite_regex = compile_regex(rw.uri_regex) \
            if rw is not None and rw.uri_regex else None
        self.rewrite_regex_sub = rewrite_template(rw.uri_regex_rewrite) \
            if rw is not None and rw.uri_regex else None
        self.rewrite_regex_raw = raw_match(self.rewrite_regex) \
            if self.rewrite_regex is not None else None
        self.rewrites_path = self.rewrite_uri is not None or self.rewrite_regex is not None
        authority = _authority_edit(self.rewrite_authority) \
            if self.rewrite_authority is not None else None
        local_filters = chain(route, None, None) if chain is not None else None
        self.retry = _retry_rule(route.retries)
        self.destinations = []
        self.total_weight = 0
        for d in route.destinations:
            c = clusters.get(d.cluster)
            if c is None:
                dec = Decision(A_LOCAL, None, d.cluster, self.route_name, self, 503, "NC",
                               filters=local_filters)
            else:
                req_edit = HeaderEdit.merge(HeaderEdit.merge(req, HeaderEdit(d.request_headers)),
                                            authority)
                resp_edit = HeaderEdit.merge(resp, HeaderEdit(d.response_headers))
                dec = Decision(A_ROUTE, c, d.cluster, self.route_name, self,
                               request_edit=req_edit, response_edit=resp_edit,
                               filters=chain(route, req_edit, resp_edit)
                               if chain is not None else None, retry=self.retry,
                               timeout=route.timeout)
            self.destinations.append((dec, d.weight))
            self.total_weight += d.weight
        self.redirect = route.redirect
        self.direct = None
        if route.direct_response is not None:
            self.direct = Decision(A_LOCAL, route_name=self.route_name, entry=self,
                                   status=route.direct_response.status,
                                   body=route.direct_response.body.encode("utf-8"),
                                   filters=local_filters)
        self.local_filters = local_filters
        self.fault = route.fault
        self.mirrors = [(clusters.get(m.cluster), m.percent, m.cluster) for m in route.mirrors]

    def first_match(self, req):
        """The matching block (or True when the route matches everything), else None."""
        if self.match_all:
            return True
        for b in self.blocks:
            if b.matches(req):
                return b
        return None

    def pick(self):
        """The destination's Decision for this request (weighted random when several)."""
        dests = self.destinations
        if len(dests) == 1:
            return dests[0][0]
        return self.pick_destination(_random())

    def pick_destination(self, r):
        """The destination's Decision for a uniform random number ``r`` in [0, 1)."""
        dests = self.destinations
        if len(dests) == 1:
            return dests[0][0]
        x = r * self.total_weight
        acc = 0
        for d in dests:
            acc += d[1]
            if x < acc:
                return d[0]
        return dests[-1][0]

    def decide(self, req):
        """The decision for a request this route matched (``req.block`` says how)."""
        if self.direct is not None:
            return self.direct
        if self.redirect is not None:
            return Decision(A_LOCAL, route_name=self.route_name, entry=self,
                            status=self.redirect.code,
                            extra=b"location: " + location(self.redirect, req) + b"\r\n",
                            filters=self.local_filters)
        d = self.pick()
        if d.action != A_ROUTE:
            return d
        if req.parser.method == b"CONNECT":
            return CONNECT_NOT_ALLOWED
        if self.rewrites_path:
            path = self.rewritten_path(req, req.block)
            if path is not None:
                return d.with_path(path)
        return d

    def rewritten_path(self, req, block):
        """The path to send upstream after ``rewrite.uri`` / ``uriRegexRewrite``, or None."""
        if self.rewrite_uri is None and self.rewrite_regex is None:
            return None
        path = req.path()
        q = path.find(b"?")
        uri, query = (path, b"") if q < 0 else (path[:q], path[q:])
        if self.rewrite_regex is not None:
            uri = global_replace(self.rewrite_regex, self.rewrite_regex_raw, self.rewrite_regex_sub,
                                 uri)
        elif block is not True and block is not None and block.uri_prefix_len >= 0:
            uri = self.rewrite_uri + uri[block.uri_prefix_len:]
        else:
            uri = self.rewrite_uri
        if not uri.startswith(b"/"):
            uri = b"/" + uri
        return uri + query


class RouteTable:
    """The routes of one virtual host (service host:port), first match wins."""

    def __init__(self, name, routes, clusters, chain=None):
        self.name = name
        self.entries = [RouteEntry(r, clusters, chain) for r in routes]
        bits = {}
        for e in self.entries:
            for blk in e.blocks:
                for hname, _matcher, invert in blk.headers:
                    # pseudo-headers and host are not header lines: RequestView.header maps them
                    if invert or hname.startswith(b":") or hname == b"host":
                        continue
                    if hname not in bits and len(bits) < 62:
                        bits[hname] = 1 << len(bits)
                    blk.need_mask |= bits.get(hname, 0)
        self.header_bits = list(bits.items())

    def match(self, req):
        """(entry, block) for the first matching route, or (None, None): 404 NR."""
        e = self.find(req)
        return e, req.block

    def decide(self, req):
        """The decision for ``req`` on this virtual host."""
        e = self.find(req)
        if e is None:
            return NO_ROUTE
        return e.decide(req)

    def find(self, req):
        """The first matching route (``req.block`` tells which match block), or None: 404 NR.

        The data plane's per-request call: no tuple, no intermediate call per route.
        """
        have = -1
        if self.header_bits:
            have = 0
            parser = req.parser
            for name, bit in self.header_bits:
                if parser.has(name):
                    have |= bit
        uri = None
        for e in self.entries:
            if e.match_all:
                req.block = True
                return e
            for b in e.blocks:
                if b.need_mask & ~have:
                    continue
                prefix = b.only_prefix
                if prefix is not None:
                    if uri is None:
                        uri = req.uri()
                    if uri.startswith(prefix):
                        req.block = b
                        return e
                    continue
                if b.matches(req):
                    req.block = b
                    return e
        req.block = None
        return None

    def explain(self, req):
        """Every route in order with why it did not match; stops at the first that does."""
        lines = []
        for e in self.entries:
            label = _route_label(e)
            if e.match_all:
                lines.append((label, None, "matches every request"))
                return lines, e
            reasons = []
            for i, b in enumerate(e.blocks):
                why = b.why_not(req)
                if why is None:
                    lines.append((label, b, "match[%d]%s: %s" % (
                        i, " (%s)" % b.name if b.name else "", b.describe())))
                    return lines, e
                reasons.append("match[%d]: %s" % (i, why))
            lines.append((label, None, "; ".join(reasons)))
        return lines, None


class RouteContext:
    """A listener's routing state: what ``decide`` reads (built by ``build_route_context``).

    ``hosts`` maps a lowercased Host value (``b"echo.default.svc.cluster.local:80"``) without a
    VirtualService straight to its Decision (no router code runs for it); ``tables`` maps hosts
    with one to their ``RouteTable``; ``wildcards`` are ``(suffix, Decision or RouteTable)``,
    longest suffix first; ``default`` is the listener's default Decision (None: 404 NR).
    """

    def __init__(self, hosts, tables=None, wildcards=None, default=None):
        self.hosts = hosts
        self.tables = tables
        self.wildcards = wildcards
        self.default = default

    def decide(self, req):
        """The route decision for a request (``req``: a RequestView over its parsed head); no I/O.

        Host lookup (exact, then the longest wildcard, else the listener's default), the
        VirtualService walk (first match wins), direct response, redirect, weighted destination,
        rewrites; CONNECT is refused with 405 and an unknown host or unmatched request gets
        404 NR. The engine and ``meshproxy explain`` both call this, so explain's answer is the
        engine's. Fault injection, header edits and mirrors are the decision's filters.
        """
        p = req.parser
        host = p.host
        target = host_target(self, host) if host is not None else None
        if target is None:
            d = self.default
            if d is None:
                return NO_ROUTE
        elif type(target) is Decision:
            d = target
        else:
            table = target
            return table.decide(req)
        if p.method == b"CONNECT":
            return CONNECT_NOT_ALLOWED
        return d


def host_target(rc, host):
    """The Decision or RouteTable serving a Host value (exact domain, then the longest
    wildcard), or None when no virtual host has it."""
    d = rc.hosts.get(host)
    if d is not None:
        return d
    if rc.tables is not None:
        t = rc.tables.get(host)
        if t is not None:
            return t
    if rc.wildcards is not None:
        return _wildcard(rc.wildcards, host)
    return None


def decide(rc, req):
    """The route decision for a request: ``rc.decide(req)`` (see RouteContext.decide)."""
    return rc.decide(req)


def matched_domain(rc, host):
    """Which configured domain serves ``host`` (for explain): the host itself or a wildcard."""
    if host in rc.hosts or (rc.tables is not None and host in rc.tables):
        return host
    if rc.wildcards is not None:
        colon = host.rfind(b":")
        bare = host[:colon] if colon > 0 and b"]" not in host[colon:] else host
        for suffix, _ in rc.wildcards:
            if bare.endswith(suffix) or host.endswith(suffix):
                return b"*" + suffix
    return None


def build_route_context(listener, clusters, chain=None):
    """A listener's RouteContext from its snapshot (``control.snapshot.Listener``).

    ``clusters``: name -> the data plane's Cluster (or any stand-in, for explain); ``chain``: the
    filter-chain builder (see RouteEntry), None for no filters.
    """
    hosts = {}
    tables = {}
    wildcards = []
    for vh in listener.virtual_hosts:
        if not vh.routes:
            continue
        if len(vh.routes) == 1 and vh.routes[0].forwards_only:
            # The fast path: the domain maps straight to a prebuilt decision.
            r = vh.routes[0]
            c = clusters.get(r.cluster)
            name = "default"
            if r.virtual_service:
                name = r.name or "%s/%d" % (r.virtual_service, r.index)
            if c is None:
                # Istio's run-time answer for a route to a cluster that does not exist.
                target = Decision(A_LOCAL, None, r.cluster, name, status=503, flags="NC")
            else:
                target = Decision(A_ROUTE, c, r.cluster, name,
                                  filters=chain(None, None, None) if chain is not None else None,
                                  retry=_retry_rule(r.retries), timeout=r.timeout)
            into = hosts
        else:
            target = RouteTable(vh.name, vh.routes, clusters, chain)
            into = tables
        for dom in vh.domains:
            if dom.startswith("*"):
                wildcards.append((dom[1:].encode("ascii"), target))
                continue
            into[dom.encode("ascii")] = target
    wildcards.sort(key=lambda w: -len(w[0]))
    default = None
    if listener.default_cluster:
        c = clusters.get(listener.default_cluster)
        if c is not None:
            default = Decision(A_ROUTE, c, listener.default_cluster, "default",
                               filters=chain(None, None, None) if chain is not None else None,
                               retry=INBOUND_RETRY if listener.direction == "inbound"
                               else DEFAULT_RETRY)
    return RouteContext(hosts, tables or None, wildcards or None, default)


def _wildcard(wildcards, host):
    """The target of the longest wildcard domain (``*.example.com``) matching ``host``."""
    colon = host.rfind(b":")
    bare = host[:colon] if colon > 0 and b"]" not in host[colon:] else host
    for suffix, target in wildcards:
        if bare.endswith(suffix) or host.endswith(suffix):
            return target
    return None


def location(redirect, req):
    """The Location of an Istio HTTPRedirect for ``req``."""
    p = req.parser
    scheme = redirect.scheme.encode() if redirect.scheme else b"http"
    host = p.host or b""
    if redirect.authority:
        host = redirect.authority.encode("latin-1")
    if redirect.port:
        colon = host.rfind(b":")
        if colon > 0 and b"]" not in host[colon:]:
            host = host[:colon]
        host = host + b":%d" % redirect.port
    path = req.path()
    if redirect.uri:
        q = path.find(b"?")
        path = redirect.uri.encode("utf-8") + (path[q:] if q >= 0 else b"")
    return scheme + b"://" + host + path


def _authority_edit(authority):
    e = HeaderEdit.__new__(HeaderEdit)
    e.drop = (b"host",)
    e.extra = b"host: " + authority + b"\r\n"
    e.empty = False
    e.ops = None
    return e


def _route_label(e):
    where = "%s http[%d]" % (e.virtual_service, e.index) if e.virtual_service else "default route"
    return where + (" %r" % e.name if e.name else "")


def rewrite_template(t):
    """An RE2 rewrite string (``\\0``-``\\9`` groups, ``\\\\`` a backslash) as a tuple of
    pieces: bytes (literal text) and ints (group numbers). Control refuses any other escape; one
    that gets here anyway is kept literally."""
    out = []
    lit = bytearray()
    b = t.encode("utf-8")
    i, n = 0, len(b)
    while i < n:
        c = b[i]
        if c == 0x5C and i + 1 < n:  # backslash
            d = b[i + 1]
            if 0x30 <= d <= 0x39:
                if lit:
                    out.append(bytes(lit))
                    lit = bytearray()
                out.append(d - 0x30)
                i += 2
                continue
            if d == 0x5C:
                lit.append(0x5C)
                i += 2
                continue
        lit.append(c)
        i += 1
    if lit:
        out.append(bytes(lit))
    return tuple(out)


def global_replace(rx, raw, pieces, text):
    """RE2::GlobalReplace(text, rx, rewrite) (Envoy's ``regex_rewrite``): every non-overlapping
    match, leftmost first, replaced by the rewrite (``pieces`` from ``rewrite_template``); an empty
    match right after the previous match is skipped (one UTF-8 character copied, or one byte when
    it is not valid UTF-8). ``text`` unchanged when nothing matches. ``raw``: ``raw_match(rx)``,
    or None to go through the binding's public API."""
    out = []
    p = 0
    end = len(text)
    last_end = -1
    count = 0
    while p <= end:
        if raw is not None:
            spans = raw(_UNANCHORED, text, p, end)
            if spans[0][0] < 0:
                break
        else:
            m = rx.search(text, p)
            if m is None:
                break
            spans = [m.span(g) for g in range(rx.groups + 1)]
        s0, e0 = spans[0]
        if p < s0:
            out.append(text[p:s0])
        if s0 == last_end and s0 == e0:
            n = _rune_len(text, p)
            out.append(text[p:p + n])
            p += n
            continue
        for piece in pieces:
            if type(piece) is int:
                if piece < len(spans):
                    s, e = spans[piece]
                    if s >= 0:
                        out.append(text[s:e])
            else:
                out.append(piece)
        p = e0
        last_end = e0
        count += 1
    if count == 0:
        return text
    if p < end:
        out.append(text[p:])
    return b"".join(out)


def _rune_len(text, p):
    """Bytes of the valid UTF-8 character at ``text[p]`` (1 when invalid or at the end)."""
    if p >= len(text):
        return 1
    c = text[p]
    if c < 0x80:
        return 1
    n = 2 if 0xC2 <= c <= 0xDF else 3 if 0xE0 <= c <= 0xEF else 4 if 0xF0 <= c <= 0xF4 else 0
    if n == 0 or p + n > len(text):
        return 1
    try:
        text[p:p + n].decode("utf-8")
    except UnicodeDecodeError:
        return 1
    return n


def _s(b):
    if b is None:
        return "(none)"
    if isinstance(b, bytes):
        return b.decode("latin-1")
    return str(b)
