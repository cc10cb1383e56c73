"""Unit tests of the route tables (``meshproxy._py.router`` and its compiled twin
``meshproxy._core.router``), built from ``control.snapshot`` objects and requests parsed by the
data plane's own ``RequestParser``.
"""

import pytest

from control.snapshot import (Destination, DirectResponse, Fault, HeaderMatch, HeaderOps,
                              QueryMatch, Redirect, Rewrite, Route, RouteMatch, StringMatch)


@pytest.fixture
def twin(impl):
    """(router module, http1 module) of one build (tests/conftest.py's ``impl``)."""
    return impl.router, impl.http1


def view(twin, method="GET", target="/", host="svc.example.com", headers=(), port=80):
    router, http1 = twin
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in headers]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    p = http1.RequestParser()
    assert p.parse(raw) == len(raw)
    return router.RequestView(p, b"http", port)


def sm(kind, value):
    return StringMatch(kind, value)


def route(name="", matches=(), dests=(("c1", 100),), index=0, vs="default/vs", **kw):
    return Route(name=name, matches=tuple(matches),
                 destinations=tuple(Destination(c, w) for c, w in dests),
                 virtual_service=vs, index=index, **kw)


def table(twin, *routes):
    router, _ = twin
    clusters = {}
    for r in routes:
        for d in r.destinations:
            clusters[d.cluster] = "CLUSTER:" + d.cluster
    return router.RouteTable("svc.example.com:80", list(routes), clusters)


def matched(twin, routes, **req):
    """The name of the route that matches, or None."""
    e, b = table(twin, *routes).match(view(twin, **req))
    return None if e is None else e.name


# -- one condition at a time ------------------------------------------------------------------------

