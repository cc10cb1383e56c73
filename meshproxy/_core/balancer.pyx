# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Load-balancer pickers, compiled. Contract and docs: balancer.pyi.

A picker is built when a cluster's membership, weights or health change and only read per pick:
its state lives in C arrays (ARCHITECTURE.md section 3.5), so ``pick()`` allocates nothing and
makes no Python call. Construction is the cold path and may use Python freely.

Istio's policies (DestinationRule ``loadBalancer``) map to Envoy's load balancers and to:

* ROUND_ROBIN   -> RoundRobinPicker     smooth weighted round robin
* RANDOM        -> RandomPicker         alias method over a xorshift128+ stream
* LEAST_REQUEST -> LeastRequestPicker   P2C over active counts / EDF with weight/(active+1)
* RING_HASH     -> RingHashPicker       Envoy's ketama-style ring of xxHash64 points
* MAGLEV        -> MaglevPicker         Envoy's Maglev table

Everything a picker is built from (checks, weights, the alias table, the EDF start, the ring,
the Maglev table, the policy table) comes from meshproxy/_lbtables.py, the pure-Python module the
pure twin (meshproxy/_py/balancer.py) builds from too; this module copies it into C arrays and
keeps the per-pick code, written independently of the twin's. Ring and Maglev placement depend
only on endpoint names and weights (never on list positions), and both twins' xxHash64 agree, so
their rings and tables are identical.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport pow
from libc.stdint cimport int32_t, uint64_t

from meshproxy import _lbtables


cdef class RoundRobinPicker:
    """Smooth weighted round robin (as nginx's): with equal weights, plain rotation."""

    def __cinit__(self, weights):
        cdef Py_ssize_t i
        ws, total, uniform = _lbtables.round_robin_weights(weights)
        self._n = len(ws)
        self._weight = <long long *>PyMem_Malloc(self._n * sizeof(long long))
        self._current = <long long *>PyMem_Malloc(self._n * sizeof(long long))
        if self._weight is NULL or self._current is NULL:
            raise MemoryError()
        for i in range(self._n):
            self._weight[i] = ws[i]
            self._current[i] = 0
        self._total = total
        self._uniform = uniform
        self._next = 0

    def __dealloc__(self):
        PyMem_Free(self._weight)
        PyMem_Free(self._current)

    @property
    def size(self):
        return self._n

    cpdef Py_ssize_t pick(self):
        """Index of the next endpoint."""
        cdef Py_ssize_t i, best
        if self._uniform:
            i = self._next
            self._next = i + 1 if i + 1 < self._n else 0
            return i
        best = 0
        for i in range(self._n):
            self._current[i] += self._weight[i]
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= self._total
        return best


# ---------------------------------------------------------------------------------------------
# Per-pick machinery: xxHash64 (the engine hashes a request's key per request), the PRNG and its
# fork handling.
# ---------------------------------------------------------------------------------------------

# xxHash64 constants (Yann Collet's XXH64, as Envoy's HashUtil::xxHash64 calls it).
cdef uint64_t _P1 = 0x9E3779B185EBCA87ULL
cdef uint64_t _P2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t _P3 = 0x165667B19E3779F9ULL
cdef uint64_t _P4 = 0x85EBCA77C2B2AE63ULL
cdef uint64_t _P5 = 0x27D4EB2F165667C5ULL


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef inline uint64_t _read64(const unsigned char *p) noexcept nogil:
    # little-endian load whatever the host order (compilers turn this into one mov on x86-64)
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
            | (<uint64_t>p[7] << 56))


cdef inline uint64_t _read32(const unsigned char *p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24))


cdef inline uint64_t _xxh_round(uint64_t acc, uint64_t lane) noexcept nogil:
    acc += lane * _P2
    acc = _rotl(acc, 31)
    return acc * _P1


cdef inline uint64_t _xxh_merge(uint64_t acc, uint64_t v) noexcept nogil:
    acc ^= _xxh_round(0, v)
    return acc * _P1 + _P4


