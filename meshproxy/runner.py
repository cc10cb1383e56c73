"""Process model: one process, or a supervisor with N workers on SO_REUSEPORT.

``--concurrency 1`` (the default) runs everything in one process: the data plane, the admin
server and the signal handlers. With ``--concurrency N > 1`` the supervisor loads and validates the
config, serves the admin endpoints (aggregating every worker's counters for one scrape) and starts
N worker processes (``python -m meshproxy.worker``); each worker binds the listeners with
SO_REUSEPORT, so the kernel spreads connections across them. Supervisor and worker talk over a
socketpair with one JSON message per line:

    supervisor -> worker  {"op": "apply", "snapshot": {...}}   {"op": "stats", "id": 7}
                          {"op": "drain", "timeout": 5.0}   {"op": "drain_listeners"}
    worker -> supervisor  {"op": "applied", "version": "...", "error": null}
                          {"op": "stats", "id": 7, "stats": {...}, "clusters": [...]}
                          {"op": "idle", "index": 0}  (drained, no connection left: with
                                                       exitOnZeroActiveConnections)

Signals (both modes): SIGHUP reloads the config from disk; an invalid config is logged and the
old snapshot keeps serving. SIGTERM/SIGINT drain: stop accepting, let in-flight requests finish
within the bootstrap's ``drainDuration``, exit 0. A worker that dies is restarted.
Admin ``POST /drain_listeners`` drains without exiting; with ``exitOnZeroActiveConnections``
(or ``EXIT_ON_ZERO_ACTIVE_CONNECTIONS=true``) the process exits 0 once no connection is left.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

from control.errors import ConfigError, ConfigIssue
from control.snapshot import Snapshot
from meshproxy import __version__
from meshproxy.core import COMPILED

log = logging.getLogger("meshproxy")


def _apply_error(e: OSError) -> str:
    """Why a snapshot could not be applied: a port, or the certificate files."""
    from meshproxy.tls import TlsError
    return str(e) if isinstance(e, TlsError) else f"cannot bind listeners: {e}"


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency; asyncio still works
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ConfigSource:
    """Where snapshots come from: a YAML file or directory, re-read on reload.

    Compilation runs in a short-lived child process (``python -m control.build``): the sidecar
    process never imports the YAML loader and the schema, and a slow or huge config cannot stall
    the event loop that is serving traffic.
    """

    def __init__(self, path: str, workload: Optional[str], overrides: dict):
        self.path = path
        self.workload = workload
        self.overrides = overrides

    def load(self) -> Snapshot:
        """Raises ConfigError listing every problem."""
        cmd = [sys.executable, "-m", "control.build", self.path,
               "--overrides", json.dumps(self.overrides)]
        if self.workload:
            cmd += ["--workload", self.workload]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
            out = json.loads(proc.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            detail = proc.stderr.decode(errors="replace").strip()[-500:] if "proc" in locals() else ""
            raise ConfigError([ConfigIssue(self.path, "", "", "", "",
                                           f"config compiler failed: {e} {detail}".strip())])
        if "issues" in out:
            raise ConfigError([ConfigIssue(**i) for i in out["issues"]])
        return Snapshot.from_dict(out["snapshot"])


def run(source: ConfigSource, snap: Snapshot) -> int:
    """Run the sidecar until SIGTERM/SIGINT; returns the process exit code."""
    if snap.bootstrap.concurrency > 1:
        return Supervisor(source, snap).run()
    return SingleProcess(source, snap).run()


def _log_snapshot(snap: Snapshot, what: str) -> None:
    listeners = ", ".join(f"{lst.name} {lst.address}:{lst.port}" for lst in snap.listeners)
    log.info("%s snapshot %s: %d clusters, %d endpoints; listeners: %s", what, snap.version,
             len(snap.clusters), sum(len(c.endpoints) for c in snap.clusters), listeners)
    for w in snap.warnings:
        log.warning("config: %s", w)


class _Process:
    """Runs the subclass's ``_main()`` on a fresh uvloop loop until it returns the exit code."""

    loop: asyncio.AbstractEventLoop

    def run(self) -> int:
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()


