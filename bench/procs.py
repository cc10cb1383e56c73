"""Process plumbing for the load benchmark: start in a process group, stop for sure, read /proc.

Every server the benchmark starts goes through :class:`Managed`: it runs in its own session (so its
own process group), its stdout/stderr go to files in the run's temp dir, and ``stop()`` sends
SIGTERM to the group and to every descendant it can still find, then SIGKILL after a grace period.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free ports (all sockets held open until every port is known)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: fields start after the last ')'.
        rest = data[data.rfind(b")") + 2:].split()
        ppid = int(rest[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if not os.path.exists(f"/proc/{p}"):
            continue
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


@dataclass
class CpuSample:
    user_s: float
    sys_s: float

    @property
    def total_s(self) -> float:
        return self.user_s + self.sys_s


def tree_cpu(pid: int) -> CpuSample:
    """CPU time used so far by ``pid``'s process tree (utime+stime, plus reaped children's)."""
    user = sys_ = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2:].split()
        # fields 14..17 (1-based) of stat: utime stime cutime cstime; rest[0] is field 3.
        utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
        user += utime + cutime
        sys_ += stime + cstime
    return CpuSample(user / CLK_TCK, sys_ / CLK_TCK)


def tree_rss(pid: int) -> int:
    """Resident set size in bytes, summed over ``pid``'s process tree (shared pages count twice)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def http_get(port: int, path: str = "/", host: Optional[str] = None, timeout: float = 2.0,
             addr: str = LOOPBACK):
    """GET http://addr:port/path; returns (status, body) or raises OSError."""
    req = urllib.request.Request(f"http://{addr}:{port}{path}")
    if host:
        req.add_header("Host", host)
    # Never go through an HTTP proxy from the environment: traffic stays on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raise_nofile(want: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``want`` (children inherit it)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_port(port: int, timeout: float, addr: str = LOOPBACK) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Managed:
    """A server process in its own process group, with output captured to files."""

    def __init__(self, name: str, argv: list[str], workdir: str, env: Optional[dict] = None):
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(workdir, f"{name}.out")
        self.err_path = os.path.join(workdir, f"{name}.err")
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
            start_new_session=True, env=env, cwd=workdir,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 1500) -> str:
        """The last ``n`` characters of stderr (or stdout if stderr is empty)."""
        for path in (self.err_path, self.out_path):
            try:
                with open(path, "rb") as f:
                    f.seek(0, os.SEEK_END)
                    size = f.tell()
                    f.seek(max(0, size - n))
                    text = f.read().decode("utf-8", "replace").strip()
            except OSError:
                text = ""
            if text:
                return text
        return "(no output)"

    def stop(self, grace: float = 3.0) -> None:
        pids = process_tree(self.pid) if self.alive() else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for p in pids:  # descendants that left the group (setsid) still get the signal
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                self.proc.wait(timeout=grace)
                # the leader is gone; give group members a moment, then SIGKILL what is left
                time.sleep(0.05)
                left = [p for p in pids if os.path.exists(f"/proc/{p}") and _not_zombie(p)]
                if not left:
                    break
            except subprocess.TimeoutExpired:
                continue
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self._out.close()
        self._err.close()


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rfind(b")") + 2:][:1] != b"Z"
    except OSError:
        return False
