"""Load-balancer pickers (contract of meshproxy/_core/balancer.pyx and meshproxy/_py/balancer.py).

Both twins build their pickers with meshproxy/_lbtables.py (checks, alias table, EDF start, ring,
Maglev table, policy table) and pick with their own code.
"""
from typing import Any, List, Optional, Sequence, Tuple, Union


class RoundRobinPicker:
    """Smooth weighted round robin over ``len(weights)`` endpoints (nginx's algorithm).

    Built when membership or weights change, read per pick. With equal weights it rotates
    0, 1, ..., n-1, 0, ...; with unequal weights each endpoint gets ``weight / sum(weights)`` of the
    picks, interleaved smoothly (never a burst of one endpoint when others are due).

    Raises:
        ValueError: no endpoints, or a weight that is not positive.
    """

    size: int

    def __init__(self, weights: Sequence[int]) -> None: ...

    def pick(self) -> int:
        """Index of the next endpoint."""


def hash_key(data: bytes, seed: int = 0) -> int:
    """xxHash64 of ``data`` (Envoy's ``HashUtil::xxHash64``), an int in ``[0, 2**64)``.

    Both twins return the same value for the same bytes; use it to turn a request's hash key
    (header value, cookie, source IP) into the ``key_hash`` that RingHashPicker and MaglevPicker
    take. Also available as ``RingHashPicker.hash_key`` and ``MaglevPicker.hash_key``.
    """


class RandomPicker:
    """Weighted random (Istio ``RANDOM``): endpoint ``i`` with probability ``weights[i] / sum``.

    Vose's alias table (the same in both twins), one 64-bit draw per pick: compiled, from
    xorshift128+; pure, from ``random.Random(seed).getrandbits(64)``. Unseeded pickers are
    reseeded in a forked child (``os.register_at_fork``), so pre-fork workers do not replay one
    sequence; seeded ones are not. With the same seed the two twins agree on the distribution,
    not on the sequence; for the same draw they pick the same endpoint (``pick_draw``).

    Args:
        weights: one positive int per endpoint (endpoint index = position).
        seed: an int for a reproducible sequence (per twin), or None for a random seed.

    Raises:
        ValueError: no endpoints, or a weight that is not positive.
    """

    size: int

    def __init__(self, weights: Sequence[int], seed: Optional[int] = None) -> None: ...

    def pick(self) -> int:
        """Index of a random endpoint, weighted."""

    def pick_draw(self, r: int) -> int:
        """The index ``pick()`` returns when its generator yields the draw ``r`` (``0 <= r < 2**64``):
        column ``((r & 0xFFFFFFFF) * size) >> 32``, kept when ``r >> 32 < prob[column]``, else
        ``alias[column]``."""

    def alias_table(self) -> Tuple[List[int], List[int]]:
        """``(prob, alias)``: the alias table, ``prob`` in units of 2**-32 (tests, admin)."""


class LeastRequestPicker:
    """Envoy's least-request load balancer (Istio ``LEAST_REQUEST``).

    With equal weights: ``choice_count`` endpoints are sampled uniformly with replacement and the
    one with the fewest active requests wins; on a tie the first sampled wins (Envoy's
    ``unweightedHostPickNChoices``). With unequal weights: an earliest-deadline-first schedule in
    which each pick takes the endpoint with the earliest deadline and re-adds it at
    ``now + 1 / effective_weight``, ``effective_weight = weight / (active + 1) ** active_request_bias``
    computed at that moment (Envoy's EDF ``pickAndAdd``; other endpoints' deadlines are not
    revisited when their counts change, as in Envoy). With every count at zero the shares are
    exactly the weights.

    The picker owns the active request counts: the engine calls ``acquire(i)`` when a request to
    endpoint ``i`` starts and ``release(i)`` when it ends (C calls from Cython), so a pick reads C
    memory only. When the picker is rebuilt, pass the current counts as ``active``.

    Args:
        weights: one positive int per endpoint (endpoint index = position).
        active: initial active request counts (default all zero), one per endpoint, >= 0.
        choice_count: endpoints sampled per pick with equal weights (Envoy's default 2; >= 2).
        seed: an int for a reproducible sequence (per twin), or None for a random seed.
        active_request_bias: Envoy's ``active_request_bias`` (default 1.0, >= 0; 0 ignores load).

    Raises:
        ValueError: no endpoints, a weight that is not positive, ``active`` of the wrong length
            or negative, ``choice_count < 2``, or a negative bias.
    """

    size: int
    choice_count: int

    def __init__(
        self,
        weights: Sequence[int],
        active: Optional[Sequence[int]] = None,
        choice_count: int = 2,
        seed: Optional[int] = None,
        active_request_bias: float = 1.0,
    ) -> None: ...

    def pick(self) -> int:
        """Index of the chosen endpoint (does not acquire it: call ``acquire`` when sending)."""

    def acquire(self, i: int) -> int:
        """Count a request started on endpoint ``i``; returns 0. Raises IndexError if out of range."""

    def release(self, i: int) -> int:
        """Count a request ended on endpoint ``i``; returns 0.

        Raises:
            IndexError: ``i`` out of range.
            ValueError: endpoint ``i`` has no active request (release without acquire).
        """

    def active(self, i: int) -> int:
        """Requests in flight on endpoint ``i``. Raises IndexError if out of range."""


