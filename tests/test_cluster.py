"""``cluster``: Cluster.choose/release with an LbContext, the OutlierDetector, endpoint health
bits, priorities, passthrough (original destination) clusters, picker generations, pools; on both
builds (``meshproxy._py`` and the compiled ``meshproxy._core``). Nothing is dialled: only picks,
counts and health are tested.

(Ported from the old ``conn.Cluster`` tests: least-request accounting across a connect-failure
retry, passive ejection and revival, panic mode, the single-endpoint fast path.)
"""
import time
from collections import Counter

import pytest

from control.snapshot import Bootstrap, HashPolicy, Snapshot
from control.snapshot import Cluster as SCluster
from control.snapshot import Endpoint as SEndpoint
from meshproxy import cluster_manager
# H_* are C constants in the compiled build (not importable from it): the values are the same.
from meshproxy._py.cluster import H_ACTIVE_HC, H_OUTLIER

@pytest.fixture
def b(impl):
    """The modules of one build (tests/conftest.py's ``impl``: ``py`` or ``c``, checked)."""
    return impl


class Pools:
    """A stand-in for ClusterManager.pool_for (one Pool per key, made on first use)."""

    def __init__(self, b):
        self.b = b
        self.pools = {}

    def __call__(self, address, port, transport="plaintext", protocol="http/1.1"):
        key = self.b.cluster.pool_key(address, port, transport, protocol)
        p = self.pools.get(key)
        if p is None:
            p = self.pools[key] = self.b.cluster.Pool(key)
        return p


_HELD = {}


def choose(c, lb):
    """Cluster.choose, remembering the generation the slot was taken under (as a Stream does)."""
    ep = c.choose(lb)
    if ep is not None:
        _HELD.setdefault((id(c), id(ep)), []).append(c.gen)
    return ep


def release(c, ep):
    """Cluster.release with the generation ``choose`` saw for this endpoint (first taken, first
    released: the tests end requests in the order they started them)."""
    c.release(ep, _HELD[(id(c), id(ep))].pop(0))


def make(b, n=3, policy="LEAST_REQUEST", weights=None, priorities=None, hash_policy=None):
    """A cluster of ``n`` endpoints 127.0.0.10+i:8080."""
    pools = Pools(b)
    c = b.cluster.Cluster("c", b.counters.ClusterStats("c"), policy=policy,
                          hash_policy=hash_policy, pool_for=pools)
    addrs = ["127.0.0.%d" % (10 + i) for i in range(n)]
    eps = [b.cluster.Endpoint(a, 8080, pools(a, 8080)) for a in addrs]
    c.set_endpoints(eps, weights or [1] * n, priorities)
    return c, eps


def picks(c, n, lb=None):
    """``n`` choose/release pairs: the endpoints chosen."""
    out = []
    for _ in range(n):
        ep = choose(c, lb)
        assert ep is not None
        release(c, ep)
        out.append(ep)
    return out


def lr_counts(c, eps):
    return [c.picker.active(ep.slot) for ep in eps]


# -- least request --------------------------------------------------------------------------------


def test_retry_moves_the_least_request_slot(b):
    c, eps = make(b)
    assert type(c.picker) is b.balancer.LeastRequestPicker
    lb = b.cluster.LbContext()
    first = choose(c, lb)
    assert lr_counts(c, eps) == [1 if e is first else 0 for e in eps]
    assert first.rq_active == 1 and first.rq_total == 1
    # the connect failed: avoid it, release it, choose again (as stream.on_upstream_failed)
    lb.avoid = [first]
    release(c, first)
    other = choose(c, lb)
    assert other is not first
    assert first.rq_active == 0, "the failed endpoint's slot was not released"
    assert lr_counts(c, eps) == [1 if e is other else 0 for e in eps]
    # a second retry avoids both
    lb.avoid.append(other)
    release(c, other)
    third = choose(c, lb)
    assert third not in (first, other)
    assert lr_counts(c, eps) == [1 if e is third else 0 for e in eps]
    release(c, third)
    assert lr_counts(c, eps) == [0, 0, 0]
    assert [e.rq_active for e in eps] == [0, 0, 0]
    assert sum(e.rq_total for e in eps) == 3


