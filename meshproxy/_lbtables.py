"""The pickers' cold half, written once: what both balancer twins build their state from.

``meshproxy/_core/balancer.pyx`` and ``meshproxy/_py/balancer.py`` import this module (it is never
compiled) whenever a picker is built, that is when a cluster's membership, weights or health
change: argument checks, the smooth round robin's weights, the Vose alias table of RANDOM, the
least-request start (active counts, options, the EDF heap at time 0), Envoy's ring-hash ring and
Maglev table, and the policy table of ``make_picker``. The compiled pickers copy what it returns
into C arrays; the pure ones keep the lists. Because the two twins build from one source, their
rings, tables and alias tables are the same entry for entry, and only the per-pick code (and
xxHash64, which the engine also runs per request to hash a key) is written twice, once per twin.

The builders that hash (``ring_points``, ``maglev_table``) take the calling twin's own
``hash_key(data, seed=0)`` (xxHash64): the compiled twin passes its C function, so a ring is hashed
in C there, and the twins' agreement on xxHash64 is what makes their rings identical.
"""
import heapq
import math
from collections import namedtuple

__all__ = ["MAX_RING_SIZE", "POLICIES", "Maglev", "Ring", "alias_table", "checked_names",
           "checked_weights", "effective_weight", "is_prime", "least_request_start", "maglev_table",
           "picker_factory", "ring_counts", "ring_points", "round_robin_weights"]

#: A ring-hash ring: ``endpoints`` (how many), ``hashes`` (ascending) and ``owners`` (the endpoint
#: index of each point).
Ring = namedtuple("Ring", "endpoints hashes owners")
#: A Maglev lookup table: ``endpoints`` (how many) and ``table`` (an endpoint index per slot).
Maglev = namedtuple("Maglev", "endpoints table")

#: Envoy's upper bound on a ring's size (and the default ``maximum_ring_size``).
MAX_RING_SIZE = 8388608


def checked_weights(weights):
    """``weights`` as a list of positive Python ints (one per endpoint, at least one)."""
    ws = [int(w) for w in weights]
    if not ws:
        raise ValueError("a picker needs at least one endpoint")
    if any(w <= 0 for w in ws):
        raise ValueError("endpoint weights must be positive")
    if len(ws) >= 2 ** 31:
        raise ValueError("too many endpoints")
    return ws


def checked_names(names, n):
    """One unique ``str`` name per endpoint; ``str(index)`` for each when ``names`` is None."""
    if names is None:
        return [str(i) for i in range(n)]
    out = [str(x) for x in names]
    if len(out) != n:
        raise ValueError(f"names has {len(out)} entries for {n} endpoints")
    if len(set(out)) != n:
        raise ValueError("endpoint names must be unique")
    return out


def _name_order(names):
    # Endpoint indices in name order: placement on rings and tables follows names, never list
    # positions, so reordering the endpoint list moves no key.
    return sorted(range(len(names)), key=names.__getitem__)


# --- ROUND_ROBIN ---------------------------------------------------------------------------------

def round_robin_weights(weights):
    """``(weights, total, uniform)`` for smooth weighted round robin (nginx's)."""
    ws = checked_weights(weights)
    return ws, sum(ws), all(w == ws[0] for w in ws)


# --- RANDOM --------------------------------------------------------------------------------------

def alias_table(weights):
    """Vose's alias table for weighted random picks, in integers: ``(prob, alias)``.

    A pick draws 64 random bits; the low 32 choose column ``col = (low * n) >> 32``, the high 32
    keep it when ``high < prob[col]`` and take ``alias[col]`` otherwise. Each column holds
    ``total`` units; column s keeps ``scaled[s]`` of them and lends the rest to a large column.
    Exact, so every endpoint's share is off by at most 2**-32.
    """
    ws = checked_weights(weights)
    n = len(ws)
    total = sum(ws)
    scaled = [w * n for w in ws]
    prob = [1 << 32] * n
    alias = list(range(n))
    small = [i for i in range(n) if scaled[i] < total]
    large = [i for i in range(n) if scaled[i] >= total]
    while small and large:
        s = small.pop()
        big = large.pop()
        prob[s] = (scaled[s] << 32) // total
        alias[s] = big
        scaled[big] -= total - scaled[s]
        (small if scaled[big] < total else large).append(big)
    return prob, alias


