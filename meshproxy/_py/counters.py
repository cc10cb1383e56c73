"""Per-cluster and per-listener request counters: the pure-Python twin of ``meshproxy/_core/counters.pyx``.

Same names, signatures and snapshot format as the compiled module (``counters.pyi`` is the contract
of both). The data plane bumps a ``ClusterStats`` per request; telemetry and the admin server read
``snapshot()`` dicts at scrape time and ``merge`` them across worker processes.

``merge`` and ``merge_all`` are defined here only; the compiled module re-exports them.
"""

#: Istio's default histogram buckets for ``istio_request_duration_milliseconds`` (upper bounds, ms).
BUCKETS_MS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
              300000, 600000, 1800000, 3600000)
#: Upper bounds in microseconds, for placing an integer duration without float maths.
#: A duration goes in the first bucket whose bound is >= it (Prometheus ``le`` semantics).
BUCKETS_US = tuple(int(b * 1000) for b in BUCKETS_MS)
#: Number of histogram slots: one per bound plus ``+Inf``.
N_BUCKETS = len(BUCKETS_MS) + 1
#: Size of the status-code array; codes outside ``0..N_CODES-1`` are counted in slot 0.
N_CODES = 600

_COUNTER_NAMES = ("rq_total", "rq_active", "rq_completed", "cx_total", "cx_active", "cx_connect_fail",
                  "cx_destroy_remote", "rq_timeout", "rq_reset", "bytes_rx", "bytes_tx",
                  "rq_retry", "rq_retry_success", "rq_retry_overflow", "rq_retry_limit_exceeded",
                  "rq_pending_total", "rq_pending_active", "rq_pending_overflow",
                  "cx_max_requests", "cx_max_duration_reached",
                  # connection limits (listener and cluster) and downstream (listener) only: connection limit and downstream timeouts
                  "cx_overflow", "cx_idle_timeout", "rq_header_timeout", "rq_idle_timeout")


class ClusterStats:
    """Counters of one cluster (or one listener, for downstream stats) in one worker process.

    Args:
        name: the cluster or listener name, e.g. ``outbound|80||echo.default.svc.cluster.local``.
    """

    __slots__ = ("_name", "_rq_total", "_rq_active", "_rq_completed", "_cx_total", "_cx_active",
                 "_cx_connect_fail", "_cx_destroy_remote", "_rq_timeout", "_rq_reset", "_bytes_rx",
                 "_bytes_tx", "_rq_retry", "_rq_retry_success", "_rq_retry_overflow",
                 "_rq_retry_limit_exceeded", "_rq_pending_total", "_rq_pending_active",
                 "_rq_pending_overflow", "_cx_max_requests", "_cx_max_duration_reached", "_cx_overflow", "_cx_idle_timeout", "_rq_header_timeout",
                 "_rq_idle_timeout", "_codes", "_buckets", "_sum_us", "_flags")

    def __init__(self, name: str):
        if not isinstance(name, str):
            raise TypeError(f"name must be str, not {type(name).__name__}")
        self._name = name
        self._rq_total = 0
        self._rq_active = 0
        self._rq_completed = 0
        self._cx_total = 0
        self._cx_active = 0
        self._cx_connect_fail = 0
        self._cx_destroy_remote = 0
        self._rq_timeout = 0
        self._rq_reset = 0
        self._bytes_rx = 0
        self._bytes_tx = 0
        self._rq_retry = 0
        self._rq_retry_success = 0
        self._rq_retry_overflow = 0
        self._rq_retry_limit_exceeded = 0
        self._rq_pending_total = 0
        self._rq_pending_active = 0
        self._rq_pending_overflow = 0
        self._cx_max_requests = 0
        self._cx_max_duration_reached = 0
        self._cx_overflow = 0
        self._cx_idle_timeout = 0
        self._rq_header_timeout = 0
        self._rq_idle_timeout = 0
        self._codes = [0] * N_CODES
        self._buckets = [0] * N_BUCKETS
        self._sum_us = 0
        self._flags = {}

    name = property(lambda self: self._name)
    rq_total = property(lambda self: self._rq_total)
    rq_active = property(lambda self: self._rq_active)
    rq_completed = property(lambda self: self._rq_completed)
    cx_total = property(lambda self: self._cx_total)
    cx_active = property(lambda self: self._cx_active)
    cx_connect_fail = property(lambda self: self._cx_connect_fail)
    cx_destroy_remote = property(lambda self: self._cx_destroy_remote)
    rq_timeout = property(lambda self: self._rq_timeout)
    rq_reset = property(lambda self: self._rq_reset)
    bytes_rx = property(lambda self: self._bytes_rx)
    bytes_tx = property(lambda self: self._bytes_tx)
    rq_retry = property(lambda self: self._rq_retry)
    rq_retry_success = property(lambda self: self._rq_retry_success)
    rq_retry_overflow = property(lambda self: self._rq_retry_overflow)
    rq_retry_limit_exceeded = property(lambda self: self._rq_retry_limit_exceeded)
    rq_pending_total = property(lambda self: self._rq_pending_total)
    rq_pending_active = property(lambda self: self._rq_pending_active)
    rq_pending_overflow = property(lambda self: self._rq_pending_overflow)
    cx_max_requests = property(lambda self: self._cx_max_requests)
    cx_max_duration_reached = property(lambda self: self._cx_max_duration_reached)
    cx_overflow = property(lambda self: self._cx_overflow)
    cx_idle_timeout = property(lambda self: self._cx_idle_timeout)
    rq_header_timeout = property(lambda self: self._rq_header_timeout)
    rq_idle_timeout = property(lambda self: self._rq_idle_timeout)

    def rq_start(self) -> None:
        self._rq_total += 1
        self._rq_active += 1

    def rq_end(self, status: int, duration_us: int, bytes_rx: int, bytes_tx: int) -> None:
        self._rq_active -= 1
        self._rq_completed += 1
        if 0 <= status < N_CODES:
            self._codes[status] += 1
        else:
            self._codes[0] += 1
        if duration_us < 0:
            duration_us = 0
        i = 0
        for bound in BUCKETS_US:
            if duration_us <= bound:
                break
            i += 1
        self._buckets[i] += 1
        self._sum_us += duration_us
        if bytes_rx > 0:
            self._bytes_rx += bytes_rx
        if bytes_tx > 0:
            self._bytes_tx += bytes_tx

    def cx_open(self) -> None:
        self._cx_total += 1
        self._cx_active += 1

    def cx_close(self) -> None:
        self._cx_active -= 1

    def cx_fail(self) -> None:
        self._cx_connect_fail += 1

    def cx_remote_close(self) -> None:
        self._cx_destroy_remote += 1

    def timeout(self) -> None:
        self._rq_timeout += 1

    def reset(self) -> None:
        self._rq_reset += 1

    def retry(self) -> None:
        self._rq_retry += 1

    def retry_success(self) -> None:
        self._rq_retry_success += 1

    def retry_overflow(self) -> None:
        self._rq_retry_overflow += 1

    def retry_limit_exceeded(self) -> None:
        self._rq_retry_limit_exceeded += 1

    def pending_start(self) -> None:
        self._rq_pending_total += 1
        self._rq_pending_active += 1

    def pending_end(self) -> None:
        self._rq_pending_active -= 1

    def pending_overflow(self) -> None:
        self._rq_pending_overflow += 1

    def max_requests_reached(self) -> None:
        self._cx_max_requests += 1

    def max_duration_reached(self) -> None:
        self._cx_max_duration_reached += 1

    def overflow(self) -> None:
        self._cx_overflow += 1

    def idle_timeout(self) -> None:
        self._cx_idle_timeout += 1

    def header_timeout(self) -> None:
        self._rq_header_timeout += 1

    def stream_idle_timeout(self) -> None:
        self._rq_idle_timeout += 1

    def flag(self, flags: str, status: int) -> None:
        key = (flags, status)
        self._flags[key] = self._flags.get(key, 0) + 1

    def snapshot(self) -> dict:
        snap = {"name": self._name}
        for n in _COUNTER_NAMES:
            snap[n] = getattr(self, "_" + n)
        snap["codes"] = {code: n for code, n in enumerate(self._codes) if n}
        snap["flags"] = {f"{f}|{s}": n for (f, s), n in self._flags.items()}
        snap["latency"] = {"buckets": list(self._buckets), "sum_ms": self._sum_us / 1000.0,
                           "count": sum(self._buckets)}
        return snap

    def __repr__(self) -> str:
        return f"<ClusterStats {self._name!r} rq_total={self._rq_total} rq_active={self._rq_active}>"