CASES = [
    # (RouteMatch kwargs, request kwargs, matches?)
    (dict(uri=sm("exact", "/a")), dict(target="/a"), True),
    (dict(uri=sm("exact", "/a")), dict(target="/a?x=1"), True),  # the query is not the uri
    (dict(uri=sm("exact", "/a")), dict(target="/a/"), False),
    (dict(uri=sm("exact", "/a")), dict(target="/A"), False),
    (dict(uri=sm("prefix", "/api")), dict(target="/api"), True),
    (dict(uri=sm("prefix", "/api")), dict(target="/apix/1"), True),  # a string prefix
    (dict(uri=sm("prefix", "/api")), dict(target="/ap"), False),
    (dict(uri=sm("prefix", "/api")), dict(target="/x/api"), False),
    (dict(uri=sm("prefix", "/api")), dict(target="/?q=/api"), False),
    (dict(uri=sm("regex", "/r/[0-9]+")), dict(target="/r/12"), True),
    (dict(uri=sm("regex", "/r/[0-9]+")), dict(target="/r/12/x"), False),  # full match
    (dict(uri=sm("regex", "/r/[0-9]+")), dict(target="/x/r/12"), False),
    (dict(uri=sm("regex", "/r/[0-9]+")), dict(target="/r/12?y=2"), True),
    (dict(uri=sm("exact", "/CaSe"), ignore_uri_case=True), dict(target="/case"), True),
    (dict(uri=sm("exact", "/CaSe"), ignore_uri_case=True), dict(target="/CASE"), True),
    (dict(uri=sm("exact", "/CaSe")), dict(target="/case"), False),
    (dict(uri=sm("prefix", "/Api"), ignore_uri_case=True), dict(target="/aPI/v1"), True),
    (dict(uri=sm("regex", "/R/[a-z]+"), ignore_uri_case=True), dict(target="/r/ABC"), True),
    (dict(uri=sm("regex", "/R/[a-z]+")), dict(target="/r/abc"), False),
    (dict(method=sm("exact", "POST")), dict(method="POST"), True),
    (dict(method=sm("exact", "POST")), dict(method="GET"), False),
    (dict(method=sm("regex", "P(UT|ATCH)")), dict(method="PATCH"), True),
    (dict(method=sm("regex", "P(UT|ATCH)")), dict(method="POST"), False),
    (dict(authority=sm("exact", "svc.example.com")), dict(host="svc.example.com"), True),
    (dict(authority=sm("exact", "svc.example.com")), dict(host="SVC.Example.COM"), True),
    (dict(authority=sm("exact", "Svc.Example.com")), dict(host="svc.example.com"), True),
    (dict(authority=sm("exact", "svc.example.com")), dict(host="svc.example.com:80"), False),
    (dict(authority=sm("prefix", "svc")), dict(host="svc.example.com:80"), True),
    (dict(authority=sm("regex", "svc\\.example\\.com(:80)?")), dict(host="svc.example.com:80"),
     True),
    (dict(authority=sm("regex", "svc")), dict(host="svc.example.com"), False),
    (dict(scheme=sm("exact", "http")), dict(), True),
    (dict(scheme=sm("exact", "https")), dict(), False),
    (dict(headers=(HeaderMatch("end-user", sm("exact", "jason")),)),
     dict(headers=[("End-User", "jason")]), True),
    (dict(headers=(HeaderMatch("end-user", sm("exact", "jason")),)),
     dict(headers=[("end-user", "Jason")]), False),  # values are case-sensitive
    (dict(headers=(HeaderMatch("end-user", sm("exact", "jason")),)), dict(), False),
    (dict(headers=(HeaderMatch("x-v", sm("prefix", "v2")),)),
     dict(headers=[("x-v", "v2.1")]), True),
    (dict(headers=(HeaderMatch("x-v", sm("regex", "v[0-9]")),)),
     dict(headers=[("x-v", "v12")]), False),
    (dict(headers=(HeaderMatch("x-v", sm("regex", "v[0-9]+")),)),
     dict(headers=[("x-v", "v12")]), True),
    # several values are joined with "," (Envoy)
    (dict(headers=(HeaderMatch("x-v", sm("exact", "a,b")),)),
     dict(headers=[("x-v", "a"), ("x-v", "b")]), True),
    # presence
    (dict(headers=(HeaderMatch("x-p"),)), dict(headers=[("x-p", "")]), True),
    (dict(headers=(HeaderMatch("x-p"),)), dict(headers=[("x-p", "1")]), True),
    (dict(headers=(HeaderMatch("x-p"),)), dict(headers=[("x-q", "1")]), False),
    # withoutHeaders: absence, or a value that does not match
    (dict(headers=(HeaderMatch("x-p", None, True),)), dict(), True),
    (dict(headers=(HeaderMatch("x-p", None, True),)), dict(headers=[("x-p", "1")]), False),
    (dict(headers=(HeaderMatch("x-p", sm("exact", "bad"), True),)),
     dict(headers=[("x-p", "good")]), True),
    (dict(headers=(HeaderMatch("x-p", sm("exact", "bad"), True),)),
     dict(headers=[("x-p", "bad")]), False),
    (dict(headers=(HeaderMatch("x-p", sm("exact", "bad"), True),)), dict(), True),
    # pseudo-headers
    (dict(headers=(HeaderMatch(":method", sm("exact", "PUT")),)), dict(method="PUT"), True),
    (dict(headers=(HeaderMatch(":authority", sm("prefix", "svc.")),)), dict(), True),
    (dict(headers=(HeaderMatch(":path", sm("exact", "/p?x=1")),)), dict(target="/p?x=1"), True),
    # query parameters
    (dict(query_params=(QueryMatch("a", sm("exact", "1")),)), dict(target="/?a=1"), True),
    (dict(query_params=(QueryMatch("a", sm("exact", "1")),)), dict(target="/?b=2&a=1"), True),
    (dict(query_params=(QueryMatch("a", sm("exact", "1")),)), dict(target="/?a=12"), False),
    (dict(query_params=(QueryMatch("a", sm("exact", "1")),)), dict(target="/?a=2&a=1"), False),
    (dict(query_params=(QueryMatch("a", sm("exact", "1")),)), dict(target="/a=1"), False),
    (dict(query_params=(QueryMatch("a", sm("regex", "[0-9]+")),)), dict(target="/?a=42"), True),
    (dict(query_params=(QueryMatch("a", sm("regex", "[0-9]+")),)), dict(target="/?a=4x"), False),
    (dict(query_params=(QueryMatch("a"),)), dict(target="/?a"), True),
    (dict(query_params=(QueryMatch("a"),)), dict(target="/?a="), True),
    (dict(query_params=(QueryMatch("a"),)), dict(target="/?ab=1"), False),
    (dict(query_params=(QueryMatch("q", sm("exact", "a%20b")),)), dict(target="/?q=a%20b"), True),
    # AND inside a block
    (dict(uri=sm("prefix", "/api"), method=sm("exact", "GET"),
          headers=(HeaderMatch("x-a", sm("exact", "1")),)),
     dict(target="/api", headers=[("x-a", "1")]), True),
    (dict(uri=sm("prefix", "/api"), method=sm("exact", "GET"),
          headers=(HeaderMatch("x-a", sm("exact", "1")),)),
     dict(target="/api", method="POST", headers=[("x-a", "1")]), False),
    (dict(uri=sm("prefix", "/api"), method=sm("exact", "GET"),
          headers=(HeaderMatch("x-a", sm("exact", "1")),)),
     dict(target="/api"), False),
]