# --- LEAST_REQUEST -------------------------------------------------------------------------------

def effective_weight(weight, active, bias):
    """Envoy's hostWeight: ``weight / (active + 1) ** bias`` (both twins use this arithmetic per
    pick too, in their own code)."""
    a = float(active + 1)
    if bias == 1.0:
        return weight / a
    if bias == 0.0:
        return weight
    return weight / a ** bias


def least_request_start(weights, active=None, choice_count=2, active_request_bias=1.0):
    """Checked options and the EDF schedule at time 0, as a dict.

    Keys: ``weights`` (floats), ``active`` (ints), ``uniform`` (equal weights: P2C, else EDF),
    ``choice_count``, ``bias`` and ``heap``: Envoy's ``EdfScheduler::add`` of every endpoint at
    time 0, deadline ``1 / effective_weight`` and ties broken by insertion order, as a binary
    min-heap (``heapq`` order) of ``(deadline, order, index)`` with ``order == index``.
    """
    ws = checked_weights(weights)
    n = len(ws)
    if choice_count < 2:
        raise ValueError("choice_count must be at least 2 (Envoy's bound)")
    if not active_request_bias >= 0.0:
        raise ValueError("active_request_bias must be >= 0")
    bias = float(active_request_bias)
    acts = [0] * n if active is None else [int(a) for a in active]
    if len(acts) != n:
        raise ValueError(f"active has {len(acts)} entries for {n} endpoints")
    if any(a < 0 for a in acts):
        raise ValueError("active request counts must be >= 0")
    fw = [float(w) for w in ws]
    heap = [(1.0 / effective_weight(fw[i], acts[i], bias), i, i) for i in range(n)]
    heapq.heapify(heap)
    return {"weights": fw, "active": acts, "uniform": all(w == ws[0] for w in ws),
            "choice_count": min(int(choice_count), 1 << 30), "bias": bias, "heap": heap}


# --- RING_HASH -----------------------------------------------------------------------------------

def ring_counts(weights, order, minimum_ring_size, maximum_ring_size):
    """Points per endpoint on Envoy's ring (``RingHashLoadBalancer::Ring`` sizing).

    Scaled so the lightest endpoint gets ``ceil(minimum_ring_size * its share)`` points, capped
    at ``maximum_ring_size``; running sums in doubles carry the rounding from endpoint to endpoint
    in ``order`` (name order).
    """
    total = float(sum(weights))
    min_norm = min(weights) / total
    scale = min(math.ceil(min_norm * minimum_ring_size) / min_norm, float(maximum_ring_size))
    current = target = 0.0
    counts = [0] * len(weights)
    for i in order:
        target += scale * (weights[i] / total)
        if current < target:
            step = float(math.ceil(target - current))
            counts[i] = int(step)
            current += step
    return counts


def ring_points(weights, names, minimum_ring_size, maximum_ring_size, hash_key):
    """Envoy's ring, a ``Ring``: ``hashes`` ascending, ``owners[j]`` the endpoint index of point j.

    Endpoint i (in name order) owns points ``hash_key(f"{name}_{k}".encode())`` for
    ``k < ring_counts(...)[i]``; equal hashes sort by the owners' name order.
    """
    ws = checked_weights(weights)
    n = len(ws)
    nm = checked_names(names, n)
    if not 1 <= minimum_ring_size <= maximum_ring_size <= MAX_RING_SIZE:
        raise ValueError(f"need 1 <= minimum_ring_size <= maximum_ring_size <= {MAX_RING_SIZE}")
    order = _name_order(nm)
    counts = ring_counts(ws, order, minimum_ring_size, maximum_ring_size)
    # One int per point, hash in the high bits and the owner's rank in name order in the low 32:
    # sorting the ints sorts by hash, then by name.
    keyed = []
    for rank, i in enumerate(order):
        prefix = nm[i].encode("utf-8") + b"_"
        keyed += [(hash_key(prefix + b"%d" % k) << 32) | rank for k in range(counts[i])]
    keyed.sort()
    return Ring(n, [p >> 32 for p in keyed], [order[p & 0xFFFFFFFF] for p in keyed])


