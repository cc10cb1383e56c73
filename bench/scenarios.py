"""The scenarios after throughput: Istio's latency method, cost per load, scaling, bulk, connections.

Each ``run_*`` takes a :class:`Ctx` (options, tools, temp dir, the origin, the live throughput
contenders) and returns ``{"name", "result": <JSON-able>, "md": <Markdown section>}``. A scenario
starts its own servers through :class:`Ctx.keep` (stopped by the caller's ``finally`` even when
the scenario raises) and stops them itself when done.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from contenders import MESH_HOST, Meshproxy, MeshproxyC2, StartError, meshproxy_command
from measure import MB, RssSampler, run_wrk
from origin import Origin, render
from procs import Managed, free_ports, http_get, tree_cpu, tree_rss, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_ADDR, SERVER_ADDR = "127.0.0.2", "127.0.0.3"

# Istio 1.20 performance page: added latency of the client+server sidecar pair, 1000 rps, 1 KB,
# 16 connections, mTLS, HTTP/1.1 ("istio.io/v1.20/docs/ops/deployment/performance-and-scalability").
ISTIO_ADDED_MS = {"p90": 0.228, "p99": 0.298}
ISTIO_VCPU_PER_1000RPS = "0.2-0.5"
ISTIO_RSS_MB = "50-60 (Istio), 18-26 (Linkerd)"


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


@dataclass
class Ctx:
    args: object
    tools: dict
    tmp: str
    origin: Origin
    live: dict  # name -> started throughput contender
    samples: list  # throughput samples (for cost at saturation)
    started: list = field(default_factory=list)  # anything with .stop(), stopped by the caller

    def keep(self, thing):
        self.started.append(thing)
        return thing


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt(x, spec=".3f", none="—"):
    return none if x is None else format(x, spec)


# --------------------------------------------------------------------------------------------
# 2 + 3. Istio's latency method, and cost per load at 1,000 requests/s


class TwoSidecars:
    """Client sidecar (workload client, 127.0.0.2) -> server sidecar (workload server, 127.0.0.3,
    inbound) -> origin on 127.0.0.3. Each sidecar has its own free admin/prometheus/status ports."""

    def __init__(self, tmp: str, origin_port: int):
        self.tmp, self.origin_port = tmp, origin_port
        self.client = self.server = None
        self.out_port = 0

    def _start(self, name: str, addr: str, ports: list[int], conf: str, extra: list[str]) -> Managed:
        inbound, outbound, admin, prom, status = ports
        probe = Meshproxy(self.tmp, {})
        argv = meshproxy_command() + [
            "run", "--config", conf, "--workload", name, "--concurrency", "1",
            "--outbound", f"{addr}:{outbound}", "--admin", f"{addr}:{admin}",
            "--prometheus-port", str(prom), "--status-port", str(status),
            "--inbound-port", str(inbound)] + extra
        m = Managed(f"sidecar-{name}", argv, self.tmp, env=probe.env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and m.alive():
            try:
                if http_get(admin, "/ready", timeout=1, addr=addr)[0] == 200:
                    return m
            except OSError:
                pass
            time.sleep(0.1)
        raise StartError(f"{name} sidecar did not become ready: {' '.join(m.tail().split())[-400:]}")

    def start(self) -> None:
        cports = free_ports(5, CLIENT_ADDR)
        sports = free_ports(5, SERVER_ADDR)
        conf = render("twosidecars.yaml", os.path.join(self.tmp, "twosidecars.yaml"),
                      client_out=cports[1], client_in=cports[0], server_in=sports[0],
                      origin_port=self.origin_port)
        self.server = self._start("server", SERVER_ADDR, sports, conf, [])
        self.client = self._start("client", CLIENT_ADDR, cports, conf, [])
        self.out_port = cports[1]
        status, body = http_get(self.out_port, "/", host=MESH_HOST, addr=CLIENT_ADDR, timeout=5)
        if status != 200 or len(body) != 1024:
            raise StartError(f"request through the sidecar pair answered {status}, {len(body)} bytes")

    def stop(self) -> None:
        for m in (self.client, self.server):
            if m:
                m.stop()


def run_loadgen(addr: str, port: int, host: str, rate: float, conns: int, duration: float,
                warmup: float, pids: dict) -> dict:
    """One loadgen run in a subprocess; CPU and RSS of the processes in ``pids`` around it."""
    argv = [sys.executable, os.path.join(HERE, "loadgen.py"), "--addr", addr, "--port", str(port),
            "--host", host, "--rate", str(rate), "--connections", str(conns),
            "--duration", str(duration), "--warmup", str(warmup)]
    samplers = {n: RssSampler(p, 0.5) for n, p in pids.items()}
    cpu0 = {n: tree_cpu(p) for n, p in pids.items()}
    for s in samplers.values():
        s.start()
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 40,
                           stdin=subprocess.DEVNULL)
    finally:
        rss = {n: s.stop() for n, s in samplers.items()}
    wall = time.monotonic() - t0
    out: dict = {"argv": argv, "wall_s": wall}
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("LOADGEN_JSON ")), None)
    if r.returncode != 0 or line is None:
        out["error"] = f"loadgen exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
        return out
    out.update(json.loads(line.split(" ", 1)[1]))
    errs = out["errors"]["status"] + out["errors"]["io"]
    if errs > 0.01 * max(1, out["requests"]):
        out["error"] = f"{errs} errors in {out['requests']} requests"
    out["procs"] = {}
    for n, p in pids.items():
        c1 = tree_cpu(p)
        cores = (c1.total_s - cpu0[n].total_s) / wall
        out["procs"][n] = {"cores": cores, "vcpu_per_1000rps": cores / (rate / 1000.0),
                           "rss_peak_mb": max(rss[n]) / MB if rss[n] else None}
    return out


def run_latency(ctx: Ctx) -> dict:
    a = ctx.args
    pair = ctx.keep(TwoSidecars(ctx.tmp, ctx.origin.port))
    pair.start()
    log(f"# latency: client sidecar {CLIENT_ADDR}:{pair.out_port} (pid {pair.client.pid}) -> "
        f"server sidecar {SERVER_ADDR} (pid {pair.server.pid}) -> origin {SERVER_ADDR}:{ctx.origin.port}")
    # path name -> (addr, port, host, {label: pid})
    paths = {"direct": (SERVER_ADDR, ctx.origin.port, MESH_HOST, {})}
    for name in ("meshproxy", "nginx"):
        c = ctx.live.get(name)
        if c is not None and c.alive():
            paths[f"{name} (1 hop)"] = ("127.0.0.1", c.port, c.host or "localhost", {name: c.pid})
    paths["meshproxy pair"] = (CLIENT_ADDR, pair.out_port, MESH_HOST,
                               {"client sidecar": pair.client.pid, "server sidecar": pair.server.pid})
    runs: list[dict] = []
    for addr, port, host, pids in paths.values():  # unmeasured warm-up
        run_loadgen(addr, port, host, a.rate, a.lat_connections, 1.0, 0.5, {})
    total = a.lat_rounds * len(paths)
    k = 0
    for rnd in range(1, a.lat_rounds + 1):
        for name, (addr, port, host, pids) in paths.items():
            k += 1
            r = run_loadgen(addr, port, host, a.rate, a.lat_connections, a.lat_duration,
                            1.0, pids)
            r.update(path=name, round=rnd)
            runs.append(r)
            if r.get("error"):
                log(f"[lat {k}/{total}] {name:18s} round {rnd}: ERROR {r['error']}")
            else:
                L = r["latency_ms"]
                log(f"[lat {k}/{total}] {name:18s} round {rnd}: {r['rate_achieved']:,.0f} req/s "
                    f"p50 {L['p50']:.3f} p90 {L['p90']:.3f} p99 {L['p99']:.3f} ms "
                    f"(generator lateness p50 {r['lateness_ms']['p50']:.3f} ms)")
    pair.stop()

    rows = {}
    for name in paths:
        good = [r for r in runs if r["path"] == name and not r.get("error")]
        row = {"rounds": len(good), "errors": [r["error"] for r in runs
                                               if r["path"] == name and r.get("error")]}
        for p in ("p50", "p90", "p99", "p99.9"):
            vals = [r["latency_ms"][p] for r in good]
            row[p] = _med(vals)
            row[p + "_range"] = (min(vals), max(vals)) if vals else None
        row["service_p50"] = _med(r["service_ms"]["p50"] for r in good)
        row["lateness_p99"] = _med(r["lateness_ms"]["p99"] for r in good)
        # added latency: paired with the direct run of the same round, median over rounds
        for p in ("p50", "p90", "p99"):
            deltas = []
            for r in good:
                d = next((x for x in runs if x["path"] == "direct" and x["round"] == r["round"]
                          and not x.get("error")), None)
                if d is not None:
                    deltas.append(r["latency_ms"][p] - d["latency_ms"][p])
            row["added_" + p] = _med(deltas)
        row["procs"] = {}
        for label in paths[name][3]:
            row["procs"][label] = {
                "vcpu_per_1000rps": _med(r["procs"][label]["vcpu_per_1000rps"] for r in good),
                "rss_peak_mb": max((r["procs"][label]["rss_peak_mb"] or 0) for r in good)
                if good else None}
        rows[name] = row

    md = [f"### Latency, Istio's method ({a.rate:g} requests/s, {a.lat_connections} connections, "
          f"1 KiB responses, plaintext)",
          "",
          f"Open-loop generator (`bench/loadgen.py`), latency from each request's due time "
          f"(coordinated omission corrected); {a.lat_rounds} interleaved round(s) of "
          f"{a.lat_duration:g} s per path; medians over rounds, p99 range in brackets. "
          "*Added* = path minus `direct` in the same round, median over rounds.",
          "",
          "| path | p50 ms | p90 ms | p99 ms (min–max) | p99.9 ms | added p50 | added p90 | added p99 |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        if not row["rounds"]:
            md.append(f"| {name} | **{(row['errors'] or ['no result'])[-1][:200]}** | | | | | | |")
            continue
        rng = row["p99_range"]
        md.append(f"| {name} | {_fmt(row['p50'])} | {_fmt(row['p90'])} | {_fmt(row['p99'])} "
                  f"({rng[0]:.3f}–{rng[1]:.3f}) | {_fmt(row['p99.9'])} | "
                  + (" | ".join(_fmt(row['added_' + p], "+.3f") for p in ("p50", "p90", "p99"))
                     if name != "direct" else "— | — | —") + " |")
    md.append(f"| *Istio 1.20 sidecar pair (mTLS, published)* | | | | | | "
              f"*+{ISTIO_ADDED_MS['p90']:.3f}* | *+{ISTIO_ADDED_MS['p99']:.3f}* |")
    ok = [r for r in runs if not r.get("error")]
    gen90 = _med(r["lateness_ms"]["p90"] for r in ok)
    gen = _med(r["lateness_ms"]["p99"] for r in ok)
    md += ["", f"Generator lateness (send time minus due time), median over runs: p90 "
               f"{_fmt(gen90)} ms, p99 {_fmt(gen)} ms."]
    if gen90 is not None and gen90 > 0.05:
        md[-1] += (" **The generator itself often waited for a CPU (busy machine): p90 and p99 "
                   "measure the scheduler more than the proxies; trust the added p50 only.**")
    elif gen is not None and gen > 0.1:
        md[-1] += (" **At p99 the generator itself waited for a CPU (busy machine): the p99 and "
                   "p99.9 columns measure the scheduler more than the proxies; p50 and p90 hold.**")
    else:
        md[-1] += " Low enough for every column to describe the proxies."
    return {"name": "latency", "result": {"paths": rows, "runs": runs, "istio": ISTIO_ADDED_MS},
            "md": "\n".join(md)}


def cost_section(ctx: Ctx, latency: dict | None) -> dict:
    """3. Cost per load: vCPU per 1,000 requests/s and RSS, at 1,000 rps and at saturation."""
    rows = []
    if latency and "paths" in latency["result"]:
        pair = latency["result"]["paths"].get("meshproxy pair", {})
        for label, v in pair.get("procs", {}).items():
            rows.append((f"meshproxy {label}", f"{ctx.args.rate:g} rps (fixed)",
                         v["vcpu_per_1000rps"], v["rss_peak_mb"]))
        for name in ("meshproxy", "nginx"):
            v = latency["result"]["paths"].get(f"{name} (1 hop)", {}).get("procs", {}).get(name)
            if v:
                rows.append((name, f"{ctx.args.rate:g} rps (fixed)", v["vcpu_per_1000rps"],
                             v["rss_peak_mb"]))
    for name in ("meshproxy", "meshproxy-py", "nginx", "haproxy", "aiohttp"):
        good = [s for s in ctx.samples if s["contender"] == name and s["connections"] == 50
                and not s.get("warmup") and not s.get("error") and s.get("cpu")]
        if good:
            us = _med(s["cpu"]["us_per_req"] for s in good)
            rss = max((s.get("rss_peak_mb") or 0) for s in good)
            rps = _med(s["rps"] for s in good)
            rows.append((name, f"saturation, 50 conns ({rps:,.0f} rps)", us / 1000.0, rss))
    md = ["### Cost per load",
          "",
          "vCPU per 1,000 requests/s = CPU seconds the proxy's process tree used per 1,000 "
          "requests (Istio's unit). At the fixed rate it is measured during the latency runs; at "
          "saturation it is the throughput scenario's CPU µs per request / 1000.",
          "",
          "| proxy | load | vCPU per 1,000 rps | RSS MB (peak) |", "|---|---|---:|---:|"]
    for n, load, v, rss in rows:
        md.append(f"| {n} | {load} | {_fmt(v)} | {_fmt(rss, '.1f')} |")
    md.append(f"| *Istio sidecar (published)* | 1,000 rps | *{ISTIO_VCPU_PER_1000RPS}* | "
              f"*{ISTIO_RSS_MB}* |")
    return {"name": "cost", "result": [dict(zip(("proxy", "load", "vcpu_per_1000rps", "rss_mb"), r))
                                       for r in rows], "md": "\n".join(md)}


# --------------------------------------------------------------------------------------------
# 4. Scaling: --concurrency 2 vs 1 at saturation


def run_scaling(ctx: Ctx) -> dict:
    a = ctx.args
    one = ctx.live.get("meshproxy")
    if one is None or not one.alive():
        one = ctx.keep(Meshproxy(ctx.tmp, ctx.tools))
        one.start(ctx.origin.port)
    two = ctx.keep(MeshproxyC2(ctx.tmp, ctx.tools))
    two.start(ctx.origin.port)
    log(f"# scaling: meshproxy --concurrency 1 (pid {one.pid}) vs 2 (pid {two.pid})")
    samples = []
    for c in (one, two):
        run_wrk(ctx.tools["wrk"], c.port, c.host, 50, a.warmup, c.pid, ctx.origin.server.pid)
    for rnd in range(1, a.rounds + 1):
        for label, c in (("concurrency 1", one), ("concurrency 2", two)):
            s = run_wrk(ctx.tools["wrk"], c.port, c.host, 50, a.duration, c.pid,
                        ctx.origin.server.pid)
            s.update(label=label, round=rnd)
            samples.append(s)
            log(f"[scaling] {label} round {rnd}: "
                + (f"ERROR {s['error']}" if s.get("error") else
                   f"{s['rps']:,.0f} req/s, sidecar {s['cpu']['cores']:.2f} cores, wrk "
                   f"{s['wrk_cores']:.2f}, origin {s['origin_cpu']['cores']:.2f}, machine busy "
                   f"{s['machine'].get('busy', 0):.2f}"))
    two.stop()
    rows = {}
    for label in ("concurrency 1", "concurrency 2"):
        good = [s for s in samples if s["label"] == label and not s.get("error")]
        if not good:
            rows[label] = None
            continue
        rows[label] = {
            "rps": _med(s["rps"] for s in good), "rps_min": min(s["rps"] for s in good),
            "rps_max": max(s["rps"] for s in good),
            "sidecar_cores": _med(s["cpu"]["cores"] for s in good),
            "wrk_cores": _med(s["wrk_cores"] for s in good),
            "origin_cores": _med(s["origin_cpu"]["cores"] for s in good),
            "busy": _med(s["machine"].get("busy") for s in good),
            "steal": _med(s["machine"].get("steal") for s in good),
            "idle": _med(s["machine"].get("idle") for s in good),
            "us_per_req": _med(s["cpu"]["us_per_req"] for s in good),
            "rss_peak_mb": max(s.get("rss_peak_mb") or 0 for s in good),
        }
    md = ["### Scaling: `--concurrency 2` vs 1 (wrk 1 thread, 50 connections)",
          "",
          f"{a.rounds} interleaved round(s) of {a.duration:g} s. CPU in cores (seconds of CPU per "
          "second): the sidecar's process tree, wrk, the origin, and the whole machine from "
          "`/proc/stat` (busy = everything but idle and steal, neighbours included).",
          "",
          "| sidecar | requests/s (min–max) | sidecar cores | wrk cores | origin cores | machine busy | idle | steal | sidecar µs/req | RSS MB |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows.items():
        if r is None:
            md.append(f"| {label} | **no result** | | | | | | | | |")
            continue
        md.append(f"| {label} | {r['rps']:,.0f} ({r['rps_min']:,.0f}–{r['rps_max']:,.0f}) | "
                  f"{r['sidecar_cores']:.2f} | {r['wrk_cores']:.2f} | {r['origin_cores']:.2f} | "
                  f"{_fmt(r['busy'], '.2f')} | {_fmt(r['idle'], '.2f')} | {_fmt(r['steal'], '.2f')} | "
                  f"{r['us_per_req']:.1f} | {r['rss_peak_mb']:.1f} |")
    if rows.get("concurrency 1") and rows.get("concurrency 2"):
        r1, r2 = rows["concurrency 1"], rows["concurrency 2"]
        def others(r):
            return max(0.0, (r["busy"] or 0) - r["sidecar_cores"] - r["wrk_cores"]
                       - r["origin_cores"])
        md += ["", f"Speed-up {r2['rps'] / r1['rps']:.2f}x. Where the {os.cpu_count()} cores went "
                   f"with 2 workers: sidecar {r2['sidecar_cores']:.2f} (vs {r1['sidecar_cores']:.2f} "
                   f"with 1), wrk {r2['wrk_cores']:.2f}, origin {r2['origin_cores']:.2f}, everything "
                   f"else on the machine (other tenants, kernel threads) {others(r2):.2f} (vs "
                   f"{others(r1):.2f}), idle {_fmt(r2['idle'], '.2f')}. wrk, the origin and the "
                   "sidecar compete for the same two cores, so a second worker can at best take "
                   "what the others leave; this measures contention, not the sidecar's scaling "
                   "on a dedicated machine."]
    return {"name": "scaling", "result": {"rows": rows, "samples": samples}, "md": "\n".join(md)}


# --------------------------------------------------------------------------------------------
# 5. Bulk: 1 GiB upload and download, through the sidecar vs direct


def _recv_head(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError(f"closed before the response head ({buf[:100]!r})")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    raise OSError(f"no content-length in {head[:200]!r}")


def bulk_transfer(port: int, host: str, size: int, upload: bool, timeout: float = 120) -> float:
    """One streamed transfer of ``size`` bytes; returns seconds from first byte sent to last
    byte received. Never holds more than 1 MiB."""
    chunk = memoryview(b"\xa5" * (1 << 20))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.perf_counter()
        if upload:
            s.sendall(b"POST /sink HTTP/1.1\r\nHost: %s\r\ncontent-type: application/octet-stream"
                      b"\r\ncontent-length: %d\r\n\r\n" % (host.encode(), size))
            left = size
            while left:
                n = min(left, len(chunk))
                s.sendall(chunk[:n])
                left -= n
            head, rest = _recv_head(s)
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError(f"upload answered {head[:80]!r}")
            want = _content_length(head)
            while len(rest) < want:
                rest += s.recv(65536)
            if int(rest[:want]) != size:
                raise OSError(f"sink counted {rest[:want]!r} bytes, sent {size}")
        else:
            s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (size, host.encode()))
            head, rest = _recv_head(s)
            if not head.startswith(b"HTTP/1.1 200") or _content_length(head) != size:
                raise OSError(f"download answered {head[:120]!r}")
            got = len(rest)
            buf = bytearray(1 << 20)
            while got < size:
                n = s.recv_into(buf)
                if not n:
                    raise OSError(f"closed after {got} of {size} bytes")
                got += n
        return time.perf_counter() - t0


def run_bulk(ctx: Ctx) -> dict:
    a = ctx.args
    size = int(a.bulk_mib) << 20
    port = free_ports(1)[0]
    srv = ctx.keep(Managed("bulk-origin", [sys.executable, os.path.join(HERE, "bulk_server.py"),
                                           str(port)], ctx.tmp))
    if not wait_port(port, 15):
        raise StartError(f"bulk origin did not start: {srv.tail()}")
    mp = ctx.keep(Meshproxy(ctx.tmp, ctx.tools))
    mp.name = "meshproxy-bulk"
    mp.start(port)
    log(f"# bulk: {a.bulk_mib} MiB through meshproxy (pid {mp.pid}) vs direct, bulk origin pid {srv.pid}")
    paths = {"direct": (port, "localhost", None), "meshproxy": (mp.port, MESH_HOST, mp.pid)}
    runs = []
    for rnd in range(1, a.bulk_rounds + 1):
        for direction in ("download", "upload"):
            for name, (p, host, pid) in paths.items():
                sampler = RssSampler(pid, 0.1) if pid else None
                cpu0 = tree_cpu(pid) if pid else None
                if sampler:
                    sampler.start()
                r = {"path": name, "direction": direction, "round": rnd, "bytes": size}
                try:
                    secs = bulk_transfer(p, host, size, direction == "upload")
                    r.update(seconds=secs, mb_s=size / MB / secs)
                except OSError as e:
                    r["error"] = str(e)[:300]
                if sampler:
                    rss = sampler.stop()
                    r["rss_peak_mb"] = max(rss) / MB if rss else None
                    r["cpu_s"] = tree_cpu(pid).total_s - cpu0.total_s
                runs.append(r)
                log(f"[bulk] {direction:8s} {name:10s} round {rnd}: "
                    + (f"ERROR {r['error']}" if "error" in r else
                       f"{r['mb_s']:,.0f} MB/s" + (f", sidecar RSS peak {r['rss_peak_mb']:.1f} MB"
                                                   if r.get("rss_peak_mb") else "")))
    mp.stop()
    srv.stop()
    rows = []
    for direction in ("download", "upload"):
        for name in paths:
            good = [r for r in runs if r["path"] == name and r["direction"] == direction
                    and "error" not in r]
            bad = [r["error"] for r in runs if r["path"] == name and r["direction"] == direction
                   and "error" in r]
            rows.append({"direction": direction, "path": name,
                         "mb_s": _med(r["mb_s"] for r in good),
                         "min": min((r["mb_s"] for r in good), default=None),
                         "max": max((r["mb_s"] for r in good), default=None),
                         "rss_peak_mb": max((r.get("rss_peak_mb") or 0 for r in good), default=None),
                         "cpu_s_per_gib": _med(r["cpu_s"] / (size / (1 << 30)) for r in good
                                               if "cpu_s" in r),
                         "errors": bad})
    md = [f"### Bulk: {a.bulk_mib} MiB upload and download",
          "",
          "Origin `bench/bulk_server.py` (uvloop source/sink), client a Python socket streaming "
          f"1 MiB chunks; {a.bulk_rounds} round(s), median MB/s (MiB/s).",
          "",
          "| direction | path | MB/s (min–max) | ÷ direct | sidecar RSS peak MB | sidecar CPU s per GiB |",
          "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["mb_s"] is None:
            md.append(f"| {r['direction']} | {r['path']} | **{(r['errors'] or ['no result'])[-1]}** | | | |")
            continue
        d = next(x for x in rows if x["direction"] == r["direction"] and x["path"] == "direct")
        ratio = f"{r['mb_s'] / d['mb_s']:.2f}" if d["mb_s"] else "—"
        md.append(f"| {r['direction']} | {r['path']} | {r['mb_s']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f}) | "
                  f"{ratio} | {_fmt(r['rss_peak_mb'] if r['path'] != 'direct' else None, '.1f')} | "
                  f"{_fmt(r['cpu_s_per_gib'], '.2f')} |")
    return {"name": "bulk", "result": {"rows": rows, "runs": runs}, "md": "\n".join(md)}


# --------------------------------------------------------------------------------------------
# 6. Connections: RSS with 10,000 idle keep-alive downstream connections


async def _open_idle(port: int, host: str, n: int, per_src: int, conc: int = 200):
    """``n`` connections, each after one keep-alive request; returns (writers, failures)."""
    req = b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"
    sem = asyncio.Semaphore(conc)
    writers, fails = [], []

    async def one(i: int):
        src = f"127.0.0.{10 + i // per_src}"
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(src, 0)), 10)
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                await asyncio.wait_for(r.readexactly(_content_length(head)), 10)
                writers.append(w)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as e:
                fails.append(repr(e)[:120])
    await asyncio.gather(*(one(i) for i in range(n)))
    return writers, fails


def tree_fds(pid: int) -> int:
    from procs import process_tree
    n = 0
    for p in process_tree(pid):
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


def run_conns(ctx: Ctx) -> dict:
    import resource
    a = ctx.args
    n = a.idle_connections
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < n + 500:
        log(f"# conns: RLIMIT_NOFILE is {soft}; measuring {soft - 500} connections instead of {n}")
        n = max(100, soft - 500)
    targets = {}
    mp = ctx.keep(Meshproxy(ctx.tmp, ctx.tools))
    mp.name = "meshproxy-conns"
    mp.start(ctx.origin.port)  # inherits this process's raised RLIMIT_NOFILE
    targets["meshproxy"] = mp
    ng = ctx.live.get("nginx")
    if ng is not None and ng.alive():
        targets["nginx"] = ng
    rows = {}
    for name, c in targets.items():
        with open(f"/proc/{c.pid}/limits") as f:
            lim = next((ln.split()[3] for ln in f if ln.startswith("Max open files")), "?")
        run_wrk(ctx.tools["wrk"], c.port, c.host, 50, 1, c.pid, None)  # warm, as in service
        time.sleep(0.5)
        before = tree_rss(c.pid) / MB
        loop = asyncio.new_event_loop()
        t0 = time.monotonic()
        try:
            writers, fails = loop.run_until_complete(_open_idle(c.port, c.host or "localhost", n,
                                                                per_src=2000))
            opened = time.monotonic() - t0
            time.sleep(2)
            during = tree_rss(c.pid) / MB
            fds = tree_fds(c.pid)
            for w in writers:
                w.close()
            loop.run_until_complete(asyncio.sleep(0.2))
        finally:
            loop.close()
        time.sleep(2)
        after = tree_rss(c.pid) / MB
        rows[name] = {"connections": len(writers), "failed": len(fails), "fail_sample": fails[:3],
                      "rss_before_mb": before, "rss_with_mb": during, "rss_after_mb": after,
                      "kb_per_conn": (during - before) * 1024 / max(1, len(writers)),
                      "open_s": opened, "nofile_limit": lim, "proxy_fds_open": fds}
        log(f"[conns] {name}: {len(writers)} idle connections ({len(fails)} failed) in {opened:.1f} s:"
            f" RSS {before:.1f} -> {during:.1f} MB, {after:.1f} MB after closing; proxy fds {fds}")
    mp.stop()
    md = [f"### Connections: {n:,} idle keep-alive downstream connections",
          "",
          "Each connection makes one request, then stays open and idle; sources spread over "
          "127.0.0.10+ (2,000 per address). RSS of the proxy's process tree before (warm), "
          "with the connections open (2 s later) and 2 s after closing them.",
          "",
          "| proxy | open | failed | proxy fds while open | RSS before MB | with connections MB | KB per connection | after closing MB |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['connections']:,} | {r['failed']:,} | {r['proxy_fds_open']:,} | "
                  f"{r['rss_before_mb']:.1f} | "
                  f"{r['rss_with_mb']:.1f} | {r['kb_per_conn']:.1f} | {r['rss_after_mb']:.1f} |")
    return {"name": "conns", "result": rows, "md": "\n".join(md)}


SCENARIOS = {"latency": run_latency, "scaling": run_scaling, "bulk": run_bulk, "conns": run_conns}
