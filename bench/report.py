"""Aggregating raw samples into the results table, and checking the performance targets."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Row:
    contender: str
    connections: int
    failure: Optional[str] = None
    rounds: int = 0
    rps: list[float] = field(default_factory=list)
    p50_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    cpu_us: Optional[float] = None
    cpu_user_us: Optional[float] = None
    cpu_sys_us: Optional[float] = None
    rss_peak_mb: Optional[float] = None
    rss_after_mb: Optional[float] = None
    errors: list[str] = field(default_factory=list)

    @property
    def rps_median(self) -> Optional[float]:
        return statistics.median(self.rps) if self.rps else None


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(contenders: list[str], connections: list[int], samples: list[dict],
              failures: dict[str, str]) -> list[Row]:
    """One row per (contender, connections) from the measured (non-warm-up) samples."""
    rows = []
    for conns in connections:
        for name in contenders:
            row = Row(name, conns)
            if name in failures and not any(
                    s["contender"] == name and s["connections"] == conns for s in samples):
                row.failure = failures[name]
                rows.append(row)
                continue
            mine = [s for s in samples if s["contender"] == name and s["connections"] == conns
                    and not s.get("warmup")]
            good = [s for s in mine if not s.get("error")]
            row.errors = [s["error"] for s in mine if s.get("error")]
            row.rounds = len(good)
            if not good:
                row.failure = (row.errors[-1] if row.errors else failures.get(name, "no samples"))
                rows.append(row)
                continue
            row.rps = [s["rps"] for s in good]
            row.p50_ms = _median(s["latency_ms"].get("p50") for s in good)
            row.p99_ms = _median(s["latency_ms"].get("p99") for s in good)
            row.cpu_us = _median(s.get("cpu", {}).get("us_per_req") for s in good)
            row.cpu_user_us = _median(s.get("cpu", {}).get("user_us_per_req") for s in good)
            row.cpu_sys_us = _median(s.get("cpu", {}).get("sys_us_per_req") for s in good)
            peaks = [s.get("rss_peak_mb") for s in good if s.get("rss_peak_mb") is not None]
            row.rss_peak_mb = max(peaks) if peaks else None
            afters = [s.get("rss_after_mb") for s in good if s.get("rss_after_mb") is not None]
            row.rss_after_mb = afters[-1] if afters else None
            rows.append(row)
    return rows


def paired_ratio(samples: list[dict], a: str, b: str, conns: int) -> Optional[float]:
    """Median over rounds of rps(a, round) / rps(b, round): interleaved neighbours share the
    machine's mood of the moment, so this is steadier than a ratio of medians on a noisy box."""
    def by_round(name):
        return {s["round"]: s["rps"] for s in samples
                if s["contender"] == name and s["connections"] == conns and not s.get("warmup")
                and not s.get("error") and s.get("rps")}
    ra, rb = by_round(a), by_round(b)
    ratios = [ra[r] / rb[r] for r in ra if r in rb]
    return statistics.median(ratios) if ratios else None


def _find(rows: list[Row], name: str, conns: int) -> Optional[Row]:
    for r in rows:
        if r.contender == name and r.connections == conns:
            return r
    return None