@pytest.mark.parametrize("m,req,ok", CASES)
def test_match_kinds(twin, m, req, ok):
    r = route("r", [RouteMatch(**m)])
    assert matched(twin, [r], **req) == ("r" if ok else None)


def test_absolute_form_target_matches_on_its_path(twin):
    r = route("r", [RouteMatch(uri=sm("exact", "/abs"))])
    assert matched(twin, [r], target="http://svc.example.com/abs?x=1") == "r"


def test_blocks_are_ored_and_first_route_wins(twin):
    routes = [
        route("a", [RouteMatch(uri=sm("prefix", "/a")),
                    RouteMatch(headers=(HeaderMatch("x-to-a"),))], index=0),
        route("b", [RouteMatch(uri=sm("prefix", "/a/b"))], index=1),  # shadowed by "a"
        route("c", [RouteMatch(uri=sm("prefix", "/c"))], index=2),
        route("all", [], index=3),
        route("never", [RouteMatch(uri=sm("prefix", "/"))], index=4),
    ]
    assert matched(twin, routes, target="/a/b") == "a"
    assert matched(twin, routes, target="/c", headers=[("x-to-a", "1")]) == "a"
    assert matched(twin, routes, target="/c") == "c"
    assert matched(twin, routes, target="/zzz") == "all"
    # without the catch-all nothing matches: (None, None) is 404 NR
    t = table(twin, *routes[:3])
    assert t.match(view(twin, target="/zzz")) == (None, None)


def test_match_returns_the_block_that_matched(twin):
    b0 = RouteMatch(name="first", uri=sm("prefix", "/x"))
    b1 = RouteMatch(name="second", uri=sm("prefix", "/y"))
    t = table(twin, route("r", [b0, b1]))
    e, b = t.match(view(twin, target="/y/1"))
    assert e.name == "r" and b.name == "second"
    e, b = table(twin, route("all")).match(view(twin))
    assert e.name == "all" and b is True


# -- destinations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weights,r,expect", [
    ((90, 10), 0.0, 0),
    ((90, 10), 0.8999999, 0),
    ((90, 10), 0.9, 1),
    ((90, 10), 0.9999999, 1),
    ((0, 100), 0.0, 1),  # weight 0 is never picked
    ((100, 0), 0.9999999, 0),
    ((30, 30, 40), 0.2999999, 0),
    ((30, 30, 40), 0.3, 1),
    ((30, 30, 40), 0.5999999, 1),
    ((30, 30, 40), 0.6, 2),
    ((1, 1, 1, 1), 0.25, 1),
    ((1, 1, 1, 1), 0.75, 3),
    ((100,), 0.0, 0),
    ((100,), 0.9999999, 0),
])
def test_pick_destination_boundaries(twin, weights, r, expect):
    rt = route("w", dests=[(f"c{i}", w) for i, w in enumerate(weights)])
    e = table(twin, rt).entries[0]
    d = e.pick_destination(r)
    assert d.cluster_name == f"c{expect}" and d.cluster == f"CLUSTER:c{expect}"
    assert e.destinations[expect] == (d, weights[expect])


def test_pick_destination_shares(twin):
    e = table(twin, route("w", dests=[("a", 90), ("b", 10)])).entries[0]
    n = 10000
    a = sum(1 for i in range(n) if e.pick_destination(i / n).cluster_name == "a")
    assert a == 9000


