"""The demo (``make demo``, ``python -m demo``): a small mesh on loopback with live traffic through
a real sidecar. Development tooling: it lives in the source tree, not in the meshproxy package.

What runs (all on this host, no network, no root)::

    demo process (this one)            load generator + live screen, scrapes the sidecar's admin port
      |  HTTP/1.1 keep-alive, Host: <service>.default.svc.cluster.local
      v
    sidecar  python -m meshproxy run --config <tmp>/mesh.yaml   outbound 127.0.0.1:15001, admin :15000
      |  least request per service (Istio's default)
      v
    frontend 127.0.0.10   reviews v1/v2/v3 127.0.0.11-13   ratings 127.0.0.14   (port 9080 each)

Each demo service is a subprocess (``python -m demo --serve ...``): on uvloop, a routing backend
of the integration tests (``tests/integration/routing_backend.py``, keep-alive HTTP/1.1) answering
JSON as ``<service>-<version>`` after a per-instance delay, so latencies differ visibly. The load
generator is the benchmark's (``bench/loadgen.py``), on a thread of the demo process. Every child
runs in its own session (so Ctrl-C in the terminal reaches only the demo, which then stops
everything in order) and dies with the demo process on Linux (``PR_SET_PDEATHSIG``); the services
also exit when their stdin pipe closes.

``python -m demo --services-only [--config-out mesh.yaml]`` starts only the services and
writes the config, so the sidecar can be run by hand: ``meshproxy run --config mesh.yaml``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from array import array
from collections import deque
from typing import Optional

from bench import loadgen
from tests.integration import routing_backend

NAMESPACE = "default"
SUFFIX = f".{NAMESPACE}.svc.cluster.local"
SERVICE_PORT = 9080
APP_PORT = 9080
MARKER_PREFIX = "meshproxy-demo-"


class Instance:
    """One demo service process."""

    def __init__(self, service: str, version: str, address: str, profile: str):
        self.service = service
        self.version = version
        self.address = address
        self.profile = profile  # human-readable latency profile
        self.port = APP_PORT
        self.proc: Optional[subprocess.Popen] = None

    @property
    def name(self) -> str:
        return f"{self.service}-{self.version}"

    @property
    def host(self) -> str:
        return self.service + SUFFIX


# (service, version, address, latency profile shown on screen); delays are in _delay().
INSTANCES = [
    ("frontend", "v1", "127.0.0.10", "0.5-1.5 ms"),
    ("reviews", "v1", "127.0.0.11", "0.5-1.5 ms"),
    ("reviews", "v2", "127.0.0.12", "2-4 ms"),
    ("reviews", "v3", "127.0.0.13", "1 ms, 5% 20-50 ms"),
    ("ratings", "v1", "127.0.0.14", "2-5 ms"),
]
SERVICES = ["frontend", "reviews", "ratings"]
PATHS = {"frontend": "/productpage", "reviews": "/reviews/1", "ratings": "/ratings/1"}


def _delay(service: str, version: str) -> float:
    """Seconds to wait before answering one request."""
    if service == "ratings":
        return random.uniform(0.002, 0.005)
    if service == "reviews" and version == "v2":
        return random.uniform(0.002, 0.004)
    if service == "reviews" and version == "v3":
        return random.uniform(0.020, 0.050) if random.random() < 0.05 else 0.001
    return random.uniform(0.0005, 0.0015)


# --------------------------------------------------------------------------------------------
# Demo service: a routing backend of the integration tests (runs in a child process)
# --------------------------------------------------------------------------------------------

def _new_loop():
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()


def serve(service: str, version: str, address: str, port: int) -> int:
    """Run one demo service until SIGTERM/SIGINT or until stdin closes (the demo has gone): a
    routing backend (tests/integration/routing_backend.py) answering as ``<service>-<version>``
    (its ``X-Served-By``) after a delay drawn from the instance's latency profile."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()

    async def main():
        server = await routing_backend.serve(address, port, f"{service}-{version}",
                                             delay=lambda: _delay(service, version), log=False)
        instance = f"{address}:{server.sockets[0].getsockname()[1]}"
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sys.stdout.write(f"ready {instance}\n")
        sys.stdout.flush()

        def stdin_closed():
            try:
                if not os.read(0, 4096):
                    stop.set()
            except OSError:
                stop.set()
        try:
            loop.add_reader(0, stdin_closed)
        except (OSError, ValueError, NotImplementedError):
            pass  # stdin is not pollable: rely on signals
        await stop.wait()
        server.close()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return 0