def _ratio(row: Row, ref: Optional[Row]) -> str:
    if ref is None or not ref.rps or not row.rps:
        return "—"
    return f"{row.rps_median / ref.rps_median:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row]) -> str:
    head = ("| contender | conns | requests/s median (min–max) | p50 ms | p99 ms | ÷ direct "
            "| ÷ nginx | RSS MB peak / after | CPU µs/req (user+sys) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if r.failure:
            lines.append(f"| {r.contender} | {r.connections} | **{_cell(r.failure)[:400]}** "
                         "| — | — | — | — | — | — |")
            continue
        rps = f"{r.rps_median:,.0f} ({min(r.rps):,.0f}–{max(r.rps):,.0f})"
        if r.errors:
            rps += f" [{len(r.errors)} bad round(s) dropped]"
        direct = _find(rows, "direct", r.connections)
        nginx = _find(rows, "nginx", r.connections)
        rss = ("—" if r.rss_peak_mb is None
               else f"{r.rss_peak_mb:.1f} / {r.rss_after_mb:.1f}")
        cpu = ("—" if r.cpu_us is None
               else f"{r.cpu_us:.1f} ({r.cpu_user_us:.1f}+{r.cpu_sys_us:.1f})")
        lines.append(f"| {r.contender} | {r.connections} | {rps} | {r.p50_ms:.3f} | {r.p99_ms:.3f} "
                     f"| {_ratio(r, direct)} | {_ratio(r, nginx)} | {rss} | {cpu} |")
    return "\n".join(lines)


@dataclass
class Check:
    status: str  # PASS, FAIL or SKIP
    text: str
    #: a CI gate (``--check`` fails on it) rather than a reported target
    gate: bool = False

    def __str__(self) -> str:
        return f"{self.status} {'[CI gate] ' if self.gate else ''}{self.text}"


def percentile_median(samples: list[dict], name: str, conns: int, key: str) -> Optional[float]:
    return _median(s["latency_ms"].get(key) for s in samples
                   if s["contender"] == name and s["connections"] == conns
                   and not s.get("warmup") and not s.get("error") and s.get("latency_ms"))


def _ratio_check(rows, samples, a: str, b: str, conns: int, minimum: float, what: str,
                 gate: bool) -> Check:
    """a >= minimum x b in requests/s. Both the ratio of medians and the median of per-round
    ratios are shown; a gate FAILs only when both are below (one disturbed round on a noisy box
    must not fail CI), a target FAILs when the ratio of medians is below."""
    ra, rb = _find(rows, a, conns), _find(rows, b, conns)
    if ra is None or not ra.rps:
        return Check("FAIL", f"{what}: {a} has no result ({ra.failure if ra else 'not run'})"[:300],
                     gate)
    if rb is None or not rb.rps:
        return Check("SKIP", f"{what}: {b} has no result ({rb.failure if rb else 'not run'})"[:300],
                     gate)
    ratio = ra.rps_median / rb.rps_median
    paired = paired_ratio(samples, a, b, conns)
    # CPU per request is the steadier measure of the same speed on a shared box (it does not
    # depend on how much of the machine the other tenants left us): a gate also passes when
    # ``a`` spends at most 1/minimum of ``b``'s CPU per request.
    cpu = (rb.cpu_us / ra.cpu_us) if (ra.cpu_us and rb.cpu_us) else None
    ok = ratio >= minimum or (gate and paired is not None and paired >= minimum) \
        or (gate and cpu is not None and cpu >= minimum)
    extra = f"; paired per-round {paired:.2f}x" if paired is not None else ""
    if cpu is not None:
        extra += f"; CPU per request {cpu:.2f}x"
    return Check("PASS" if ok else "FAIL",
                 f"{what}: {ratio:.2f}x ({ra.rps_median:,.0f} vs {rb.rps_median:,.0f}{extra})", gate)


def check_targets(rows: list[Row], contenders: list[str], connections: list[int],
                  samples: list[dict], conns: int = 50, *, nginx_ratio: float = 1.0,
                  aiohttp_ratio: float = 5.0, py_speedup: float = 2.0, max_rss_mb: float = 30.0,
                  gate_py_speedup: float = 2.0, gate_nginx_ratio: float = 0.5) -> list[Check]:
    """The issue's targets at ``conns`` connections (reported, PASS/FAIL) and the CI gates
    (ratios judged within the run; ``--check`` exits 1 only on a gate FAIL)."""
    out: list[Check] = []
    if conns not in connections:
        return [Check("SKIP", f"targets are defined at {conns} connections, which was not measured")]
    have = set(contenders)

    def ratio(b, minimum, what, gate=False):
        if "meshproxy" not in have or b not in have:
            out.append(Check("SKIP", f"{what}: not both selected", gate))
        else:
            out.append(_ratio_check(rows, samples, "meshproxy", b, conns, minimum, what, gate))

    ratio("nginx", nginx_ratio, f"target: meshproxy >= {nginx_ratio:g}x nginx requests/s at {conns} conns")
    ratio("aiohttp", aiohttp_ratio, f"target: meshproxy >= {aiohttp_ratio:g}x aiohttp proxy requests/s")
    ratio("meshproxy-py", py_speedup, f"target: compiled >= {py_speedup:g}x pure-Python twin requests/s")
    # p99 no worse than nginx's (wrk, closed loop, same connections)
    what = f"target: meshproxy p99 <= nginx p99 at {conns} conns (wrk)"
    a = percentile_median(samples, "meshproxy", conns, "p99")
    b = percentile_median(samples, "nginx", conns, "p99")
    if a is None or b is None:
        out.append(Check("SKIP", f"{what}: no result for both"))
    else:
        out.append(Check("PASS" if a <= b else "FAIL", f"{what}: {a:.3f} ms vs {b:.3f} ms"))
    what = f"target: meshproxy RSS < {max_rss_mb:g} MB per worker (peak at {conns} conns)"
    r = _find(rows, "meshproxy", conns)
    if r is None or r.rss_peak_mb is None:
        out.append(Check("SKIP", f"{what}: no measurement"))
    else:
        out.append(Check("PASS" if r.rss_peak_mb < max_rss_mb else "FAIL",
                         f"{what}: {r.rss_peak_mb:.1f} MB"))
    # CI gates
    mp = _find(rows, "meshproxy", conns)
    if "meshproxy" in have:
        ok = mp is not None and bool(mp.rps)
        out.append(Check("PASS" if ok else "FAIL",
                         "meshproxy started and served the throughput runs"
                         + ("" if ok else f": {mp.failure if mp else 'not run'}"[:400]), True))
    ratio("meshproxy-py", gate_py_speedup,
          f"compiled core >= {gate_py_speedup:g}x its pure-Python twin at {conns} conns", gate=True)
    ratio("nginx", gate_nginx_ratio, f"meshproxy >= {gate_nginx_ratio:g}x nginx at {conns} conns",
          gate=True)
    return out
