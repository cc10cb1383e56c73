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
  meshproxy ca init ./ca && meshproxy ca issue ./ca -n default -s reviews   # mesh certificates

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
    _ca_parser(sub)
    return ap


CA_EPILOG = """\
examples:
  meshproxy ca init ./ca                                 # a self-signed mesh root, ECDSA P-256
  meshproxy ca init ./ca --root-cert corp-root.pem --root-key corp-root-key.pem   # intermediate
  meshproxy ca issue ./ca -n default -s reviews --out ./reviews
  meshproxy ca inspect ./reviews-cert.pem               # roots and chain found beside it

A CA directory holds ca-cert.pem, ca-key.pem (mode 0600), root-cert.pem and cert-chain.pem
(Istio's plug-in CA names). Workload certificates are SPIFFE X.509-SVIDs; see docs/security.md.
"""


def _ca_parser(sub) -> None:
    ca = sub.add_parser(
        "ca", help="mesh CA and workload certificates (init, issue, inspect)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CA_EPILOG,
        description="A development CA for the mesh: a root (or an intermediate under your root) "
                    "and short-lived SPIFFE workload certificates (X.509-SVIDs).")
    ca.set_defaults(ca_parser=ca)
    casub = ca.add_subparsers(dest="ca_cmd", metavar="COMMAND")

    init = casub.add_parser(
        "init", help="create a CA directory",
        description="Create a mesh CA in DIR: a self-signed root (10 years), or, with --root-cert "
                    "and --root-key, an intermediate signed by your root (the chain is then "
                    "intermediate + root). Refuses to overwrite an existing CA without --force.")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--trust-domain", default="cluster.local",
                      help="the mesh's SPIFFE trust domain (default cluster.local)")
    init.add_argument("--key-type", choices=["ec", "rsa"], default="ec",
                      help="ec: ECDSA P-256 (default); rsa: RSA (--rsa-bits)")
    init.add_argument("--rsa-bits", type=int, choices=[2048, 3072, 4096], default=2048)
    init.add_argument("--root-cert", metavar="FILE", help="your root CA certificate (PEM)")
    init.add_argument("--root-key", metavar="FILE", help="its private key (PEM)")
    init.add_argument("--root-key-password-file", metavar="FILE",
                      help="file holding the password of an encrypted --root-key")
    init.add_argument("--force", action="store_true", help="replace an existing CA in DIR")

    iss = casub.add_parser(
        "issue", help="issue a workload certificate",
        description="Issue a workload certificate from the CA in DIR the way a sidecar gets one: "
                    "the key is made here, a CSR is signed by the CA. Writes PREFIX-cert.pem, "
                    "PREFIX-key.pem (mode 0600), PREFIX-chain.pem (certificate + intermediates) "
                    "and root-cert.pem beside them.")
    iss.add_argument("dir", metavar="DIR", help="the CA directory")
    iss.add_argument("--namespace", "-n", required=True, metavar="NS")
    iss.add_argument("--service-account", "-s", required=True, metavar="SA")
    iss.add_argument("--trust-domain", help="default: the CA's (it must match)")
    iss.add_argument("--ttl", default="24h", metavar="DURATION",
                     help="lifetime, e.g. 24h, 90m (default 24h; capped at the CA's expiry)")
    iss.add_argument("--key-type", choices=["ec", "rsa"], default="ec")
    iss.add_argument("--out", metavar="PREFIX", help="output prefix (default: ./SA)")

    ins = casub.add_parser(
        "inspect", help="show a certificate and check it (exit 1 if a check fails)",
        description="Print who a certificate is for and until when, verify its chain to the "
                    "roots and check the SPIFFE X.509-SVID rules. Exit 0 when both pass, 1 "
                    "otherwise. Certificates after the first in CERT are taken as its chain; "
                    "without --chain/--roots, PREFIX-chain.pem and root-cert.pem beside a "
                    "PREFIX-cert.pem are used when present.")
    ins.add_argument("cert", metavar="CERT")
    ins.add_argument("--chain", metavar="FILE", help="intermediates (PEM)")
    ins.add_argument("--roots", metavar="FILE", help="trusted roots (PEM)")
    ins.add_argument("--trust-domain", help="also require this trust domain")


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


def _ca_fail(sub: str, msg) -> int:
    print(f"meshproxy ca {sub}: {msg}", file=sys.stderr)
    return 1