def test_avoid_everything_gives_none(b):
    c, eps = make(b)
    lb = b.cluster.LbContext()
    lb.avoid = list(eps)
    assert choose(c, lb) is None
    assert [e.rq_active for e in eps] == [0, 0, 0] and lr_counts(c, eps) == [0, 0, 0]


def test_least_request_counts_follow_requests_in_flight(b):
    c, eps = make(b)
    held = [choose(c, None) for _ in range(12)]
    by_ep = Counter(id(e) for e in held)
    assert lr_counts(c, eps) == [by_ep[id(e)] for e in eps]
    assert [e.rq_active for e in eps] == [by_ep[id(e)] for e in eps]
    for e in held:
        release(c, e)
    assert lr_counts(c, eps) == [0, 0, 0] and [e.rq_active for e in eps] == [0, 0, 0]


# -- round robin, single endpoint, consistent hash -------------------------------------------------


def test_round_robin_spreads(b):
    c, eps = make(b, policy="ROUND_ROBIN")
    got = picks(c, 30)
    for i in range(0, 30, 3):
        assert set(map(id, got[i:i + 3])) == set(map(id, eps)), "equal weights rotate"
    assert not c.needs_context


def test_weighted_round_robin_follows_weights(b):
    c, eps = make(b, n=2, policy="ROUND_ROBIN", weights=[3, 1])
    got = Counter(id(e) for e in picks(c, 40))
    assert (got[id(eps[0])], got[id(eps[1])]) == (30, 10)


def test_single_endpoint_needs_no_picker(b):
    c, (ep,) = make(b, n=1)
    assert c.picker is None and c.single is ep
    assert choose(c, None) is ep
    assert choose(c, b.cluster.LbContext()) is ep
    assert ep.rq_active == 2
    release(c, ep)
    release(c, ep)
    assert ep.rq_active == 0 and ep.rq_total == 2
    lb = b.cluster.LbContext()
    lb.avoid = [ep]
    assert choose(c, lb) is None, "a retry has nowhere else to go"
    assert ep.rq_active == 0


def test_empty_cluster_chooses_nothing(b):
    c, _ = make(b, n=0)
    assert choose(c, None) is None and choose(c, b.cluster.LbContext()) is None


def key_lb(b, key):
    lb = b.cluster.LbContext()
    lb.has_key = True
    lb.hash_key = b.balancer.hash_key(key)
    return lb


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_consistent_hash_is_stable_per_key(b, policy):
    c, eps = make(b, n=4, policy=policy, hash_policy=HashPolicy(header="x-user"))
    assert c.needs_context
    for name in (b"alice", b"bob", b"carol"):
        lb = key_lb(b, name)
        assert len(set(map(id, picks(c, 20, lb)))) == 1, f"{name} moved between picks"
    owners = Counter(id(picks(c, 1, key_lb(b, b"user-%d" % i))[0]) for i in range(400))
    assert len(owners) == 4, "keys do not spread over the endpoints"
    assert [e.rq_active for e in eps] == [0, 0, 0, 0]
    # without a key the pick is random: a fixed hash_key with has_key False is ignored
    lb = b.cluster.LbContext()
    lb.hash_key = b.balancer.hash_key(b"alice")
    assert len(set(map(id, picks(c, 60, lb)))) > 1


@pytest.mark.parametrize("how", ["ejected", "removed"])
@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV"])
def test_consistent_hash_keeps_keys_when_another_endpoint_goes(b, policy, how):
    """Losing one endpoint (ejected, or gone from the membership) must only move the keys it owned,
    give or take the ring's resizing: Envoy places endpoints on the ring by address, so the
    others keep their keys (sticky sessions survive a pod going away)."""
    c, eps = make(b, n=5, policy=policy, hash_policy=HashPolicy(header="x-user"))
    keys = [b"user-%d" % i for i in range(1000)]
    before = {k: picks(c, 1, key_lb(b, k))[0] for k in keys}
    gone = eps[0]
    if how == "ejected":
        c.detector.put_result(gone, b.cluster.RESULT_CONNECT_FAILED)
    else:
        c.set_endpoints(eps[1:], [1] * 4)
    after = {k: picks(c, 1, key_lb(b, k))[0] for k in keys}
    assert all(ep is not gone for ep in after.values())
    survivors = [k for k in keys if before[k] is not gone]
    moved = sum(1 for k in survivors if after[k] is not before[k])
    assert moved / len(survivors) < 0.3, (
        f"{moved} of {len(survivors)} keys moved between endpoints that are still there")


