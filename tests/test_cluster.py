"""conn.Cluster, both builds: least-request accounting across a connect-failure retry, passive
ejection and revival, single-endpoint fast path."""
import importlib

import pytest

from meshproxy._py import counters as py_counters

BUILDS = [pytest.param("meshproxy._py", id="py")]
try:
    importlib.import_module("meshproxy._core.conn")
    BUILDS.append(pytest.param("meshproxy._core", id="c"))
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(params=BUILDS)
def conn(request):
    return importlib.import_module(request.param + ".conn")


def counters_for(conn):
    return importlib.import_module(conn.__name__.rsplit(".", 1)[0] + ".counters")


class FakeDownstream:
    """What Cluster.pick reads and writes on a downstream (least-request slot)."""

    def __init__(self, conn):
        del conn
        self.lr_picker = None
        self.lr_index = 0
        self.parser = None
        self.client_addr = b"127.0.0.1"

    def release_lr(self):
        lr = self.lr_picker
        if lr is not None:
            self.lr_picker = None
            lr.release(self.lr_index)


def make(conn, n=3, policy="LEAST_REQUEST"):
    """A cluster of ``n`` endpoints (nothing is dialled: only picks are tested)."""
    eps = [conn.Endpoint("127.0.0.1", 10000 + i) for i in range(n)]
    stats = counters_for(conn).ClusterStats("c")
    return conn.Cluster("c", eps, [1] * n, stats, None, policy), eps


def test_retry_moves_the_least_request_slot(conn):
    cluster, eps = make(conn)
    ds = FakeDownstream(conn)
    first = cluster.pick(ds)
    picker = cluster.picker
    i = eps.index(first)
    assert picker.active(i) == 1
    other = cluster.pick_other(ds, first)
    assert other is not first
    assert picker.active(i) == 0, "the failed endpoint's slot was not released"
    assert picker.active(eps.index(other)) == 1
    ds.release_lr()
    assert [picker.active(k) for k in range(len(eps))] == [0, 0, 0]


def test_connect_failure_ejects_until_revived(conn):
    cluster, eps = make(conn, policy="ROUND_ROBIN")
    conn.mark_unhealthy(eps[0], 60)
    picks = {cluster.pick(None).port for _ in range(30)}
    assert eps[0].port not in picks and len(picks) == 2
    eps[0].unhealthy_until = 0
    conn.revive(eps, 1e18)
    picks = {cluster.pick(None).port for _ in range(30)}
    assert picks == {e.port for e in eps}


def test_all_unhealthy_is_panic_mode(conn):
    cluster, eps = make(conn, policy="ROUND_ROBIN")
    for e in eps:
        conn.mark_unhealthy(e, 60)
    assert {cluster.pick(None).port for _ in range(30)} == {e.port for e in eps}
    for e in eps:
        e.unhealthy_until = 0
    conn.revive(eps, 1e18)


def test_single_endpoint_needs_no_picker(conn):
    cluster, eps = make(conn, n=1)
    assert cluster.picker is None
    assert cluster.pick(FakeDownstream(conn)) is eps[0]


def test_py_counters_module_is_the_twin():
    assert py_counters.ClusterStats("x").snapshot()["name"] == "x"