cdef uint64_t xxh64(const unsigned char *p, Py_ssize_t length, uint64_t seed) noexcept nogil:
    cdef const unsigned char *end = p + length
    cdef uint64_t h, v1, v2, v3, v4
    if length >= 32:
        v1 = seed + _P1 + _P2
        v2 = seed + _P2
        v3 = seed
        v4 = seed - _P1
        while end - p >= 32:
            v1 = _xxh_round(v1, _read64(p))
            v2 = _xxh_round(v2, _read64(p + 8))
            v3 = _xxh_round(v3, _read64(p + 16))
            v4 = _xxh_round(v4, _read64(p + 24))
            p += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        h = _xxh_merge(h, v1)
        h = _xxh_merge(h, v2)
        h = _xxh_merge(h, v3)
        h = _xxh_merge(h, v4)
    else:
        h = seed + _P5
    h += <uint64_t>length
    while end - p >= 8:
        h ^= _xxh_round(0, _read64(p))
        h = _rotl(h, 27) * _P1 + _P4
        p += 8
    if end - p >= 4:
        h ^= _read32(p) * _P1
        h = _rotl(h, 23) * _P2 + _P3
        p += 4
    while p < end:
        h ^= p[0] * _P5
        h = _rotl(h, 11) * _P1
        p += 1
    h ^= h >> 33
    h *= _P2
    h ^= h >> 29
    h *= _P3
    h ^= h >> 32
    return h


def hash_key(data, seed=0):
    """xxHash64 of ``data`` (bytes-like), as an int in [0, 2**64). Same result in both twins."""
    cdef const unsigned char[::1] view = data
    cdef uint64_t s = seed
    if view.shape[0] == 0:
        return xxh64(<const unsigned char *>b"", 0, s)
    return xxh64(&view[0], view.shape[0], s)


cdef inline uint64_t _splitmix64(uint64_t *x) noexcept nogil:
    cdef uint64_t z
    x[0] += 0x9E3779B97F4A7C15ULL
    z = x[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


# Master seed for unseeded pickers, from os.urandom at import and again in every forked child
# (os.register_at_fork): a child must not replay its parent's random sequence, or every worker
# of a pre-fork server would send its n-th request to the same endpoint.
cdef uint64_t _master = 0
cdef uint64_t _fork_epoch = 0


def _after_fork_in_child():
    global _master, _fork_epoch
    _master = int.from_bytes(_os.urandom(8), "little")
    _fork_epoch += 1


import os as _os

_master = int.from_bytes(_os.urandom(8), "little")
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_in_child)


cdef inline void _rng_from(_Rng *rng, uint64_t x) noexcept nogil:
    rng.s0 = _splitmix64(&x)
    rng.s1 = _splitmix64(&x)
    if rng.s0 == 0 and rng.s1 == 0:  # xorshift's one forbidden state
        rng.s1 = 1


cdef int _rng_init(_Rng *rng, seed) except -1:
    if seed is None:
        rng.fixed = False
        rng.epoch = _fork_epoch
        _rng_from(rng, _splitmix64(&_master))
    else:
        rng.fixed = True
        rng.epoch = 0
        _rng_from(rng, <uint64_t>(hash(seed) & 0xFFFFFFFFFFFFFFFF) if not isinstance(seed, int)
                  else <uint64_t>(seed & 0xFFFFFFFFFFFFFFFF))
    return 0


cdef inline uint64_t _rng_next(_Rng *rng) noexcept nogil:
    # xorshift128+ (Vigna): two xors and shifts per 64 bits, passes BigCrush in its upper bits.
    cdef uint64_t s1 = rng.s0
    cdef uint64_t s0 = rng.s1
    if rng.epoch != _fork_epoch and not rng.fixed:
        rng.epoch = _fork_epoch
        _rng_from(rng, _splitmix64(&_master))
        s1 = rng.s0
        s0 = rng.s1
    rng.s0 = s0
    s1 ^= s1 << 23
    rng.s1 = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)
    return rng.s1 + s0