class SingleProcess(_Process):
    def __init__(self, source: ConfigSource, snap: Snapshot):
        self.source = source
        self.snap = snap
        self.loop = new_loop()
        self.stop = asyncio.Event()
        self.admin = None


    async def _main(self) -> int:
        from meshproxy.admin import start_admin
        from meshproxy.sidecar import Sidecar

        self.stop = asyncio.Event()
        sidecar = Sidecar(self.loop)
        self.sidecar = sidecar
        sidecar.quit = self._quit
        try:
            await sidecar.apply(self.snap)
        except OSError as e:
            log.error("%s", _apply_error(e))
            return 1
        b = self.snap.bootstrap
        try:
            self.admin = await start_admin(self.loop, b.admin_address, b.admin_port, sidecar,
                                           prometheus_port=b.prometheus_port or None,
                                           status_port=b.status_port or None)
        except OSError as e:
            log.error("cannot bind admin %s:%s: %s", b.admin_address, b.admin_port, e)
            await sidecar.drain(0)
            return 1
        _log_snapshot(self.snap, "serving")
        log.info("meshproxy %s ready (pid %d, %s core); admin http://%s:%d/", __version__,
                 os.getpid(), "compiled" if COMPILED else "pure-Python", b.admin_address,
                 b.admin_port)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self._reload()))
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stop.set)
        await self.stop.wait()
        log.info("draining (up to %.1fs)", self.sidecar.snapshot.bootstrap.drain_duration)
        await sidecar.drain(self.sidecar.snapshot.bootstrap.drain_duration)
        self.admin.close()
        log.info("stopped")
        return 0

    async def _quit(self):
        self.stop.set()

    async def _reload(self):
        try:
            snap = await self.loop.run_in_executor(None, self.source.load)
        except ConfigError as e:
            log.error("reload rejected, keeping snapshot %s:\n%s", self.sidecar.snapshot.version,
                      "\n".join(f"  {i}" for i in e.issues))
            return
        except Exception as e:  # noqa: BLE001 - a reload must never take the sidecar down
            log.error("reload failed, keeping snapshot %s: %s", self.sidecar.snapshot.version, e)
            return
        try:
            await self.sidecar.apply(snap)
        except OSError as e:
            log.error("reload rejected (%s), keeping snapshot %s", _apply_error(e),
                      self.sidecar.snapshot.version)
            return
        _log_snapshot(snap, "reloaded")


def _int_codes(snap: dict) -> dict:
    """A worker's stats snapshot as ``ClusterStats.snapshot()`` made it: the JSON line turned its
    int status-code keys into strings, which the merge and the renderers cannot compare."""
    codes = snap.get("codes")
    if codes:
        snap = dict(snap, codes={int(k): v for k, v in codes.items()})
    return snap


class WorkerHandle:
    """The supervisor's view of one worker process."""

    def __init__(self, index: int):
        self.index = index
        self.proc: Optional[subprocess.Popen] = None
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.waiters: dict = {}
        self.applied: Optional[asyncio.Future] = None
        self.version = None

    def send(self, msg: dict) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(msg).encode() + b"\n")


