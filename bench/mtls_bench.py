"""Mutual TLS between sidecars: the cost, side by side in one run (issue 10's target).

    .venv/bin/python bench/mtls_bench.py [--duration 5] [--rounds 3]

Two sidecar pairs in front of one nginx origin, each pair a client sidecar (its outbound
listener, where wrk sends) and a server sidecar (its inbound listener, in front of the origin):

* ``plaintext``: no certificates (what a mesh without mTLS does);
* ``mtls``: both sidecars have certificates from a CA made for the run (``control.certs``), so
  the client dials the server's sidecar with mutual TLS (Istio's auto mTLS) and the server's
  inbound listener is PERMISSIVE.

wrk (1 thread, 50 connections, keep-alive, 1 KiB responses) runs against each pair in turn, round
by round. The table: requests/s (median, min-max), the CPU µs per request of the two sidecars
together, and the ratio to the plaintext pair. Target (issue 10): the mTLS pair keeps at least
0.8x the plaintext pair's requests/s. Traffic stays on 127.0.0.0/8; everything started is stopped
on exit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import routes_bench as rb  # noqa: E402  (free_port, wait_ready, wrk, cpu_seconds: one origin host)

HOST = "origin.default.svc.cluster.local"
PAIRS = {"plaintext": ("127.0.0.160", "127.0.0.161"), "mtls": ("127.0.0.162", "127.0.0.163")}


def doc(kind, name, spec, api="networking.istio.io/v1", **meta):
    md = {"name": name, "namespace": "default", **meta}
    return json.dumps({"apiVersion": api, "kind": kind, "metadata": md, "spec": spec})


def pair_configs(tmp: Path, name: str, origin: int, certs: dict | None) -> dict:
    """The two sidecars' config files and ports: {"client": (path, ports), "server": ...}."""
    client_addr, server_addr = PAIRS[name]
    ports = {role: {k: rb.free_port() for k in ("outbound", "inbound", "admin", "prom", "status")}
             for role in ("client", "server")}
    mesh = [
        doc("WorkloadEntry", "client", {"address": client_addr, "serviceAccount": "client",
                                         "labels": {"app": "client",
                                                    "security.istio.io/tlsMode": "istio"}}),
        doc("WorkloadEntry", "server", {"address": server_addr, "ports": {"http": origin},
                                         "serviceAccount": "server",
                                         "labels": {"app": "origin",
                                                    "security.istio.io/tlsMode": "istio"}},
            annotations={"meshproxy.io/inbound-port": str(ports["server"]["inbound"])}),
        doc("ServiceEntry", "origin", {"hosts": [HOST], "location": "MESH_INTERNAL",
                                        "resolution": "STATIC",
                                        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                                        "workloadSelector": {"labels": {"app": "origin"}}}),
    ]
    out = {}
    for role, addr in (("client", client_addr), ("server", server_addr)):
        p = ports[role]
        boot = {"workload": role, "outbound": {"address": addr, "port": p["outbound"]},
                "inbound": {"port": p["inbound"]}, "admin": {"address": addr, "port": p["admin"]},
                "prometheusPort": p["prom"], "statusPort": p["status"]}
        if certs is not None:
            boot["certificates"] = certs[role]
        path = tmp / f"{name}-{role}.yaml"
        path.write_text("\n---\n".join([doc("Bootstrap", "bootstrap", boot,
                                            api="meshproxy.io/v1alpha1")] + mesh) + "\n")
        out[role] = (path, p, addr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing (apt-get install wrk nginx-light)", file=sys.stderr)
            return 2
    from control.certs import CA
    tmp = Path(tempfile.mkdtemp(prefix="meshproxy-mtls-"))
    procs: list = []
    try:
        origin = rb.free_port()
        listens = "".join(f"listen {s}:{origin}; " for _, s in PAIRS.values())
        (tmp / "nginx.conf").write_text(
            f"worker_processes 1; daemon off; master_process off; pid {tmp}/nginx.pid;\n"
            f"error_log {tmp}/nginx.err;\nevents {{ worker_connections 4096; }}\n"
            "http { access_log off; keepalive_requests 100000;\n"
            f"  server {{ {listens} location / {{ return 200 \"{'x' * 1023}\\n\"; }} }} }}\n")
        procs.append(subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                                      start_new_session=True))
        ca = CA.create()
        certs = {}
        for role in ("client", "server"):
            p = ca.issue("default", role).write(str(tmp / role), str(tmp / "root-cert.pem"))
            certs[role] = {"certificateChain": p["chain"], "privateKey": p["key"],
                           "caCertificates": p["roots"]}
        env = dict(os.environ, PYTHONPATH=str(rb.ROOT))
        env.pop("MESHPROXY_NO_EXTENSIONS", None)
        targets = {}
        for name in PAIRS:
            cfg = pair_configs(tmp, name, origin, certs if name == "mtls" else None)
            pids = []
            for role in ("server", "client"):
                path, ports, addr = cfg[role]
                p = subprocess.Popen([sys.executable, "-m", "meshproxy", "run", "--config", str(path),
                                      "--log-level", "warning"], env=env, start_new_session=True,
                                     stderr=open(tmp / f"{name}-{role}.log", "w"))
                procs.append(p)
                rb.wait_ready(ports["admin"], p, address=addr)
                pids.append(p.pid)
            path, ports, addr = cfg["client"]
            targets[name] = ((ports["outbound"], addr), pids)
        rps = {n: [] for n in targets}
        cpu = {n: [] for n in targets}
        for name, ((port, addr), _) in targets.items():
            rb.wrk(port, 1, addr)
        for _ in range(args.rounds):
            for name, ((port, addr), pids) in targets.items():
                c0 = sum(rb.cpu_seconds(p) for p in pids)
                r, total = rb.wrk(port, args.duration, addr)
                cpu[name].append((sum(rb.cpu_seconds(p) for p in pids) - c0) / total * 1e6)
                rps[name].append(r)
        base = statistics.median(rps["plaintext"])
        print("| sidecar pair | requests/s median (min-max) | both sidecars' CPU µs/request | ratio |")
        print("|---|---:|---:|---:|")
        for name in targets:
            m = statistics.median(rps[name])
            print(f"| {name} | {m:,.0f} ({min(rps[name]):,.0f}-{max(rps[name]):,.0f}) | "
                  f"{statistics.median(cpu[name]):.1f} | {m / base:.2f} |")
        ratio = statistics.median(rps["mtls"]) / base
        print(f"\n{'PASS' if ratio >= 0.8 else 'MISS'}: the mTLS pair keeps {ratio:.2f}x the plaintext "
              f"pair's requests/s (target >= 0.8)")
        return 0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
