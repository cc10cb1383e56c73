"""Pickers, both twins: RoundRobinPicker (rotation, weighted shares, smoothness), RANDOM,
LEAST_REQUEST (P2C and EDF), RING_HASH and MAGLEV (shares, disruption, twin identity), hash_key,
make_picker, bad input, and the construction both twins share (meshproxy/_lbtables.py).

``balancer`` is each build's module in turn and ``twins`` both at once (tests/conftest.py)."""
import collections
import hashlib
import json
import math
import os
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy import _lbtables


def test_equal_weights_rotate(balancer):
    p = balancer.RoundRobinPicker([1, 1, 1])
    assert [p.pick() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert p.size == 3


def test_single_endpoint(balancer):
    p = balancer.RoundRobinPicker([5])
    assert {p.pick() for _ in range(10)} == {0}


def test_weighted_shares_exact_per_cycle(balancer):
    p = balancer.RoundRobinPicker([5, 1, 1])
    picks = [p.pick() for _ in range(700)]
    assert collections.Counter(picks) == {0: 500, 1: 100, 2: 100}
    # smooth: the heavy endpoint never takes more than its share in a row (nginx's property)
    first = picks[:7]
    assert first.count(0) == 5 and first != [0, 0, 0, 0, 0, 1, 2]


@pytest.mark.parametrize("weights", [[], [0], [1, -1]])
def test_bad_weights_rejected(balancer, weights):
    with pytest.raises(ValueError):
        balancer.RoundRobinPicker(weights)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=12))
def test_round_robin_shares_match_weights(balancer, weights):
    p = balancer.RoundRobinPicker(weights)
    total = sum(weights)
    counts = collections.Counter(p.pick() for _ in range(total * 3))
    assert all(counts[i] == 3 * w for i, w in enumerate(weights))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=12))
def test_twins_agree_and_shares_match_weights(twins, weights):
    py = twins.py.balancer.RoundRobinPicker(weights)
    total = sum(weights)
    picks = [py.pick() for _ in range(total * 3)]
    counts = collections.Counter(picks)
    assert all(counts[i] == 3 * w for i, w in enumerate(weights))
    cp = twins.c.balancer.RoundRobinPicker(weights)
    assert [cp.pick() for _ in range(total * 3)] == picks


# ---------------------------------------------------------------------------------------------
# The other Istio policies: RANDOM, LEAST_REQUEST, RING_HASH, MAGLEV, make_picker, hash_key
# ---------------------------------------------------------------------------------------------

def _keys(count, seed=7):
    rnd = random.Random(seed)
    return [rnd.getrandbits(64) for _ in range(count)]


def _shares(picks, n):
    counts = collections.Counter(picks)
    total = len(picks)
    return [counts[i] / total for i in range(n)]


def _assert_shares(shares, weights, tol):
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(shares[i] - w / total) <= tol, (i, shares, weights)


POLICY_CLASSES = {
    "ROUND_ROBIN": "RoundRobinPicker",
    "RANDOM": "RandomPicker",
    "LEAST_REQUEST": "LeastRequestPicker",
    "RING_HASH": "RingHashPicker",
    "MAGLEV": "MaglevPicker",
}


@pytest.mark.parametrize("policy", sorted(POLICY_CLASSES))
def test_make_picker_maps_istio_names(balancer, policy):
    p = balancer.make_picker(policy, [1, 2, 3], names=["a:1", "b:1", "c:1"])
    assert type(p).__name__ == POLICY_CLASSES[policy]
    assert p.size == 3


# Only the canonical names: control normalises Istio's spellings (UNSPECIFIED and LEAST_CONN are
# LEAST_REQUEST) and PASSTHROUGH never reaches a picker.
@pytest.mark.parametrize("policy", ["round_robin", "PASSTHROUGH", "LEAST", "", None, "UNSPECIFIED",
                                    "LEAST_CONN", "least_request"])
def test_make_picker_rejects_unknown_policy(balancer, policy):
    with pytest.raises(ValueError, match=re.escape(repr(policy))):
        balancer.make_picker(policy, [1])