def test_unknown_cluster_is_none(twin):
    router, _ = twin
    t = router.RouteTable("x", [route("r", dests=[("missing", 100)])], {})
    d = t.entries[0].pick_destination(0.5)
    # Istio's run-time answer for a destination with no cluster: 503 NC
    assert (d.action, d.cluster, d.status, d.flags) == (router.A_LOCAL, None, 503, "NC")


# -- rewrites ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,rw,target,expect", [
    (RouteMatch(uri=sm("prefix", "/old")), Rewrite(uri="/new"), "/old/a?x=1", b"/new/a?x=1"),
    (RouteMatch(uri=sm("prefix", "/old/")), Rewrite(uri="/"), "/old/a/b", b"/a/b"),
    (RouteMatch(uri=sm("prefix", "/old")), Rewrite(uri="/new"), "/old", b"/new"),
    (RouteMatch(uri=sm("prefix", "/api/")), Rewrite(uri="/v2/"), "/api/?q=1&r=2",
     b"/v2/?q=1&r=2"),
    (RouteMatch(uri=sm("prefix", "/Old"), ignore_uri_case=True), Rewrite(uri="/new"),
     "/OLD/x", b"/new/x"),
    (RouteMatch(uri=sm("exact", "/exact")), Rewrite(uri="/replaced"), "/exact?k=v",
     b"/replaced?k=v"),
    (RouteMatch(uri=sm("regex", "/r/.*")), Rewrite(uri="/whole"), "/r/abc", b"/whole"),
    (RouteMatch(headers=(HeaderMatch("x-h"),)), Rewrite(uri="/hdr"), "/any/path?z",
     b"/hdr?z"),
    (RouteMatch(uri=sm("prefix", "/")),
     Rewrite(uri_regex="^/items/([0-9]+)/([a-z]+)$", uri_regex_rewrite="/\\2/id/\\1"),
     "/items/42/abc?keep=1", b"/abc/id/42?keep=1"),
    (RouteMatch(uri=sm("prefix", "/")), Rewrite(uri_regex="a", uri_regex_rewrite="b"),
     "/aXa", b"/bXb"),  # every match is replaced (RE2 GlobalReplace)
    (RouteMatch(uri=sm("prefix", "/")), Rewrite(uri_regex="^/nomatch$", uri_regex_rewrite="/x"),
     "/keep?q", b"/keep?q"),
    (RouteMatch(uri=sm("prefix", "/")), Rewrite(authority="other"), "/p", None),
])
def test_rewritten_path(twin, m, rw, target, expect):
    t = table(twin, route("r", [m], rewrite=rw))
    req = view(twin, target=target, headers=[("x-h", "1")])
    e, b = t.match(req)
    assert e is not None
    assert e.rewritten_path(req, b) == expect


def test_rewrite_on_match_all_route_replaces_whole_path(twin):
    t = table(twin, route("r", [], rewrite=Rewrite(uri="/root")))
    req = view(twin, target="/a/b?c=d")
    e, b = t.match(req)
    assert e.rewritten_path(req, b) == b"/root?c=d"


def test_rewrite_authority_bytes(twin):
    e = table(twin, route("r", rewrite=Rewrite(authority="new.host:8080"))).entries[0]
    assert e.rewrite_authority == b"new.host:8080"


# -- header edits, other actions ------------------------------------------------------------------

def test_header_edits_merge_route_then_destination(twin):
    router, _ = twin
    r = Route(name="h", destinations=(Destination(
        "c", 100, request_headers=HeaderOps(set=(("x-d", "d"),), remove=("x-gone2",)),
        response_headers=HeaderOps(add=(("x-dr", "1"),))),),
        request_headers=HeaderOps(set=(("x-s", "s"),), add=(("x-a", "a"),), remove=("x-gone",)),
        response_headers=HeaderOps(remove=("server",)))
    e = router.RouteTable("t", [r], {"c": "C"}).entries[0]
    d = e.destinations[0][0]
    req_edit, resp_edit = d.request_edit, d.response_edit
    assert d.cluster_name == "c"
    assert set(req_edit.drop) == {b"x-gone", b"x-s", b"x-d", b"x-gone2"}
    assert req_edit.extra == b"x-s: s\r\nx-a: a\r\nx-d: d\r\n"
    assert resp_edit.drop == (b"server",) and resp_edit.extra == b"x-dr: 1\r\n"
    plain = router.RouteTable("t", [route("p")], {"c1": "C"}).entries[0].destinations[0][0]
    assert plain.request_edit is None and plain.response_edit is None


