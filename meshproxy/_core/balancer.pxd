# Declarations of meshproxy/_core/balancer.pyx (contract and docs: balancer.pyi), cimported by the
# engine so a pick is a C call.
cimport cython


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
