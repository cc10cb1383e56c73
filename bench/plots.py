"""PNG charts of a run (matplotlib, Agg backend): requests/s with min-max error bars, latency."""
from __future__ import annotations

import os

PCTS = ("p50", "p75", "p90", "p99")


def write_plots(base: str, rows, samples: list[dict], latency: dict | None) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    names = list(dict.fromkeys(r.contender for r in rows))
    conns = sorted({r.connections for r in rows})
    # 1. requests/s per contender, grouped by connection count, min-max error bars
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for k, c in enumerate(conns):
            r = next((r for r in rows if r.contender == name and r.connections == c), None)
            if r is None or not r.rps:
                continue
            xs.append(k + (i - (len(names) - 1) / 2) * width)
            ys.append(r.rps_median)
            lo.append(r.rps_median - min(r.rps))
            hi.append(max(r.rps) - r.rps_median)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(conns)), [f"{c} conns" for c in conns])
    ax.set_ylabel("requests/s (median, min–max)")
    ax.set_title("Throughput: wrk 1 thread, 1 KiB responses, 1 worker each")
    ax.legend(fontsize=8, ncols=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = base + "-throughput.png"
    fig.savefig(path)
    plt.close(fig)
    out.append(path)

    # 2. latency percentiles per contender at 50 connections (wrk) and the latency scenario
    panels = []
    c50 = 50 if 50 in conns else (conns[len(conns) // 2] if conns else None)
    if c50 is not None:
        data = {}
        for name in names:
            good = [s for s in samples if s["contender"] == name and s["connections"] == c50
                    and not s.get("warmup") and not s.get("error") and s.get("latency_ms")]
            if good:
                data[name] = [sorted(s["latency_ms"][p] for s in good)[len(good) // 2] for p in PCTS]
        panels.append((f"wrk closed loop, {c50} connections (saturation)", PCTS, data))
    if latency and "paths" in latency["result"]:
        data = {}
        for name, row in latency["result"]["paths"].items():
            if row.get("rounds"):
                data[name] = [row["p50"], row["p90"], row["p99"], row["p99.9"]]
        panels.append(("open loop 1,000 rps, 16 connections (Istio's method)",
                       ("p50", "p90", "p99", "p99.9"), data))
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), dpi=110,
                                 squeeze=False)
        for ax, (title, pcts, data) in zip(axes[0], panels):
            width = 0.8 / max(1, len(data))
            for i, (name, vals) in enumerate(data.items()):
                ax.bar([k + (i - (len(data) - 1) / 2) * width for k in range(len(pcts))], vals,
                       width, label=name)
            ax.set_xticks(range(len(pcts)), pcts)
            ax.set_ylabel("latency ms (median over rounds)")
            ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = base + "-latency.png"
        fig.savefig(path)
        plt.close(fig)
        out.append(path)
    return [os.path.abspath(p) for p in out]