def test_actions_are_kept(twin):
    red = Redirect(uri="/x", code=302)
    dr = DirectResponse(status=418, body="teapot")
    f = Fault(delay=0.3, delay_percent=100.0, abort_status=503, abort_percent=50.0)
    t = table(twin, route("red", [RouteMatch(uri=sm("exact", "/r"))], dests=(), redirect=red),
              route("dr", [RouteMatch(uri=sm("exact", "/d"))], dests=(), direct_response=dr),
              route("f", [], fault=f))
    es = t.entries
    assert es[0].redirect == red and es[0].direct is None
    assert (es[1].direct.status, es[1].direct.body) == (418, b"teapot")
    assert es[2].fault == f


# -- explain ----------------------------------------------------------------------------------------

def test_explain_reasons(twin):
    routes = [
        route("jason", [RouteMatch(headers=(HeaderMatch("end-user", sm("exact", "jason")),))],
              index=0, vs="default/reviews"),
        route("posts", [RouteMatch(method=sm("exact", "POST")),
                        RouteMatch(uri=sm("prefix", "/api"), ignore_uri_case=True)],
              index=1, vs="default/reviews"),
        route("q", [RouteMatch(query_params=(QueryMatch("a", sm("exact", "1")),))], index=2,
              vs="default/reviews"),
        route("no-debug", [RouteMatch(name="nd", headers=(HeaderMatch("x-debug", None, True),),
                                      authority=sm("prefix", "svc"))],
              index=3, vs="default/reviews"),
        route("", [], index=4, vs="default/reviews"),
    ]
    t = table(twin, *routes)
    lines, e = t.explain(view(twin, target="/x?a=2", headers=[("end-user", "bob"),
                                                              ("x-debug", "1")]))
    assert e is t.entries[4]
    assert [(lab, why) for lab, _, why in lines] == [
        ("default/reviews http[0] 'jason'", "match[0]: header end-user: bob does not match "
         "exact 'jason'"),
        ("default/reviews http[1] 'posts'", "match[0]: method GET does not match exact 'POST'; "
         "match[1]: uri /x does not match prefix '/api' (ignoreUriCase)"),
        ("default/reviews http[2] 'q'", "match[0]: query parameter a: 2 does not match "
         "exact '1'"),
        ("default/reviews http[3] 'no-debug'", "match[0]: header x-debug is 1 (withoutHeaders)"),
        ("default/reviews http[4]", "matches every request"),
    ]
    lines, e = t.explain(view(twin, target="/x"))
    assert e is t.entries[0 + 3]
    assert lines[0][2] == "match[0]: header end-user is absent"
    assert lines[2][2] == "match[0]: query parameter a is absent"
    assert lines[-1][2] == "match[0] (nd): authority prefix 'svc', without header x-debug present"
    lines, e = t.explain(view(twin, target="/x", headers=[("end-user", "jason")]))
    assert e is t.entries[0] and lines == [("default/reviews http[0] 'jason'",
                                            t.entries[0].blocks[0],
                                            "match[0]: header end-user exact 'jason'")]


def test_explain_agrees_with_match(twin):
    t = table(twin, *[route(n, [RouteMatch(**m)], index=i) for i, (n, m) in enumerate([
        ("a", dict(uri=sm("regex", "/a/[0-9]+"))),
        ("b", dict(method=sm("exact", "PUT"))),
        ("c", dict(authority=sm("exact", "other"))),
        ("d", dict(headers=(HeaderMatch("x-d", sm("prefix", "y")),))),
    ])])
    for target, method, host, hdrs in [("/a/1", "GET", "svc", ()), ("/a/x", "PUT", "svc", ()),
                                       ("/", "GET", "other", ()), ("/", "GET", "h", [("x-d", "yes")]),
                                       ("/", "GET", "h", [("x-d", "no")])]:
        req = view(twin, target=target, method=method, host=host, headers=hdrs)
        e, _ = t.match(req)
        req2 = view(twin, target=target, method=method, host=host, headers=hdrs)
        _, e2 = t.explain(req2)
        assert e is e2


