# Augmenting declarations for meshproxy/_core/pathnorm.py (single source: meshproxy._py.pathnorm is
# the same file uncompiled): compiled, the per-request check is a C loop over the path's bytes.
cimport cython

cdef bint _COMPILED

cpdef bint needs_normalizing(bytes path, int mode)
@cython.locals(prev="unsigned char", c="unsigned char", merge=bint)
cpdef bint _scan(bytes path, int mode)
@cython.locals(h=Py_ssize_t, q=Py_ssize_t, p=bytes, query=bytes, out=bytes)
cpdef object normalize(bytes path, int mode)
cpdef bytes _unescape_slashes(bytes p)
cpdef bytes merge_slashes(bytes p)
cdef int _hexval(int c)
@cython.locals(c=int)
cdef Py_ssize_t _is_dot(bytes p, Py_ssize_t i, Py_ssize_t n)
@cython.locals(n=Py_ssize_t, out=bytearray, i=Py_ssize_t, last_bad_pct=Py_ssize_t, c=int,
               d=Py_ssize_t, d2=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t, hi=int, lo=int, v=int)
cpdef object canonical_path(bytes p)
@cython.locals(i=Py_ssize_t)
cdef void _back_up(bytearray out) except *
@cython.locals(length=Py_ssize_t, last=int, append_next=bint)
cdef void _nested_escape(bytes p, Py_ssize_t nxt, Py_ssize_t n, Py_ssize_t pct,
                         bytearray out) except *
