# Declarations of meshproxy/_core/counters.pyx, so the engine (conn) can cimport ClusterStats and
# bump counters with C calls. Contract and docs: counters.pyi.
cimport cython
from libc.stdint cimport int64_t, uint64_t

cdef enum:
    _N_BOUNDS = 19    # len(BUCKETS_MS)
    _N_BUCKETS = 20   # bounds + "+Inf"
    _N_CODES = 600    # status-code slots; 0 holds "no status" and out-of-range codes


@cython.final
cdef class ClusterStats:
    cdef readonly str name
    # Requests.
    cdef readonly uint64_t rq_total
    cdef readonly int64_t rq_active
    cdef readonly uint64_t rq_completed
    cdef readonly uint64_t rq_timeout
    cdef readonly uint64_t rq_reset
    # Retries (Envoy's upstream_rq_retry*).
    cdef readonly uint64_t rq_retry
    cdef readonly uint64_t rq_retry_success
    cdef readonly uint64_t rq_retry_overflow
    cdef readonly uint64_t rq_retry_limit_exceeded
    # Circuit breakers: requests waiting for a connection (Envoy's upstream_rq_pending_*), and
    # connections closed by maxRequestsPerConnection / maxConnectionDuration.
    cdef readonly uint64_t rq_pending_total
    cdef readonly int64_t rq_pending_active
    cdef readonly uint64_t rq_pending_overflow
    cdef readonly uint64_t cx_max_requests
    cdef readonly uint64_t cx_max_duration_reached
    # Connections.
    cdef readonly uint64_t cx_total
    cdef readonly int64_t cx_active
    cdef readonly uint64_t cx_connect_fail
    cdef readonly uint64_t cx_destroy_remote
    # Connection limits (a listener's maxDownstreamConnections, a cluster's maxConnections) and
    # downstream timeouts (listeners only).
    cdef readonly uint64_t cx_overflow
    cdef readonly uint64_t cx_idle_timeout
    cdef readonly uint64_t rq_header_timeout
    cdef readonly uint64_t rq_idle_timeout
    # Bytes.
    cdef readonly uint64_t bytes_rx
    cdef readonly uint64_t bytes_tx
    # Status codes (slot 0 = none / out of range) and the latency histogram.
    cdef uint64_t codes[_N_CODES]
    cdef uint64_t buckets[_N_BUCKETS]
    cdef uint64_t sum_us
    # (flags, status) -> count; cold path only.
    cdef dict flags


    cpdef void rq_start(self) noexcept
    cpdef void rq_end(self, long status, int64_t duration_us, int64_t bytes_rx,
                      int64_t bytes_tx) noexcept
    cpdef void cx_open(self) noexcept
    cpdef void cx_close(self) noexcept
    cpdef void cx_fail(self) noexcept
    cpdef void cx_remote_close(self) noexcept
    cpdef void timeout(self) noexcept
    cpdef void reset(self) noexcept
    cpdef void retry(self) noexcept
    cpdef void retry_success(self) noexcept
    cpdef void retry_overflow(self) noexcept
    cpdef void retry_limit_exceeded(self) noexcept
    cpdef void pending_start(self) noexcept
    cpdef void pending_end(self) noexcept
    cpdef void pending_overflow(self) noexcept
    cpdef void max_requests_reached(self) noexcept
    cpdef void max_duration_reached(self) noexcept
    cpdef void overflow(self) noexcept
    cpdef void idle_timeout(self) noexcept
    cpdef void header_timeout(self) noexcept
    cpdef void stream_idle_timeout(self) noexcept