cdef inline Py_ssize_t _below(uint64_t r, Py_ssize_t n) noexcept nogil:
    # Lemire's multiply-shift on the upper 32 bits: uniform in [0, n) up to n / 2**32 bias.
    return <Py_ssize_t>(((r >> 32) * <uint64_t>n) >> 32)


# ---------------------------------------------------------------------------------------------
# RANDOM
# ---------------------------------------------------------------------------------------------

cdef inline Py_ssize_t _alias_pick(const uint64_t *prob, const int32_t *alias, Py_ssize_t n,
                                   uint64_t r) noexcept nogil:
    # low 32 bits choose the column, high 32 bits decide column vs alias
    cdef Py_ssize_t col = <Py_ssize_t>(((r & 0xFFFFFFFFULL) * <uint64_t>n) >> 32)
    if (r >> 32) < prob[col]:
        return col
    return alias[col]


cdef class RandomPicker:
    """Weighted random through Vose's alias method: one PRNG draw and one table read per pick."""

    def __cinit__(self, weights, seed=None):
        cdef Py_ssize_t n, i
        prob, alias = _lbtables.alias_table(weights)
        n = self._n = len(prob)
        self._prob = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))
        self._alias = <int32_t *>PyMem_Malloc(n * sizeof(int32_t))
        if self._prob is NULL or self._alias is NULL:
            raise MemoryError()
        for i in range(n):
            self._prob[i] = prob[i]
            self._alias[i] = alias[i]
        _rng_init(&self._rng, seed)

    def __dealloc__(self):
        PyMem_Free(self._prob)
        PyMem_Free(self._alias)

    @property
    def size(self):
        return self._n

    cpdef Py_ssize_t pick(self):
        cdef uint64_t r = _rng_next(&self._rng)
        return _alias_pick(self._prob, self._alias, self._n, r)

    def pick_draw(self, uint64_t r):
        """The endpoint ``pick()`` returns when its generator yields the 64-bit draw ``r``."""
        return _alias_pick(self._prob, self._alias, self._n, r)

    def alias_table(self):
        """``(prob, alias)`` as lists (tests, admin)."""
        return [self._prob[i] for i in range(self._n)], [self._alias[i] for i in range(self._n)]


# ---------------------------------------------------------------------------------------------
# LEAST_REQUEST
# ---------------------------------------------------------------------------------------------

cdef inline bint _edf_before(_EdfEntry *a, _EdfEntry *b) noexcept nogil:
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.order < b.order)


