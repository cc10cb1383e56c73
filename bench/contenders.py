"""The contenders: what wrk is pointed at, each in front of the same origin.

A contender has ``start(origin_port)``, ``stop()``, ``port`` (where wrk connects), ``host``
(the Host header wrk sends, or None), and ``pid`` (root of the process tree whose CPU time and RSS
are measured; None for ``direct``). ``start`` raises :class:`StartError` with a short, readable
reason; the run then reports that contender as failed and goes on with the others.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from origin import BODY, StartError, nginx_user_line, render, start_nginx
from procs import Managed, free_port, free_ports, http_get, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
#: the meshproxy source tree under test: MESHPROXY_SRC (e.g. a clean `git worktree` of a commit,
#: extensions built in place) or this checkout
SRC = os.path.abspath(os.environ.get("MESHPROXY_SRC") or REPO)
MESH_HOST = "origin.default.svc.cluster.local"


def check_proxied(name: str, port: int, host: str | None) -> None:
    """One request through the contender must come back 200 with the origin's body."""
    try:
        status, body = http_get(port, "/", host=host, timeout=5)
    except OSError as e:
        raise StartError(f"{name}: request through it failed: {e}")
    if status != 200 or body != BODY:
        raise StartError(f"{name}: answered {status} with {len(body)} bytes "
                         f"(expected 200 and the origin's {len(BODY)}-byte body): {body[:200]!r}")


