# Declarations of meshproxy/_core/balancer.pyx (contract and docs: balancer.pyi), cimported by the
# engine so a pick is a C call.
#
# Every class is final, so its cpdef methods are direct C calls from Cython callers. Pick methods
# return an endpoint index and never fail (no exception sentinel); acquire/release/active raise
# IndexError (or ValueError) through the `except -1` sentinel. RoundRobinPicker's layout is part
# of the engine's ABI (meshproxy/_core/conn.pxd cimports it): new fields go to the other classes.
cimport cython
from libc.stdint cimport int32_t, uint64_t


@cython.final
cdef class RoundRobinPicker:
    cdef:
        Py_ssize_t _n
        long long *_weight
        long long *_current
        long long _total
        Py_ssize_t _next
        bint _uniform

    cpdef Py_ssize_t pick(self)


# One PRNG stream (xorshift128+). Unseeded streams follow the module's fork epoch: the first pick
# in a forked child reseeds them from the child's fresh master seed (see _after_fork_in_child).
ctypedef struct _Rng:
    uint64_t s0
    uint64_t s1
    uint64_t epoch
    bint fixed          # seeded explicitly: never reseeded (reproducible sequences)


@cython.final
cdef class RandomPicker:
    cdef:
        Py_ssize_t _n
        # Vose alias table: column i is kept with probability _prob[i] / 2**32, else _alias[i].
        uint64_t *_prob
        int32_t *_alias
        _Rng _rng

    cpdef Py_ssize_t pick(self)


# Envoy's EDF scheduler entry: earliest deadline first, ties by insertion order.
ctypedef struct _EdfEntry:
    double deadline
    uint64_t order
    Py_ssize_t index


@cython.final
cdef class LeastRequestPicker:
    cdef:
        Py_ssize_t _n
        double *_weight
        long long *_active
        bint _uniform         # equal weights: power of choice_count choices; else EDF
        int _choice_count
        double _bias
        _Rng _rng
        # EDF (unequal weights): a binary min-heap of n entries
        _EdfEntry *_heap
        double _edf_time
        uint64_t _edf_order

    cdef double _effective(self, Py_ssize_t i) noexcept nogil   # Envoy's hostWeight
    cpdef Py_ssize_t pick(self)
    # Request start/end on endpoint i; -1 (IndexError, or ValueError on release below zero).
    cpdef int acquire(self, Py_ssize_t i) except -1
    cpdef int release(self, Py_ssize_t i) except -1
    cpdef long long active(self, Py_ssize_t i) except -1


@cython.final
cdef class RingHashPicker:
    cdef:
        Py_ssize_t _n
        Py_ssize_t _ring_size
        uint64_t *_hashes     # sorted ascending
        int32_t *_owners      # endpoint index of each ring entry

    cpdef Py_ssize_t pick(self, uint64_t key_hash)


@cython.final
cdef class MaglevPicker:
    cdef:
        Py_ssize_t _n
        uint64_t _table_size
        int32_t *_table

    cpdef Py_ssize_t pick(self, uint64_t key_hash)


# xxHash64 (the hash Envoy's ring hash and Maglev use); never fails.
cdef uint64_t xxh64(const unsigned char *p, Py_ssize_t length, uint64_t seed) noexcept nogil