def test_make_picker_passes_and_checks_options(balancer):
    assert balancer.make_picker("MAGLEV", [1, 1], table_size=7).table_size == 7
    assert balancer.make_picker("LEAST_REQUEST", [1, 1], choice_count=3).choice_count == 3
    assert balancer.make_picker("RING_HASH", [1], minimum_ring_size=10, maximum_ring_size=10).ring_size == 10
    with pytest.raises(TypeError):
        balancer.make_picker("ROUND_ROBIN", [1], seed=1)
    with pytest.raises(TypeError):
        balancer.make_picker("RANDOM", [1], table_size=7)
    with pytest.raises(ValueError):
        balancer.make_picker("RANDOM", [1, 1], names=["only-one"])


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV"])
@pytest.mark.parametrize("weights", [[], [0], [1, -1], [3, 0, 2]])
def test_every_picker_rejects_bad_weights(balancer, policy, weights):
    with pytest.raises(ValueError):
        balancer.make_picker(policy, weights)


@pytest.mark.parametrize("cls,kwargs", [
    ("LeastRequestPicker", {"choice_count": 1}),
    ("LeastRequestPicker", {"active": [0]}),
    ("LeastRequestPicker", {"active": [0, -1]}),
    ("LeastRequestPicker", {"active_request_bias": -0.5}),
    ("RingHashPicker", {"names": ["a"]}),
    ("RingHashPicker", {"names": ["a", "a"]}),
    ("RingHashPicker", {"minimum_ring_size": 0}),
    ("RingHashPicker", {"minimum_ring_size": 100, "maximum_ring_size": 10}),
    ("RingHashPicker", {"maximum_ring_size": 8388609}),
    ("MaglevPicker", {"names": ["a", "b", "c"]}),
    ("MaglevPicker", {"names": ["x", "x"]}),
    ("MaglevPicker", {"table_size": 65536}),
    ("MaglevPicker", {"table_size": 65535}),
    ("MaglevPicker", {"table_size": 1}),
    ("MaglevPicker", {"table_size": 9}),
])
def test_bad_options_rejected(balancer, cls, kwargs):
    with pytest.raises(ValueError):
        getattr(balancer, cls)([1, 1], **kwargs)


def test_maglev_table_smaller_than_endpoints_rejected(balancer):
    with pytest.raises(ValueError):
        balancer.MaglevPicker([1] * 8, table_size=7)


# --- hash_key: xxHash64, identical in both twins ----------------------------------------------

# Reference values of XXH64 with seed 0 (xxHash's own test vectors), so rings and tables are the
# ones Envoy builds for the same "address_i" keys.
XXH64_VECTORS = [
    (b"", 0xEF46DB3751D8E999),
    (b"a", 0xD24EC4F1A98C6E5B),
    (b"abc", 0x44BC2CF5AD770999),
    (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1),
]


@pytest.mark.parametrize("data,expected", XXH64_VECTORS)
def test_hash_key_is_xxh64(balancer, data, expected):
    assert balancer.hash_key(data) == expected
    assert balancer.RingHashPicker.hash_key(data) == expected
    assert balancer.MaglevPicker.hash_key(data) == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100), st.integers(min_value=0, max_value=2 ** 64 - 1))
def test_hash_key_identical_across_twins(twins, data, seed):
    c, py = twins.c.balancer, twins.py.balancer
    assert c.hash_key(data, seed) == py.hash_key(data, seed)
    assert c.hash_key(bytearray(data)) == py.hash_key(bytearray(data))


# --- RANDOM -------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 2, 7], [5, 1, 1, 1, 1, 1], [1, 100]])
def test_random_weighted_shares(balancer, weights):
    p = balancer.RandomPicker(weights, seed=11)
    _assert_shares(_shares([p.pick() for _ in range(100_000)], len(weights)), weights, 0.01)


def test_random_many_endpoints_all_reached(balancer):
    weights = [random.Random(3).randint(1, 9) for _ in range(50)]
    weights = [(i * 7) % 9 + 1 for i in range(50)]
    p = balancer.RandomPicker(weights)
    _assert_shares(_shares([p.pick() for _ in range(200_000)], 50), weights, 0.005)


def test_random_seed_reproducible_and_unseeded_differ(balancer):
    a, b = balancer.RandomPicker([1] * 1000, seed=42), balancer.RandomPicker([1] * 1000, seed=42)
    assert [a.pick() for _ in range(50)] == [b.pick() for _ in range(50)]
    c, d = balancer.RandomPicker([1] * 1000), balancer.RandomPicker([1] * 1000)
    assert [c.pick() for _ in range(50)] != [d.pick() for _ in range(50)]
    assert balancer.RandomPicker([3]).pick() == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("policy", ["RANDOM", "LEAST_REQUEST"])