def test_parse_query(twin):
    router, _ = twin
    assert router.parse_query(b"/p") == {}
    assert router.parse_query(b"/p?a=1&b=&c&a=2&&d=x=y#frag") == {
        b"a": b"1", b"b": b"", b"c": b"", b"d": b"x=y"}


# -- regexes are RE2 (linear time, as Envoy) ---------------------------------------------------------

REDOS = "(a+)+b"  # exponential on a backtracking engine: 26 "a" took 2.5 s with Python's re
HEAD_LIMIT_VALUE = 60000  # as large as a header value gets under the 60 KiB head limit


@pytest.mark.parametrize("n", [26, 30, 1000, HEAD_LIMIT_VALUE])
def test_redos_header_regex_is_linear(twin, n):
    import time

    r = route("r", [RouteMatch(headers=(HeaderMatch("x-a", sm("regex", REDOS)),))])
    t = table(twin, r)
    for value, ok in (("a" * n, False), ("a" * n + "b", True), ("a" * (n - 1) + "c", False)):
        req = view(twin, headers=[("x-a", value)])
        start = time.perf_counter()
        e, _ = t.match(req)
        took = time.perf_counter() - start
        assert (e is not None) is ok
        assert took < 0.05, f"{len(value)}-byte header took {took * 1000:.1f} ms"


@pytest.mark.parametrize("field", ["uri", "query"])
def test_redos_uri_and_query_regex_is_linear(twin, field):
    import time

    if field == "uri":
        m = RouteMatch(uri=sm("regex", "/(a+)+b"))
        target = "/" + "a" * 8000
    else:
        m = RouteMatch(query_params=(QueryMatch("q", sm("regex", REDOS)),))
        target = "/?q=" + "a" * 8000
    t = table(twin, route("r", [m]))
    start = time.perf_counter()
    assert t.match(view(twin, target=target)) == (None, None)
    assert time.perf_counter() - start < 0.05


@pytest.mark.parametrize("pattern,value,ok", [
    # UTF-8, as Envoy's RE2: "." is one character, classes hold characters, (?i) folds Unicode
    ("caf.", "café".encode(), True),
    ("caf[éè]", "café".encode(), True),
    ("caf\\x{e9}", "café".encode(), True),
    ("(?i)CAFÉ", "café".encode(), True),
    ("\\pL+", "ça".encode(), True),
    ("....", "café".encode(), True),
    (".....", "café".encode(), False),
    # bytes that are not UTF-8 are never a character: "." does not match them (as in Envoy),
    # and they never break matching
    (".*", b"\xff", False),
    ("a.b", b"a\xffb", False),
    ("a\\C+b", b"a\xff\xfeb", True),  # \C: any byte
    ("[^/]*", b"\xe9t\xe9", False),  # latin-1, not UTF-8
    ("x-.*", b"x-ok", True),
])
def test_regex_non_ascii_values(twin, pattern, value, ok):
    r = route("r", [RouteMatch(headers=(HeaderMatch("x-v", sm("regex", pattern)),))])
    req = view(twin, headers=[("x-v", value.decode("latin-1"))])  # the value's bytes on the wire
    assert req.header(b"x-v") == value
    e, _ = table(twin, r).match(req)
    assert (e is not None) is ok


def test_regex_ignore_case_is_an_re2_option(twin):
    router, _ = twin
    m = router.Matcher("regex", "svc\\.example\\.com(:80)?", True)
    assert m.test(b"SVC.Example.COM:80") and not m.test(b"svc.example.com:8080")
    assert not router.Matcher("regex", "svc", False).test(b"SVC")


def test_regex_matcher_public_api_fallback_agrees(twin):
    """The matcher calls the binding's C++ object directly; the public API gives the same answers."""
    router, _ = twin
    fast = router.Matcher("regex", "v[0-9]+|(a+)+b")
    assert fast.raw_match is not None
    slow = router.Matcher("regex", "v[0-9]+|(a+)+b")
    slow.raw_match = None
    for v in (b"v1", b"v", b"aab", b"a" * 5000, b"xv1", b""):
        assert fast.test(v) == slow.test(v) == (router.compile_regex("v[0-9]+|(a+)+b")
                                                .fullmatch(v) is not None)


