# cython: language_level=3
"""Load-balancer pickers, compiled. Contract and docs: balancer.pyi.

A picker is built when a cluster's membership or weights change and only read per pick: its state
lives in C arrays (ARCHITECTURE.md section 3.5), so ``pick()`` allocates nothing.
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc


cdef class RoundRobinPicker:
    """Smooth weighted round robin (as nginx's): with equal weights, plain rotation."""

    def __cinit__(self, weights):
        cdef Py_ssize_t i
        cdef long long w
        self._n = len(weights)
        if self._n == 0:
            raise ValueError("a picker needs at least one endpoint")
        self._weight = <long long *>PyMem_Malloc(self._n * sizeof(long long))
        self._current = <long long *>PyMem_Malloc(self._n * sizeof(long long))
        if self._weight is NULL or self._current is NULL:
            raise MemoryError()
        self._total = 0
        self._uniform = True
        for i in range(self._n):
            w = weights[i]
            if w <= 0:
                raise ValueError("endpoint weights must be positive")
            self._weight[i] = w
            self._current[i] = 0
            self._total += w
            if w != self._weight[0]:
                self._uniform = False
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
