#!/usr/bin/env python3
"""Profile meshproxy under the throughput scenario (wrk, 50 connections, 1 KiB) and write flame graphs.

    python bench/profiler.py [--seconds 15] [--connections 50] [--no-perf] [--no-pyspy]

1. **py-spy** (PyPI, installed into the venv if missing) samples the sidecar's Python frames, with
   ``--native`` (C/Cython frames too) when that works, and writes its own SVG flame graph.
2. **perf** (``perf record -e cpu-clock -g``, when available) samples native frames, Cython's
   compiled functions and the kernel; ``perf script`` output is folded into stacks by
   :func:`collapse_perf` here and rendered by :func:`flamegraph_svg` (a minimal SVG writer).

Outputs under ``bench/results/``: ``<stamp>-<commit>-pyspy.svg``, ``-perf.folded``, ``-perf.svg``.
Everything started (origin, sidecar, wrk, profilers) is stopped on exit.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from contenders import SRC, Meshproxy, StartError  # noqa: E402
from origin import Origin, ensure_python, ensure_tools, which  # noqa: E402


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ perf script -> folded

_FRAME = re.compile(r"^\s*([0-9a-f]+)\s+(.+?)(?:\s+\((.*)\))?$")


def collapse_perf(lines) -> collections.Counter:
    """Fold ``perf script`` output (one block per sample: a header line, then one frame per line,
    leaf first, then a blank line) into ``Counter({"root;...;leaf": samples})``."""
    stacks: collections.Counter = collections.Counter()
    comm = None
    frames: list[str] = []

    def flush():
        if comm is not None:
            stacks[";".join([comm] + frames[::-1])] += 1

    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            flush()
            comm, frames = None, []
            continue
        if comm is None:
            comm = line.split()[0] if line.split() else "?"
            continue
        m = _FRAME.match(line)
        if not m:
            continue
        sym, dso = m.group(2), m.group(3) or ""
        sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
        if sym == "[unknown]":
            sym = f"[{os.path.basename(dso)}]" if dso else "[unknown]"
        frames.append(sym.replace(";", ":"))
    flush()
    return stacks


# ------------------------------------------------------------------------ folded -> SVG

def flamegraph_svg(stacks: collections.Counter, title: str, width: int = 1200) -> str:
    """A minimal flame graph (root at the bottom) as SVG, with hover titles."""
    root: dict = {"n": 0, "kids": {}}
    for stack, count in stacks.items():
        node = root
        node["n"] += count
        for frame in stack.split(";"):
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += count
    total = root["n"] or 1
    row_h, pad = 16, 30

    def depth(node):
        return 1 + max((depth(k) for k in node["kids"].values()), default=0)

    levels = depth(root)
    height = levels * row_h + pad + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<rect width="100%" height="100%" fill="#fdfdf5"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">'
           f'{html.escape(title)} ({total} samples)</text>']
    scale = (width - 20) / total

    def draw(name, node, x, level):
        w = node["n"] * scale
        if w < 0.3:
            return
        y = height - (level + 1) * row_h - 5
        h = zlib.crc32(name.encode()) & 0xFFFF
        color = f"rgb({205 + h % 50},{(h >> 4) % 180 + 40},{(h >> 8) % 50})"
        label = f"{name} ({node['n']} samples, {100.0 * node['n'] / total:.1f}%)"
        out.append(f'<g><title>{html.escape(label)}</title><rect x="{x:.1f}" y="{y}" '
                   f'width="{w:.1f}" height="{row_h - 1}" fill="{color}" rx="2"/>')
        if w > 30:
            chars = int(w / 7)
            text = name if len(name) <= chars else name[:max(0, chars - 2)] + ".."
            out.append(f'<text x="{x + 3:.1f}" y="{y + row_h - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for kname, kid in sorted(node["kids"].items()):
            draw(kname, kid, cx, level + 1)
            cx += kid["n"] * scale

    cx = 10.0
    for kname, kid in sorted(root["kids"].items()):
        draw(kname, kid, cx, 0)
        cx += kid["n"] * scale
    out.append("</svg>")
    return "\n".join(out)


# ------------------------------------------------------------------------ the run

def wrk_for(wrk: str, port: int, host: str, conns: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([wrk, "-t1", f"-c{conns}", f"-d{int(seconds)}s", "-H", f"Host: {host}",
                             f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop_proc(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--no-perf", action="store_true")
    ap.add_argument("--no-pyspy", action="store_true")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    tools = ensure_tools(["wrk", "nginx"], log=log)
    pyspy = None
    if not a.no_pyspy:
        venv_bin = os.path.dirname(sys.executable)
        cand = os.path.join(venv_bin, "py-spy")
        if not os.access(cand, os.X_OK):
            ensure_python(["py_spy"], log=log)
        pyspy = cand if os.access(cand, os.X_OK) else shutil.which("py-spy")
        if not pyspy:
            log("# py-spy unavailable; skipping the Python profile")
    perf = None if a.no_perf else which("perf")
    if not a.no_perf and perf is None:
        log("# perf not found (apt-get install linux-perf); skipping the native profile")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=SRC).stdout.strip() or "nogit"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    os.makedirs(a.results_dir, exist_ok=True)
    base = os.path.join(a.results_dir, f"{stamp}-{commit}")
    tmp = tempfile.mkdtemp(prefix="meshproxy-profile-")
    origin = Origin(tools["nginx"], tmp)
    mp = Meshproxy(tmp, tools)
    wrk = prof = None
    written = []
    try:
        origin.start()
        mp.start(origin.port)
        log(f"# meshproxy pid {mp.pid} compiled={mp.info.get('compiled')}; warming up")
        w = wrk_for(tools["wrk"], mp.port, mp.host, a.connections, 2)
        w.communicate(timeout=30)
        if pyspy:
            out = base + "-pyspy.svg"
            wrk = wrk_for(tools["wrk"], mp.port, mp.host, a.connections, a.seconds + 2)
            # --native (Cython/C frames) needs py-spy to pause the process per sample; if that
            # fails, sample Python frames only without pausing it (--nonblocking).
            for native in (["--native"], ["--nonblocking"]):
                cmd = [pyspy, "record", "--pid", str(mp.pid), "--duration", str(int(a.seconds)),
                       "--rate", "500", "--format", "flamegraph", "--output", out] + native
                prof = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
                text, _ = prof.communicate(timeout=a.seconds + 60)
                if prof.returncode == 0 and os.path.exists(out):
                    written.append(out)
                    log(f"# py-spy{' --native' if native else ''}: {out}")
                    break
                log(f"# py-spy {' '.join(native)} failed: {text.strip()[-300:]}")
            stop_proc(wrk)
            wrk = None
        if perf:
            data = os.path.join(tmp, "perf.data")
            wrk = wrk_for(tools["wrk"], mp.port, mp.host, a.connections, a.seconds + 2)
            prof = subprocess.Popen([perf, "record", "-e", "cpu-clock", "-F", "999", "-g",
                                     "-p", str(mp.pid), "-o", data, "--", "sleep",
                                     str(int(a.seconds))], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            text, _ = prof.communicate(timeout=a.seconds + 60)
            stop_proc(wrk)
            wrk = None
            if prof.returncode != 0 or not os.path.exists(data):
                log(f"# perf record failed: {text.strip()[-300:]}")
            else:
                script = subprocess.run([perf, "script", "-i", data], capture_output=True,
                                        text=True, timeout=300, errors="replace")
                stacks = collapse_perf(script.stdout.splitlines())
                folded = base + "-perf.folded"
                with open(folded, "w") as f:
                    for stack, n in stacks.most_common():
                        f.write(f"{stack} {n}\n")
                svg = base + "-perf.svg"
                with open(svg, "w") as f:
                    f.write(flamegraph_svg(stacks, f"meshproxy perf cpu-clock, wrk -c{a.connections}, "
                                                   f"commit {commit}"))
                written += [folded, svg]
                log(f"# perf: {svg} ({sum(stacks.values())} samples)")
                top = collections.Counter()
                for stack, n in stacks.items():
                    top[stack.rsplit(";", 1)[-1]] += n
                total = sum(top.values()) or 1
                log("# hottest leaf frames (perf):")
                for name, n in top.most_common(15):
                    log(f"  {100.0 * n / total:5.1f}%  {name}")
    except (StartError, subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        log(f"# profile aborted: {e}")
        return 1
    finally:
        stop_proc(wrk)
        stop_proc(prof)
        mp.stop()
        origin.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for p in written:
        print(p)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
