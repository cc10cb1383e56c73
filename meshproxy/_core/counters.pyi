"""Per-cluster and per-listener request counters for the data plane.

This stub is the contract of both twins: ``meshproxy/_core/counters.pyx`` (Cython, C fields on a
final cdef class) and ``meshproxy/_py/counters.py`` (pure Python). Import through
``meshproxy.core``::

    from meshproxy.core import counters
    stats = counters.ClusterStats("outbound|80||echo.default.svc.cluster.local")

Hot path: ``rq_start``, ``rq_end``, ``cx_*``, ``timeout`` and ``reset`` create no Python objects in
the compiled twin. ``flag`` touches a dict (cold path: flagged responses only). ``snapshot`` is for
scrape time. Counters are per worker process; ``merge``/``merge_all`` sum the snapshots of all
workers.

Snapshot format (``ClusterStats.snapshot()``, also what ``merge`` returns)::

    {"name": str,
     "rq_total": int, "rq_active": int, "rq_completed": int, "rq_timeout": int, "rq_reset": int,
     "cx_total": int, "cx_active": int, "cx_connect_fail": int, "cx_destroy_remote": int,
     "bytes_rx": int, "bytes_tx": int,
     "rq_retry": int, "rq_retry_success": int, "rq_retry_overflow": int,
     "rq_retry_limit_exceeded": int,
     "rq_pending_total": int, "rq_pending_active": int, "rq_pending_overflow": int,
     "cx_max_requests": int, "cx_max_duration_reached": int,   # clusters only
     "cx_overflow": int,                # listener: maxDownstreamConnections; cluster: maxConnections
     "cx_idle_timeout": int,            # listeners only (0 for clusters)
     "rq_header_timeout": int, "rq_idle_timeout": int,
     "codes": {status: count},          # non-zero only; 0 = no status / out of range
     "flags": {"UF|503": count},        # "<response flags>|<status>"
     "latency": {"buckets": [count] * 20,   # per bucket (NOT cumulative), last one is +Inf
                 "sum_ms": float, "count": int}}
"""

#: Istio's default duration buckets (upper bounds, milliseconds).
BUCKETS_MS: tuple[float, ...]
#: ``BUCKETS_MS`` in integer microseconds.
BUCKETS_US: tuple[int, ...]
#: Histogram slots: ``len(BUCKETS_MS) + 1`` (the last one is ``+Inf``).
N_BUCKETS: int
#: Status-code slots (0..599); codes outside the range are counted in slot 0.
N_CODES: int