# -- outlier detection and health ------------------------------------------------------------------


def test_connect_failure_ejects_until_tick_returns_it(b):
    c, eps = make(b, policy="ROUND_ROBIN")
    det = c.detector
    assert not det.wants_responses
    t0 = time.monotonic()
    det.put_result(eps[0], b.cluster.RESULT_CONNECT_FAILED)
    assert eps[0].health_flags == H_OUTLIER and not eps[0].healthy
    assert eps[0].health == "UNHEALTHY" and eps[0].ejections == 1
    assert eps[0].ejected_until >= t0 + b.cluster.CONNECT_FAILURE_EJECTION
    assert list(det.ejected) == [eps[0]]
    assert {id(e) for e in picks(c, 30)} == {id(eps[1]), id(eps[2])}
    det.tick(eps[0].ejected_until - 0.001)
    assert not eps[0].healthy
    assert {id(e) for e in picks(c, 30)} == {id(eps[1]), id(eps[2])}
    det.tick(eps[0].ejected_until)
    assert eps[0].healthy and eps[0].health_flags == 0 and list(det.ejected) == []
    assert {id(e) for e in picks(c, 30)} == {id(e) for e in eps}


def test_which_results_eject(b):
    c, eps = make(b, policy="ROUND_ROBIN")
    det = c.detector
    for r in (b.cluster.RESULT_CONNECT_SUCCESS, b.cluster.RESULT_RESET, b.cluster.RESULT_TIMEOUT,
              200, 503):
        det.put_result(eps[0], r)
    assert eps[0].healthy and eps[0].ejections == 0
    det.put_result(eps[1], b.cluster.RESULT_CONNECT_TIMEOUT)
    assert not eps[1].healthy
    # ejected again while out: one ejection, one entry, a later deadline
    until = eps[1].ejected_until
    time.sleep(0.002)
    det.put_result(eps[1], b.cluster.RESULT_CONNECT_FAILED)
    assert eps[1].ejections == 1 and list(det.ejected) == [eps[1]]
    assert eps[1].ejected_until > until


def test_all_ejected_is_panic_mode(b):
    c, eps = make(b, policy="ROUND_ROBIN")
    for e in eps:
        c.detector.put_result(e, b.cluster.RESULT_CONNECT_FAILED)
    assert not any(e.healthy for e in eps)
    assert {id(e) for e in picks(c, 30)} == {id(e) for e in eps}
    c.detector.tick(max(e.ejected_until for e in eps))
    assert all(e.healthy for e in eps)


def test_endpoint_stays_out_until_every_health_bit_clears(b):
    c, eps = make(b, policy="ROUND_ROBIN")
    ep = eps[0]
    assert ep.set_health_flag(H_ACTIVE_HC, True) is True
    c.health_changed()
    c.detector.put_result(ep, b.cluster.RESULT_CONNECT_FAILED)
    assert ep.health_flags == H_OUTLIER | H_ACTIVE_HC
    assert ep not in picks(c, 30)
    c.detector.tick(ep.ejected_until)  # the ejection is over, the health check still fails
    assert ep.health_flags == H_ACTIVE_HC and not ep.healthy
    assert ep not in picks(c, 30)
    assert ep.set_health_flag(H_ACTIVE_HC, False) is True
    c.health_changed()
    assert ep.healthy and ep in picks(c, 30)
    assert ep.set_health_flag(H_ACTIVE_HC, False) is False  # no change