class Contender:
    name = "?"
    description = ""
    #: binaries this contender needs (installed by apt-get when missing)
    needs: tuple[str, ...] = ()
    #: Python modules it needs in the venv (installed by pip when missing)
    pip: tuple[str, ...] = ()

    def __init__(self, tmp: str, paths: dict[str, str]):
        self.tmp = tmp
        self.paths = paths
        self.port = 0
        self.host: str | None = None
        self.server: Managed | None = None
        self.info: dict = {}

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server else None

    def alive(self) -> bool:
        return self.server is None or self.server.alive()

    def tail(self) -> str:
        return self.server.tail() if self.server else ""

    def start(self, origin_port: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server:
            self.server.stop()


class Direct(Contender):
    name = "direct"
    description = "wrk straight to the origin (the ceiling: no proxy hop)"

    def start(self, origin_port: int) -> None:
        self.port = origin_port

    def alive(self) -> bool:
        return True


class NginxProxy(Contender):
    name = "nginx"
    description = "nginx 1 worker, proxy_http_version 1.1, upstream keepalive 64"
    needs = ("nginx",)

    def start(self, origin_port: int) -> None:
        self.port = free_port()
        conf = render("proxy.nginx.conf", os.path.join(self.tmp, "proxy.nginx.conf"),
                      tmp=self.tmp, port=self.port, origin_port=origin_port,
                      user_line=nginx_user_line())
        self.server = start_nginx("proxy-nginx", self.paths["nginx"], conf, self.tmp, self.port)
        check_proxied(self.name, self.port, None)


class HAProxy(Contender):
    name = "haproxy"
    description = "HAProxy nbthread 1, mode http, http-reuse always"
    needs = ("haproxy",)

    def start(self, origin_port: int) -> None:
        self.port = free_port()
        conf = render("haproxy.cfg", os.path.join(self.tmp, "haproxy.cfg"),
                      tmp=self.tmp, port=self.port, origin_port=origin_port)
        haproxy = self.paths["haproxy"]
        test = subprocess.run([haproxy, "-c", "-q", "-f", conf], capture_output=True, text=True,
                              timeout=30)
        if test.returncode != 0:
            raise StartError(f"haproxy -c failed: {(test.stderr or test.stdout).strip()[-800:]}")
        # -db: foreground, no daemon; the process group is ours to stop.
        self.server = Managed("haproxy", [haproxy, "-db", "-f", conf], self.tmp)
        if not wait_port(self.port, 10) or not self.server.alive():
            raise StartError(f"haproxy failed to start: {self.server.tail()}")
        check_proxied(self.name, self.port, None)


def meshproxy_command() -> list[str]:
    """The meshproxy launcher: env MESHPROXY_CMD, else the venv's console script, else -m."""
    if os.environ.get("MESHPROXY_CMD"):
        return os.environ["MESHPROXY_CMD"].split()
    for bindir in (os.path.dirname(sys.executable), os.path.join(REPO, ".venv", "bin")):
        script = os.path.join(bindir, "meshproxy")
        if os.access(script, os.X_OK):
            return [script]
    venv_python = os.path.join(REPO, ".venv", "bin", "python")
    python = venv_python if os.access(venv_python, os.X_OK) else sys.executable
    return [python, "-m", "meshproxy"]


def _python_of(cmd: list[str]) -> str:
    """The interpreter behind a meshproxy command (for the COMPILED probe)."""
    if len(cmd) >= 3 and cmd[1] == "-m":
        return cmd[0]
    try:
        with open(cmd[0], "rb") as f:
            first = f.readline()
        if first.startswith(b"#!"):
            interp = first[2:].strip().split()[0].decode()
            if os.access(interp, os.X_OK):
                return interp
    except OSError:
        pass
    return sys.executable


class Meshproxy(Contender):
    name = "meshproxy"
    description = "meshproxy run --concurrency 1 (Cython hot path)"
    no_extensions = False
    concurrency = 1
    ready_timeout = 30.0

    def env(self) -> dict:
        env = dict(os.environ)
        env.pop("MESHPROXY_NO_EXTENSIONS", None)
        if meshproxy_command()[1:2] == ["-m"]:
            # not installed as a console script: run it from the source tree
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
        if self.no_extensions:
            env["MESHPROXY_NO_EXTENSIONS"] = "1"
        return env

    def probe_compiled(self, cmd: list[str]) -> None:
        """Record whether this interpreter/env picks the compiled hot path (meshproxy.core)."""
        try:
            r = subprocess.run([_python_of(cmd), "-c",
                                "import meshproxy.core as c; print(c.COMPILED)"],
                               capture_output=True, text=True, timeout=30, env=self.env(), cwd=SRC)
            self.info["compiled"] = r.stdout.strip() if r.returncode == 0 else None
            if r.returncode != 0:
                self.info["compiled_probe_error"] = r.stderr.strip()[-300:]
        except (OSError, subprocess.TimeoutExpired) as e:
            self.info["compiled"] = None
            self.info["compiled_probe_error"] = str(e)

    def start(self, origin_port: int) -> None:
        self.port, admin, prom, status = free_ports(4)
        self.host = MESH_HOST
        conf = render("meshproxy.yaml", os.path.join(self.tmp, f"{self.name}.yaml"),
                      port=self.port, origin_port=origin_port, admin_port=admin,
                      prom_port=prom, status_port=status)
        cmd = meshproxy_command()
        self.probe_compiled(cmd)
        argv = cmd + ["run", "--config", conf, "--concurrency", str(self.concurrency)]
        self.info["argv"] = argv
        self.server = Managed(self.name, argv, self.tmp, env=self.env())
        deadline = time.monotonic() + self.ready_timeout
        ready = False
        while time.monotonic() < deadline and self.server.alive():
            try:
                if http_get(admin, "/ready", timeout=1)[0] == 200:
                    ready = True
                    break
            except OSError:
                pass
            time.sleep(0.1)
        if not ready:
            why = ("exited with code %s" % self.server.proc.returncode if not self.server.alive()
                   else f"not ready after {self.ready_timeout:.0f}s")
            raise StartError(f"meshproxy failed to start ({why}): {_tail_lines(self.server.tail())}")
        try:
            check_proxied(self.name, self.port, self.host)
        except StartError as e:
            raise StartError(f"{e}; meshproxy stderr: {_tail_lines(self.server.tail(), 3)}")


class MeshproxyPy(Meshproxy):
    name = "meshproxy-py"
    description = "the same with MESHPROXY_NO_EXTENSIONS=1 (pure-Python twins)"
    no_extensions = True


class MeshproxyBase(Meshproxy):
    """Another build of meshproxy (e.g. the commit before a change), for before/after figures
    measured side by side: ``MESHPROXY_BASE_CMD=/path/to/checkout/.venv/bin/meshproxy``."""

    name = "meshproxy-base"
    description = "meshproxy from MESHPROXY_BASE_CMD (the build before a change)"

    def start(self, origin_port: int) -> None:
        base = os.environ.get("MESHPROXY_BASE_CMD")
        if not base:
            raise StartError("meshproxy-base needs MESHPROXY_BASE_CMD (a meshproxy launcher)")
        saved = os.environ.get("MESHPROXY_CMD")
        os.environ["MESHPROXY_CMD"] = base
        try:
            super().start(origin_port)
        finally:
            if saved is None:
                os.environ.pop("MESHPROXY_CMD", None)
            else:
                os.environ["MESHPROXY_CMD"] = saved


class MeshproxyC2(Meshproxy):
    name = "meshproxy-c2"
    description = "meshproxy run --concurrency 2 (supervisor + 2 workers on SO_REUSEPORT)"
    concurrency = 2


def _tail_lines(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-700:]


class PyRef(Contender):
    name = "pyref"
    description = "bench/pyref_proxy.py: minimal uvloop + httptools proxy (the budget's yardstick)"

    def start(self, origin_port: int) -> None:
        self.port = free_port()
        venv_python = os.path.join(REPO, ".venv", "bin", "python")
        python = venv_python if os.access(venv_python, os.X_OK) else sys.executable
        self.server = Managed("pyref", [python, os.path.join(HERE, "pyref_proxy.py"),
                                        str(self.port), str(origin_port)], self.tmp)
        if not wait_port(self.port, 15) or not self.server.alive():
            raise StartError(f"pyref failed to start: {_tail_lines(self.server.tail())}")
        check_proxied(self.name, self.port, None)


class AiohttpProxy(Contender):
    name = "aiohttp"
    description = ("bench/aiohttp_proxy.py: aiohttp reverse proxy on uvloop, one shared "
                   "ClientSession (keep-alive pool)")
    pip = ("aiohttp",)

    def start(self, origin_port: int) -> None:
        self.port = free_port()
        venv_python = os.path.join(REPO, ".venv", "bin", "python")
        python = venv_python if os.access(venv_python, os.X_OK) else sys.executable
        self.server = Managed("aiohttp", [python, os.path.join(HERE, "aiohttp_proxy.py"),
                                          str(self.port), str(origin_port)], self.tmp)
        if not wait_port(self.port, 20) or not self.server.alive():
            raise StartError(f"aiohttp proxy failed to start: {_tail_lines(self.server.tail())}")
        check_proxied(self.name, self.port, None)


CONTENDERS = {c.name: c for c in (Direct, Meshproxy, MeshproxyPy, MeshproxyC2, MeshproxyBase, NginxProxy,
                                  HAProxy, AiohttpProxy, PyRef)}
DEFAULT_ORDER = ["direct", "meshproxy", "meshproxy-py", "nginx", "haproxy", "aiohttp"]
#: also available, not run unless named in --contenders
EXTRA = ["meshproxy-c2", "meshproxy-base", "pyref"]