def test_unseeded_pickers_reseeded_after_fork(balancer, policy):
    # Without the at-fork reseed a child replays its parent's sequence exactly.
    p = balancer.make_picker(policy, [1] * 1000)
    p.pick()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(w, json.dumps([p.pick() for _ in range(30)]).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = json.loads(f.read())
    os.waitpid(pid, 0)
    assert len(child) == 30
    assert child != [p.pick() for _ in range(30)]


# --- LEAST_REQUEST --------------------------------------------------------------------------------

def test_least_request_zero_actives_shares(balancer):
    p = balancer.LeastRequestPicker([1, 1, 1, 1], seed=5)           # P2C, all tied: uniform
    _assert_shares(_shares([p.pick() for _ in range(40_000)], 4), [1, 1, 1, 1], 0.015)
    weights = [1, 2, 7]
    p = balancer.LeastRequestPicker(weights)                        # EDF: exact weighted shares
    assert collections.Counter(p.pick() for _ in range(1000)) == {0: 100, 1: 200, 2: 700}


def test_least_request_acquire_release_active(balancer):
    p = balancer.LeastRequestPicker([1, 1, 1], active=[0, 2, 0])
    assert [p.active(i) for i in range(3)] == [0, 2, 0]
    p.acquire(0)
    p.acquire(0)
    p.release(1)
    assert [p.active(i) for i in range(3)] == [2, 1, 0]
    with pytest.raises(ValueError):
        p.release(2)
    for bad in (3, -1):
        with pytest.raises(IndexError):
            p.acquire(bad)
        with pytest.raises(IndexError):
            p.release(bad)
        with pytest.raises(IndexError):
            p.active(bad)
    assert [p.active(i) for i in range(3)] == [2, 1, 0]


def test_least_request_prefers_less_loaded(balancer):
    p = balancer.LeastRequestPicker([1, 1, 1], seed=1)
    for _ in range(5):
        p.acquire(0)
    # endpoint 0 wins only when both samples are endpoint 0: 1/9
    shares = _shares([p.pick() for _ in range(30_000)], 3)
    assert abs(shares[0] - 1 / 9) < 0.015
    # closed loop: acquire what is picked, release a random in-flight request once 12 are busy;
    # P2C keeps the spread of active counts well below what blind random picking gives
    def mean_spread(pick):
        rnd = random.Random(4)
        active = [0] * 4
        inflight, spread = [], 0
        for _ in range(3000):
            i = pick(active)
            active[i] += 1
            inflight.append(i)
            if len(inflight) > 12:
                active[inflight.pop(rnd.randrange(len(inflight)))] -= 1
            spread += max(active) - min(active)
        return spread / 3000

    p = balancer.LeastRequestPicker([1] * 4, seed=2)

    def lr_pick(active):
        for j in range(4):
            while p.active(j) < active[j]:
                p.acquire(j)
            while p.active(j) > active[j]:
                p.release(j)
        return p.pick()

    blind = random.Random(5)
    assert mean_spread(lr_pick) < 0.8 * mean_spread(lambda active: blind.randrange(4))


def test_weighted_least_request_scales_weight_by_load(balancer):
    # weights 2:1, endpoint 0 holding 3 requests: effective weights 2/4 and 1/1, so 0 gets ~1/3
    p = balancer.LeastRequestPicker([2, 1], active=[3, 0])
    shares = _shares([p.pick() for _ in range(3000)], 2)
    assert abs(shares[0] - 1 / 3) < 0.02
    # bias 0 ignores load (Envoy: behaves as weighted round robin)
    p = balancer.LeastRequestPicker([2, 1], active=[3, 0], active_request_bias=0.0)
    assert abs(_shares([p.pick() for _ in range(3000)], 2)[0] - 2 / 3) < 0.01
    # bias 2: 2/16 vs 1/1
    p = balancer.LeastRequestPicker([2, 1], active=[3, 0], active_request_bias=2.0)
    assert abs(_shares([p.pick() for _ in range(3000)], 2)[0] - 2 / 18) < 0.02


def _p2c_expected(active):
    # choice_count 2, sampling with replacement, the strictly less loaded of the two (first on a
    # tie): P(i) = P(first = i, second no less loaded) + P(first strictly busier, second = i).
    n = len(active)
    return [(sum(b >= a for b in active) + sum(b > a for b in active)) / (n * n) for a in active]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6), min_size=2, max_size=6),
       st.integers(min_value=0, max_value=2 ** 32))
