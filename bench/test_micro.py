"""Micro-benchmarks (pytest-benchmark): head parsing and serialisation, balancer picks, route lookup.

    .venv/bin/pytest bench/test_micro.py --benchmark-only

Parametrized over meshproxy's two builds (the ``http1``/``balancer`` fixtures of tests/conftest.py,
through bench/conftest.py: ids ``py`` for the pure-Python twins, ``c`` for the compiled modules,
skipped when not built and failed when not really compiled), with h11 and httptools as outside
references (``test_parse_reference``, in the same group as ``test_parse``), each skipped when not
installed.

What one iteration does (as on the proxy's hot path, one parser reused per connection):

* ``meshproxy-*``: ``RequestParser.parse(buf, 0)`` on a reused parser (offsets only);
  ``test_parse_serialize`` adds ``serialize(extra)``, the upstream head the proxy writes.
* ``httptools``: ``HttpRequestParser.feed_data(buf)`` on a reused parser with on_url/on_header/
  on_headers_complete callbacks that keep the url and header pairs (what a proxy needs).
* ``h11``: a fresh ``h11.Connection(SERVER)`` per request (h11 cannot start a new request cycle
  without sending a response), ``receive_data`` and ``next_event`` up to the Request event.
"""
from __future__ import annotations

import os
import sys

import pytest

try:
    import meshproxy  # noqa: F401
except ImportError:  # not installed: benchmark the source tree (extensions built in place)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A typical browser-ish GET: request line + 8 headers.
REQUEST = (
    b"GET /api/v1/products/12345?ref=homepage&lang=en HTTP/1.1\r\n"
    b"Host: shop.default.svc.cluster.local\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=4f8a9c2e7b1d4e6f; theme=dark; _ga=GA1.2.123456789.1700000000\r\n"
    b"Referer: https://shop.example.com/\r\n"
    b"\r\n"
)
EXTRA = b"x-request-id: 6f1c2b7e-8d3a-4f5b-9c0e-1a2b3c4d5e6f\r\nx-forwarded-proto: http\r\n"


def _meshproxy_parse(http1):
    parser = http1.RequestParser()
    parse = parser.parse
    n = parse(REQUEST, 0)
    assert n == len(REQUEST), n
    assert parser.method == b"GET" and parser.header_count == 8
    assert parser.host == b"shop.default.svc.cluster.local"

    def run():
        return parse(REQUEST, 0)
    return run


def _httptools_parse():
    httptools = pytest.importorskip("httptools")

    class Proto:
        __slots__ = ("url", "headers", "done")

        def __init__(self):
            self.url = None
            self.headers = []
            self.done = False

        def on_url(self, url):
            self.url = url

        def on_header(self, name, value):
            self.headers.append((name, value))

        def on_headers_complete(self):
            self.done = True

    proto = Proto()
    parser = httptools.HttpRequestParser(proto)
    feed = parser.feed_data
    headers = proto.headers

    def run():
        headers.clear()
        feed(REQUEST)
        return len(headers)
    assert run() == 8 and proto.done
    return run


def _h11_parse():
    h11 = pytest.importorskip("h11")
    Connection, SERVER, Request = h11.Connection, h11.SERVER, h11.Request

    def run():
        conn = Connection(SERVER)
        conn.receive_data(REQUEST)
        ev = conn.next_event()
        assert type(ev) is Request
        return ev
    assert len(run().headers) == 8
    return run


PARSE_GROUP = "http1 request head parse (8 headers)"


def test_parse(benchmark, http1):
    benchmark.group = PARSE_GROUP
    benchmark(_meshproxy_parse(http1))


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_parse_reference(benchmark, parser):
    benchmark.group = PARSE_GROUP
    benchmark(_httptools_parse() if parser == "httptools" else _h11_parse())