class Supervisor(_Process):
    """N workers under one supervisor that also serves admin."""

    def __init__(self, source: ConfigSource, snap: Snapshot):
        self.source = source
        self.snap = snap
        self.loop = new_loop()
        self.workers = [WorkerHandle(i) for i in range(snap.bootstrap.concurrency)]
        self.state = "PRE_INITIALIZING"
        self.stopping = False
        self.started = time.time()
        self._next_id = 0
        self._live: dict = {}  # worker index -> its cluster_infos() (for /clusters)
        self._idle: set = set()  # workers drained to zero connections (exitOnZeroActiveConnections)


    async def _main(self) -> int:
        from meshproxy.admin import start_admin

        self.stop = asyncio.Event()
        for w in self.workers:
            await self._spawn(w)
        results = await asyncio.gather(*(w.applied for w in self.workers))
        errors = [r for r in results if r]
        if errors:
            log.error("workers could not apply the config: %s", errors[0])
            await self._shutdown(0)
            return 1
        b = self.snap.bootstrap
        try:
            self.admin = await start_admin(self.loop, b.admin_address, b.admin_port, self,
                                           prometheus_port=b.prometheus_port or None,
                                           status_port=b.status_port or None)
        except OSError as e:
            log.error("cannot bind admin %s:%s: %s", b.admin_address, b.admin_port, e)
            await self._shutdown(0)
            return 1
        self.state = "LIVE"
        poller = self.loop.create_task(self._poll_live())
        _log_snapshot(self.snap, "serving")
        log.info("meshproxy %s ready: supervisor pid %d, %d workers (%s core); admin http://%s:%d/",
                 __version__, os.getpid(), len(self.workers),
                 "compiled" if COMPILED else "pure-Python", b.admin_address, b.admin_port)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self._reload()))
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self.stop.set)
        await self.stop.wait()
        self.state = "DRAINING"
        poller.cancel()
        await self._shutdown(self.snap.bootstrap.drain_duration)
        self.admin.close()
        log.info("stopped")
        return 0

    async def _spawn(self, w: WorkerHandle) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "meshproxy.worker", "--fd", str(child.fileno()),
             "--index", str(w.index), "--log-level", logging.getLevelName(log.getEffectiveLevel())],
            pass_fds=(child.fileno(),), env=env)
        child.close()
        w.reader, w.writer = await asyncio.open_connection(sock=parent, limit=64 * 1024 * 1024)
        w.applied = self.loop.create_future()
        self.loop.create_task(self._read_worker(w))
        w.send({"op": "apply", "snapshot": self.snap.to_dict()})

    async def _read_worker(self, w: WorkerHandle) -> None:
        proc = w.proc
        while True:
            try:
                line = await w.reader.readline()
            except (ConnectionError, asyncio.IncompleteReadError):
                line = b""
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            op = msg.get("op")
            if op == "applied":
                w.version = msg.get("version")
                if w.applied is not None and not w.applied.done():
                    w.applied.set_result(msg.get("error"))
            elif op == "idle":
                self._idle.add(w.index)
                if len(self._idle) == len(self.workers):
                    log.info("no active connection left in any worker: exiting "
                             "(exitOnZeroActiveConnections)")
                    self.stop.set()
            elif op == "stats":
                fut = w.waiters.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        # The worker went away.
        for fut in w.waiters.values():
            if not fut.done():
                fut.set_result(None)
        w.waiters.clear()
        if w.applied is not None and not w.applied.done():
            w.applied.set_result(f"worker {w.index} exited during start-up")
        code = await self.loop.run_in_executor(None, proc.wait)
        if not self.stopping and self.state == "LIVE":
            log.error("worker %d (pid %d) exited with %s; restarting", w.index, proc.pid, code)
            await asyncio.sleep(0.5)
            if not self.stopping:
                await self._spawn(w)

    async def _reload(self) -> None:
        try:
            snap = await self.loop.run_in_executor(None, self.source.load)
        except ConfigError as e:
            log.error("reload rejected, keeping snapshot %s:\n%s", self.snap.version,
                      "\n".join(f"  {i}" for i in e.issues))
            return
        except Exception as e:  # noqa: BLE001 - a reload must never take the supervisor down
            log.error("reload failed, keeping snapshot %s: %s", self.snap.version, e)
            return
        if snap.bootstrap.concurrency != self.snap.bootstrap.concurrency:
            log.warning("concurrency changes need a restart; keeping %d workers",
                        len(self.workers))
        for w in self.workers:
            w.applied = self.loop.create_future()
            w.send({"op": "apply", "snapshot": snap.to_dict()})
        results = await asyncio.gather(*(asyncio.wait_for(w.applied, 30) for w in self.workers),
                                       return_exceptions=True)
        errors = [r for r in results if r]
        if errors:
            log.error("reload partly rejected by workers: %s", errors[0])
            return
        self.snap = snap
        _log_snapshot(snap, "reloaded")

    async def _shutdown(self, timeout: float) -> None:
        self.stopping = True
        for w in self.workers:
            w.send({"op": "drain", "timeout": timeout})
        deadline = time.monotonic() + timeout + 5
        for w in self.workers:
            if w.proc is None:
                continue
            while w.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()

    # -- AdminProvider ---------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.state == "LIVE"

    def config_dump(self) -> dict:
        return {"snapshot": self.snap.to_dict(), "compiled_core": COMPILED,
                "workers": [{"index": w.index, "pid": w.proc.pid if w.proc else None,
                             "snapshot_version": w.version} for w in self.workers]}

    async def _ask_all(self) -> list:
        futs = []
        for w in self.workers:
            self._next_id += 1
            fut = self.loop.create_future()
            w.waiters[self._next_id] = fut
            w.send({"op": "stats", "id": self._next_id})
            futs.append(fut)
        done = await asyncio.gather(*(asyncio.wait_for(f, 5) for f in futs),
                                    return_exceptions=True)
        return [d for d in done if isinstance(d, dict)]

    async def stats(self) -> dict:
        from meshproxy.core import counters
        replies = await self._ask_all()
        by_cluster: dict = {}
        by_listener: dict = {}
        for r in replies:
            for s in r["stats"]["clusters"]:
                by_cluster.setdefault(s["name"], []).append(_int_codes(s))
            for s in r["stats"]["listeners"]:
                by_listener.setdefault(s["name"], []).append(_int_codes(s))
        w = self.snap.workload
        return {
            "clusters": [counters.merge(v) for v in by_cluster.values()],
            "listeners": [_merge_listener(v) for v in by_listener.values()],
            "workload": None if w is None else {"name": w.name, "namespace": w.namespace,
                                                "labels": dict(w.labels),
                                                "service_account": w.service_account},
        }

    def cluster_infos(self) -> list:
        """Every worker's clusters with per-endpoint numbers summed (polled once a second)."""
        merged: dict = {}
        order: list = []
        for infos in self._live.values():
            for c in infos:
                m = merged.get(c["name"])
                if m is None:
                    m = merged[c["name"]] = dict(c, endpoints=[dict(e) for e in c["endpoints"]])
                    order.append(c["name"])
                    continue
                by_addr = {(e["address"], e["port"]): e for e in m["endpoints"]}
                for e in c["endpoints"]:
                    t = by_addr.get((e["address"], e["port"]))
                    if t is None:
                        m["endpoints"].append(dict(e))
                        continue
                    for k in ("rq_active", "rq_total", "cx_active", "cx_idle"):
                        t[k] = t.get(k, 0) + e.get(k, 0)
                    if e.get("health") != "HEALTHY":
                        t["health"] = e.get("health")
                    for flag in e.get("health_flags") or ():
                        if flag not in t.setdefault("health_flags", []):
                            t["health_flags"].append(flag)
        if merged:
            return [merged[n] for n in order]
        return [{"name": c.name, "direction": c.direction, "service": c.service,
                 "namespace": c.namespace, "port": c.port, "lb_policy": c.lb_policy,
                 "endpoints": [{"address": e.address, "port": e.port, "health": "HEALTHY",
                                "weight": e.config_weight, "lb_weight": e.weight,
                                "priority": e.priority, "locality": e.locality,
                                "workload": e.workload, "sidecar": e.sidecar,
                                "rq_active": 0, "rq_total": 0, "cx_active": 0}
                               for e in c.endpoints]} for c in self.snap.clusters]

    async def _poll_live(self) -> None:
        """Keep each worker's cluster view fresh for /clusters (sync in the admin interface)."""
        while not self.stopping:
            for r in await self._ask_all():
                if "clusters" in r and "index" in r:
                    self._live[r["index"]] = r["clusters"]
            await asyncio.sleep(1.0)

    def server_info(self) -> dict:
        return {"version": __version__, "state": self.state,
                "uptime_s": int(time.time() - self.started), "concurrency": len(self.workers),
                "snapshot_version": self.snap.version, "compiled_core": COMPILED,
                "pid": os.getpid()}

    async def quit(self) -> None:
        self.stop.set()

    async def drain_listeners(self) -> None:
        log.info("draining listeners (admin /drain_listeners)")
        self.state = "DRAINING"
        for w in self.workers:
            w.send({"op": "drain_listeners"})


def _merge_listener(snaps: list) -> dict:
    """``counters.merge`` plus the listener's RBAC counters (``"rbac"``), summed over workers."""
    from meshproxy.core import counters
    out = counters.merge(snaps)
    rb = [s["rbac"] for s in snaps if "rbac" in s]
    if rb:
        out["rbac"] = {k: sum(d.get(k, 0) for d in rb) for k in rb[0]}
    return out