def test_p2c_never_picks_the_busier_sample(balancer, active, seed):
    # The pick distribution of P2C is exactly _p2c_expected; a picker that ever took the busier of
    # its two samples (or sampled without replacement, or ignored load) lands elsewhere.
    picks_n = 20_000
    p = balancer.LeastRequestPicker([1] * len(active), active=active, seed=seed)
    shares = _shares([p.pick() for _ in range(picks_n)], len(active))
    for got, want in zip(shares, _p2c_expected(active)):
        assert abs(got - want) <= 5 * math.sqrt(want * (1 - want) / picks_n) + 0.002, (
            balancer.__name__, active, shares)


def _c_draws(seed):
    # Model of the compiled twin's generator: splitmix64-seeded xorshift128+, 64 bits per draw.
    m64 = 2 ** 64 - 1
    x = seed & m64

    def splitmix():
        nonlocal x
        x = (x + 0x9E3779B97F4A7C15) & m64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m64
        return z ^ (z >> 31)

    a, b = splitmix(), splitmix()
    while True:
        s1, s0 = a, b
        a = s0
        s1 ^= (s1 << 23) & m64
        b = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
        yield (b + s0) & m64


def _c_samples(seed, n):
    # The compiled twin's sampler: Lemire's multiply-shift on the upper 32 bits of each draw.
    for r in _c_draws(seed):
        yield ((r >> 32) * n) >> 32


def _py_draws(seed):
    rng = random.Random(seed)
    while True:
        yield rng.getrandbits(64)


def _py_samples(seed, n):
    rng = random.Random(seed)
    while True:
        yield rng.randrange(n)


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 2, 7], [(i * 5) % 7 + 1 for i in range(40)]])
def test_random_pick_is_pick_draw_of_its_own_stream(impl, weights):
    # Each twin's pick() is its pick_draw() of its own generator's next 64 bits (xorshift128+ for
    # the compiled one, random.Random(seed).getrandbits(64) for the pure one).
    draws = (_c_draws if impl.compiled else _py_draws)(99)
    p = impl.balancer.RandomPicker(weights, seed=99)
    expected = [p.pick_draw(next(draws)) for _ in range(5000)]
    assert [p.pick() for _ in range(5000)] == expected


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3), min_size=2, max_size=8),
       st.integers(min_value=0, max_value=2 ** 63))
def test_p2c_pointwise_against_its_samples(impl, active, seed):
    # Replaying each twin's own sampler: every pick is the less loaded of its two samples, and
    # the first sample on a tie (Envoy's unweightedHostPickNChoices).
    n = len(active)
    samples = _c_samples if impl.compiled else _py_samples
    p = impl.balancer.LeastRequestPicker([1] * n, active=active, seed=seed)
    stream = samples(seed, n)
    for _ in range(200):
        first, second = next(stream), next(stream)
        want = second if active[second] < active[first] else first
        assert p.pick() == want, (impl.name, active, first, second)


def test_least_request_choice_count_n(balancer):
    # choice_count = 5 over 5 endpoints, one idle: it is chosen unless all 5 samples miss it
    p = balancer.LeastRequestPicker([1] * 5, active=[1, 1, 0, 1, 1], choice_count=5, seed=3)
    shares = _shares([p.pick() for _ in range(20_000)], 5)
    assert abs(shares[2] - (1 - (4 / 5) ** 5)) < 0.015


# --- RING_HASH and MAGLEV -----------------------------------------------------------------------

NAMES = [f"10.0.{i // 250}.{i % 250}:8080" for i in range(64)]


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 2, 7], [3, 1, 4, 1, 5, 9, 2, 6]])
def test_ring_hash_weighted_shares(balancer, weights):
    p = balancer.RingHashPicker(weights, minimum_ring_size=16384)
    _assert_shares(_shares([p.pick(k) for k in _keys(50_000)], len(weights)), weights, 0.02)


