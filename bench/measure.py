"""One measured wrk run against one contender: throughput, latency, CPU per request, RSS."""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import threading
import time

from procs import tree_cpu, tree_rss

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "wrk_report.lua")
MB = 1024 * 1024

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(stdout: str) -> dict:
    """Totals and latency (ms) from wrk's output: the Lua line if present, else the text."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            d = json.loads(line[len("WRK_JSON "):])
            lat = d["latency_us"]
            secs = d["duration_us"] / 1e6
            return {
                "requests": d["requests"],
                "duration_s": secs,
                "bytes": d["bytes"],
                "rps": d["requests"] / secs if secs else 0.0,
                "errors": d["errors"],
                "latency_ms": {k: v / 1000.0 for k, v in lat.items()},
                "parsed_from": "lua",
            }
    # Fallback: the human-readable --latency output.
    out: dict = {"parsed_from": "text", "errors": {}, "latency_ms": {}}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+\w+) read", stdout)
    if m:
        out["requests"] = int(m.group(1))
        out["duration_s"] = _to_ms(m.group(2) + m.group(3)) / 1000.0
    m = re.search(r"Requests/sec:\s+([\d.]+)", stdout)
    out["rps"] = float(m.group(1)) if m else 0.0
    for pct, val in re.findall(r"^\s+(50|75|90|99)(?:\.000)?%\s+(\S+)", stdout, re.M):
        out["latency_ms"]["p" + pct] = _to_ms(val)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", stdout)
    out["errors"]["status"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", stdout)
    if m:
        out["errors"].update(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    return out


def machine_cpu() -> dict:
    """Whole-machine CPU seconds from /proc/stat's first line: user, system, idle, steal..."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return {}
    tck = os.sysconf("SC_CLK_TCK")
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: int(v) / tck for n, v in zip(names, fields)}


def machine_delta(a: dict, b: dict, wall: float) -> dict:
    """Cores' worth of each /proc/stat category between two ``machine_cpu`` readings."""
    if not a or not b or wall <= 0:
        return {}
    d = {k: (b[k] - a[k]) / wall for k in a if k in b}
    d["busy"] = sum(v for k, v in d.items() if k not in ("idle", "iowait", "steal"))
    return d


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class RssSampler(threading.Thread):
    """Samples the RSS of a process tree every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.samples.append(tree_rss(self.pid))
            self._stop_evt.wait(self.interval)

    def stop(self) -> list[int]:
        self._stop_evt.set()
        self.join(timeout=2)
        return self.samples


def run_wrk(wrk: str, port: int, host: str | None, connections: int, duration: float,
            pid: int | None, origin_pid: int | None, timeout_s: float = 2.0) -> dict:
    """Run wrk once (1 thread) and measure the contender's process tree around it."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            f"--timeout={timeout_s:g}s", "-s", LUA]
    if host:
        argv += ["-H", f"Host: {host}"]
    argv.append(f"http://127.0.0.1:{port}/")

    sampler = RssSampler(pid) if pid else None
    wrk0, mach0 = children_cpu(), machine_cpu()
    cpu0 = tree_cpu(pid) if pid else None
    ocpu0 = tree_cpu(origin_pid) if origin_pid else None
    if sampler:
        sampler.start()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=duration + 30)
    except BaseException:
        # timeout, Ctrl-C or anything else: wrk must not outlive us
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if sampler:
            sampler.stop()
        raise
    wall = time.monotonic() - t0
    wrk1, mach1 = children_cpu(), machine_cpu()
    cpu1 = tree_cpu(pid) if pid else None
    ocpu1 = tree_cpu(origin_pid) if origin_pid else None
    rss_during = sampler.stop() if sampler else []

    sample: dict = {"argv": argv, "wall_s": wall, "exit_code": proc.returncode,
                    # wrk is the only child reaped during the run: its CPU is the rusage delta
                    "wrk_cores": (wrk1 - wrk0) / wall, "machine": machine_delta(mach0, mach1, wall)}
    if proc.returncode != 0:
        sample["error"] = f"wrk exited {proc.returncode}: {stderr.strip()[-300:]}"
        return sample
    try:
        sample.update(parse_wrk(stdout))
    except (ValueError, KeyError) as e:
        sample["error"] = f"could not parse wrk output: {e}"
        sample["stdout"] = stdout[-2000:]
        return sample
    reqs = sample.get("requests") or 0
    errs = sample.get("errors", {})
    bad = errs.get("status", 0) + errs.get("connect", 0) + errs.get("read", 0) + errs.get("timeout", 0)
    if reqs and bad > 0.01 * reqs:
        sample["error"] = f"{bad} errors in {reqs} requests: {errs}"
    elif not reqs:
        sample["error"] = f"no requests completed: {errs}"
    if pid and reqs:
        du, ds = cpu1.user_s - cpu0.user_s, cpu1.sys_s - cpu0.sys_s
        sample["cpu"] = {"user_s": du, "sys_s": ds,
                         "us_per_req": (du + ds) / reqs * 1e6,
                         "user_us_per_req": du / reqs * 1e6, "sys_us_per_req": ds / reqs * 1e6,
                         "cores": (du + ds) / wall}
    if origin_pid and reqs:
        du, ds = ocpu1.user_s - ocpu0.user_s, ocpu1.sys_s - ocpu0.sys_s
        sample["origin_cpu"] = {"user_s": du, "sys_s": ds, "us_per_req": (du + ds) / reqs * 1e6,
                                "cores": (du + ds) / wall}
    if pid:
        sample["rss_during_mb"] = [round(x / MB, 2) for x in rss_during]
        sample["rss_peak_mb"] = max(rss_during) / MB if rss_during else None
        sample["rss_after_mb"] = tree_rss(pid) / MB
    return sample