def test_priorities_fail_over_only_when_the_first_group_is_out(b):
    c, eps = make(b, n=4, policy="ROUND_ROBIN", priorities=[0, 0, 1, 1])
    p0, p1 = {id(eps[0]), id(eps[1])}, {id(eps[2]), id(eps[3])}
    assert c.priority == 0 and {id(e) for e in picks(c, 20)} == p0
    c.detector.put_result(eps[0], b.cluster.RESULT_CONNECT_FAILED)
    assert c.priority == 0 and {id(e) for e in picks(c, 20)} == {id(eps[1])}
    # a retry that has to avoid the only healthy priority-0 endpoint goes to priority 1
    lb = b.cluster.LbContext()
    lb.avoid = [eps[1]]
    other = choose(c, lb)
    assert id(other) in p1
    release(c, other)
    c.detector.put_result(eps[1], b.cluster.RESULT_CONNECT_FAILED)
    assert c.priority == 1 and {id(e) for e in picks(c, 20)} == p1
    for e in eps[2:]:
        c.detector.put_result(e, b.cluster.RESULT_CONNECT_FAILED)
    # nothing healthy anywhere: panic over the first group
    assert c.priority == 0 and {id(e) for e in picks(c, 20)} == p0
    c.detector.tick(max(e.ejected_until for e in eps))
    assert c.priority == 0 and {id(e) for e in picks(c, 20)} == p0
    assert [e.rq_active for e in eps] == [0, 0, 0, 0]


# -- passthrough ----------------------------------------------------------------------------------


def test_passthrough_dials_the_requests_authority(b):
    pools = Pools(b)
    c = b.cluster.Cluster("PassthroughCluster", b.counters.ClusterStats("p"), passthrough=True,
                          default_port=80, pool_for=pools)
    c.set_endpoints([], [])
    assert c.needs_context
    lb = b.cluster.LbContext()
    lb.authority = b"127.0.0.9:8080"
    ep = choose(c, lb)
    assert type(ep) is b.cluster.Endpoint
    assert (ep.address, ep.port, ep.host) == ("127.0.0.9", 8080, "127.0.0.9:8080")
    assert ep.pool is pools("127.0.0.9", 8080)
    assert ep.pool.key == ("127.0.0.9", 8080, "plaintext", "http/1.1", "")
    assert choose(c, lb) is ep and ep.rq_active == 2 and ep.rq_total == 2
    release(c, ep)
    release(c, ep)
    assert ep.rq_active == 0
    lb.authority = b"example.com"
    e2 = choose(c, lb)
    assert (e2.address, e2.port) == ("example.com", 80)
    release(c, e2)
    lb.authority = b"[::1]:9000"
    e3 = choose(c, lb)
    assert (e3.address, e3.port) == ("::1", 9000)
    release(c, e3)
    for bad in (b"host:99999", b"host:0", b"host:abc", b"", None):
        lb.authority = bad
        assert choose(c, lb) is None, bad
    assert choose(c, None) is None
    assert {(e.address, e.port) for e in c.all_endpoints()} == {
        ("127.0.0.9", 8080), ("example.com", 80), ("::1", 9000)}


# -- generations ----------------------------------------------------------------------------------


def test_release_after_a_rebuild_leaves_the_new_picker_alone(b):
    """A request chosen before the cluster rebuilt its picker (new membership, DNS, a health
    change) ends after it: its release must not take a slot of the new picker (it would be another
    request's, or none: ValueError in the middle of finishing a stream)."""
    c, eps = make(b)
    ep = choose(c, None)  # in flight across the rebuild
    old_picker = c.picker
    c.set_endpoints(eps, [1, 1, 1])  # same hosts, new picker
    assert c.picker is not old_picker
    # a request of the new picker on the same endpoint (the others avoided: deterministic)
    lb = b.cluster.LbContext()
    lb.avoid = [e for e in eps if e is not ep]
    n = choose(c, lb)
    assert n is ep
    carried = lr_counts(c, eps)[eps.index(ep)]  # 1, or 2 if the rebuild carried the old count
    assert carried in (1, 2)
    release(c, ep)  # the old request ends: the new one's slot stays taken
    assert lr_counts(c, eps) == [1 if e is ep else 0 for e in eps], \
        "the old request's release took the new request's slot"
    release(c, n)
    assert lr_counts(c, eps) == [0, 0, 0] and ep.rq_active == 0


def test_release_after_a_health_change_does_not_fail(b):
    c, eps = make(b, n=4)
    ep = choose(c, None)
    other = next(e for e in eps if e is not ep)
    c.detector.put_result(other, b.cluster.RESULT_CONNECT_FAILED)  # rebuild: 3 healthy left
    assert c.picker is not None and ep.healthy
    release(c, ep)  # must not raise "release without a matching acquire"
    assert [c.picker.active(e.slot) for e in eps if e.healthy] == [0, 0, 0]
    assert ep.rq_active == 0