def test_ring_hash_ring_size_follows_envoy(balancer):
    # scale = ceil(min_share * minimum_ring_size) / min_share: equal weights -> ceil(1024/n) each
    assert balancer.RingHashPicker([1, 1, 1]).ring_size == 3 * 342
    assert balancer.RingHashPicker([1, 3]).ring_size == 256 * 4
    assert balancer.RingHashPicker([1, 10000], maximum_ring_size=2000).ring_size == 2000  # capped
    assert balancer.RingHashPicker([5], minimum_ring_size=7, maximum_ring_size=7).ring_size == 7


def test_ring_hash_pick_is_first_point_at_or_after_key(balancer):
    p = balancer.RingHashPicker([1, 1], names=["a", "b"], minimum_ring_size=4, maximum_ring_size=4)
    points = sorted((balancer.hash_key(f"{n}_{k}".encode()), i) for i, n in enumerate("ab") for k in range(2))
    for h, owner in points:
        assert p.pick(h) == owner
        assert p.pick(h - 1) == owner
    assert p.pick(points[-1][0] + 1) == points[0][1]          # past the last point: wrap
    assert p.pick(2 ** 64 - 1) == points[0][1] or points[-1][0] == 2 ** 64 - 1
    assert p.pick(0) == points[0][1]


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 2, 7], [3, 1, 4, 1, 5, 9, 2, 6]])
def test_maglev_weighted_shares(balancer, weights):
    p = balancer.MaglevPicker(weights, table_size=65537)
    _assert_shares(_shares([p.pick(k) for k in _keys(50_000)], len(weights)), weights, 0.015)


@pytest.mark.parametrize("seed", range(3))
def test_maglev_table_balanced_within_bound(balancer, seed):
    # Every endpoint takes w/max_w of the rounds, so its table share matches its weight share up
    # to the one round that is cut short when the table fills: a few entries, far below 2%.
    rnd = random.Random(seed)
    weights = [rnd.randint(1, 10) for _ in range(30)]
    p = balancer.MaglevPicker(weights, names=NAMES[:30], table_size=65537)
    table = p.table()
    assert len(table) == 65537 and min(table) == 0 and max(table) == 29
    counts = collections.Counter(table)
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(counts[i] / 65537 / (w / total) - 1) < 0.02, (i, counts[i], w)


def _moved(before, before_names, after, after_names, keys):
    return sum(before_names[before.pick(k)] != after_names[after.pick(k)] for k in keys) / len(keys)


@pytest.mark.parametrize("n", [5, 10, 30])
def test_maglev_moves_about_one_nth_on_add_and_remove(balancer, n):
    keys = _keys(20_000)
    small = balancer.MaglevPicker([1] * n, names=NAMES[:n], table_size=65537)
    big = balancer.MaglevPicker([1] * (n + 1), names=NAMES[:n + 1], table_size=65537)
    # Maglev's own disruption on top of the ideal 1/(n+1) is small (Eisenbud et al., sec. 5.3)
    assert _moved(small, NAMES, big, NAMES, keys) <= 1.3 / (n + 1) + 0.01
    # remove one from the middle: indices shift, names (and so placement) do not
    rest = NAMES[:n // 2] + NAMES[n // 2 + 1:n + 1]
    removed = balancer.MaglevPicker([1] * n, names=rest, table_size=65537)
    assert _moved(big, NAMES, removed, rest, keys) <= 1.3 / (n + 1) + 0.01


def _ring_bound(n_before, n_after, minimum_ring_size=1024):
    # The ideal share that must move, 1/max(n), plus the keys on points that disappear because
    # Envoy's sizing gives each endpoint ceil(minimum_ring_size / n) points: when n grows, every
    # endpoint keeps points _0.._{c-1} and drops the rest (their arcs go to the next point).
    per_before = math.ceil(minimum_ring_size / n_before)
    per_after = math.ceil(minimum_ring_size / n_after)
    dropped = abs(per_before - per_after) / max(per_before, per_after)
    return 1 / max(n_before, n_after) + dropped


@pytest.mark.parametrize("n", [5, 10, 30, 50])
def test_ring_hash_moves_only_what_membership_and_sizing_require(balancer, n):
    keys = _keys(20_000)
    small = balancer.RingHashPicker([1] * n, names=NAMES[:n])
    big = balancer.RingHashPicker([1] * (n + 1), names=NAMES[:n + 1])
    assert _moved(small, NAMES, big, NAMES, keys) <= _ring_bound(n, n + 1) + 0.02
    rest = NAMES[:n // 2] + NAMES[n // 2 + 1:n + 1]
    removed = balancer.RingHashPicker([1] * n, names=rest)
    assert _moved(big, NAMES, removed, rest, keys) <= _ring_bound(n + 1, n) + 0.02


def test_ring_hash_moves_one_nth_when_point_counts_stay(balancer):
    # 50 -> 51 endpoints keeps ceil(1024/n) = 21 points each: only the new endpoint's arcs move
    assert math.ceil(1024 / 50) == math.ceil(1024 / 51)
    keys = _keys(20_000)
    small = balancer.RingHashPicker([1] * 50, names=NAMES[:50])
    big = balancer.RingHashPicker([1] * 51, names=NAMES[:51])
    moved = _moved(small, NAMES, big, NAMES, keys)
    # whatever moved went to the new endpoint, never between old ones
    assert all(NAMES[small.pick(k)] == NAMES[big.pick(k)] or big.pick(k) == 50 for k in keys)
    assert moved <= 1.5 / 51 + 0.01


@pytest.mark.parametrize("cls", ["RingHashPicker", "MaglevPicker"])
def test_placement_depends_on_names_not_positions(balancer, cls):
    weights = [1, 2, 3, 4, 5, 6]
    names = NAMES[:6]
    perm = [3, 0, 5, 1, 4, 2]
    a = getattr(balancer, cls)(weights, names=names)
    b = getattr(balancer, cls)([weights[i] for i in perm], names=[names[i] for i in perm])
    for k in _keys(5_000):
        assert names[a.pick(k)] == names[perm[b.pick(k)]]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40),
       st.sampled_from([None, "addr"]),
       st.integers(min_value=0, max_value=2 ** 32))
