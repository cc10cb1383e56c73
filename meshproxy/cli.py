"""The ``meshproxy`` command line."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from meshproxy import __version__

EPILOG = """\
examples:
  meshproxy run --config mesh.yaml                      # outbound listener on 127.0.0.1:15001
  meshproxy run --config mesh/ --workload default/ratings-1 --concurrency 2
  meshproxy validate mesh.yaml
  meshproxy wait-ready --timeout 60 && exec my-app        # hold the app until its proxy is ready
  meshproxy explain --config mesh.yaml GET http://reviews/ -H 'end-user: jason'
  curl -H 'Host: echo.default.svc.cluster.local' http://127.0.0.1:15001/

Config is Istio YAML (ServiceEntry, WorkloadEntry) plus an optional meshproxy Bootstrap document;
see docs/configuration.md. The demo mesh is development tooling in the source tree, not a
meshproxy command: `make demo` in a checkout (docs/demo.md).
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="meshproxy", description="A service-mesh sidecar configured with Istio YAML.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the sidecar", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the sidecar on a config file or directory. SIGHUP reloads the config "
                    "(an invalid one is rejected and the old one keeps serving); SIGTERM drains "
                    "and exits 0.")
    run.add_argument("--config", "-c", required=True, metavar="PATH",
                     help="a YAML file or a directory of YAML files (multi-document)")
    run.add_argument("--workload", "-w", metavar="NAME",
                     help="this sidecar's WorkloadEntry, NAME or NAMESPACE/NAME: adds the inbound "
                          "listener on the workload's address, port 15006")
    run.add_argument("--concurrency", type=int, metavar="N",
                     help="worker processes on SO_REUSEPORT (default: Bootstrap's, else 1)")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"], help="default: info")
    run.add_argument("--outbound", metavar="ADDR:PORT",
                     help="outbound listener (default 127.0.0.1:15001)")
    run.add_argument("--inbound-port", type=int, metavar="PORT", help="default 15006")
    run.add_argument("--admin", metavar="ADDR:PORT", help="admin listener (default 127.0.0.1:15000)")
    run.add_argument("--prometheus-port", type=int, metavar="PORT",
                     help="port serving /stats/prometheus (default 15090; 0 disables)")
    run.add_argument("--status-port", type=int, metavar="PORT",
                     help="port serving /healthz/ready (default 15021; 0 disables)")
    run.add_argument("--access-log", metavar="PATH",
                     help="access log file, or /dev/stdout (default: off)")
    run.add_argument("--access-log-encoding", choices=["TEXT", "JSON"])
    run.add_argument("--drain-duration", type=float, metavar="SECONDS",
                     help="how long SIGTERM waits for in-flight requests (default 5)")

    val = sub.add_parser("validate", help="check a config and exit 0 (valid) or 1 (errors)",
                         description="Load, validate and compile a config without running it. "
                                     "Prints a one-line summary, or every error with its file, "
                                     "resource and field path.")
    val.add_argument("path", metavar="PATH", help="a YAML file or directory")
    val.add_argument("--workload", "-w", metavar="NAME", help="compile for this WorkloadEntry")

    ex = sub.add_parser(
        "explain", help="show how a request would be routed, without sending it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile the config as `run` does and walk the request through the same route "
                    "tables the data plane uses: which VirtualService route matched and why each "
                    "earlier one did not, the destination (cluster, subset, port), the "
                    "load-balancing policy and endpoints, and any rewrite, header edit, redirect, "
                    "direct response, fault or mirror.",
        epilog="example:\n  meshproxy explain --config bookinfo.yaml GET "
               "http://reviews.default.svc.cluster.local/reviews/1 -H 'end-user: jason'")
    ex.add_argument("--config", "-c", required=True, metavar="PATH")
    ex.add_argument("--workload", "-w", metavar="NAME", help="explain for this sidecar's workload")
    ex.add_argument("--inbound", action="store_true",
                    help="explain the inbound listener (needs --workload) instead of outbound")
    ex.add_argument("--json", action="store_true", help="print the summary as JSON too")
    ex.add_argument("method", metavar="METHOD")
    ex.add_argument("url", metavar="URL", help="http://HOST[:PORT]/path?query (HOST: the service)")
    ex.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")

    wr = sub.add_parser(
        "wait-ready", help="block until a sidecar is ready (exit 0), or time out (exit 1)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Poll the sidecar's status port (GET /healthz/ready) until it answers 200: the "
                    "first snapshot is applied and every listener is bound. Run it before the "
                    "application starts to hold the application until its proxy is ready "
                    "(Istio's holdApplicationUntilProxyStarts).",
        epilog="exit codes:\n  0  the sidecar is ready\n  1  not ready within --timeout\n"
               "  2  bad arguments")
    wr.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="give up after this long (default 60)")
    wr.add_argument("--url", default="http://127.0.0.1:15021/healthz/ready",
                    help="readiness URL (default http://127.0.0.1:15021/healthz/ready, the "
                         "Bootstrap statusPort; the admin port's /ready works too)")
    wr.add_argument("--period", type=float, default=0.2, metavar="SECONDS",
                    help="time between polls (default 0.2)")
    wr.add_argument("--quiet", "-q", action="store_true", help="print nothing")

    sub.add_parser("version", help="print the version")
    return ap