def _left(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    d, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    return (f"{d}d{h}h" if d else f"{h}h{m}m" if h else f"{m}m{int(seconds) % 60}s") + " left"


def cmd_ca_init(args) -> int:
    from control.certs import CA, CA_KEY, CAError, key_type, load_certs, load_key

    if os.path.exists(os.path.join(args.dir, CA_KEY)) and not args.force:
        return _ca_fail("init", f"{args.dir} already holds a CA ({CA_KEY}); use --force to replace it")
    if bool(args.root_cert) != bool(args.root_key):
        return _ca_fail("init", "--root-cert and --root-key go together")
    try:
        if args.root_cert:
            password = None
            if args.root_key_password_file:
                try:
                    with open(args.root_key_password_file, "rb") as f:
                        password = f.read().rstrip(b"\r\n")
                except OSError as e:
                    raise CAError(f"{args.root_key_password_file}: {e.strerror or e}") from None
            upper = load_certs(args.root_cert)
            ca = CA.create(args.key_type, rsa_bits=args.rsa_bits, trust_domain=args.trust_domain,
                           root_cert=upper[0], root_key=load_key(args.root_key, password),
                           root_chain=upper, path_len=0)
        else:
            ca = CA.create(args.key_type, rsa_bits=args.rsa_bits, trust_domain=args.trust_domain)
        ca.save(args.dir)
    except (CAError, ValueError, OSError) as e:
        return _ca_fail("init", e)
    what = f"root CA {ca.cert.subject.rfc4514_string()!r}" if ca.is_root else (
        f"intermediate CA {ca.cert.subject.rfc4514_string()!r} under "
        f"{ca.roots[0].subject.rfc4514_string()!r}")
    print(f"meshproxy ca init: {args.dir}: {what}, "
          f"{key_type(ca.cert.public_key())}, trust domain {ca.trust_domain}, "
          f"until {ca.cert.not_valid_after_utc:%Y-%m-%d}")
    print(f"  wrote ca-cert.pem, ca-key.pem (0600), cert-chain.pem ({len(ca.chain)} cert"
          f"{'s' if len(ca.chain) != 1 else ''}), root-cert.pem")
    return 0


def cmd_ca_issue(args) -> int:
    from control.certs import CA, CAError
    from control.duration import parse_duration

    try:
        ttl = parse_duration(args.ttl)
        if ttl <= 0:
            raise ValueError("--ttl must be positive")
        ca = CA.load(args.dir)
        if args.trust_domain and args.trust_domain != ca.trust_domain:
            raise ValueError(f"the CA in {args.dir} signs for trust domain {ca.trust_domain!r}, "
                             f"not {args.trust_domain!r}")
        wc = ca.issue(args.namespace, args.service_account, ttl, key_type=args.key_type)
        prefix = args.out or os.path.join(".", args.service_account)
        paths = wc.write(prefix)
    except (CAError, ValueError, OSError) as e:
        return _ca_fail("issue", e)
    print(f"meshproxy ca issue: {wc.spiffe_id} until {wc.not_after:%Y-%m-%d %H:%M:%S}Z "
          f"(renew after {wc.renew_at:%Y-%m-%d %H:%M:%S}Z)")
    print(f"  wrote {paths['cert']}, {paths['key']} (0600), {paths['chain']}, {paths['roots']}")
    return 0


def cmd_ca_inspect(args) -> int:
    import datetime

    from cryptography import x509

    from control.certs import (CAError, SVIDError, check_svid, key_type, load_certs,
                               verify_chain)

    try:
        certs = load_certs(args.cert)
        cert, chain = certs[0], certs[1:]
        base = args.cert[:-len("-cert.pem")] if args.cert.endswith("-cert.pem") else None
        chain_file = args.chain or (base + "-chain.pem" if base and os.path.exists(
            base + "-chain.pem") else None)
        if chain_file:
            chain += load_certs(chain_file)
        roots_file = args.roots
        if roots_file is None:
            beside = os.path.join(os.path.dirname(os.path.abspath(args.cert)), "root-cert.pem")
            roots_file = beside if os.path.exists(beside) else None
        roots = load_certs(roots_file) if roots_file else []
    except CAError as e:
        return _ca_fail("inspect", e)
    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    rows = [("certificate", args.cert),
            ("subject", cert.subject.rfc4514_string() or "(empty)"),
            ("SPIFFE ID", ", ".join(uris) or "(none)"),
            ("issuer", cert.issuer.rfc4514_string() or "(empty)"),
            ("serial", f"{cert.serial_number:x}"),
            ("not before", f"{nb:%Y-%m-%d %H:%M:%S}Z"),
            ("not after", f"{na:%Y-%m-%d %H:%M:%S}Z ({_left((na - now).total_seconds())})"),
            ("key", key_type(cert.public_key()))]
    ok = True
    if not roots:
        ok = False
        rows.append(("chain", "NOT CHECKED: no roots (give --roots FILE)"))
    else:
        try:
            verify_chain(cert, chain, roots, now)
            inter = [c for c in chain if c != cert and c not in roots]
            via = (f"via {len(inter)} intermediate{'s' if len(inter) != 1 else ''}" if inter
                   else "signed by the root")
            rows.append(("chain", f"ok ({via}, roots from {roots_file})"))
        except SVIDError as e:
            ok = False
            rows.append(("chain", f"FAILED: {e}"))
    try:
        check_svid(cert, args.trust_domain)
        rows.append(("SVID rules", "ok"))
    except SVIDError as e:
        ok = False
        rows.append(("SVID rules", f"FAILED: {e}"))
    for k, v in rows:
        print(f"{k + ':':<13}{v}")
    return 0 if ok else 1


def cmd_ca(args) -> int:
    if args.ca_cmd == "init":
        return cmd_ca_init(args)
    if args.ca_cmd == "issue":
        return cmd_ca_issue(args)
    if args.ca_cmd == "inspect":
        return cmd_ca_inspect(args)
    args.ca_parser.print_help()
    return 2


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
    if args.cmd == "ca":
        return cmd_ca(args)
    if args.cmd == "version":
        from meshproxy.core import COMPILED
        print(f"meshproxy {__version__} ({'compiled' if COMPILED else 'pure-Python'} core, "
              f"Python {sys.version.split()[0]}, pid {os.getpid()})")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
