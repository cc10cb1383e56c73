"""Load-balancer pickers, pure Python twin of meshproxy/_core/balancer.pyx (contract: balancer.pyi).

Ring hash and Maglev build the same rings and tables as the compiled twin, entry for entry (same
xxHash64, sizing arithmetic and fill order); RANDOM and LEAST_REQUEST draw from random.Random, so
with a seed the twins agree on distributions, not on sequences.
"""
import bisect
import heapq
import itertools
import math
import os
import random
import weakref


class RoundRobinPicker:
    """Smooth weighted round robin (as nginx's): with equal weights, plain rotation."""

    __slots__ = ("_n", "_weight", "_current", "_total", "_next", "_uniform")

    def __init__(self, weights):
        self._n = len(weights)
        if self._n == 0:
            raise ValueError("a picker needs at least one endpoint")
        self._weight = [int(w) for w in weights]
        if any(w <= 0 for w in self._weight):
            raise ValueError("endpoint weights must be positive")
        self._current = [0] * self._n
        self._total = sum(self._weight)
        self._uniform = all(w == self._weight[0] for w in self._weight)
        self._next = 0

    @property
    def size(self):
        return self._n

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
# Shared machinery: validation, xxHash64, fork handling.
# ---------------------------------------------------------------------------------------------

_M64 = 0xFFFFFFFFFFFFFFFF


def _checked_weights(weights):
    ws = [int(w) for w in weights]
    if not ws:
        raise ValueError("a picker needs at least one endpoint")
    if any(w <= 0 for w in ws):
        raise ValueError("endpoint weights must be positive")
    if len(ws) >= 2 ** 31:
        raise ValueError("too many endpoints")
    return ws


def _checked_names(names, n):
    if names is None:
        return [str(i) for i in range(n)]
    out = [str(x) for x in names]
    if len(out) != n:
        raise ValueError(f"names has {len(out)} entries for {n} endpoints")
    if len(set(out)) != n:
        raise ValueError("endpoint names must be unique")
    return out


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
    """Weighted random: integer cumulative weights and a binary search (bisect)."""

    __slots__ = ("_n", "_cum", "_total", "_rng", "_uniform")

    def __init__(self, weights, seed=None):
        ws = _checked_weights(weights)
        self._n = len(ws)
        self._cum = list(itertools.accumulate(ws))
        self._total = self._cum[-1]
        self._uniform = all(w == ws[0] for w in ws)
        self._rng = _rng(seed)

    @property
    def size(self):
        return self._n

    def pick(self):
        if self._uniform:
            return self._rng.randrange(self._n)
        return bisect.bisect_right(self._cum, self._rng.randrange(self._total))


# ---------------------------------------------------------------------------------------------
# LEAST_REQUEST
# ---------------------------------------------------------------------------------------------

class LeastRequestPicker:
    """Envoy's LEAST_REQUEST: P2C (N choices) for equal weights, EDF over weight/(active+1)^bias
    otherwise. Active counts live here (acquire/release)."""

    __slots__ = ("_n", "_weight", "_active", "_uniform", "_choice_count", "_bias", "_rng",
                 "_heap", "_edf_order")

    def __init__(self, weights, active=None, choice_count=2, seed=None, active_request_bias=1.0):
        ws = _checked_weights(weights)
        n = self._n = len(ws)
        if choice_count < 2:
            raise ValueError("choice_count must be at least 2 (Envoy's bound)")
        if not active_request_bias >= 0.0:
            raise ValueError("active_request_bias must be >= 0")
        self._choice_count = min(int(choice_count), 1 << 30)
        self._bias = float(active_request_bias)
        acts = [0] * n if active is None else [int(a) for a in active]
        if len(acts) != n:
            raise ValueError(f"active has {len(acts)} entries for {n} endpoints")
        if any(a < 0 for a in acts):
            raise ValueError("active request counts must be >= 0")
        self._weight = [float(w) for w in ws]
        self._active = acts
        self._uniform = all(w == ws[0] for w in ws)
        self._rng = _rng(seed)
        # EDF start (Envoy's EdfScheduler::add at time 0): deadline 1/weight, ties by insertion.
        self._heap = [(1.0 / self._effective(i), i, i) for i in range(n)]
        heapq.heapify(self._heap)
        self._edf_order = n

    @property
    def size(self):
        return self._n

    @property
    def choice_count(self):
        return self._choice_count

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

def _ring_counts(ws, order, minimum_ring_size, maximum_ring_size):
    # Envoy's RingHashLoadBalancer::Ring sizing, in the same double arithmetic as the compiled
    # twin: the lightest endpoint gets ceil(min_ring_size * its share) entries, capped at the
    # maximum; running sums carry the rounding from endpoint to endpoint (here in name order).
    total = float(sum(ws))
    min_norm = min(ws) / total
    scale = min(math.ceil(min_norm * minimum_ring_size) / min_norm, float(maximum_ring_size))
    current = target = 0.0
    counts = [0] * len(ws)
    for i in order:
        target += scale * (ws[i] / total)
        if current < target:
            step = float(math.ceil(target - current))
            counts[i] = int(step)
            current += step
    return counts


