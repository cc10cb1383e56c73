"""Routing cost benchmark: 20 routes, a filtered route and a resilience policy vs the default route.

    .venv/bin/python bench/routes_bench.py [--duration 5] [--rounds 3] [--check]
    ROUTES_BENCH_NO_BREAKERS=1 .venv/bin/python bench/routes_bench.py ...   # no connectionPool limits

One nginx origin; four meshproxy sidecars (1 worker each) in front of it: one with no
VirtualService (the default route: the domain maps straight to the cluster), one with a
VirtualService of 20 routes (header and prefix matches alternating, the matching route last, so
every request walks all of them), a third with a one-route VirtualService that sets a request
and a response header (a route with a filter chain: the header-edit filter), and a fourth,
"resilience", with a one-route VirtualService (timeout 10s; retries: 3 attempts, perTryTimeout 5s,
retryOn 5xx,reset,connect-failure) and a DestinationRule (outlier detection: consecutive5xxErrors
5, interval 10s, baseEjectionTime 30s, maxEjectionPercent 50; connectionPool: connectTimeout 2s
and the circuit breakers maxConnections, http1MaxPendingRequests, http2MaxRequests 10000,
maxRetries 100). The limits are far above what 50 connections reach, so nothing fires: the row
is the cost of carrying the policy. ROUTES_BENCH_NO_BREAKERS=1 leaves out the four breaker fields
(for builds that refuse them as "not supported yet"; the row's label then says "no breakers").
wrk (1 thread, 50 connections) runs against each, interleaved round by round; the table shows
requests/s (median, min-max), CPU µs per request of each sidecar, and the ratio to the default
route. Targets: the 20-route sidecar keeps at least 90% of the single-route requests/s (issue 4);
the resilience sidecar keeps at least 95% (issue 9). --check exits 1 when either is missed.
Traffic stays on 127.0.0.1 and everything started is stopped on exit.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "origin.default.svc.cluster.local"

#: The connectionPool limits of the resilience sidecar (circuit breakers) are included unless
#: ``ROUTES_BENCH_NO_BREAKERS=1``: builds without them refuse the fields ("not supported yet").
BREAKERS = not os.environ.get("ROUTES_BENCH_NO_BREAKERS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process (it has no children doing the work)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


EDITS = f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: origin, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - name: edits
    headers:
      request: {{set: {{x-bench: "1"}}}}
      response: {{set: {{x-served: meshproxy}}}}
    route:
    - destination: {{host: {HOST}}}
"""


def resilience(breakers: bool = BREAKERS) -> str:
    """A route timeout, a retry policy, outlier detection and circuit breakers, none firing."""
    tcp = "{maxConnections: 10000, connectTimeout: 2s}" if breakers else "{connectTimeout: 2s}"
    http = ("\n      http: {http1MaxPendingRequests: 10000, http2MaxRequests: 10000, maxRetries: 100}"
            if breakers else "")
    return f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: origin, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - name: resilience
    timeout: 10s
    retries: {{attempts: 3, perTryTimeout: 5s, retryOn: "5xx,reset,connect-failure"}}
    route:
    - destination: {{host: {HOST}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: origin, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
    connectionPool:
      tcp: {tcp}{http}
"""


def config(origin: int, port: int, admin: int, routes: int, extra: str = "") -> str:
    """The sidecar's config: the origin, plus ``extra`` documents or else ``routes`` routes."""
    prom, status = free_port(), free_port()
    doc = f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: origin, namespace: default}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {origin}}}}}]
---
apiVersion: meshproxy.io/v1alpha1
kind: Bootstrap
metadata: {{name: bootstrap}}
spec:
  outbound: {{address: 127.0.0.1, port: {port}}}
  admin: {{address: 127.0.0.1, port: {admin}}}
  prometheusPort: {prom}
  statusPort: {status}
"""
    if extra:
        return doc + extra
    if routes <= 1:
        return doc
    http = []
    for i in range(routes - 1):
        if i % 2 == 0:
            match = f"- headers:\n        x-tenant: {{exact: tenant-{i}}}"
        else:
            match = f"- uri: {{prefix: /api/v{i}/}}"
        http.append(f"  - name: r{i}\n    match:\n    {match}\n"
                    f"    route:\n    - destination: {{host: {HOST}}}")
    http.append(f"  - name: last\n    match:\n    - uri: {{prefix: /}}\n"
                f"    route:\n    - destination: {{host: {HOST}}}")
    return doc + f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: origin, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
""" + "\n".join(http) + "\n"


