"""The benchmark's origin (a one-worker nginx returning a fixed 1 KiB body) and tool installation."""
from __future__ import annotations

import os
import shutil
import socket
import string
import subprocess
import sys

from procs import Managed, free_port, http_get, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATES = os.path.join(HERE, "templates")

BODY_SIZE = 1024
# Printable, and free of the characters nginx treats specially inside a quoted string ($ " \ ; { }).
BODY = (b"meshproxy-bench-origin-0123456789-abcdefghijklmnopqrstuvwxyz-" * 20)[:BODY_SIZE]

#: binary -> Debian package that provides it
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "hey": "hey",
                "h2load": "nghttp2-client", "curl": "curl", "perf": "linux-perf"}
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class StartError(RuntimeError):
    """A server did not come up; the message is what the results table shows."""


def which(binary: str) -> str | None:
    path = shutil.which(binary)
    if path:
        return path
    for d in SBIN_DIRS:  # nginx and haproxy live in sbin, which a non-login PATH may lack
        cand = os.path.join(d, binary)
        if os.access(cand, os.X_OK):
            return cand
    return None


def ensure_tools(binaries: list[str], log=print, required: bool = True) -> dict[str, str]:
    """Paths of ``binaries``, installing the missing ones with apt-get (update first). With
    ``required`` a tool that is still missing ends the run; without, it is left out of the result
    (its contender is then reported as failed)."""
    missing = [b for b in binaries if which(b) is None]
    if missing:
        pkgs = sorted({APT_PACKAGES.get(b, b) for b in missing})
        log(f"# installing {' '.join(pkgs)} (missing: {' '.join(missing)})")
        prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(prefix + ["apt-get", "update"], check=True, timeout=600, env=env,
                           stdout=subprocess.DEVNULL)
            subprocess.run(prefix + ["apt-get", "install", "-y", "--no-install-recommends"] + pkgs,
                           check=True, timeout=600, env=env, stdout=subprocess.DEVNULL)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            if required:
                sys.exit(f"could not install {' '.join(pkgs)}: {e}")
            log(f"# could not install {' '.join(pkgs)}: {e}")
    paths = {}
    for b in binaries:
        p = which(b)
        if p is None:
            if required:
                sys.exit(f"{b} is still missing after apt-get install")
            continue
        paths[b] = p
    return paths


def ensure_python(modules: list[str], log=print) -> list[str]:
    """Install the missing Python modules into this interpreter's environment with pip (the
    ``bench`` extra lists them). Returns the modules still missing afterwards (never exits)."""
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pkgs = [PIP_PACKAGES.get(m, m) for m in missing]
        log(f"# pip installing {' '.join(pkgs)} into {sys.prefix}")
        try:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q"] + pkgs, timeout=600,
                           stdout=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError) as e:
            log(f"# pip install failed: {e}")
        importlib.invalidate_caches()
    return [m for m in modules if importlib.util.find_spec(m) is None]


#: importable module -> PyPI name
PIP_PACKAGES = {"py_spy": "py-spy", "aiohttp": "aiohttp", "matplotlib": "matplotlib",
                "pytest_benchmark": "pytest-benchmark"}


def render(template: str, dest: str, **fields) -> str:
    with open(os.path.join(TEMPLATES, template)) as f:
        text = string.Template(f.read()).substitute(**fields)
    with open(dest, "w") as f:
        f.write(text)
    return dest


def nginx_user_line() -> str:
    # As root, nginx would drop its worker to 'nobody', which cannot write our temp dir.
    return "user root;" if os.geteuid() == 0 else ""


def start_nginx(name: str, nginx: str, conf: str, tmp: str, port: int) -> Managed:
    test = subprocess.run([nginx, "-t", "-q", "-p", tmp, "-c", conf], capture_output=True,
                          text=True, timeout=30)
    if test.returncode != 0:
        raise StartError(f"{name}: nginx -t failed: {test.stderr.strip()[-800:]}")
    srv = Managed(name, [nginx, "-p", tmp, "-c", conf], tmp)
    if not wait_port(port, 10) or not srv.alive():
        tail = srv.tail()
        srv.stop()
        raise StartError(f"{name} failed to start: {tail}")
    return srv


class Origin:
    """nginx, one worker, ``return 200`` with a fixed 1 KiB body, keepalive_requests 100000."""

    #: second address it also listens on (the server workload's, for the two-sidecar topology)
    WORKLOAD_ADDR = "127.0.0.3"

    def __init__(self, nginx: str, tmp: str):
        self.nginx = nginx
        self.tmp = tmp
        self.port = 0
        self.server: Managed | None = None

    def start(self) -> None:
        # the same port free on both addresses (retry a few times if 127.0.0.3's is taken)
        for _ in range(20):
            self.port = free_port()
            with socket.socket() as probe:
                try:
                    probe.bind((self.WORKLOAD_ADDR, self.port))
                    break
                except OSError:
                    continue
        conf = render("origin.nginx.conf", os.path.join(self.tmp, "origin.nginx.conf"),
                      tmp=self.tmp, port=self.port, body=BODY.decode(), user_line=nginx_user_line(),
                      workload_addr=self.WORKLOAD_ADDR)
        self.server = start_nginx("origin", self.nginx, conf, self.tmp, self.port)
        status, body = http_get(self.port)
        if status != 200 or body != BODY:
            raise StartError(f"origin answered {status} with {len(body)} bytes, expected 200/{BODY_SIZE}")

    def stop(self) -> None:
        if self.server:
            self.server.stop()