def merge(snapshots: list) -> dict:
    """Sum snapshots of the same cluster taken in different worker processes.

    Args:
        snapshots: ``ClusterStats.snapshot()`` dicts, all with the same ``name`` (at least one).

    Returns:
        One snapshot dict in the same format; gauges (``rq_active``, ``cx_active``) are summed too.

    Raises:
        ValueError: ``snapshots`` is empty or the names differ.
    """
    if not snapshots:
        raise ValueError("merge() needs at least one snapshot")
    name = snapshots[0]["name"]
    out = {"name": name}
    for n in _COUNTER_NAMES:
        out[n] = 0
    codes: dict = {}
    flags: dict = {}
    buckets = [0] * N_BUCKETS
    sum_ms = 0.0
    count = 0
    for snap in snapshots:
        if snap["name"] != name:
            raise ValueError(f"merge() of different names: {name!r} and {snap['name']!r}")
        for n in _COUNTER_NAMES:
            out[n] += snap.get(n, 0)
        for code, n in snap.get("codes", {}).items():
            codes[code] = codes.get(code, 0) + n
        for key, n in snap.get("flags", {}).items():
            flags[key] = flags.get(key, 0) + n
        lat = snap.get("latency")
        if lat:
            for i, n in enumerate(lat["buckets"]):
                buckets[i] += n
            sum_ms += lat["sum_ms"]
            count += lat["count"]
    out["codes"] = dict(sorted(codes.items()))
    out["flags"] = flags
    out["latency"] = {"buckets": buckets, "sum_ms": sum_ms, "count": count}
    return out


def merge_all(snapshots: list) -> list:
    """Group snapshots by ``name`` (e.g. every worker's list concatenated) and ``merge`` each group.

    Returns:
        A list of merged snapshots, in the order each name was first seen.
    """
    groups: dict = {}
    for snap in snapshots:
        groups.setdefault(snap["name"], []).append(snap)
    return [merge(group) for group in groups.values()]
