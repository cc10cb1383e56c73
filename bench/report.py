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

    def __str__(self) -> str:
        return f"{self.status} {self.text}"


def check_targets(rows: list[Row], contenders: list[str], connections: list[int],
                  min_nginx_ratio: float, min_py_speedup: float, max_rss_mb: float,
                  samples: Optional[list[dict]] = None) -> list[Check]:
    """The targets: meshproxy >= min_nginx_ratio x nginx, >= min_py_speedup x meshproxy-py,
    RSS < max_rss_mb. Checked at every connection count measured."""
    out: list[Check] = []

    def compare(label: str, other: str, minimum: float, conns: int) -> None:
        what = f"meshproxy >= {minimum:g}x {other} requests/s at {conns} connections"
        if "meshproxy" not in contenders or other not in contenders:
            out.append(Check("SKIP", f"{what}: not both selected"))
            return
        a, b = _find(rows, "meshproxy", conns), _find(rows, other, conns)
        if a is None or not a.rps:
            out.append(Check("FAIL", f"{what}: meshproxy has no result"
                                     f" ({a.failure if a else 'not run'})"[:300]))
            return
        if b is None or not b.rps:
            out.append(Check("SKIP" if other == "nginx" else "FAIL",
                             f"{what}: {other} has no result ({b.failure if b else 'not run'})"[:300]))
            return
        ratio = a.rps_median / b.rps_median
        status = "PASS" if ratio >= minimum else "FAIL"
        paired = paired_ratio(samples or [], "meshproxy", other, conns)
        extra = f"; paired per-round ratio {paired:.2f}x" if paired is not None else ""
        out.append(Check(status, f"{what}: {ratio:.2f}x ({a.rps_median:,.0f} vs "
                                 f"{b.rps_median:,.0f}{extra}) [{label}]"))

    for conns in connections:
        compare("nginx ratio", "nginx", min_nginx_ratio, conns)
        compare("compiled vs pure twins", "meshproxy-py", min_py_speedup, conns)

    what = f"meshproxy RSS < {max_rss_mb:g} MB (peak over all runs, process tree)"
    if "meshproxy" not in contenders:
        out.append(Check("SKIP", f"{what}: not selected"))
    else:
        peaks = [r.rss_peak_mb for r in rows if r.contender == "meshproxy" and r.rss_peak_mb]
        if not peaks:
            out.append(Check("FAIL", f"{what}: no measurement"))
        else:
            peak = max(peaks)
            out.append(Check("PASS" if peak < max_rss_mb else "FAIL", f"{what}: {peak:.1f} MB"))
    return out
