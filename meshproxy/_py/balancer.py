"""Load-balancer pickers, pure Python twin of meshproxy/_core/balancer.pyx (contract: balancer.pyi).

Pickers are built from meshproxy/_lbtables.py, the construction code both twins share (checks,
weights, alias table, EDF start, ring, Maglev table, policy table); the per-pick code here and
xxHash64 are this twin's own. So ring hash, Maglev and the alias table are the compiled twin's
entry for entry; RANDOM and LEAST_REQUEST draw from random.Random, so with a seed the twins agree
on distributions, not on sequences.
"""
import bisect
import heapq
import os
import random
import weakref

from meshproxy import _lbtables


class RoundRobinPicker:
    """Smooth weighted round robin (as nginx's): with equal weights, plain rotation."""

    __slots__ = ("_n", "_weight", "_current", "_total", "_next", "_uniform")

    def __init__(self, weights):
        self._weight, self._total, self._uniform = _lbtables.round_robin_weights(weights)
        self._n = len(self._weight)
        self._current = [0] * self._n
        self._next = 0

    size = property(lambda self: self._n)

    def pick(self):
        if self._uniform:
            i = self._next
            self._next = i + 1 if i + 1 < self._n else 0
            return i
        current = self._current
        weight = self._weight
        best = 0
        for i in range(self._n):
            current[i] += weight[i]
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best


# ---------------------------------------------------------------------------------------------
# Per-pick machinery: xxHash64 (the engine hashes a request's key per request), fork handling.
# ---------------------------------------------------------------------------------------------

_M64 = 0xFFFFFFFFFFFFFFFF


# xxHash64 (Yann Collet's XXH64, as Envoy's HashUtil::xxHash64 calls it), on Python ints.
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M64


def _xxh_round(acc, lane):
    acc = (acc + lane * _P2) & _M64
    return (_rotl(acc, 31) * _P1) & _M64


def _xxh_merge(acc, v):
    acc ^= _xxh_round(0, v)
    return (acc * _P1 + _P4) & _M64