cdef class LeastRequestPicker:
    """Envoy's LEAST_REQUEST: P2C (N choices) for equal weights, EDF over weight/(active+1)^bias
    otherwise. Active counts live here (acquire/release), so a pick makes no Python call."""

    def __cinit__(self, weights, active=None, choice_count=2, seed=None, active_request_bias=1.0):
        cdef Py_ssize_t n, i
        start = _lbtables.least_request_start(weights, active, choice_count, active_request_bias)
        ws, acts, heap = start["weights"], start["active"], start["heap"]
        n = self._n = len(ws)
        self._choice_count = start["choice_count"]
        self._bias = start["bias"]
        self._uniform = start["uniform"]
        self._weight = <double *>PyMem_Malloc(n * sizeof(double))
        self._active = <long long *>PyMem_Malloc(n * sizeof(long long))
        self._heap = <_EdfEntry *>PyMem_Malloc(n * sizeof(_EdfEntry))
        if self._weight is NULL or self._active is NULL or self._heap is NULL:
            raise MemoryError()
        for i in range(n):
            self._weight[i] = ws[i]
            self._active[i] = acts[i]
        _rng_init(&self._rng, seed)
        # the EDF schedule at time 0 (a binary min-heap already), then insertion order goes on
        for i in range(n):
            self._heap[i].deadline = heap[i][0]
            self._heap[i].order = heap[i][1]
            self._heap[i].index = heap[i][2]
        self._edf_time = 0.0
        self._edf_order = n

    def __dealloc__(self):
        PyMem_Free(self._weight)
        PyMem_Free(self._active)
        PyMem_Free(self._heap)

    @property
    def size(self):
        return self._n

    @property
    def choice_count(self):
        return self._choice_count

    cdef double _effective(self, Py_ssize_t i) noexcept nogil:
        # Envoy's hostWeight: weight / (active + 1) ** active_request_bias
        cdef double a = <double>(self._active[i] + 1)
        if self._bias == 1.0:
            return self._weight[i] / a
        if self._bias == 0.0:
            return self._weight[i]
        return self._weight[i] / pow(a, self._bias)

    cpdef Py_ssize_t pick(self):
        cdef Py_ssize_t best, cand, k, j, child, n = self._n
        cdef _EdfEntry top, tmp
        if self._uniform:
            # unweightedHostPickNChoices: sample with replacement, keep the strictly less loaded
            # (ties keep the first sampled)
            best = _below(_rng_next(&self._rng), n)
            for k in range(1, self._choice_count):
                cand = _below(_rng_next(&self._rng), n)
                if self._active[cand] < self._active[best]:
                    best = cand
            return best
        # EdfScheduler::pickAndAdd: take the earliest deadline, advance time to it, and re-add the
        # same endpoint with its weight recomputed from its active count now.
        top = self._heap[0]
        self._edf_time = top.deadline
        best = top.index
        top.deadline = self._edf_time + 1.0 / self._effective(best)
        top.order = self._edf_order
        self._edf_order += 1
        # sift down from the root
        j = 0
        while True:
            child = 2 * j + 1
            if child >= n:
                break
            if child + 1 < n and _edf_before(&self._heap[child + 1], &self._heap[child]):
                child += 1
            if not _edf_before(&self._heap[child], &top):
                break
            self._heap[j] = self._heap[child]
            j = child
        self._heap[j] = top
        return best

    cpdef int acquire(self, Py_ssize_t i) except -1:
        """A request to endpoint ``i`` started."""
        if i < 0 or i >= self._n:
            raise IndexError("endpoint index out of range")
        self._active[i] += 1
        return 0

    cpdef int release(self, Py_ssize_t i) except -1:
        """A request to endpoint ``i`` ended."""
        if i < 0 or i >= self._n:
            raise IndexError("endpoint index out of range")
        if self._active[i] == 0:
            raise ValueError("release without a matching acquire")
        self._active[i] -= 1
        return 0

    cpdef long long active(self, Py_ssize_t i) except -1:
        """Requests in flight on endpoint ``i``."""
        if i < 0 or i >= self._n:
            raise IndexError("endpoint index out of range")
        return self._active[i]


# ---------------------------------------------------------------------------------------------
# RING_HASH
# ---------------------------------------------------------------------------------------------

cdef class RingHashPicker:
    """Envoy's ring hash: ``weight``-proportional points ``xxh64(f"{name}_{i}")`` on a sorted
    ring; a key goes to the first point at or after its hash (wrapping)."""

    def __cinit__(self, weights, names=None, minimum_ring_size=1024, maximum_ring_size=8388608):
        cdef Py_ssize_t pos, m
        # hashed with this module's xxHash64 (C), so the ring is the pure twin's to the point
        ring = _lbtables.ring_points(weights, names, minimum_ring_size, maximum_ring_size, hash_key)
        hashes, owners = ring.hashes, ring.owners
        self._n = ring.endpoints
        m = self._ring_size = len(hashes)
        self._hashes = <uint64_t *>PyMem_Malloc(m * sizeof(uint64_t))
        self._owners = <int32_t *>PyMem_Malloc(m * sizeof(int32_t))
        if self._hashes is NULL or self._owners is NULL:
            raise MemoryError()
        for pos in range(m):
            self._hashes[pos] = hashes[pos]
            self._owners[pos] = owners[pos]

    def __dealloc__(self):
        PyMem_Free(self._hashes)
        PyMem_Free(self._owners)

    @property
    def size(self):
        return self._n

    @property
    def ring_size(self):
        return self._ring_size

    hash_key = staticmethod(hash_key)

    def ring(self):
        """The ring as ``(hash, endpoint index)`` pairs in ring order (tests, admin)."""
        return [(self._hashes[j], self._owners[j]) for j in range(self._ring_size)]

    cpdef Py_ssize_t pick(self, uint64_t key_hash):
        # lower bound: first ring entry whose hash >= key_hash, wrapping past the end to entry 0
        cdef Py_ssize_t lo = 0, hi = self._ring_size, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._hashes[mid] < key_hash:
                lo = mid + 1
            else:
                hi = mid
        if lo == self._ring_size:
            lo = 0
        return self._owners[lo]