# --- MAGLEV --------------------------------------------------------------------------------------

def is_prime(m):
    """Whether the int ``m`` is prime (trial division: table sizes are below 2**32)."""
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


def maglev_table(weights, names, table_size, hash_key):
    """Maglev's lookup table (Eisenbud et al., NSDI 2016) as Envoy fills it, a ``Maglev`` whose
    ``table`` lists ``table_size`` endpoint indices.

    Endpoint permutations ``offset = hash_key(name) % M``, ``skip = hash_key(name, 1) % (M-1) + 1``;
    endpoints take turns in name order, each taking its next free preferred slot, one of weight w
    taking a turn in w/max(weights) of the rounds (Envoy's ``iteration * w/total < target/total``
    scaled by the total weight: exact integers).
    """
    ws = checked_weights(weights)
    n = len(ws)
    nm = checked_names(names, n)
    if not isinstance(table_size, int) or not 2 <= table_size < 2 ** 32 or not is_prime(table_size):
        raise ValueError("maglev table_size must be a prime number (Envoy's default: 65537)")
    if table_size < n:
        raise ValueError("maglev table_size must be at least the number of endpoints")
    if max(ws) >= 2 ** 31:
        raise ValueError("maglev weights must be below 2**31")
    M = table_size
    order = _name_order(nm)
    keys = [nm[i].encode("utf-8") for i in order]
    pos = [hash_key(k) % M for k in keys]          # (offset + skip * next) % M, advanced as used
    skip = [hash_key(k, 1) % (M - 1) + 1 for k in keys]
    w = [ws[i] for i in order]
    target = [0] * n
    max_w = max(ws)
    table = [-1] * M
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
    return Maglev(n, table)


# --- make_picker ---------------------------------------------------------------------------------

_LEAST_REQUEST_OPTIONS = ("active", "choice_count", "seed", "active_request_bias")

#: Canonical policy name -> (picker class name in either twin, options it takes besides ``names``).
#: Only these names: control normalises Istio's spellings (``UNSPECIFIED`` and ``LEAST_CONN`` mean
#: ``LEAST_REQUEST``) and ``PASSTHROUGH`` never reaches a picker.
POLICIES = {
    "ROUND_ROBIN": ("RoundRobinPicker", ()),
    "RANDOM": ("RandomPicker", ("seed",)),
    "LEAST_REQUEST": ("LeastRequestPicker", _LEAST_REQUEST_OPTIONS),
    "RING_HASH": ("RingHashPicker", ("names", "minimum_ring_size", "maximum_ring_size")),
    "MAGLEV": ("MaglevPicker", ("names", "table_size")),
}


def picker_factory(*classes):
    """A twin's ``make_picker(policy, weights, **options)`` over its picker ``classes`` (found
    by name: RoundRobinPicker, RandomPicker, LeastRequestPicker, RingHashPicker, MaglevPicker)."""
    by_name = {cls.__name__: cls for cls in classes}
    missing = {name for name, _ in POLICIES.values()} - set(by_name)
    if missing:
        raise TypeError(f"picker_factory lacks {', '.join(sorted(missing))}")

    def make_picker(policy, weights, **options):
        """The picker for a canonical load-balancing policy name (see balancer.pyi)."""
        try:
            class_name, accepted = POLICIES[policy]
        except (KeyError, TypeError):
            raise ValueError(f"unknown load-balancing policy {policy!r} "
                             f"(one of {', '.join(POLICIES)})") from None
        names = options.pop("names", None)
        unknown = set(options) - set(accepted)
        if unknown:
            raise TypeError(f"{policy} does not take {', '.join(sorted(unknown))}")
        if "names" in accepted:
            options["names"] = names
        elif names is not None and len(names) != len(weights):
            raise ValueError(f"names has {len(names)} entries for {len(weights)} endpoints")
        return by_name[class_name](weights, **options)

    make_picker.__qualname__ = "make_picker"
    return make_picker
