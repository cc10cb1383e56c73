"""The codec's path normalisation hook, both builds, over the engine's fakes (tests/test_engine.py):
routing sees the normalised path, the upstream receives it, a rewrite applies to it, NONE leaves
paths alone, and a path that cannot be normalised is answered 400 without going upstream."""
import re

import pytest

from control.snapshot import Bootstrap, Destination, Rewrite, Route, RouteMatch, Snapshot, StringMatch
from control.snapshot import Listener as SListener
from test_engine import (ADDR, API, OK, WEB, b, default_snapshot, make_engine, respond,  # noqa: F401
                         scluster, vhost)


def upstream_request_line(e, conn, raw):
    conn.data_received(raw)
    e.loop.run()
    (up_t,) = e.loop.upstreams
    head = up_t.take()
    return head.split(b"\r\n", 1)[0], up_t


@pytest.mark.parametrize("path,cluster,sent", [
    ("/api/../x", WEB, b"/x"),                    # not the /api/ route
    ("/api/%2e%2e/x", WEB, b"/x"),
    ("/x/../api/v?q=/../", API, b"/api/v?q=/../"),  # the query is never touched
    ("/./%61pi/v#frag", API, b"/api/v"),
    ("\\api\\v".replace("\\", "/", 1), API, b"/api/v"),
    ("/api/v", API, b"/api/v"),
], ids=["dotdot", "encoded-dotdot", "into-prefix", "dot-unreserved-fragment", "backslash", "plain"])
def test_routing_and_upstream_see_the_normalised_path(b, make_engine, path, cluster, sent):
    e = make_engine()
    assert e.ctx.path_normalization == 1  # BASE by default
    client_t, conn = e.client()
    line, up_t = upstream_request_line(e, conn, f"GET {path} HTTP/1.1\r\nHost: table\r\n\r\n".encode())
    s = conn.stream
    assert s.cluster is e.clusters[cluster]
    assert line == b"GET " + sent + b" HTTP/1.1"
    assert conn.view.path() == sent
    respond(up_t)
    assert client_t.take() == OK


def test_none_leaves_paths_alone_but_strips_the_fragment(b, make_engine):
    e = make_engine()
    e.ctx.path_normalization = 0
    client_t, conn = e.client()
    line, _ = upstream_request_line(e, conn, b"GET /api/../x//y%2F#f HTTP/1.1\r\nHost: table\r\n\r\n")
    assert conn.stream.cluster is e.clusters[API]  # matched /api/ unnormalised
    assert line == b"GET /api/../x//y%2F HTTP/1.1"


@pytest.mark.parametrize("mode,sent", [(1, b"/a//b%2Fc"), (2, b"/a/b%2Fc"), (3, b"/a/b/c")])
def test_modes_through_the_codec(b, make_engine, mode, sent):
    e = make_engine()
    e.ctx.path_normalization = mode
    client_t, conn = e.client()
    line, _ = upstream_request_line(e, conn, b"GET /a//b%2Fc HTTP/1.1\r\nHost: web\r\n\r\n")
    assert line == b"GET " + sent + b" HTTP/1.1"


def test_rewrite_applies_to_the_normalised_path(b, make_engine):
    snap = default_snapshot()
    lst = snap.listeners[0]
    rw = vhost(["rw"], Route("rw", matches=(RouteMatch(uri=StringMatch("prefix", "/public")),),
                             destinations=(Destination(WEB),), rewrite=Rewrite(uri="/v2"),
                             virtual_service="default/rw"))
    lst2 = SListener(lst.name, lst.direction, lst.address, lst.port, lst.virtual_hosts + (rw,))
    e = make_engine(Snapshot("test", Bootstrap(), (lst2,), snap.clusters))
    client_t, conn = e.client()
    line, _ = upstream_request_line(e, conn, b"GET /x/../public/%41?a=/.. HTTP/1.1\r\nHost: rw\r\n\r\n")
    assert line == b"GET /v2/A?a=/.. HTTP/1.1"


def test_a_path_that_cannot_be_normalised_is_400(b, make_engine):
    e = make_engine()
    client_t, conn = e.client()
    conn.data_received(b"GET /a%00b HTTP/1.1\r\nHost: web\r\n\r\n")
    e.loop.run()
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert b"path normalization failed" in out
    assert e.loop.connects == [] and client_t.closed
    assert e.stats.snapshot()["codes"] == {400: 1}
