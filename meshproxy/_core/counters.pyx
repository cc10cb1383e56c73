# cython: language_level=3
"""Per-cluster and per-listener request counters (compiled twin of ``meshproxy/_py/counters.py``).

Theory of operation
-------------------
Every worker process owns one ``ClusterStats`` per cluster and one per listener. The data plane
bumps them per request and per connection; every bump is a handful of C integer additions on fields
of a final cdef class (no Python object is created, no dict is touched). Status codes go into a C
array of 600 slots indexed by the code, durations into a C array of histogram slots (Istio's
buckets plus ``+Inf``) found by a linear scan over integer microsecond bounds: most requests land in
the first few buckets, so the scan is shorter and more predictable than a binary search.

The only dict is the response-flags table (``flag``), which is on the cold path (failed or locally
answered requests).

Exposition never reads these objects directly: ``snapshot()`` copies them into a plain dict at
scrape time, worker snapshots are summed with ``merge``/``merge_all`` (shared pure-Python code, see
``meshproxy/_py/counters.py``), and ``meshproxy.telemetry`` renders the text formats.
"""
cimport cython
from libc.stdint cimport int64_t, uint64_t

from meshproxy._py.counters import merge, merge_all  # noqa: F401  (one implementation, re-exported)

#: Istio's default histogram buckets for ``istio_request_duration_milliseconds`` (upper bounds, ms).
BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
              300000, 600000, 1800000, 3600000)
#: The same bounds in microseconds (integers); a duration goes in the first bucket whose bound is >=.
BUCKETS_US = tuple(int(b * 1000) for b in BUCKETS_MS)
N_BUCKETS = _N_BUCKETS
N_CODES = _N_CODES

cdef int64_t[_N_BOUNDS] _bounds_us
cdef Py_ssize_t _i
for _i in range(_N_BOUNDS):
    _bounds_us[_i] = BUCKETS_US[_i]
assert len(BUCKETS_MS) == _N_BOUNDS


cdef class ClusterStats:
    """Counters of one cluster (or listener) in one worker process. See ``counters.pyi``."""

    def __cinit__(self, str name not None):
        # C fields and arrays are zeroed by tp_alloc.
        self.name = name
        self.flags = {}

    cpdef void rq_start(self) noexcept:
        self.rq_total += 1
        self.rq_active += 1

    cpdef void rq_end(self, long status, int64_t duration_us, int64_t bytes_rx,
                      int64_t bytes_tx) noexcept:
        cdef Py_ssize_t i = 0
        self.rq_active -= 1
        self.rq_completed += 1
        if status < 0 or status >= _N_CODES:
            status = 0
        self.codes[status] += 1
        if duration_us < 0:
            duration_us = 0
        while i < _N_BOUNDS and duration_us > _bounds_us[i]:
            i += 1
        self.buckets[i] += 1
        self.sum_us += <uint64_t>duration_us
        if bytes_rx > 0:
            self.bytes_rx += <uint64_t>bytes_rx
        if bytes_tx > 0:
            self.bytes_tx += <uint64_t>bytes_tx

    cpdef void cx_open(self) noexcept:
        self.cx_total += 1
        self.cx_active += 1

    cpdef void cx_close(self) noexcept:
        self.cx_active -= 1

    cpdef void cx_fail(self) noexcept:
        self.cx_connect_fail += 1

    cpdef void cx_remote_close(self) noexcept:
        self.cx_destroy_remote += 1

    cpdef void timeout(self) noexcept:
        self.rq_timeout += 1

    cpdef void reset(self) noexcept:
        self.rq_reset += 1

    cpdef void retry(self) noexcept:
        self.rq_retry += 1

    cpdef void retry_success(self) noexcept:
        self.rq_retry_success += 1

    cpdef void retry_overflow(self) noexcept:
        self.rq_retry_overflow += 1

    cpdef void retry_limit_exceeded(self) noexcept:
        self.rq_retry_limit_exceeded += 1

    cpdef void pending_start(self) noexcept:
        self.rq_pending_total += 1
        self.rq_pending_active += 1

    cpdef void pending_end(self) noexcept:
        self.rq_pending_active -= 1

    cpdef void pending_overflow(self) noexcept:
        self.rq_pending_overflow += 1

    cpdef void max_requests_reached(self) noexcept:
        self.cx_max_requests += 1

    cpdef void max_duration_reached(self) noexcept:
        self.cx_max_duration_reached += 1

    cpdef void overflow(self) noexcept:
        self.cx_overflow += 1

    cpdef void idle_timeout(self) noexcept:
        self.cx_idle_timeout += 1

    cpdef void header_timeout(self) noexcept:
        self.rq_header_timeout += 1

    cpdef void stream_idle_timeout(self) noexcept:
        self.rq_idle_timeout += 1

    def flag(self, str flags not None, long status):
        key = (flags, status)
        self.flags[key] = self.flags.get(key, 0) + 1

    def snapshot(self):
        cdef Py_ssize_t i
        cdef uint64_t count = 0
        codes = {}
        for i in range(_N_CODES):
            if self.codes[i]:
                codes[i] = self.codes[i]
        buckets = []
        for i in range(_N_BUCKETS):
            buckets.append(self.buckets[i])
            count += self.buckets[i]
        return {
            "name": self.name,
            "rq_total": self.rq_total,
            "rq_active": self.rq_active,
            "rq_completed": self.rq_completed,
            "cx_total": self.cx_total,
            "cx_active": self.cx_active,
            "cx_connect_fail": self.cx_connect_fail,
            "cx_destroy_remote": self.cx_destroy_remote,
            "rq_timeout": self.rq_timeout,
            "rq_reset": self.rq_reset,
            "bytes_rx": self.bytes_rx,
            "bytes_tx": self.bytes_tx,
            "rq_retry": self.rq_retry,
            "rq_retry_success": self.rq_retry_success,
            "rq_retry_overflow": self.rq_retry_overflow,
            "rq_retry_limit_exceeded": self.rq_retry_limit_exceeded,
            "rq_pending_total": self.rq_pending_total,
            "rq_pending_active": self.rq_pending_active,
            "rq_pending_overflow": self.rq_pending_overflow,
            "cx_max_requests": self.cx_max_requests,
            "cx_max_duration_reached": self.cx_max_duration_reached,
            "cx_overflow": self.cx_overflow,
            "cx_idle_timeout": self.cx_idle_timeout,
            "rq_header_timeout": self.rq_header_timeout,
            "rq_idle_timeout": self.rq_idle_timeout,
            "codes": codes,
            "flags": {f"{f}|{s}": n for (f, s), n in self.flags.items()},
            "latency": {"buckets": buckets, "sum_ms": self.sum_us / 1000.0, "count": count},
        }

    def __repr__(self):
        return f"<ClusterStats {self.name!r} rq_total={self.rq_total} rq_active={self.rq_active}>"
