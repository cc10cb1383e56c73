"""Path normalisation end to end: a real sidecar (both builds) in front of routing backends that
echo the request target they received. ``/public`` routes to v1, everything else to v2, so a path
that escapes ``/public`` by dot segments, encoded dots, doubled or encoded slashes must reach v2 as
the normalised path (Istio pathNormalization; CVE-2019-9901, CVE-2021-31920, CVE-2021-39156)."""
import json

import pytest
from harness import RawConn
from test_routing import SVC, Client, backends, base_docs, dest, rb, vs  # noqa: F401

ROUTES = [{"name": "public", "match": [{"uri": {"prefix": "/public"}}], "route": [dest("v1")]},
          {"name": "rest", "route": [dest("v2")]}]


def start(make_sidecar, rb, mode=None):
    boot = {} if mode is None else {"pathNormalization": {"normalization": mode}}
    return make_sidecar(base_docs(rb) + [vs("svc", "svc", ROUTES)], boot=boot)


def seen(c, path):
    """(backend name, target it received) for GET ``path``."""
    st, hs, data = c.request(path)
    assert st == 200, (path, st, data)
    rec = json.loads(data)
    return rec["name"], rec["target"]


def test_base_is_the_default(make_sidecar, backends):
    c = Client(start(make_sidecar, backends))
    assert seen(c, "/public/x") == ("v1", "/public/x")
    assert seen(c, "/public/../admin") == ("v2", "/admin")
    assert seen(c, "/public/%2e%2e/admin") == ("v2", "/admin")
    assert seen(c, "/public/%2E%2e/admin?q=/../x") == ("v2", "/admin?q=/../x")
    assert seen(c, "/public/./%41") == ("v1", "/public/A")
    assert seen(c, "/public\\..\\admin") == ("v2", "/admin")
    assert seen(c, "/x/../public/y") == ("v1", "/public/y")
    assert seen(c, "/public#/../admin") == ("v1", "/public")
    assert seen(c, "/public//x") == ("v1", "/public//x")  # BASE does not merge slashes
    assert seen(c, "/public/..%2fadmin") == ("v1", "/public/..%2fadmin")  # nor decode %2F


def test_cannot_normalise_is_400(make_sidecar, backends):
    s = start(make_sidecar, backends)
    conn = RawConn(s.host, s.outbound)
    try:
        conn.send(b"GET /public/%00 HTTP/1.1\r\nHost: svc\r\n\r\n")
        head = conn.read_until(b"\r\n\r\n")
    finally:
        conn.close()
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert backends["v1"].log() == [] and backends["v2"].log() == []


def test_merge_slashes(make_sidecar, backends):
    c = Client(start(make_sidecar, backends, "MERGE_SLASHES"))
    assert seen(c, "//public//x") == ("v1", "/public/x")
    assert seen(c, "/public/..//admin") == ("v2", "/admin")
    assert seen(c, "/public/..%2fadmin") == ("v1", "/public/..%2fadmin")
    assert seen(c, "/a//b?x=//y") == ("v2", "/a/b?x=//y")


def test_decode_and_merge_slashes(make_sidecar, backends):
    c = Client(start(make_sidecar, backends, "DECODE_AND_MERGE_SLASHES"))
    assert seen(c, "/public/..%2fadmin") == ("v2", "/admin")
    assert seen(c, "/public%2F..%5Cadmin") == ("v2", "/admin")
    assert seen(c, "/public%2fx") == ("v1", "/public/x")
    assert seen(c, "/public/../admin") == ("v2", "/admin")


def test_none_leaves_paths_alone(make_sidecar, backends):
    c = Client(start(make_sidecar, backends, "NONE"))
    assert seen(c, "/public/../admin") == ("v1", "/public/../admin")
    assert seen(c, "/public/%2e%2e/admin") == ("v1", "/public/%2e%2e/admin")
    assert seen(c, "/public//x%2F") == ("v1", "/public//x%2F")