class RingHashPicker:
    """Envoy's ring hash: weight-proportional points ``xxh64(f"{name}_{i}")`` on a sorted ring; a
    key goes to the first point at or after its hash (wrapping)."""

    __slots__ = ("_n", "_hashes", "_owners", "_ring_size")

    hash_key = staticmethod(hash_key)

    def __init__(self, weights, names=None, minimum_ring_size=1024, maximum_ring_size=8388608):
        ws = _checked_weights(weights)
        n = self._n = len(ws)
        nm = _checked_names(names, n)
        if not 1 <= minimum_ring_size <= maximum_ring_size <= 8388608:
            raise ValueError("need 1 <= minimum_ring_size <= maximum_ring_size <= 8388608")
        order = sorted(range(n), key=nm.__getitem__)
        counts = _ring_counts(ws, order, minimum_ring_size, maximum_ring_size)
        entries = []
        for rank, i in enumerate(order):
            prefix = nm[i].encode("utf-8") + b"_"
            entries.extend((hash_key(prefix + str(k).encode()), rank, i) for k in range(counts[i]))
        entries.sort()
        self._hashes = [e[0] for e in entries]
        self._owners = [e[2] for e in entries]
        self._ring_size = len(entries)

    @property
    def size(self):
        return self._n

    @property
    def ring_size(self):
        return self._ring_size

    def pick(self, key_hash):
        j = bisect.bisect_left(self._hashes, key_hash)
        return self._owners[j if j < self._ring_size else 0]


# ---------------------------------------------------------------------------------------------
# MAGLEV
# ---------------------------------------------------------------------------------------------

def _is_prime(m):
    if m < 2:
        return False
    if m % 2 == 0:
        return m == 2
    d = 3
    while d * d <= m:
        if m % d == 0:
            return False
        d += 2
    return True


class MaglevPicker:
    """Maglev (Eisenbud et al., NSDI 2016) as Envoy builds it: per-endpoint permutations
    ``offset = xxh64(name) % M``, ``skip = xxh64(name, seed=1) % (M - 1) + 1``, filled in name
    order, an endpoint of weight w taking a turn on w/max_weight of the rounds."""

    __slots__ = ("_n", "_table_size", "_table")

    hash_key = staticmethod(hash_key)

    def __init__(self, weights, names=None, table_size=65537):
        ws = _checked_weights(weights)
        n = self._n = len(ws)
        nm = _checked_names(names, n)
        if not isinstance(table_size, int) or not 2 <= table_size < 2 ** 32 or not _is_prime(table_size):
            raise ValueError("maglev table_size must be a prime number (Envoy's default: 65537)")
        if table_size < n:
            raise ValueError("maglev table_size must be at least the number of endpoints")
        if max(ws) >= 2 ** 31:
            raise ValueError("maglev weights must be below 2**31")
        M = self._table_size = table_size
        order = sorted(range(n), key=nm.__getitem__)
        keys = [nm[i].encode("utf-8") for i in order]
        pos = [hash_key(k) % M for k in keys]          # (offset + skip * next) % M, advanced
        skip = [hash_key(k, 1) % (M - 1) + 1 for k in keys]
        w = [ws[i] for i in order]
        target = [0] * n
        max_w = max(ws)
        table = [-1] * M
        # Envoy's weighted fill with integer weights: `iteration * w/total < target/total` scaled
        # by the total weight (exact, so both twins agree to the entry).
        filled = 0
        iteration = 1
        while filled < M:
            for rank in range(n):
                if filled >= M:
                    break
                if iteration * w[rank] < target[rank]:
                    continue
                target[rank] += max_w
                p = pos[rank]
                s = skip[rank]
                while table[p] != -1:
                    p += s
                    if p >= M:
                        p -= M
                table[p] = order[rank]
                p += s
                if p >= M:
                    p -= M
                pos[rank] = p
                filled += 1
            iteration += 1
        self._table = table

    @property
    def size(self):
        return self._n

    @property
    def table_size(self):
        return self._table_size

    def table(self):
        """The lookup table as a list of endpoint indices (for tests and the admin page)."""
        return list(self._table)

    def pick(self, key_hash):
        return self._table[key_hash % self._table_size]


# ---------------------------------------------------------------------------------------------
# Istio's policy names
# ---------------------------------------------------------------------------------------------

_LR_OPTIONS = ("active", "choice_count", "seed", "active_request_bias")
_POLICIES = {
    "ROUND_ROBIN": (RoundRobinPicker, ()),
    "RANDOM": (RandomPicker, ("seed",)),
    "LEAST_REQUEST": (LeastRequestPicker, _LR_OPTIONS),
    "LEAST_CONN": (LeastRequestPicker, _LR_OPTIONS),
    "UNSPECIFIED": (LeastRequestPicker, _LR_OPTIONS),
    "RING_HASH": (RingHashPicker, ("names", "minimum_ring_size", "maximum_ring_size")),
    "MAGLEV": (MaglevPicker, ("names", "table_size")),
}


def make_picker(policy, weights, **options):
    """The picker for an Istio load-balancing policy name (see balancer.pyi)."""
    try:
        cls, accepted = _POLICIES[policy]
    except (KeyError, TypeError):
        raise ValueError(f"unknown load-balancing policy {policy!r}") from None
    names = options.pop("names", None)
    unknown = set(options) - set(accepted)
    if unknown:
        raise TypeError(f"{policy} does not take {', '.join(sorted(unknown))}")
    if "names" in accepted:
        options["names"] = names
    elif names is not None and len(names) != len(weights):
        raise ValueError(f"names has {len(names)} entries for {len(weights)} endpoints")
    return cls(weights, **options)


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