def hash_key(data, seed=0):
    """xxHash64 of ``data`` (bytes-like), as an int in [0, 2**64). Same result in both twins."""
    data = memoryview(data).cast("B").tobytes() if not isinstance(data, bytes) else data
    seed &= _M64
    length = len(data)
    p = 0
    from_bytes = int.from_bytes
    if length >= 32:
        v1 = (seed + _P1 + _P2) & _M64
        v2 = (seed + _P2) & _M64
        v3 = seed
        v4 = (seed - _P1) & _M64
        while length - p >= 32:
            v1 = _xxh_round(v1, from_bytes(data[p:p + 8], "little"))
            v2 = _xxh_round(v2, from_bytes(data[p + 8:p + 16], "little"))
            v3 = _xxh_round(v3, from_bytes(data[p + 16:p + 24], "little"))
            v4 = _xxh_round(v4, from_bytes(data[p + 24:p + 32], "little"))
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M64
        h = _xxh_merge(h, v1)
        h = _xxh_merge(h, v2)
        h = _xxh_merge(h, v3)
        h = _xxh_merge(h, v4)
    else:
        h = (seed + _P5) & _M64
    h = (h + length) & _M64
    while length - p >= 8:
        h ^= _xxh_round(0, from_bytes(data[p:p + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M64
        p += 8
    if length - p >= 4:
        h ^= (from_bytes(data[p:p + 4], "little") * _P1) & _M64
        h = (_rotl(h, 23) * _P2 + _P3) & _M64
        p += 4
    while p < length:
        h ^= (data[p] * _P5) & _M64
        h = (_rotl(h, 11) * _P1) & _M64
        p += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    h ^= h >> 32
    return h


# Unseeded pickers' generators, reseeded in a forked child (a child must not replay its parent's
# sequence). random.Random instances are weak-referenceable; dead pickers drop out by themselves.
_UNSEEDED = weakref.WeakSet()


def _after_fork_in_child():
    for rng in list(_UNSEEDED):
        rng.seed()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _rng(seed):
    rng = random.Random(seed)
    if seed is None:
        _UNSEEDED.add(rng)
    return rng


# ---------------------------------------------------------------------------------------------
# RANDOM
# ---------------------------------------------------------------------------------------------

class RandomPicker:
    """Weighted random through Vose's alias table: 64 bits from random.Random per pick."""

    __slots__ = ("_n", "_prob", "_alias", "_bits")

    def __init__(self, weights, seed=None):
        self._prob, self._alias = _lbtables.alias_table(weights)
        self._n = len(self._prob)
        self._bits = _rng(seed).getrandbits

    size = property(lambda self: self._n)

    def pick(self):
        # getrandbits(64) is two 32-bit outputs, low word first: drawing them one by one takes
        # the same column (low) and coin (high) as pick_draw(getrandbits(64)), on small ints
        bits = self._bits
        col = (bits(32) * self._n) >> 32
        return col if bits(32) < self._prob[col] else self._alias[col]

    def pick_draw(self, r):
        """The endpoint ``pick()`` returns when its generator yields the 64-bit draw ``r``."""
        col = ((r & 0xFFFFFFFF) * self._n) >> 32
        return col if r >> 32 < self._prob[col] else self._alias[col]

    def alias_table(self):
        """``(prob, alias)`` as lists (tests, admin)."""
        return list(self._prob), list(self._alias)


# ---------------------------------------------------------------------------------------------
# LEAST_REQUEST
# ---------------------------------------------------------------------------------------------

class LeastRequestPicker:
    """Envoy's LEAST_REQUEST: P2C (N choices) for equal weights, EDF over weight/(active+1)^bias
    otherwise. Active counts live here (acquire/release)."""

    __slots__ = ("_n", "_weight", "_active", "_uniform", "_choice_count", "_bias", "_rng",
                 "_heap", "_edf_order")

    def __init__(self, weights, active=None, choice_count=2, seed=None, active_request_bias=1.0):
        start = _lbtables.least_request_start(weights, active, choice_count, active_request_bias)
        self._weight = start["weights"]
        self._active = start["active"]
        self._n = len(self._weight)
        self._choice_count = start["choice_count"]
        self._bias = start["bias"]
        self._uniform = start["uniform"]
        self._rng = _rng(seed)
        # EDF (unequal weights): heapq of (deadline, insertion order, index), from time 0
        self._heap = start["heap"]
        self._edf_order = self._n

    size = property(lambda self: self._n)

    choice_count = property(lambda self: self._choice_count)

    def _effective(self, i):
        # Envoy's hostWeight: weight / (active + 1) ** active_request_bias
        a = float(self._active[i] + 1)
        if self._bias == 1.0:
            return self._weight[i] / a
        if self._bias == 0.0:
            return self._weight[i]
        return self._weight[i] / a ** self._bias

    def pick(self):
        if self._uniform:
            # unweightedHostPickNChoices: sample with replacement, keep the strictly less loaded
            # (ties keep the first sampled)
            randrange = self._rng.randrange
            active = self._active
            n = self._n
            best = randrange(n)
            for _ in range(self._choice_count - 1):
                cand = randrange(n)
                if active[cand] < active[best]:
                    best = cand
            return best
        # EdfScheduler::pickAndAdd: earliest deadline, time advances to it, re-added with its
        # weight recomputed from its active count now.
        deadline, _, best = self._heap[0]
        order = self._edf_order
        self._edf_order = order + 1
        heapq.heapreplace(self._heap, (deadline + 1.0 / self._effective(best), order, best))
        return best

    def _check(self, i):
        if not 0 <= i < self._n:
            raise IndexError("endpoint index out of range")

    def acquire(self, i):
        """A request to endpoint ``i`` started."""
        self._check(i)
        self._active[i] += 1
        return 0

    def release(self, i):
        """A request to endpoint ``i`` ended."""
        self._check(i)
        if self._active[i] == 0:
            raise ValueError("release without a matching acquire")
        self._active[i] -= 1
        return 0

    def active(self, i):
        """Requests in flight on endpoint ``i``."""
        self._check(i)
        return self._active[i]


# ---------------------------------------------------------------------------------------------
# RING_HASH
# ---------------------------------------------------------------------------------------------

class RingHashPicker:
    """Envoy's ring hash: weight-proportional points ``xxh64(f"{name}_{i}")`` on a sorted ring; a
    key goes to the first point at or after its hash (wrapping)."""

    __slots__ = ("_n", "_hashes", "_owners", "_ring_size")

    hash_key = staticmethod(hash_key)

    def __init__(self, weights, names=None, minimum_ring_size=1024, maximum_ring_size=8388608):
        # hashed with this module's xxHash64, so the ring is the compiled twin's to the point
        self._n, self._hashes, self._owners = _lbtables.ring_points(
            weights, names, minimum_ring_size, maximum_ring_size, hash_key)
        self._ring_size = len(self._hashes)

    size = property(lambda self: self._n)

    ring_size = property(lambda self: self._ring_size)

    def ring(self):
        """The ring as ``(hash, endpoint index)`` pairs in ring order (tests, admin)."""
        return list(zip(self._hashes, self._owners))

    def pick(self, key_hash):
        j = bisect.bisect_left(self._hashes, key_hash)
        return self._owners[j if j < self._ring_size else 0]


# ---------------------------------------------------------------------------------------------
# MAGLEV
# ---------------------------------------------------------------------------------------------

class MaglevPicker:
    """Maglev (Eisenbud et al., NSDI 2016) as Envoy builds it: per-endpoint permutations
    ``offset = xxh64(name) % M``, ``skip = xxh64(name, seed=1) % (M - 1) + 1``, filled in name
    order, an endpoint of weight w taking a turn on w/max_weight of the rounds."""

    __slots__ = ("_n", "_table_size", "_table")

    hash_key = staticmethod(hash_key)

    def __init__(self, weights, names=None, table_size=65537):
        self._n, self._table = _lbtables.maglev_table(weights, names, table_size, hash_key)
        self._table_size = len(self._table)

    size = property(lambda self: self._n)

    table_size = property(lambda self: self._table_size)

    def table(self):
        """The lookup table as a list of endpoint indices (for tests and the admin page)."""
        return list(self._table)

    def pick(self, key_hash):
        return self._table[key_hash % self._table_size]


# ---------------------------------------------------------------------------------------------
# Policy names (the table is meshproxy/_lbtables.py's)
# ---------------------------------------------------------------------------------------------

make_picker = _lbtables.picker_factory(
    RoundRobinPicker, RandomPicker, LeastRequestPicker, RingHashPicker, MaglevPicker)


# Benchmark helper (bench/test_balancer_micro.py), twin of the compiled one. Not part of the API.
def _pick_loop(picker, count, keys=None):
    """Sum of ``count`` picks (hashing pickers take ``keys``, a sequence of length count)."""
    pick = picker.pick
    acc = 0
    if isinstance(picker, (RingHashPicker, MaglevPicker)):
        for i in range(count):
            acc += pick(keys[i])
        return acc
    for _ in range(count):
        acc += pick()
    return acc