# ---------------------------------------------------------------------------------------------
# MAGLEV
# ---------------------------------------------------------------------------------------------

cdef class MaglevPicker:
    """Maglev (Eisenbud et al., NSDI 2016) as Envoy builds it: per-endpoint permutations
    ``offset = xxh64(name) % M``, ``skip = xxh64(name, seed=1) % (M - 1) + 1``, filled in name
    order, an endpoint of weight w taking a turn on w/max_weight of the rounds."""

    def __cinit__(self, weights, names=None, table_size=65537):
        cdef Py_ssize_t j
        maglev = _lbtables.maglev_table(weights, names, table_size, hash_key)
        table = maglev.table
        self._n = maglev.endpoints
        self._table_size = len(table)
        self._table = <int32_t *>PyMem_Malloc(self._table_size * sizeof(int32_t))
        if self._table is NULL:
            raise MemoryError()
        for j in range(<Py_ssize_t>self._table_size):
            self._table[j] = table[j]

    def __dealloc__(self):
        PyMem_Free(self._table)

    @property
    def size(self):
        return self._n

    @property
    def table_size(self):
        return self._table_size

    hash_key = staticmethod(hash_key)

    def table(self):
        """The lookup table as a list of endpoint indices (for tests and the admin page)."""
        return [self._table[j] for j in range(self._table_size)]

    cpdef Py_ssize_t pick(self, uint64_t key_hash):
        return self._table[key_hash % self._table_size]


# ---------------------------------------------------------------------------------------------
# Policy names (the table is meshproxy/_lbtables.py's)
# ---------------------------------------------------------------------------------------------

make_picker = _lbtables.picker_factory(
    RoundRobinPicker, RandomPicker, LeastRequestPicker, RingHashPicker, MaglevPicker)


# ---------------------------------------------------------------------------------------------
# Benchmark helper (bench/test_balancer_micro.py): `count` picks in a C loop, each a direct C call
# of the typed cpdef pick, as the compiled engine makes it. Not part of the API.
# ---------------------------------------------------------------------------------------------

def _pick_loop(picker, Py_ssize_t count, keys=None):
    """Sum of ``count`` picks (hashing pickers take ``keys``, an ``array('Q')`` of length count)."""
    cdef Py_ssize_t i, acc = 0
    cdef const uint64_t[::1] kv
    cdef RoundRobinPicker rr
    cdef RandomPicker rp
    cdef LeastRequestPicker lr
    cdef RingHashPicker rh
    cdef MaglevPicker mg
    if isinstance(picker, RingHashPicker):
        rh = picker
        kv = keys
        for i in range(count):
            acc += rh.pick(kv[i])
    elif isinstance(picker, MaglevPicker):
        mg = picker
        kv = keys
        for i in range(count):
            acc += mg.pick(kv[i])
    elif isinstance(picker, RoundRobinPicker):
        rr = picker
        for i in range(count):
            acc += rr.pick()
    elif isinstance(picker, RandomPicker):
        rp = picker
        for i in range(count):
            acc += rp.pick()
    elif isinstance(picker, LeastRequestPicker):
        lr = picker
        for i in range(count):
            acc += lr.pick()
    else:
        raise TypeError(f"not a picker: {picker!r}")
    return acc