# --------------------------------------------------------------------------------------------
# Processes, ports, config
# --------------------------------------------------------------------------------------------

def _port_free(address: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _pick_port(address: str, preferred: int, taken: set) -> int:
    if preferred not in taken and _port_free(address, preferred):
        taken.add(preferred)
        return preferred
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((address, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in taken:
            taken.add(port)
            return port
    raise OSError(f"no free port on {address}")


def _child_setup():  # pragma: no cover - runs in the child between fork and exec
    """New session (terminal Ctrl-C goes to the demo only); die with the demo on Linux."""
    os.setsid()
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (not Linux)
        pass


def _child_env() -> dict:
    """The environment, plus this meshproxy's directory on PYTHONPATH: the children import the
    same meshproxy as the demo even when it is not installed (run from a checkout)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _popen(args, **kw) -> subprocess.Popen:
    return subprocess.Popen(args, preexec_fn=_child_setup, close_fds=True, env=_child_env(), **kw)


def _stop_proc(proc: Optional[subprocess.Popen], timeout: float, sig=signal.SIGTERM) -> Optional[int]:
    """Signal a child, wait up to ``timeout``, then SIGKILL its whole process group."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proc)
    try:
        return proc.wait(5)
    except subprocess.TimeoutExpired:
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (it leads its own session). Only while the child is not
    yet reaped: its pid, hence its group id, cannot have been reused by then."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def render_config(instances, outbound: tuple, admin: tuple, prometheus_port: int,
                  status_port: int, inbound_port: int) -> str:
    docs = [f"""\
# meshproxy demo mesh, written by `make demo` / `python -m demo` (see docs/demo.md).
# Run a sidecar on it yourself: meshproxy run --config <this file>
# (the demo services must be running: python -m demo --services-only)
apiVersion: meshproxy.io/v1alpha1
kind: Bootstrap
metadata:
  name: bootstrap
spec:
  outbound: {{address: {outbound[0]}, port: {outbound[1]}}}
  admin: {{address: {admin[0]}, port: {admin[1]}}}
  inbound: {{port: {inbound_port}}}
  prometheusPort: {prometheus_port}
  statusPort: {status_port}
  concurrency: 1
  drainDuration: 2s
  accessLogFile: ""
  upstream:
    connectTimeout: 1s
    idleTimeout: 1m
"""]
    for inst in instances:
        docs.append(f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {inst.name}
  namespace: {NAMESPACE}
spec:
  address: {inst.address}
  ports:
    http: {inst.port}
  labels:
    app: {inst.service}
    version: {inst.version}
""")
    for svc in SERVICES:
        docs.append(f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {svc}
  namespace: {NAMESPACE}
spec:
  hosts: [{svc}{SUFFIX}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {SERVICE_PORT}, name: http, protocol: HTTP}}
  workloadSelector:
    labels: {{app: {svc}}}
""")
    return "---\n".join(docs)


def start_services(instances, workdir: str, marker: str) -> None:
    """Start every instance (ports already picked); wait until each says ``ready``."""
    for inst in instances:
        log = open(os.path.join(workdir, f"{inst.name}.log"), "wb")
        try:
            inst.proc = _popen([sys.executable, "-m", "demo", "--serve", inst.service,
                                inst.version, inst.address, str(inst.port), "--marker", marker],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        finally:
            log.close()
    for inst in instances:
        line = inst.proc.stdout.readline()  # the child prints "ready" once bound, or exits
        if not line.startswith(b"ready"):
            inst.proc.wait(5)
            with open(os.path.join(workdir, f"{inst.name}.log"), "rb") as f:
                err = f.read().decode(errors="replace").strip()
            raise RuntimeError(f"demo service {inst.name} on {inst.address}:{inst.port} did not "
                               f"start (exit {inst.proc.returncode}):\n{err}")


def stop_services(instances) -> None:
    for inst in instances:
        if inst.proc is not None and inst.proc.poll() is None:
            try:
                inst.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    for inst in instances:
        if inst.proc is not None:
            _stop_proc(inst.proc, 3)
            for f in (inst.proc.stdin, inst.proc.stdout):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass


# --------------------------------------------------------------------------------------------
# Client side: stats, load generator, admin scraping
# --------------------------------------------------------------------------------------------

def percentile(sorted_values, q: float) -> float:
    return loadgen.nearest_rank(sorted_values, q) if sorted_values else float("nan")


class Stats:
    MAX_SAMPLES = 1_000_000  # reservoir for the whole-run percentiles
    RECENT = 1000  # per-instance latencies kept for the endpoint table

    def __init__(self):
        self.total = 0
        self.errors = 0
        self.skipped = 0
        self.by_service = {s: {} for s in SERVICES}  # service -> {code: count}
        self.served_by = {}  # "reviews-v2" -> count (client's view, from X-Served-By)
        self.recent = {}  # "reviews-v2" -> deque of its last latencies (ms)
        self.samples = array("d")
        self.interval = []  # latencies (ms) of this interval
        self.interval_count = 0
        self.interval_errors = 0

    def record(self, service: str, code: str, latency_ms: float, served_by: Optional[str]):
        self.total += 1
        self.interval_count += 1
        codes = self.by_service[service]
        codes[code] = codes.get(code, 0) + 1
        if not code.startswith("2"):
            self.errors += 1
            self.interval_errors += 1
        if served_by:
            self.served_by[served_by] = self.served_by.get(served_by, 0) + 1
            r = self.recent.get(served_by)
            if r is None:
                r = self.recent[served_by] = deque(maxlen=self.RECENT)
            r.append(latency_ms)
        self.interval.append(latency_ms)
        if len(self.samples) < self.MAX_SAMPLES:
            self.samples.append(latency_ms)
        else:
            j = random.randrange(self.total)
            if j < self.MAX_SAMPLES:
                self.samples[j] = latency_ms

    def instance_latency(self, name: str):
        lat = sorted(self.recent.get(name, ()))
        return percentile(lat, 50), percentile(lat, 99)

    def take_interval(self):
        lat, n, e = sorted(self.interval), self.interval_count, self.interval_errors
        self.interval, self.interval_count, self.interval_errors = [], 0, 0
        return lat, n, e


class Load:
    """Open-loop load: bench/loadgen.py's generator (``OpenLoop``) on its own thread, ``rate``
    requests/s to the services in turn over a few keep-alive connections. Latency is measured from
    each request's due time, so queueing behind a slow response counts (no coordinated omission).
    The generator's thread only queues outcomes; ``collect()``, on the event loop's thread, records
    them in ``stats``."""

    TIMEOUT = 5.0
    GRACE = 2.0  # how long stop() waits for the requests in flight

    def __init__(self, address: str, port: int, rate: float, stats: Stats):
        self.stats = stats
        self.outcomes: deque = deque()
        requests = [loadgen.request(s + SUFFIX, PATHS[s], agent="meshproxy-demo") for s in SERVICES]
        self.gen = loadgen.OpenLoop(
            address, port, requests, rate, max(4, min(64, int(rate / 25) + 1)),
            lambda *outcome: self.outcomes.append(outcome), timeout=self.TIMEOUT,
            max_backlog=max(1000, int(rate * 2)))
        self.thread = threading.Thread(target=self.gen.run,
                                       kwargs={"drain": self.GRACE, "start_in": 0.0},
                                       name="demo-load", daemon=True)

    def start(self):
        self.thread.start()

    def collect(self):
        """Record the outcomes that came in since the last call."""
        while self.outcomes:
            i, due, _, done, head, error = self.outcomes.popleft()
            if error is None:
                code, served = _status_and_server(head)
            else:
                code, served = ("timeout" if error == loadgen.TIMEOUT else "ERR"), None
            self.stats.record(SERVICES[i % len(SERVICES)], code, (done - due) * 1000.0, served)
        self.stats.skipped = self.gen.skipped

    async def stop(self):
        """Stop sending, let in-flight requests finish (up to GRACE), record everything."""
        self.gen.stop()
        while self.thread.is_alive():
            await asyncio.sleep(0.001)
        self.collect()


def _status_and_server(head: bytes):
    """(status code, X-Served-By or None) of a response head; code "ERR" if it has none."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    code = parts[1] if len(parts) > 1 and parts[1].isdigit() else "ERR"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-served-by":
            return code, value.strip()
    return code, None


async def _read_response(reader: asyncio.StreamReader):
    """Returns (status, headers, body) of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                while chunk != b"\r\n":  # trailers
                    chunk = await reader.readuntil(b"\r\n")
                break
            body += chunk[:-2]
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return status, headers, body


async def http_get(address: str, port: int, path: str, timeout: float = 1.0):
    """One GET on a fresh connection; returns (status, body bytes)."""
    async def go():
        reader, writer = await asyncio.open_connection(address, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            status, _, body = await _read_response(reader)
            return status, body
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_istio_requests(text: str) -> dict:
    """``istio_requests_total{reporter="source"}`` summed by (service, code): {svc: {code: n}}."""
    out: dict = {}
    for line in text.splitlines():
        if not line.startswith("istio_requests_total{"):
            continue
        labels_s, _, value = line.rpartition("} ")
        labels = dict(_LABEL.findall(labels_s))
        if labels.get("reporter") != "source":
            continue
        svc = labels.get("destination_service_name", "?")
        code = labels.get("response_code", "?")
        flags = labels.get("response_flags", "-")
        if flags not in ("-", ""):
            code += f" {flags}"
        codes = out.setdefault(svc, {})
        codes[code] = codes.get(code, 0) + int(float(value))
    return out


def parse_clusters(doc: dict) -> dict:
    """``/clusters?format=json`` -> {"ip:port": {"cluster", "rq_total", "cx_active", "rq_active"}}."""
    out = {}
    for c in doc.get("cluster_statuses", []):
        for h in c.get("host_statuses", []):
            sa = h.get("address", {}).get("socket_address", {})
            st = {s["name"]: int(float(s.get("value", 0))) for s in h.get("stats", [])}
            out[f"{sa.get('address')}:{sa.get('port_value')}"] = {
                "cluster": c.get("name"), "rq_total": st.get("rq_total", 0),
                "cx_active": st.get("cx_active", 0), "rq_active": st.get("rq_active", 0)}
    return out


class Sidecar:
    def __init__(self, admin: tuple):
        self.admin = admin
        self.endpoints: dict = {}
        self.prev_rq: dict = {}
        self.delta: dict = {}
        self.istio: dict = {}
        self.error: Optional[str] = None

    async def scrape(self):
        try:
            (st1, body1), (st2, body2) = await asyncio.gather(
                http_get(*self.admin, "/clusters?format=json"),
                http_get(*self.admin, "/stats/prometheus"))
            if st1 != 200 or st2 != 200:
                raise OSError(f"admin answered {st1}/{st2}")
            eps = parse_clusters(json.loads(body1))
            self.istio = parse_istio_requests(body2.decode("utf-8", "replace"))
            self.delta = {k: v["rq_total"] - self.prev_rq.get(k, 0) for k, v in eps.items()}
            self.prev_rq = {k: v["rq_total"] for k, v in eps.items()}
            self.endpoints = eps
            self.error = None
        except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
            self.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# --------------------------------------------------------------------------------------------
# Screen
# --------------------------------------------------------------------------------------------

def _ms(v: float) -> str:
    return "   -  " if v != v else f"{v:6.1f}"


def _codes(codes: dict) -> str:
    return " ".join(f"{c}:{n}" for c, n in sorted(codes.items())) or "-"


class Screen:
    def __init__(self, tty: bool, instances, outbound, admin, config_path, rate, sidecar_pid):
        self.tty = tty
        self.instances = instances
        self.outbound, self.admin = outbound, admin
        self.config_path, self.rate, self.sidecar_pid = config_path, rate, sidecar_pid
        self.by_addr = {f"{i.address}:{i.port}": i for i in instances}
        self.started = False

    def footer(self) -> str:
        return (f"try: curl -H 'Host: reviews{SUFFIX}' http://{self.outbound[0]}:{self.outbound[1]}/"
                f"  |  admin: http://{self.admin[0]}:{self.admin[1]}/  |  Ctrl-C to stop")

    def draw(self, uptime: float, stats: Stats, sc: Sidecar, interval):
        lat, n, errs, secs = interval
        rps = n / secs if secs > 0 else 0.0
        ok = 100.0 * (n - errs) / n if n else 100.0
        p50, p90, p99 = (percentile(lat, q) for q in (50, 90, 99))
        if not self.tty:
            eps = " ".join(f"{i.version}={sc.endpoints.get(a, {}).get('rq_total', 0)}"
                           for a, i in self.by_addr.items() if i.service == "reviews")
            side = sum(sum(c.values()) for c in sc.istio.values())
            svc = " ".join(f"{s}={sum(stats.by_service[s].values())}" for s in SERVICES)
            line = (f"[{uptime:5.0f}s] {rps:6.1f} req/s  ok {ok:6.2f}%  p50 {p50:.1f}ms "
                    f"p90 {p90:.1f}ms p99 {p99:.1f}ms | total {stats.total} errors {stats.errors} "
                    f"| {svc} | reviews endpoints (sidecar rq_total) {eps} "
                    f"| sidecar istio_requests_total {side}")
            if sc.error:
                line += f" | admin: {sc.error}"
            print(line, flush=True)
            return
        out = []
        out.append(f"\x1b[1mmeshproxy demo\x1b[0m   uptime {uptime:5.0f}s   sidecar pid "
                   f"{self.sidecar_pid}   config {self.config_path}")
        out.append("")
        out.append(f"client   {rps:7.1f} req/s (target {self.rate:g})   success {ok:6.2f}%   "
                   f"latency p50 {_ms(p50)} ms  p90 {_ms(p90)} ms  p99 {_ms(p99)} ms   (last 1s)")
        out.append(f"         total {stats.total}   errors {stats.errors}"
                   + (f"   skipped (client backlog) {stats.skipped}" if stats.skipped else ""))
        out.append("")
        out.append(f"\x1b[1m{'SERVICE (Host)':<36} {'CLIENT':>8}  {'CLIENT CODES':<16} "
                   f"{'SIDECAR istio_requests_total':<30}\x1b[0m")
        for s in SERVICES:
            c = stats.by_service[s]
            side = sc.istio.get(s, {})
            out.append(f"{s + SUFFIX:<36} {sum(c.values()):>8}  {_codes(c):<16} "
                       f"{sum(side.values()):>8}  {_codes(side)}")
        out.append("")
        out.append(f"\x1b[1m{'ENDPOINT (sidecar /clusters)':<30} {'INSTANCE':<12} "
                   f"{'LATENCY PROFILE':<18} {'rq_total':>9} {'last 1s':>8} {'cx':>4} "
                   f"{'client saw':>11} {'p50 ms':>7} {'p99 ms':>7}\x1b[0m")
        for a, i in self.by_addr.items():
            ep = sc.endpoints.get(a, {})
            out.append(f"{a:<30} {i.name:<12} {i.profile:<18} {ep.get('rq_total', 0):>9} "
                       f"{sc.delta.get(a, 0):>8} {ep.get('cx_active', 0):>4} "
                       f"{stats.served_by.get(i.name, 0):>11} "
                       + " ".join(_ms(v).rjust(7) for v in stats.instance_latency(i.name)))
        out.append("")
        out.append("rq_total, last 1s, cx: the sidecar's admin /clusters?format=json.  client saw, "
                   "p50/p99: the load generator (X-Served-By header; last 1000 responses)")
        out.append("SIDECAR istio_requests_total: the sidecar's /stats/prometheus (reporter=source)"
                   + (f"   admin error: {sc.error}" if sc.error else ""))
        out.append("")
        out.append(self.footer())
        prefix = "\x1b[?25l\x1b[2J" if not self.started else ""
        self.started = True
        sys.stdout.write(prefix + "\x1b[H" + "".join(ln + "\x1b[K\n" for ln in out) + "\x1b[J")
        sys.stdout.flush()

    def close(self):
        if self.tty and self.started:
            sys.stdout.write("\x1b[?25h")
            sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def _plan(workdir: str):
    """Instances with ports, and the sidecar's addresses; writes the config; returns all."""
    instances = [Instance(*spec) for spec in INSTANCES]
    for inst in instances:
        inst.port = _pick_port(inst.address, APP_PORT, set())
    taken: set = set()
    outbound = ("127.0.0.1", _pick_port("127.0.0.1", 15001, taken))
    admin = ("127.0.0.1", _pick_port("127.0.0.1", 15000, taken))
    prom = _pick_port("127.0.0.1", 15090, taken)
    status = _pick_port("127.0.0.1", 15021, taken)
    inbound = _pick_port("127.0.0.1", 15006, taken)
    path = os.path.join(workdir, "mesh.yaml")
    with open(path, "w") as f:
        f.write(render_config(instances, outbound, admin, prom, status, inbound))
    return instances, outbound, admin, path


def sidecar_command(path: str) -> list:
    return [sys.executable, "-m", "meshproxy", "run", "--config", path]


def _validate(path: str) -> Optional[str]:
    from control import ConfigError, build_snapshot
    try:
        snap = build_snapshot(path)
    except ConfigError as e:
        return "\n".join(f"  {i}" for i in e.issues)
    eps = sum(len(c.endpoints) for c in snap.clusters)
    print(f"demo config {path}: valid: {len(snap.clusters)} clusters, {eps} endpoints, "
          f"snapshot {snap.version}", flush=True)
    return None


def main(duration: float = 0, rate: float = 200) -> int:
    """Run the demo; returns the exit code (0, or 1 if the mesh could not start)."""
    if not rate or rate <= 0:
        print("meshproxy demo: --rate must be > 0", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix=MARKER_PREFIX)
    marker = os.path.basename(workdir)
    instances: list = []
    sidecar: Optional[subprocess.Popen] = None
    loop = _new_loop()
    try:
        instances, outbound, admin, path = _plan(workdir)
        problems = _validate(path)
        if problems:
            print(f"meshproxy demo: generated config is invalid:\n{problems}", file=sys.stderr)
            return 1
        print(f"config: {path}  (while the demo runs: meshproxy run --config {path}; "
              f"see docs/demo.md)", flush=True)
        start_services(instances, workdir, marker)
        for i in instances:
            print(f"service {i.name:<12} {i.host} -> {i.address}:{i.port} "
                  f"(pid {i.proc.pid}, latency {i.profile})", flush=True)
        err_path = os.path.join(workdir, "sidecar.log")
        with open(err_path, "wb") as err:
            sidecar = _popen(sidecar_command(path), stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(
            _run(loop, duration, rate, instances, outbound, admin, path, sidecar, err_path))
    except KeyboardInterrupt:
        print("\ninterrupted during start-up", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as e:
        print(f"meshproxy demo: {e}", file=sys.stderr)
        return 1
    finally:
        # Belt and braces: _run stops everything in order; this catches start-up failures too.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        try:
            if sidecar is not None and sidecar.poll() is None:
                _stop_proc(sidecar, 5)
            elif sidecar is not None:
                _kill_group(sidecar)
            stop_services(instances)
            shutil.rmtree(workdir, ignore_errors=True)
            loop.close()
        finally:
            signal.signal(signal.SIGINT, old)


async def _wait_ready(sidecar, admin, timeout: float = 20.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if sidecar.poll() is not None:
            return False
        try:
            status, _ = await http_get(*admin, "/ready", timeout=0.5)
            if status == 200:
                return True
        except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.05)
    return False


async def _run(loop, duration, rate, instances, outbound, admin, path, sidecar,
               err_path) -> int:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not await _wait_ready(sidecar, admin):
        rc = sidecar.poll()
        with open(err_path, "rb") as f:
            log = f.read().decode(errors="replace").rstrip()
        why = f"exited with code {rc}" if rc is not None else "did not become ready in 20s"
        print(f"meshproxy demo: the sidecar {why}; its output:\n{log}", file=sys.stderr)
        return 1
    print(f"sidecar pid {sidecar.pid}: outbound http://{outbound[0]}:{outbound[1]}/  "
          f"admin http://{admin[0]}:{admin[1]}/", flush=True)

    stats = Stats()
    sc = Sidecar(admin)
    tty = sys.stdout.isatty()
    screen = Screen(tty, instances, outbound, admin, path, rate, sidecar.pid)
    if not tty:
        print(screen.footer(), flush=True)
    load = Load(outbound[0], outbound[1], rate, stats)
    t0 = loop.time()
    load.start()
    last = t0
    sidecar_died = False
    try:
        while not stop.is_set():
            end = t0 + duration if duration > 0 else None
            tick = last + 1.0
            wake = min(tick, end) if end else tick
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, wake - loop.time()))
                break
            except asyncio.TimeoutError:
                pass
            if sidecar.poll() is not None:
                sidecar_died = True
                break
            now = loop.time()
            if now >= tick - 1e-3:
                await sc.scrape()
                load.collect()
                lat, n, e = stats.take_interval()
                screen.draw(now - t0, stats, sc, (lat, n, e, now - last))
                last = now
            if end and loop.time() >= end:
                break
    finally:
        screen.close()
        await load.stop()
    elapsed = loop.time() - t0
    if not sidecar_died:
        await sc.scrape()  # final sidecar counters, after the last response
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = _stop_proc(sidecar, 8)
        stop_services(instances)
    finally:
        signal.signal(signal.SIGINT, old)
    if tty:
        print()
    _summary(stats, sc, instances, elapsed, rc)
    if sidecar_died:
        with open(err_path, "rb") as f:
            log = f.read().decode(errors="replace").rstrip()
        print(f"meshproxy demo: the sidecar exited unexpectedly (code {rc}); its output:\n{log}",
              file=sys.stderr)
        return 1
    return 0


def _summary(stats: Stats, sc: Sidecar, instances, elapsed: float, sidecar_rc) -> None:
    lat = sorted(stats.samples)
    ok = 100.0 * (stats.total - stats.errors) / stats.total if stats.total else 0.0
    p = {q: percentile(lat, q) for q in (50, 90, 99, 99.9)}
    lines = [
        "=== meshproxy demo summary ===",
        f"ran {elapsed:.1f}s: {stats.total} requests ({stats.total / elapsed if elapsed else 0:.1f}"
        f" req/s), {stats.errors} errors, success {ok:.2f}%"
        + (f", {stats.skipped} skipped (client backlog)" if stats.skipped else ""),
        f"client latency: p50 {p[50]:.2f} ms  p90 {p[90]:.2f} ms  p99 {p[99]:.2f} ms  "
        f"p99.9 {p[99.9]:.2f} ms  max {lat[-1] if lat else float('nan'):.2f} ms",
    ]
    for s in SERVICES:
        c = stats.by_service[s]
        side = sc.istio.get(s, {})
        lines.append(f"  {s + SUFFIX:<36} client {sum(c.values()):>7} ({_codes(c)})   "
                     f"sidecar istio_requests_total {sum(side.values()):>7} ({_codes(side)})")
    lines.append("endpoints (sidecar rq_total / client saw / client latency, last 1000 responses):")
    for i in instances:
        a = f"{i.address}:{i.port}"
        p50, p99 = stats.instance_latency(i.name)
        lines.append(f"  {i.name:<12} {a:<18} sidecar {sc.endpoints.get(a, {}).get('rq_total', 0):>7}"
                     f"   client {stats.served_by.get(i.name, 0):>7}   p50 {p50:6.2f} ms  p99 "
                     f"{p99:6.2f} ms")
    lines.append(f"sidecar exited with code {sidecar_rc}; services stopped; temp dir removed")
    print("\n".join(lines), flush=True)


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m demo",
        description="Start small demo services, a sidecar (meshproxy run) in front of them and a "
                    "load generator, and print a live summary of requests, endpoints and "
                    "latencies. Ctrl-C stops everything. See docs/demo.md.")
    ap.add_argument("--serve", nargs=4, metavar=("SERVICE", "VERSION", "ADDRESS", "PORT"),
                    help="run one demo service (used by the demo itself)")
    ap.add_argument("--marker", help="ignored; tags the process command line")
    ap.add_argument("--services-only", action="store_true",
                    help="start the demo services, write the config, wait for Ctrl-C")
    ap.add_argument("--config-out", metavar="PATH", default="meshproxy-demo.yaml",
                    help="with --services-only: where to write the config")
    ap.add_argument("--duration", type=float, default=0,
                    help="stop after this many seconds (default: run until Ctrl-C)")
    ap.add_argument("--rate", type=float, default=200, help="requests per second (default 200)")
    args = ap.parse_args(argv)
    if args.serve:
        service, version, address, port = args.serve
        return serve(service, version, address, int(port))
    if args.services_only:
        return services_only(args.config_out)
    return main(duration=args.duration, rate=args.rate)


def services_only(config_out: str) -> int:
    """Start the demo services and write their config; run a sidecar on it by hand."""
    workdir = tempfile.mkdtemp(prefix=MARKER_PREFIX)
    instances: list = []
    try:
        instances, outbound, admin, path = _plan(workdir)
        shutil.copyfile(path, config_out)
        start_services(instances, workdir, os.path.basename(workdir))
        for i in instances:
            print(f"service {i.name:<12} {i.host} -> {i.address}:{i.port}")
        print(f"config written to {config_out}; now run:\n  meshproxy run --config {config_out}\n"
              f"  curl -H 'Host: reviews{SUFFIX}' http://{outbound[0]}:{outbound[1]}/\n"
              f"Ctrl-C stops the services.", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            pass
        return 0
    except (RuntimeError, OSError) as e:
        print(f"meshproxy demo: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_services(instances)
        shutil.rmtree(workdir, ignore_errors=True)
