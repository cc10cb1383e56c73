"""What TLS costs an asyncio server here, before meshproxy has any: the measurement issue 10 asks
for first ("uvloop's TLS runs every record through memory BIOs and Python objects").

    .venv/bin/python bench/tls_probe.py [--duration 5] [--rounds 2]

One tiny HTTP/1.1 keep-alive responder (a ``Protocol`` that answers every request head with the
same 1 KiB response: no parsing beyond finding the blank line, so the transport is what is
measured) served five ways, each in its own process on 127.0.0.1, one worker each:

* ``uvloop``: plaintext on uvloop's transports (what the sidecar runs on today);
* ``uvloop+tls``: uvloop's ``create_server(ssl=...)`` (memory BIOs);
* ``aiofastnet``: plaintext on aiofastnet's transports over uvloop;
* ``aiofastnet+tls``: aiofastnet's TLS transport (OpenSSL driven from Cython);
* ``nginx+tls``: nginx answering the same bytes over TLS (``return 200``), for scale.

wrk (1 thread, 50 connections, keep-alive) runs against each in turn, round by round; the table
shows requests/s (median) and the server's CPU µs per request, and the TLS cost as the ratio to
the same transport in plaintext. TLS 1.3 with an ECDSA P-256 certificate made for the run.
Everything started is stopped on exit. Requires wrk, nginx and ``aiofastnet`` (``pip install
aiofastnet``; rows whose prerequisite is missing are skipped).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from routes_bench import cpu_seconds, free_port  # noqa: E402

BODY = b"x" * 1023 + b"\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
            % len(BODY)) + BODY

SERVER = r'''
import asyncio, ssl, sys
import uvloop
RESPONSE = %r
kind, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

class Responder(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        self.buf = b""
    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        n = buf.count(b"\r\n\r\n")
        if n:
            self.t.write(RESPONSE * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
        self.buf = buf

async def main():
    ctx = None
    if kind.endswith("+tls"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    if kind.startswith("aiofastnet"):
        import aiofastnet
        srv = await aiofastnet.create_server(loop, Responder, "127.0.0.1", port, ssl=ctx)
    else:
        srv = await loop.create_server(Responder, "127.0.0.1", port, ssl=ctx)
    print("READY", flush=True)
    await asyncio.Event().wait()

uvloop.run(main())
''' % RESPONSE


def make_cert(tmp: Path) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 (cryptography)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-probe")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)


def wrk(url: str, duration: float) -> tuple[float, int]:
    out = subprocess.run(["wrk", "-t1", "-c50", f"-d{int(duration)}s", url],
                         capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise RuntimeError(f"wrk failed against {url}:\n{out}")
    return float(rps.group(1)), int(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 2
    import importlib.util
    have_afn = importlib.util.find_spec("aiofastnet") is not None
    tmp = Path(tempfile.mkdtemp(prefix="meshproxy-tls-"))
    procs: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        cert, key = make_cert(tmp)
        (tmp / "server.py").write_text(SERVER)
        kinds = ["uvloop", "uvloop+tls"] + (["aiofastnet", "aiofastnet+tls"] if have_afn else [])
        for kind in kinds:
            port = free_port()
            p = subprocess.Popen([sys.executable, str(tmp / "server.py"), kind, str(port), cert, key],
                                 stdout=subprocess.PIPE, start_new_session=True)
            if p.stdout.readline().strip() != b"READY":
                raise RuntimeError(f"{kind} server did not start")
            scheme = "https" if kind.endswith("+tls") else "http"
            procs[kind] = (p, f"{scheme}://127.0.0.1:{port}/")
        if shutil.which("nginx"):
            port = free_port()
            body = BODY.decode().rstrip("\n")
            (tmp / "nginx.conf").write_text(
                f"worker_processes 1; daemon off; master_process off; pid {tmp}/nginx.pid;\n"
                f"error_log {tmp}/nginx.err;\nevents {{ worker_connections 4096; }}\n"
                "http { access_log off; keepalive_requests 100000;\n"
                f"  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; "
                f"ssl_certificate_key {key}; ssl_protocols TLSv1.3;\n"
                f"    location / {{ return 200 \"{body}\\n\"; }} }} }}\n")
            p = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
                                 start_new_session=True)
            time.sleep(0.5)
            procs["nginx+tls"] = (p, f"https://127.0.0.1:{port}/")
        rps = {k: [] for k in procs}
        cpu = {k: [] for k in procs}
        for kind, (p, url) in procs.items():
            wrk(url, 1)  # warm-up (and the TLS handshakes)
        for _ in range(args.rounds):
            for kind, (p, url) in procs.items():
                c0 = cpu_seconds(p.pid)
                r, total = wrk(url, args.duration)
                cpu[kind].append((cpu_seconds(p.pid) - c0) / total * 1e6)
                rps[kind].append(r)
        print("| server | requests/s (median) | server CPU µs/request | TLS ÷ plaintext (same transport) |")
        print("|---|---:|---:|---:|")
        for kind in procs:
            base = kind.replace("+tls", "")
            ratio = ""
            if kind.endswith("+tls") and base in rps:
                ratio = f"{statistics.median(rps[kind]) / statistics.median(rps[base]):.2f}"
            print(f"| {kind} | {statistics.median(rps[kind]):,.0f} | "
                  f"{statistics.median(cpu[kind]):.1f} | {ratio} |")
        return 0
    finally:
        for p, _ in procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