class ClusterStats:
    """Counters of one cluster (or one listener, for downstream stats) in one worker process.

    Args:
        name: cluster name (``outbound|80||echo.default.svc.cluster.local``) or listener name.

    Raises:
        TypeError: ``name`` is not a str.
    """

    @property
    def name(self) -> str: ...
    @property
    def rq_total(self) -> int:
        """Requests started (``rq_start`` calls)."""
    @property
    def rq_active(self) -> int:
        """Requests started and not yet ended (a gauge)."""
    @property
    def rq_completed(self) -> int:
        """Requests ended (``rq_end`` calls)."""
    @property
    def rq_timeout(self) -> int: ...
    @property
    def rq_reset(self) -> int: ...
    @property
    def cx_total(self) -> int:
        """Connections opened."""
    @property
    def cx_active(self) -> int:
        """Connections open now (a gauge)."""
    @property
    def cx_connect_fail(self) -> int: ...
    @property
    def cx_destroy_remote(self) -> int: ...
    @property
    def bytes_rx(self) -> int: ...
    @property
    def bytes_tx(self) -> int: ...
    @property
    def rq_retry(self) -> int:
        """Retries started (Envoy's ``upstream_rq_retry``)."""
    @property
    def rq_retry_success(self) -> int:
        """Requests that succeeded after a retry."""
    @property
    def rq_retry_overflow(self) -> int:
        """Retries not made because the retry budget or ``maxRetries`` breaker was full."""
    @property
    def rq_retry_limit_exceeded(self) -> int:
        """Requests that failed retriably with no attempt left (flag ``URX``)."""
    @property
    def rq_pending_total(self) -> int:
        """Requests that waited for a connection (a new one, or one freed by maxConnections)."""
    @property
    def rq_pending_active(self) -> int:
        """Requests waiting for a connection now (what http1MaxPendingRequests limits)."""
    @property
    def rq_pending_overflow(self) -> int:
        """Requests answered 503 UO: http1MaxPendingRequests or http2MaxRequests was full."""
    @property
    def cx_max_requests(self) -> int:
        """Upstream connections closed after maxRequestsPerConnection requests."""
    @property
    def cx_max_duration_reached(self) -> int:
        """Upstream connections closed because they reached maxConnectionDuration."""
    @property
    def cx_overflow(self) -> int:
        """A listener: connections closed at accept (maxDownstreamConnections). A cluster: new
        connections not made because maxConnections was reached (Envoy's upstream_cx_overflow)."""
    @property
    def cx_idle_timeout(self) -> int:
        """Client connections closed by the idle timeout."""
    @property
    def rq_header_timeout(self) -> int:
        """Client connections closed because a request head did not arrive in time."""
    @property
    def rq_idle_timeout(self) -> int:
        """Requests ended by the stream idle timeout."""
    def __init__(self, name: str) -> None: ...
    def rq_start(self) -> None:
        """A request began: ``rq_total += 1``, ``rq_active += 1``."""
    def rq_end(self, status: int, duration_us: int, bytes_rx: int, bytes_tx: int) -> None:
        """A request finished.

        ``rq_active -= 1``, ``rq_completed += 1``, count ``status`` (0 when no response was sent;
        out-of-range codes count as 0), put ``duration_us`` in the histogram (the first bucket
        whose bound is >= the duration, Prometheus ``le`` semantics; negative counts as 0) and add
        it to the sum, add the byte counts (negative values are ignored).

        Args:
            status: HTTP status sent downstream / received from upstream, 0 if none.
            duration_us: request duration in microseconds.
            bytes_rx: body bytes received.
            bytes_tx: body bytes sent.
        """
    def cx_open(self) -> None:
        """``cx_total += 1``, ``cx_active += 1``."""
    def cx_close(self) -> None:
        """``cx_active -= 1`` (every opened connection, whoever closed it)."""
    def cx_fail(self) -> None:
        """``cx_connect_fail += 1`` (a connect that failed never counts in ``cx_total``)."""
    def cx_remote_close(self) -> None:
        """``cx_destroy_remote += 1``; call in addition to ``cx_close``."""
    def retry(self) -> None:
        """``rq_retry += 1``."""
    def retry_success(self) -> None:
        """``rq_retry_success += 1``."""
    def retry_overflow(self) -> None:
        """``rq_retry_overflow += 1``."""
    def retry_limit_exceeded(self) -> None:
        """``rq_retry_limit_exceeded += 1``."""
    def pending_start(self) -> None:
        """``rq_pending_total += 1``, ``rq_pending_active += 1``."""
    def pending_end(self) -> None:
        """``rq_pending_active -= 1``."""
    def pending_overflow(self) -> None:
        """``rq_pending_overflow += 1``."""
    def max_requests_reached(self) -> None:
        """``cx_max_requests += 1``."""
    def max_duration_reached(self) -> None:
        """``cx_max_duration_reached += 1``."""
    def timeout(self) -> None:
        """``rq_timeout += 1``."""
    def reset(self) -> None:
        """``rq_reset += 1``."""
    def overflow(self) -> None:
        """``cx_overflow += 1`` (the connection was never counted in ``cx_total``)."""
    def idle_timeout(self) -> None:
        """``cx_idle_timeout += 1``."""
    def header_timeout(self) -> None:
        """``rq_header_timeout += 1``."""
    def stream_idle_timeout(self) -> None:
        """``rq_idle_timeout += 1``."""
    def flag(self, flags: str, status: int) -> None:
        """Count a response carrying Envoy response flags (cold path).

        Args:
            flags: Envoy's flags string, e.g. ``"UF"``, ``"UH"``, ``"NR"``, ``"UF,URX"``.
            status: the status sent downstream.
        """
    def snapshot(self) -> dict:
        """A copy of every counter as a plain dict (format in the module docstring)."""

def merge(snapshots: list[dict]) -> dict:
    """Sum snapshots of the same name taken in different worker processes.

    Args:
        snapshots: at least one snapshot dict, all with the same ``name``.

    Returns:
        One snapshot dict (gauges are summed too).

    Raises:
        ValueError: empty list or different names.
    """

def merge_all(snapshots: list[dict]) -> list[dict]:
    """Group snapshots by ``name`` and ``merge`` each group, in first-seen order."""