def test_twins_build_identical_rings_and_tables(twins, weights, naming, seed):
    names = None if naming is None else [f"svc-{i}.ns.svc:{8000 + i}" for i in range(len(weights))]
    keys = _keys(2_000, seed) + [0, 1, 2 ** 64 - 1]
    cr = twins.c.balancer.RingHashPicker(weights, names=names, minimum_ring_size=256)
    pr = twins.py.balancer.RingHashPicker(weights, names=names, minimum_ring_size=256)
    assert cr.ring_size == pr.ring_size
    assert [cr.pick(k) for k in keys] == [pr.pick(k) for k in keys]
    cm = twins.c.balancer.MaglevPicker(weights, names=names, table_size=4099)
    pm = twins.py.balancer.MaglevPicker(weights, names=names, table_size=4099)
    assert cm.table() == pm.table()
    assert [cm.pick(k) for k in keys] == [pm.pick(k) for k in keys]


def test_twins_identical_on_default_sizes(twins):
    c, py = twins.c.balancer, twins.py.balancer
    weights = [(i * 5) % 7 + 1 for i in range(40)]
    names = NAMES[:40]
    keys = _keys(20_000)
    cr, pr = c.RingHashPicker(weights, names=names), py.RingHashPicker(weights, names=names)
    assert [cr.pick(k) for k in keys] == [pr.pick(k) for k in keys]
    cm, pm = c.MaglevPicker(weights, names=names), py.MaglevPicker(weights, names=names)
    assert cm.table() == pm.table()


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV"])
def test_single_endpoint_always_zero(balancer, policy):
    p = balancer.make_picker(policy, [4])
    hashed = policy in ("RING_HASH", "MAGLEV")
    assert {p.pick(k) if hashed else p.pick() for k in _keys(200)} == {0}


# --- construction written once (meshproxy/_lbtables.py) -----------------------------------------

SWEEP_WEIGHTS = [[1], [1, 1, 1], [1, 2, 7], [(i * 5) % 7 + 1 for i in range(40)], [3] * 17 + [50]]
BUILDERS = ("round_robin_weights", "alias_table", "least_request_start", "ring_points", "maglev_table")


