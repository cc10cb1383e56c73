#!/usr/bin/env python3
"""meshproxy load benchmark: throughput, Istio's latency method, cost, scaling, bulk, connections.

One run starts a one-worker nginx origin (fixed 1 KiB body), starts every contender in front of
it (direct, meshproxy, meshproxy-py, nginx, haproxy, aiohttp), warms each up, then runs wrk
(1 thread) against them interleaved, round after round, and reports medians with min-max; then the
other scenarios (see docs/benchmarks.md), the targets (PASS/FAIL) and the CI gates.

    python bench/run.py --full --update-docs # make bench: everything (about 10 minutes)
    python bench/run.py --ci --check         # make bench-ci: about 2 minutes, exit 1 on a gate FAIL
    python bench/run.py --connections 1,50,200 --contenders direct,nginx,haproxy --scenarios none

All traffic stays on 127.0.0.1. Everything started is stopped on exit, Ctrl-C or error.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from contenders import CONTENDERS, DEFAULT_ORDER, EXTRA, REPO, SRC, StartError  # noqa: E402
from measure import run_wrk  # noqa: E402
from origin import BODY_SIZE, Origin, ensure_python, ensure_tools  # noqa: E402
from procs import raise_nofile  # noqa: E402
from report import aggregate, check_targets, markdown_table  # noqa: E402
from scenarios import SCENARIOS, Ctx, cost_section  # noqa: E402

DOCS = os.path.join(REPO, "docs", "benchmarks.md")
#: what --ci measures: what the gates and targets need (haproxy is left to make bench)
CI_ORDER = ["direct", "meshproxy", "meshproxy-py", "nginx", "aiohttp"]
DOC_BEGIN = "<!-- bench:latest:begin -->"
DOC_END = "<!-- bench:latest:end -->"


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=float,
                   help="seconds of unmeasured wrk per contender and connection count (default 2)")
    p.add_argument("--connections", default="50", help="comma list of wrk -c values (default 50)")
    p.add_argument("--contenders", default=None,
                   help=f"comma list from {','.join(DEFAULT_ORDER + EXTRA)} (default: all but "
                        f"{','.join(EXTRA)}; --ci: {','.join(CI_ORDER)})")
    p.add_argument("--scenarios", default=None,
                   help=f"comma list from {','.join(SCENARIOS)} (or none) run after throughput "
                        "(default: all; --ci: latency,conns)")
    p.add_argument("--full", action="store_true",
                   help="make bench: connections 1,50,200, 5 s x 3 rounds, every scenario")
    p.add_argument("--ci", "--quick", dest="ci", action="store_true",
                   help="make bench-ci: 50 connections, 3 s x 3 rounds, 1 s warm-up, short latency "
                        "and connections scenarios (explicit options still win)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when a CI gate FAILs (ratios within this run; absolute numbers, "
                        "RSS and the targets never fail it)")
    p.add_argument("--rate", type=float, default=1000.0, help="latency scenario rate (default 1000)")
    p.add_argument("--lat-connections", type=int, default=16)
    p.add_argument("--lat-duration", type=float, help="seconds per latency run (default 10; CI 3)")
    p.add_argument("--lat-rounds", type=int, help="latency rounds (default 3; CI 2)")
    p.add_argument("--bulk-mib", type=int, default=1024, help="bulk transfer size (default 1024)")
    p.add_argument("--bulk-rounds", type=int, default=3)
    p.add_argument("--idle-connections", type=int, default=10000)
    p.add_argument("--no-plots", action="store_true", help="do not write the PNG charts")
    p.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/*")
    p.add_argument("--update-docs", action="store_true",
                   help="replace the latest-results section of docs/benchmarks.md")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    a = p.parse_args(argv)
    if a.ci:
        defaults = (3.0, 4, 1.0, 3.0, 2, "latency,conns")
    elif a.full:
        defaults = (5.0, 3, 1.5, 10.0, 3, ",".join(SCENARIOS))
        if a.connections == "50":
            a.connections = "1,50,200"
    else:
        defaults = (10.0, 3, 2.0, 10.0, 3, ",".join(SCENARIOS))
    for attr, value in zip(("duration", "rounds", "warmup", "lat_duration", "lat_rounds",
                            "scenarios"), defaults):
        if getattr(a, attr) is None:
            setattr(a, attr, value)
    a.scenarios = [x.strip() for x in a.scenarios.split(",") if x.strip() and x.strip() != "none"]
    bad = [x for x in a.scenarios if x not in SCENARIOS]
    if bad:
        p.error(f"unknown scenario(s) {bad}; choose from {list(SCENARIOS)}")
    try:
        a.connections = [int(c) for c in a.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections takes a comma list of integers")
    if not a.connections or min(a.connections) < 1:
        p.error("--connections must be >= 1")
    if a.contenders is None:
        a.contenders = ",".join(CI_ORDER if a.ci else DEFAULT_ORDER)
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    unknown = [c for c in a.contenders if c not in CONTENDERS]
    if unknown:
        p.error(f"unknown contender(s) {unknown}; choose from {DEFAULT_ORDER + EXTRA}")
    if a.duration < 1 or a.rounds < 1:
        p.error("--duration must be >= 1 and --rounds >= 1")
    return a


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_out(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=SRC)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def environment(tools: dict[str, str]) -> dict:
    commit = _cmd_out(["git", "rev-parse", "--short", "HEAD"]) or "nogit"
    dirty = bool(_cmd_out(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "commit": commit,
        "commit_full": _cmd_out(["git", "rev-parse", "HEAD"]),
        "source_tree": SRC,
        "dirty": dirty,
        "host": platform.node(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "wrk": _cmd_out([tools["wrk"], "-v"]).splitlines()[0] if "wrk" in tools else None,
        "nginx": _cmd_out([tools["nginx"], "-v"]) if "nginx" in tools else None,
        "haproxy": (_cmd_out([tools["haproxy"], "-v"]).splitlines() or [""])[0]
        if "haproxy" in tools else None,
    }


def measure_all(args, origin: Origin, live: list, tools: dict, samples: list) -> None:
    """Warm-up, then interleaved rounds: for each connection count, A B C .., A B C .., ..."""
    wrk = tools["wrk"]
    total = len(args.connections) * args.rounds * len(live)
    done = 0
    for conns in args.connections:
        for c in live:
            if not c.alive():
                continue
            if args.warmup > 0:
                s = run_wrk(wrk, c.port, c.host, conns, args.warmup, c.pid, origin.server.pid)
                s.update(contender=c.name, connections=conns, round=0, warmup=True)
                samples.append(s)
                if s.get("error"):
                    log(f"  warm-up {c.name} c={conns}: {s['error']}")
        for rnd in range(1, args.rounds + 1):
            for c in live:
                done += 1
                if not c.alive():
                    s = {"error": f"{c.name} died: {_short(c.tail())}"}
                else:
                    s = run_wrk(wrk, c.port, c.host, conns, args.duration, c.pid, origin.server.pid)
                s.update(contender=c.name, connections=conns, round=rnd, warmup=False)
                samples.append(s)
                if s.get("error"):
                    log(f"[{done}/{total}] {c.name:13s} c={conns:<4d} round {rnd}: ERROR {s['error']}")
                else:
                    cpu = s.get("cpu", {}).get("us_per_req")
                    log(f"[{done}/{total}] {c.name:13s} c={conns:<4d} round {rnd}: "
                        f"{s['rps']:>9,.0f} req/s  p50 {s['latency_ms'].get('p50', 0):.3f} ms  "
                        f"p99 {s['latency_ms'].get('p99', 0):.3f} ms"
                        + (f"  cpu {cpu:.1f} µs/req" if cpu is not None else "")
                        + (f"  rss {s['rss_peak_mb']:.1f} MB" if s.get("rss_peak_mb") else ""))
                time.sleep(0.3)


def _short(text: str) -> str:
    return " ".join(text.split())[-300:]


def update_docs(md_block: str) -> None:
    try:
        with open(DOCS) as f:
            doc = f.read()
    except OSError:
        log(f"# {DOCS} not found; not updated")
        return
    if DOC_BEGIN not in doc or DOC_END not in doc:
        log(f"# {DOCS} has no {DOC_BEGIN} / {DOC_END} markers; not updated")
        return
    pre, rest = doc.split(DOC_BEGIN, 1)
    _, post = rest.split(DOC_END, 1)
    with open(DOCS, "w") as f:
        f.write(pre + DOC_BEGIN + "\n" + md_block.strip() + "\n" + DOC_END + post)
    log(f"# updated {DOCS}")


def main(argv=None) -> int:
    args = parse_args(argv)
    # Ctrl-C, kill and hang-up all unwind through the finally that stops every server. SIGINT is
    # set explicitly: a background job of a non-interactive shell starts with it ignored.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # respect nohup
        signal.signal(signal.SIGHUP, _raise_interrupt)

    # wrk and nginx (the origin) are required; a contender's own tool that cannot be installed
    # makes that contender a failed row, not a failed run.
    tools = ensure_tools(["wrk", "nginx"], log=log)
    optional = sorted({t for n in args.contenders for t in CONTENDERS[n].needs} - set(tools))
    if optional:
        tools.update(ensure_tools(optional, log=log, required=False))
    pip_missing = ensure_python(sorted({m for n in args.contenders for m in CONTENDERS[n].pip}
                                       | (set() if args.no_plots else {"matplotlib"})), log=log)
    if pip_missing:
        log(f"# still missing after pip: {pip_missing} (their contenders fail / no plots)")
    nofile = raise_nofile(max(65536, args.idle_connections + 2000))
    log(f"# RLIMIT_NOFILE {nofile} (inherited by every server started)")

    started = dt.datetime.now(dt.timezone.utc)
    env = environment(tools)
    env["loadavg_before"] = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="meshproxy-bench-")
    origin = Origin(tools["nginx"], tmp)
    contenders = [CONTENDERS[n](tmp, tools) for n in args.contenders]
    live, failures, samples = [], {}, []
    scen: dict[str, dict] = {}
    ctx = None
    interrupted = False
    try:
        origin.start()
        log(f"# origin nginx on 127.0.0.1:{origin.port} ({BODY_SIZE}-byte body); temp dir {tmp}")
        for c in contenders:
            lacking = [t for t in c.needs if t not in tools]
            if lacking:
                failures[c.name] = f"{c.name}: {', '.join(lacking)} not installed"
                log(f"# {c.name:13s} FAILED: {failures[c.name]}")
                continue
            try:
                c.start(origin.port)
                live.append(c)
                log(f"# {c.name:13s} on 127.0.0.1:{c.port}"
                    + (f" (pid {c.pid})" if c.pid else "")
                    + (f" compiled={c.info.get('compiled')}" if "compiled" in c.info else ""))
            except StartError as e:
                failures[c.name] = str(e)
                log(f"# {c.name:13s} FAILED: {e}")
                c.stop()
        est = len(args.connections) * len(live) * (args.rounds * (args.duration + 0.5) + args.warmup + 0.5)
        log(f"# {len(live)} contender(s), connections {args.connections}, {args.rounds} round(s) "
            f"of {args.duration:g} s, warm-up {args.warmup:g} s: about {est / 60:.1f} min")
        measure_all(args, origin, live, tools, samples)
        ctx = Ctx(args, tools, tmp, origin, {c.name: c for c in live}, samples)
        for name in args.scenarios:
            log(f"# scenario {name}")
            t0 = time.monotonic()
            try:
                scen[name] = SCENARIOS[name](ctx)
            except Exception as e:  # a broken scenario is a row saying why, never a lost run
                import traceback
                traceback.print_exc()
                log(f"# scenario {name} FAILED: {e!r}")
                scen[name] = {"name": name, "result": {"failure": str(e)},
                              "md": f"### {name}\n\n**failed: {' '.join(str(e).split())[:500]}**"}
            finally:
                for thing in ctx.started:
                    thing.stop()
                ctx.started.clear()
            log(f"# scenario {name} took {time.monotonic() - t0:.0f} s")
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"# interrupted ({e}); stopping everything")
    except StartError as e:
        log(f"# {e}")
        failures["origin"] = str(e)
    finally:
        if ctx is not None:
            for thing in ctx.started:
                thing.stop()
        for c in contenders:
            c.stop()
        origin.stop()
        if args.keep_tmp:
            log(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if "origin" in failures:
        return 2

    env["loadavg_after"] = os.getloadavg()
    rows = aggregate(args.contenders, args.connections, samples, failures)
    table = markdown_table(rows)
    checks = check_targets(rows, args.contenders, args.connections, samples)
    if "meshproxy" in failures and args.check:
        log(f"# meshproxy could not start: {failures['meshproxy']}")
    cost = cost_section(ctx, scen.get("latency")) if ctx is not None else None
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    header = (f"Run {started.strftime('%Y-%m-%d %H:%M UTC')}, commit {env['commit']}"
              f"{' (dirty tree)' if env['dirty'] else ''}, {env['cpus']} CPUs, "
              f"wrk 1 thread, {args.rounds} round(s) x {args.duration:g} s per contender, "
              f"origin nginx 1 worker {BODY_SIZE}-byte body; load average before/after "
              f"{env['loadavg_before'][0]:.2f}/{env['loadavg_after'][0]:.2f}.")
    compiled = {c.name: c.info.get("compiled") for c in contenders if "compiled" in c.info}
    notes = []
    if compiled.get("meshproxy") not in (None, "True"):
        notes.append(f"Note: meshproxy.core.COMPILED was {compiled['meshproxy']} for the "
                     "`meshproxy` contender: it ran the pure-Python twins too.")
    sections = [scen[n]["md"] for n in args.scenarios if n in scen]
    if cost is not None and "latency" in scen:
        sections.insert(1, cost["md"])
    elif cost is not None:
        sections.append(cost["md"])
    md = "\n\n".join([header, "### Throughput (wrk, 1 thread, 1 KiB responses)", table] + notes
                      + sections)
    checks_md = "```\n" + "\n".join(map(str, checks)) + "\n```"
    md = md.replace("### Throughput", "### Targets and CI gates\n\n" + checks_md
                    + "\n\n### Throughput", 1)
    print(md)

    base = os.path.join(args.results_dir, f"{stamp}-{env['commit']}")
    if not args.no_plots and not interrupted and not args.no_save:
        os.makedirs(args.results_dir, exist_ok=True)
        try:
            from plots import write_plots
            pngs = write_plots(base, rows, samples, scen.get("latency"))
            if pngs:
                rel = [os.path.relpath(p, os.path.dirname(DOCS)) for p in pngs]
                md += "\n\n### Charts\n\n" + "\n".join(f"![{os.path.basename(p)}]({r})"
                                                           for p, r in zip(pngs, rel))
                log(f"# wrote {', '.join(pngs)}")
        except Exception as e:  # a chart must never cost the results
            log(f"# plots failed: {e!r}")

    if not args.no_save and not interrupted:  # a partial run is printed, not filed
        os.makedirs(args.results_dir, exist_ok=True)
        with open(base + ".md", "w") as f:
            f.write(f"# meshproxy load benchmark {stamp}\n\n{md}\n")
        with open(base + ".json", "w") as f:
            json.dump({
                "started": started.isoformat(), "args": {k: v for k, v in vars(args).items()},
                "environment": env, "interrupted": interrupted,
                "contenders": {c.name: {"description": c.description, "port": c.port,
                                        "host": c.host, "failure": failures.get(c.name),
                                        **c.info} for c in contenders},
                "rows": [{**r.__dict__, "rps_median": r.rps_median} for r in rows],
                "checks": [ch.__dict__ for ch in checks],
                "scenarios": {n: v["result"] for n, v in scen.items()},
                "cost": cost["result"] if cost else None,
                "samples": samples,
            }, f, indent=1, default=str)
        log(f"# wrote {base}.md and {base}.json")
    if args.update_docs and not interrupted:
        update_docs(md)
    if interrupted:
        return 130
    if args.check and any(ch.status == "FAIL" and ch.gate for ch in checks):
        log("# a CI gate FAILed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
