# Augmenting declarations for meshproxy/_core/timers.py (single source: meshproxy._py.timers is the
# same file uncompiled): the hashed timing wheel behind every data-plane timeout.
cimport cython

# (RESOLUTION and SLOTS stay Python globals: the sidecar reads them.)

@cython.final
@cython.freelist(64)
cdef class Timer:
    cdef public TimerWheel wheel
    cdef public object target
    cdef public double deadline
    cdef public long long due

    cpdef cancel(self)
    cpdef bint active(self)


@cython.final
cdef class TimerWheel:
    cdef public object loop
    cdef public double resolution
    cdef public Py_ssize_t nslots
    cdef public list slots
    cdef public double now
    cdef public long long tick_no
    cdef public Py_ssize_t count
    cdef public unsigned long long fired
    cdef public object handle
    cdef public bint stopped

    cpdef start(self)
    cpdef stop(self)
    cpdef Timer schedule(self, double deadline, object target)
    cpdef arm(self, Timer t, double deadline)
    @cython.locals(due="long long")
    cpdef _insert(self, Timer t)
    cpdef _remove(self, Timer t)
    @cython.locals(now=double, target="long long", n="long long", i="long long", due=list,
                   t=Timer, slot=set)
    cpdef _tick(self)