@pytest.mark.parametrize("weights", SWEEP_WEIGHTS, ids=lambda w: f"n{len(w)}")
def test_twins_build_from_the_shared_tables_and_pick_identically(twins, weights, monkeypatch):
    # Every picker of either twin is built by meshproxy/_lbtables.py (each builder is called once
    # per construction), holds exactly what it returned, and the twins' own per-pick code picks the
    # same endpoint for every key (ring, Maglev), every 64-bit draw (alias table) and every step
    # of the deterministic EDF schedule.
    calls = collections.Counter()
    for name in BUILDERS:
        def spy(*args, _real=getattr(_lbtables, name), _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(_lbtables, name, spy)
    n = len(weights)
    names = NAMES[:n]
    keys = _keys(20_000, seed=n) + [0, 1, 2 ** 63, 2 ** 64 - 1]
    draws = _keys(20_000, seed=n + 1) + [0, 2 ** 32 - 1, 2 ** 32, 2 ** 64 - 1]
    built = {}
    for build in twins:
        b = build.balancer
        built[build.name] = {
            "rr": b.RoundRobinPicker(weights),
            "random": b.RandomPicker(weights, seed=1),
            "lr": b.LeastRequestPicker(weights, active=[i % 3 for i in range(n)]),
            "ring": b.RingHashPicker(weights, names=names, minimum_ring_size=2048),
            "maglev": b.MaglevPicker(weights, names=names, table_size=4099),
        }
    assert calls == {name: 2 for name in BUILDERS}
    c, py = built["c"], built["py"]
    hash_key = twins.py.balancer.hash_key

    ring = _lbtables.ring_points(weights, names, 2048, 8388608, hash_key)
    assert c["ring"].ring() == py["ring"].ring() == list(zip(ring.hashes, ring.owners))
    assert c["ring"].ring_size == py["ring"].ring_size == len(ring.hashes)
    assert [c["ring"].pick(k) for k in keys] == [py["ring"].pick(k) for k in keys]

    table = _lbtables.maglev_table(weights, names, 4099, hash_key).table
    assert c["maglev"].table() == py["maglev"].table() == table
    assert [c["maglev"].pick(k) for k in keys] == [py["maglev"].pick(k) for k in keys] == [
        table[k % 4099] for k in keys]

    prob, alias = _lbtables.alias_table(weights)
    assert c["random"].alias_table() == py["random"].alias_table() == (prob, alias)
    lookup = [col if r >> 32 < prob[col] else alias[col]
              for r in draws for col in [((r & 0xFFFFFFFF) * n) >> 32]]
    assert [c["random"].pick_draw(r) for r in draws] == [py["random"].pick_draw(r) for r in draws] == lookup

    steps = 20 * sum(weights)
    assert [c["rr"].pick() for _ in range(steps)] == [py["rr"].pick() for _ in range(steps)]
    if len(set(weights)) > 1:   # EDF (no randomness): the same schedule from the same heap
        assert [c["lr"].pick() for _ in range(steps)] == [py["lr"].pick() for _ in range(steps)]


def _digest(obj):
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


# Digests of what both twins built when each had its own construction code (e683eed; the C and
# Python builders agreed entry for entry): the shared builder must place every key as they did.
PLACEMENT = [
    ([1, 1, 1], None, "768bab2c5ccee6b7", "88ba32117912e1d3"),
    ([1, 2, 7], ["a:1", "b:1", "c:1"], "431ee445647682bc", "18ca68d8ada8bbc2"),
    ([(i * 5) % 7 + 1 for i in range(40)], NAMES[:40], "fbf937b5be46b2fe", "be2f9560601c6413"),
]


@pytest.mark.parametrize("weights,names,ring_digest,maglev_digest", PLACEMENT, ids=["equal", "abc", "n40"])
def test_placement_unchanged_from_independent_twins(balancer, weights, names, ring_digest, maglev_digest):
    assert _digest(balancer.RingHashPicker(weights, names=names).ring()) == ring_digest
    assert _digest(balancer.MaglevPicker(weights, names=names).table()) == maglev_digest


@pytest.mark.parametrize("weights,digest", [([1, 2, 7], "dacb43606477b0de"),
                                            ([(i * 5) % 7 + 1 for i in range(40)], "39b69837f056a7db")])
def test_compiled_seeded_random_sequence_unchanged(twins, weights, digest):
    # xorshift128+ draws through the alias table: the same sequence as with the compiled twin's own
    # table builder (e683eed), so the shared alias table is the one it built.
    p = twins.c.balancer.RandomPicker(weights, seed=7)
    assert _digest([twins.c.balancer.RandomPicker(weights, seed=7).pick()] + [p.pick() for _ in range(3000)]) == digest