def wait_ready(admin: int, proc: subprocess.Popen, timeout: float = 20,
               address: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"meshproxy exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{address}:{admin}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("meshproxy did not become ready")


def wrk(port: int, duration: float, address: str = "127.0.0.1") -> tuple[float, int]:
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{max(1, int(round(duration)))}s", "-H", f"Host: {HOST}",
         f"http://{address}:{port}/x"],
        capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not m or not total or "Non-2xx" in out:
        raise RuntimeError("wrk failed:\n" + out)
    return float(m.group(1)), int(total.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--routes", type=int, default=20)
    ap.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    ap.add_argument("--min-ratio", type=float, default=0.9, help="target of the 20-route sidecar")
    ap.add_argument("--min-resilience-ratio", type=float, default=0.95,
                    help="target of the resilience sidecar")
    args = ap.parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (apt-get install wrk nginx-light)", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="meshproxy-routes-"))
    procs: list[subprocess.Popen] = []
    try:
        origin = free_port()
        (tmp / "nginx.conf").write_text(
            f"worker_processes 1; daemon off; master_process off; pid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/nginx.err;\nevents {{ worker_connections 4096; }}\n"
            "http { access_log off; keepalive_requests 100000;\n"
            f"  server {{ listen 127.0.0.1:{origin}; location / {{ return 200 \"{'x' * 1023}\\n\"; }} }} }}\n")
        procs.append(subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                                      start_new_session=True))
        sidecars = {}
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("MESHPROXY_NO_EXTENSIONS", None)
        res_label = ("resilience: timeout, retries, outlier detection, breakers" if BREAKERS else
                     "resilience: timeout, retries, outlier detection (no breakers)")
        variants = (("default", "default route, no filters", 1, ""),
                    ("routes", f"{args.routes} routes, no filters", args.routes, ""),
                    ("edits", "1 route with header edits (a filter)", 1, EDITS),
                    ("resilience", res_label, 1, resilience()))
        for name, label, n, extra in variants:
            port, admin = free_port(), free_port()
            path = tmp / f"{name}.yaml"
            path.write_text(config(origin, port, admin, n, extra))
            p = subprocess.Popen([sys.executable, "-m", "meshproxy", "run", "--config", str(path),
                                  "--log-level", "warning"], env=env, start_new_session=True,
                                 stderr=open(tmp / f"{name}.log", "w"))
            procs.append(p)
            try:
                wait_ready(admin, p)
            except RuntimeError as e:  # say why (e.g. a field this build refuses), the log goes with tmp
                raise RuntimeError(f"{label}: {e}\n{(tmp / f'{name}.log').read_text()}") from None
            sidecars[label] = (port, p)
        samples = {label: [] for label in sidecars}
        cpu = {label: [] for label in sidecars}
        for label, (port, _) in sidecars.items():
            wrk(port, 1)  # warm-up
        for _ in range(args.rounds):
            for label, (port, p) in sidecars.items():
                c0 = cpu_seconds(p.pid)
                rps, total = wrk(port, args.duration)
                cpu[label].append((cpu_seconds(p.pid) - c0) / total * 1e6)
                samples[label].append(rps)
        print("| config | requests/s median (min-max) | sidecar CPU µs/request | ratio |")
        print("|---|---:|---:|---:|")
        labels = list(sidecars)
        base = statistics.median(samples[labels[0]])
        for label in labels:
            med = statistics.median(samples[label])
            print(f"| {label} | {med:,.0f} ({min(samples[label]):,.0f}-{max(samples[label]):,.0f})"
                  f" | {statistics.median(cpu[label]):.1f} | {med / base:.2f} |")
        ratio = statistics.median(samples[labels[1]]) / base
        paired = statistics.median(b / a for a, b in zip(samples[labels[0]], samples[labels[1]]))
        cpu_ratio = statistics.median(cpu[labels[0]]) / statistics.median(cpu[labels[1]])
        ok = ratio >= args.min_ratio
        print(f"\n{'PASS' if ok else 'FAIL'}: {args.routes}-route VirtualService keeps "
              f"{ratio:.2f}x of single-route requests/s (paired per round {paired:.2f}x; "
              f"CPU-per-request ratio {cpu_ratio:.2f}x; target >= {args.min_ratio})")
        f_ratio = statistics.median(samples[labels[2]]) / base
        f_cpu = statistics.median(cpu[labels[2]]) - statistics.median(cpu[labels[0]])
        print(f"INFO: a route with a header-edit filter keeps {f_ratio:.2f}x of the default "
              f"route's requests/s ({f_cpu:+.1f} µs CPU per request)")
        r_ratio = statistics.median(samples[labels[3]]) / base
        r_paired = statistics.median(b / a for a, b in zip(samples[labels[0]], samples[labels[3]]))
        r_cpu_ratio = statistics.median(cpu[labels[0]]) / statistics.median(cpu[labels[3]])
        r_ok = r_ratio >= args.min_resilience_ratio
        print(f"{'PASS' if r_ok else 'FAIL'}: a route with timeout, retries, outlier detection"
              f"{' and circuit breakers' if BREAKERS else ' (no circuit breakers)'} keeps "
              f"{r_ratio:.2f}x of the default route's requests/s (paired per round {r_paired:.2f}x; "
              f"CPU-per-request ratio {r_cpu_ratio:.2f}x; target >= {args.min_resilience_ratio})")
        return 0 if (ok and r_ok) or not args.check else 1
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