class RingHashPicker:
    """Envoy's ring hash (Istio ``consistentHash.ringHash``).

    The ring holds, for each endpoint in name order, points ``xxh64(f"{name}_{k}")`` for
    ``k = 0, 1, ...``; the number of points follows Envoy: scaled so the lightest endpoint gets
    ``ceil(minimum_ring_size * its weight share)``, the others in proportion to weight, the total
    capped at ``maximum_ring_size``. ``pick(key_hash)`` returns the owner of the first point whose
    hash is ``>= key_hash``, wrapping to the first point. Placement depends on names and weights
    only, so adding or removing an endpoint moves only the keys it gains or loses, plus the keys
    on points dropped because every endpoint's point count shrinks (Envoy's sizing makes that
    count depend on the number of endpoints). Both twins build identical rings.

    Args:
        weights: one positive int per endpoint (endpoint index = position).
        names: one unique name per endpoint ("address:port"), default ``str(index)``.
        minimum_ring_size: Envoy's default 1024.
        maximum_ring_size: Envoy's default 8388608 (also the upper bound).

    Raises:
        ValueError: no endpoints, a weight that is not positive, names of the wrong length or not
            unique, or not ``1 <= minimum_ring_size <= maximum_ring_size <= 8388608``.
    """

    size: int
    ring_size: int

    def __init__(
        self,
        weights: Sequence[int],
        names: Optional[Sequence[str]] = None,
        minimum_ring_size: int = 1024,
        maximum_ring_size: int = 8388608,
    ) -> None: ...

    @staticmethod
    def hash_key(data: bytes, seed: int = 0) -> int: ...

    def ring(self) -> List[Tuple[int, int]]:
        """The ring as ``(hash, endpoint index)`` pairs in ring order (tests, admin)."""

    def pick(self, key_hash: int) -> int:
        """Endpoint index for a 64-bit key hash (``0 <= key_hash < 2**64``; see ``hash_key``)."""


class MaglevPicker:
    """Maglev (Eisenbud et al., NSDI 2016) as Envoy builds it (Istio ``consistentHash.maglev``).

    Endpoint permutations: ``offset = xxh64(name) % table_size``,
    ``skip = xxh64(name, seed=1) % (table_size - 1) + 1``. Endpoints take turns in name order
    filling their next free preferred slot; an endpoint of weight ``w`` takes a turn in
    ``w / max(weights)`` of the rounds, so its share of the table is close to its weight share.
    ``pick(key_hash)`` is ``table[key_hash % table_size]``. Both twins build identical tables.

    Args:
        weights: one positive int per endpoint (endpoint index = position), below 2**31.
        names: one unique name per endpoint ("address:port"), default ``str(index)``.
        table_size: a prime below 2**32, at least the number of endpoints (Envoy's default 65537).

    Raises:
        ValueError: no endpoints, a bad weight, names of the wrong length or not unique, or a
            table size that is not prime or is smaller than the number of endpoints.
    """

    size: int
    table_size: int

    def __init__(
        self, weights: Sequence[int], names: Optional[Sequence[str]] = None, table_size: int = 65537
    ) -> None: ...

    @staticmethod
    def hash_key(data: bytes, seed: int = 0) -> int: ...

    def table(self) -> List[int]:
        """The lookup table as endpoint indices (tests, admin)."""

    def pick(self, key_hash: int) -> int:
        """Endpoint index for a 64-bit key hash (``0 <= key_hash < 2**64``; see ``hash_key``)."""


Picker = Union[RoundRobinPicker, RandomPicker, LeastRequestPicker, RingHashPicker, MaglevPicker]


def make_picker(policy: str, weights: Sequence[int], **options: Any) -> Picker:
    """The picker for a canonical load-balancing policy name.

    ``ROUND_ROBIN`` -> RoundRobinPicker; ``RANDOM`` -> RandomPicker (``seed``);
    ``LEAST_REQUEST`` -> LeastRequestPicker (``active``, ``choice_count``, ``seed``,
    ``active_request_bias``); ``RING_HASH`` -> RingHashPicker (``minimum_ring_size``,
    ``maximum_ring_size``); ``MAGLEV`` -> MaglevPicker (``table_size``). ``names`` (one per
    endpoint) is accepted for every policy and used by the two hashing ones. Only these five
    names: control normalises Istio's other spellings (``UNSPECIFIED`` and ``LEAST_CONN`` are
    ``LEAST_REQUEST``), and ``PASSTHROUGH`` never reaches a picker.

    Raises:
        ValueError: any other policy name (the message names it), or bad weights/options.
        TypeError: an option the policy does not take.
    """