@pytest.mark.parametrize("match,rewrite,path,expect", [
    # RE2::GlobalReplace, Envoy's regex_rewrite: every match, \0-\9 groups, \\ a backslash
    ("a", "b", b"/aXa", b"/bXb"),
    ("/", "\\0\\0", b"/a/b", b"//a//b"),
    ("a*", "-", b"/baaac", b"-/-b-c-"),  # no empty match right after a match (RE2, not Python)
    ("(x)?a", "[\\1]", b"/aa", b"/[][]"),  # a group that did not take part is empty
    ("a", "\\\\", b"/a", b"/\\"),
    ("([0-9])", "\\10", b"/7", b"/70"),  # \1 then "0": RE2 reads one digit
    ("^/x$", "/y", b"/xx", b"/xx"),  # no match: unchanged
    ("é", "e", "/café".encode(), b"/cafe"),
    ("", "-", "/é".encode(), "-/-é-".encode()),  # empty matches step over a UTF-8 character
    ("", "-", b"a\xffb", b"-a-\xff-b-"),  # or over one byte that is not UTF-8
    ("(a+)+b", "x", b"/" + b"a" * 50000, b"/" + b"a" * 50000),
])
@pytest.mark.parametrize("api", ["raw", "public"])
def test_regex_global_replace(twin, match, rewrite, path, expect, api):
    import time

    router, _ = twin
    rx = router.compile_regex(match)
    raw = router.raw_match(rx) if api == "raw" else None
    assert (raw is None) is (api == "public")
    start = time.perf_counter()
    assert router.global_replace(rx, raw, router.rewrite_template(rewrite), path) == expect
    assert time.perf_counter() - start < 0.05


@pytest.mark.parametrize("match,rewrite,target,expect", [
    ("^/items/([0-9]+)/([a-z]+)$", "/\\2/id/\\1", "/items/42/abc?keep=1", b"/abc/id/42?keep=1"),
    ("a*", "-", "/baaac?a=aa", b"/-/-b-c-?a=aa"),  # the query is kept as it is
    ("(a+)+b", "x", "/" + "a" * 8000, b"/" + b"a" * 8000),
])
def test_regex_rewrite_route(twin, match, rewrite, target, expect):
    t = table(twin, route("r", [RouteMatch(uri=sm("prefix", "/"))],
                          rewrite=Rewrite(uri_regex=match, uri_regex_rewrite=rewrite)))
    req = view(twin, target=target)
    e, b = t.match(req)
    assert e.rewritten_path(req, b) == expect


def test_inbound_fast_path_and_default_carry_istios_inbound_retry_rule(twin):
    """An inbound one-route host keeps the fast path (a prebuilt decision) with Istio's inbound
    retry rule (reset-before-request, 2 attempts); so does the inbound listener's default route;
    outbound ones keep the outbound default."""
    import os

    from control import build_snapshot
    from control.snapshot import INBOUND_RETRY_POLICY
    snap = build_snapshot(os.path.join(os.path.dirname(__file__), "configs", "mesh.yaml"),
                          workload="default/server")
    r = twin[0]
    for lst in snap.listeners:
        clusters = {c.name: type("C", (), {"name": c.name})() for c in snap.clusters}
        rc = r.build_route_context(lst, clusters, None)
        decisions = list(rc.hosts.values())
        assert decisions, lst.name
        if lst.direction == "inbound":
            assert all(d.retry is r.INBOUND_RETRY for d in decisions)
            assert rc.default is None or rc.default.retry is r.INBOUND_RETRY
            rule = r.INBOUND_RETRY
            assert rule.attempts == INBOUND_RETRY_POLICY.attempts == 2
            assert rule.on & r.R_RESET_BEFORE_REQUEST and rule.on & r.RETRY_ON_CONNECT_FAILURE
            assert not rule.statuses and not rule.replay
        else:
            assert all(d.retry is r.DEFAULT_RETRY for d in decisions)