def _hostport(value: str, flag: str):
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"meshproxy: {flag}: expected ADDRESS:PORT, got {value!r}")
    return host, int(port)


def _overrides(args) -> dict:
    o: dict = {}
    if args.concurrency is not None:
        o["concurrency"] = args.concurrency
    if args.outbound:
        o["outbound_address"], o["outbound_port"] = _hostport(args.outbound, "--outbound")
    if args.inbound_port is not None:
        o["inbound_port"] = args.inbound_port
    if args.admin:
        o["admin_address"], o["admin_port"] = _hostport(args.admin, "--admin")
    if args.prometheus_port is not None:
        o["prometheus_port"] = args.prometheus_port
    if args.status_port is not None:
        o["status_port"] = args.status_port
    if args.access_log:
        o["access_log_file"] = args.access_log
    if args.access_log_encoding:
        o["access_log_encoding"] = args.access_log_encoding
    if args.drain_duration is not None:
        o["drain_duration"] = args.drain_duration
    if os.environ.get("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "").strip().lower() in ("1", "true", "yes"):
        o["exit_on_zero_active_connections"] = True
    return o


def cmd_wait_ready(args) -> int:
    import http.client
    import time
    from urllib.parse import urlsplit

    u = urlsplit(args.url)
    if u.scheme != "http" or not u.hostname:
        print(f"meshproxy wait-ready: --url: expected http://HOST:PORT/PATH, got {args.url!r}",
              file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while True:
        try:
            c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=max(0.5, args.period))
            try:
                c.request("GET", u.path or "/")
                r = c.getresponse()
                body = r.read().decode(errors="replace").strip()
                if r.status == 200:
                    if not args.quiet:
                        print(f"meshproxy wait-ready: {args.url}: {r.status} {body}")
                    return 0
                last = f"{r.status} {body}"
            finally:
                c.close()
        except (OSError, http.client.HTTPException) as e:
            last = str(e) or type(e).__name__
        if time.monotonic() + args.period > deadline:
            if not args.quiet:
                print(f"meshproxy wait-ready: not ready after {args.timeout:g}s ({args.url}: "
                      f"{last})", file=sys.stderr)
            return 1
        time.sleep(args.period)


def cmd_validate(args) -> int:
    from control import ConfigError, build_snapshot

    try:
        snap = build_snapshot(args.path, workload=args.workload)
    except ConfigError as e:
        for issue in e.issues:
            print(issue)
        n = len(e.issues)
        print(f"{args.path}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return 1
    for w in snap.warnings:
        print(f"warning: {w}")
    eps = sum(len(c.endpoints) for c in snap.clusters)
    hosts = len({c.service for c in snap.clusters if c.service})
    print(f"{args.path}: valid: {len(snap.sources)} file(s), {hosts} service(s), "
          f"{len(snap.clusters)} cluster(s), {eps} endpoint(s), {len(snap.warnings)} warning(s); "
          f"snapshot {snap.version}")
    return 0


def cmd_run(args) -> int:
    from control import ConfigError
    from meshproxy.runner import ConfigSource, run

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    source = ConfigSource(args.config, args.workload, _overrides(args))
    try:
        snap = source.load()
    except ConfigError as e:
        print(f"meshproxy: invalid config {args.config}:", file=sys.stderr)
        for issue in e.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    return run(source, snap)


def cmd_explain(args) -> int:
    import json

    from control import ConfigError, build_snapshot
    from meshproxy.explain import ExplainError, explain

    try:
        snap = build_snapshot(args.config, workload=args.workload)
        lines, summary = explain(snap, args.method, args.url, args.header, inbound=args.inbound)
    except ConfigError as e:
        for issue in e.issues:
            print(issue, file=sys.stderr)
        return 1
    except ExplainError as e:
        print(f"meshproxy explain: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.json:
        print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "validate":
        return cmd_validate(args)
    if args.cmd == "explain":
        return cmd_explain(args)
    if args.cmd == "wait-ready":
        return cmd_wait_ready(args)
    if args.cmd == "version":
        from meshproxy.core import COMPILED
        print(f"meshproxy {__version__} ({'compiled' if COMPILED else 'pure-Python'} core, "
              f"Python {sys.version.split()[0]}, pid {os.getpid()})")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