def snapshot(addrs):
    cl = SCluster(name="outbound|80||web", direction="outbound", service="web",
                  namespace="default", port=80, port_name="http", protocol="HTTP",
                  endpoints=tuple(SEndpoint(a, p, p) for a, p in addrs))
    return Snapshot("v", Bootstrap(), (), (cl,))


@pytest.fixture
def cm(b, monkeypatch):
    """A ClusterManager building clusters of this build."""
    monkeypatch.setattr(cluster_manager, "cl", b.cluster)
    monkeypatch.setattr(cluster_manager, "counters", b.counters)
    return cluster_manager.ClusterManager(None)


def test_release_through_the_old_cluster_after_a_reload(b, cm):
    addrs = [("127.0.0.21", 80), ("127.0.0.22", 80), ("127.0.0.23", 80)]
    old = cm.build(snapshot(addrs))["outbound|80||web"]
    ep = choose(old, None)
    new = cm.build(snapshot(addrs))["outbound|80||web"]
    assert new is not old and new.gen != old.gen
    assert new.endpoints == old.endpoints and ep in new.endpoints  # endpoints survive reloads
    assert new.stats is old.stats
    n = choose(new, None)
    release(old, ep)  # an in-flight request of the old snapshot ends
    assert ep.rq_active == (1 if n is ep else 0)
    assert [new.picker.active(e.slot) for e in new.endpoints] == [
        1 if e is n else 0 for e in new.endpoints]
    release(new, n)
    assert [new.picker.active(e.slot) for e in new.endpoints] == [0, 0, 0]
    assert [e.rq_active for e in new.endpoints] == [0, 0, 0]


def test_ejection_survives_a_reload_and_ends_on_tick(b, cm):
    addrs = [("127.0.0.21", 80), ("127.0.0.22", 80)]
    old = cm.build(snapshot(addrs))["outbound|80||web"]
    cm.clusters = {old.name: old}
    ep = old.endpoints[0]
    old.detector.put_result(ep, b.cluster.RESULT_CONNECT_FAILED)
    new = cm.build(snapshot(addrs))["outbound|80||web"]
    cm.clusters = {new.name: new}
    assert not ep.healthy and list(new.detector.ejected) == [ep]
    assert {id(e) for e in picks(new, 10)} == {id(new.endpoints[1])}
    cm.tick(ep.ejected_until)
    assert ep.healthy and {id(e) for e in picks(new, 10)} == {id(e) for e in new.endpoints}


# -- pools ----------------------------------------------------------------------------------------


class FakeUpstream:
    def __init__(self):
        self.closed = False
        self.idle_deadline = 0.0
        self.expiring = False  # its deadline is its maxConnectionDuration

    def close(self):
        self.closed = True


def test_pool_reuses_lifo_and_bounds_idle(b):
    p = b.cluster.Pool(b.cluster.pool_key("127.0.0.5", 80))
    assert (p.address, p.port, p.host) == ("127.0.0.5", 80, "127.0.0.5:80")
    u = [FakeUpstream() for _ in range(3)]
    t0 = time.monotonic()
    p.release(u[0], 2, 10.0)
    p.release(u[1], 2, 20.0)
    t1 = time.monotonic()
    p.release(u[2], 2, 10.0)
    assert u[2].closed and p.idle == [u[0], u[1]]
    assert t0 + 10.0 <= u[0].idle_deadline <= t1 + 10.0
    assert t0 + 20.0 <= u[1].idle_deadline <= t1 + 20.0
    closed = FakeUpstream()
    closed.closed = True
    p.release(closed, 2, 10.0)
    assert p.idle == [u[0], u[1]]
    u[1].closed = True  # closed while idle (the server hung up)
    assert p.acquire() is u[0] and p.acquire() is None


def test_pool_sweep_closes_expired(b, cm):
    p = cm.pool_for("127.0.0.5", 80)
    fresh, stale = FakeUpstream(), FakeUpstream()
    p.release(stale, 8, 1.0)
    p.release(fresh, 8, 100.0)
    cm.tick(stale.idle_deadline)
    assert stale.closed and not fresh.closed and p.idle == [fresh]
    cm.close()
    assert fresh.closed and p.idle == []