def test_parse_serialize(benchmark, http1):
    """parse + serialize(extra): the whole head handling of one proxied request."""
    benchmark.group = "http1 request head parse + serialize"
    parser = http1.RequestParser()
    parse, serialize = parser.parse, parser.serialize

    def run():
        parse(REQUEST, 0)
        return serialize(EXTRA)
    out = run()
    assert out.startswith(b"GET /api/v1/products/12345?ref=homepage&lang=en HTTP/1.1\r\n"), out
    assert b"Connection:" not in out and out.endswith(EXTRA + b"\r\n"), out
    benchmark(run)


def test_response_parse(benchmark, http1):
    """The origin's response head, parsed by the upstream side (ResponseParser)."""
    benchmark.group = "http1 response head parse"
    head = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 07:43:19 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1024\r\n"
            b"Connection: keep-alive\r\n\r\n")
    parser = http1.ResponseParser()
    parse = parser.parse
    assert parse(head, 0) == len(head) and parser.content_length == 1024

    def run():
        return parse(head, 0)
    benchmark(run)


# --- balancer picks -------------------------------------------------------------------------
# RoundRobinPicker(weights).pick(): what Cluster.pick() costs per request. Uniform weights take
# the rotation fast path; weighted ones run smooth weighted round robin over every endpoint
# (O(n) per pick), so n=10000 weighted shows the worst case.

@pytest.mark.parametrize("n", [3, 100, 10000])
@pytest.mark.parametrize("weights", ["uniform", "weighted"])
def test_balancer_pick(benchmark, balancer, n, weights):
    benchmark.group = f"balancer RoundRobinPicker.pick, {weights}, n={n}"
    w = [1] * n if weights == "uniform" else [1 + (i % 5) for i in range(n)]
    picker = balancer.RoundRobinPicker(w)
    pick = picker.pick
    seen = {pick() for _ in range(min(3 * n, 30000))}
    assert seen <= set(range(n)) and len(seen) == n
    benchmark(pick)


# --- route lookup ---------------------------------------------------------------------------
# The engine routes with ProxyContext.routes: a dict from the lowercased Host value (bytes, as
# the parser hands it over) to a Cluster object, built at apply time with every domain form.
# Same operation for both builds (a dict lookup); the compiled twin's cost is in the call site.

class _Cluster:
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


def _routes(n_domains: int = 20) -> dict:
    routes = {}
    for i in range(n_domains):
        c = _Cluster(f"outbound|80||svc{i}.default.svc.cluster.local")
        for form in (f"svc{i}.default.svc.cluster.local", f"svc{i}.default.svc.cluster.local:80",
                     f"svc{i}", f"svc{i}:80", f"svc{i}.default", f"svc{i}.default:80"):
            routes[form.encode()] = c
    return routes


def test_route_lookup(benchmark, http1):
    """parse the head (host extracted by the parser), then routes.get(host): the routing step."""
    benchmark.group = "route lookup: parse + dict of 20 domains (120 forms) -> cluster"
    routes = _routes()
    req = REQUEST.replace(b"shop.default.svc.cluster.local", b"svc17.default.svc.cluster.local")
    parser = http1.RequestParser()
    parse, get = parser.parse, routes.get

    def run():
        parse(req, 0)
        return get(parser.host)
    assert run().name.endswith("svc17.default.svc.cluster.local")
    benchmark(run)


def test_route_lookup_dict_only(benchmark):
    """The dict lookup alone, with the host bytes already in hand."""
    benchmark.group = "route lookup: dict of 20 domains (120 forms) -> cluster"
    routes = _routes()
    host = b"svc17.default.svc.cluster.local"
    get = routes.get
    assert get(host) is not None
    benchmark(get, host)


# --- head serialisation ---------------------------------------------------------------------

def test_serialize(benchmark, http1):
    """RequestParser.serialize(extra) alone, after one parse: the upstream head the proxy writes."""
    benchmark.group = "http1 request head serialize(extra) after parse"
    parser = http1.RequestParser()
    assert parser.parse(REQUEST, 0) == len(REQUEST)
    serialize = parser.serialize
    out = serialize(EXTRA)
    assert out.endswith(EXTRA + b"\r\n") and b"Connection:" not in out
    benchmark(serialize, EXTRA)
