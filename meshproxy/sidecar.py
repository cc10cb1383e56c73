"""The sidecar in one process: applies snapshots, owns listeners, and what admin reads.

``Sidecar.apply(snapshot)`` asks the cluster manager for the snapshot's clusters, builds each
listener's ``router.RouteContext`` (with the routes' filter chains) and ``ListenerContext``, binds
new listeners, then swaps each listener's context in one assignment: requests already in flight
keep the objects they started with. Pools, endpoints and counters are owned by the cluster manager
and survive reloads, so a reload neither drops warm connections nor resets metrics.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Optional

from control.snapshot import Snapshot
from meshproxy import __version__, tls
from meshproxy.cluster_manager import ClusterManager
from meshproxy.core import COMPILED, counters, http1conn, pathnorm, router, stream, timers
from meshproxy.filters import build_chain

log = logging.getLogger("meshproxy")


class Sidecar:
    """The data plane of one worker process, plus what its admin endpoints read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, reuse_port: bool = False,
                 worker_id: int = 0, http_filters: tuple = ()):
        """``http_filters``: user ``filters.FilterFactory``s appended to every route's chain."""
        self.loop = loop
        self.http_filters = tuple(http_filters)
        self.reuse_port = reuse_port
        self.worker_id = worker_id
        self.snapshot: Optional[Snapshot] = None
        self.cm = ClusterManager(loop)
        self.listener_stats: dict = {}  # listener name -> ClusterStats
        self.rbac_stats: dict = {}  # listener name -> rbac counters (kept across reloads)
        self.listeners: dict = {}  # listener name -> http1conn.Listener
        self.bound: dict = {}  # listener name -> (address, port)
        self.access_log = None
        self._access_log_key = None
        self.state = "PRE_INITIALIZING"
        self.started = time.time()
        self._tick_handle = None
        self._idle_task = None
        self.quit = None  # set by the runner: ``async quit()`` begins the process's drain
        self.on_idle = None  # ``async on_idle()`` after /drain_listeners with exit-on-zero; None: quit
        # Every downstream timeout of this worker (head, idle, stream idle) on one timing wheel.
        self.timers = timers.TimerWheel(loop, timers.RESOLUTION)

    @property
    def clusters(self) -> dict:
        """Cluster name -> the data plane's Cluster (the applied snapshot's)."""
        return self.cm.clusters

    @property
    def cluster_stats(self) -> dict:
        return self.cm.stats

    # -- snapshots -----------------------------------------------------------------------------

    async def apply(self, snap: Snapshot) -> None:
        """Make ``snap`` the active configuration (binding or moving listeners as needed).

        Raises:
            OSError: a listener could not be bound; the previous snapshot stays active.
        """
        b = snap.bootstrap
        access_log = self._access_log_for(b)
        tls_config = self._tls_for(b)
        self.cm.tls = tls_config
        clusters = self.cm.build(snap)

        def chain_for(lst):
            # A listener with AuthorizationPolicies gets the RBAC filter first on every route;
            # one without has no such filter at all.
            first = ()
            if lst.authorization:
                from meshproxy.filters import rbac  # loaded only when a policy applies
                counts = self.rbac_stats.setdefault(lst.name, rbac.new_stats())
                first = (rbac.factory(lst.authorization, counts, lst.name),)

            def chain(route, request_edit, response_edit):
                return build_chain(route, request_edit, response_edit, clusters, self.http_filters, first)
            return chain

        contexts = {}
        for lst in snap.listeners:
            stats = self.listener_stats.get(lst.name)
            if stats is None:
                stats = self.listener_stats[lst.name] = counters.ClusterStats(lst.name)
            contexts[lst.name] = stream.ListenerContext(
                lst.name, router.build_route_context(lst, clusters, chain_for(lst)), stats, access_log,
                max_head_size=b.limits.max_request_headers_kb * 1024,
                max_request_line=b.limits.max_request_line,
                max_headers=b.limits.max_headers, version=snap.version,
                path_normalization=pathnorm.MODES[b.path_normalization])
        # Bind new listeners (or moved ones) before switching anything, so a failure changes
        # nothing.
        new_servers = {}
        try:
            for lst in snap.listeners:
                addr = (lst.address, lst.port)
                # Inbound with certificates: TLS and plaintext on one port (PERMISSIVE).
                mtls = tls_config is not None and lst.direction == "inbound"
                if (self.bound.get(lst.name) == addr and lst.name in self.listeners
                        and (self.listeners[lst.name].tls_id is not None) == mtls):
                    continue
                listener = http1conn.Listener(contexts[lst.name], self.loop, self.timers)
                listener.configure(b.limits)
                if mtls:
                    listener.tls_id = tls_config.spiffe_id
                    server = tls.PermissiveServer(self.loop, listener.protocol_factory, lst.address,
                                                  lst.port, tls_config.server, self.reuse_port)
                else:
                    server = await self.loop.create_server(
                        listener.protocol_factory, lst.address, lst.port,
                        reuse_port=self.reuse_port or None, backlog=2048)
                listener.server = server
                new_servers[lst.name] = (listener, addr)
        except OSError:
            for listener, _ in new_servers.values():
                listener.server.close()
            raise
        # Switch.
        for name, listener in list(self.listeners.items()):
            if name in new_servers or name not in contexts:
                listener.server.close()
                listener.drain()
                del self.listeners[name]
                self.bound.pop(name, None)
            else:
                listener.ctx = contexts[name]
                listener.configure(b.limits)
        for name, (listener, addr) in new_servers.items():
            self.listeners[name] = listener
            self.bound[name] = addr
        self.snapshot = snap
        await self.cm.commit(snap, clusters)
        if self.state == "PRE_INITIALIZING":
            self.state = "LIVE"
            self._tick()

    def _tls_for(self, b):
        """The TlsConfig of the Bootstrap's certificates (kept while the files do not change)."""
        c = b.certificates
        if c is None:
            return None
        paths = (c.certificate_chain, c.private_key, c.ca_certificates)
        cur = self.cm.tls
        if cur is not None and cur.paths == paths and cur.stamp == tls.files_stamp(paths):
            return cur
        return tls.TlsConfig(*paths)

    def _check_certificates(self) -> None:
        """Rotation: certificate files rewritten (``meshproxy ca issue`` again, cert-manager...)
        are loaded for new connections; established ones keep theirs, nothing is dropped."""
        cur = self.cm.tls
        if cur is None or cur.stamp == tls.files_stamp(cur.paths):
            return
        try:
            new = tls.TlsConfig(*cur.paths)
        except tls.TlsError as e:
            log.warning("certificates changed but cannot be used (keeping the loaded ones): %s", e)
            cur.stamp = tls.files_stamp(cur.paths)  # (tried: wait for the next change)
            return
        self.cm.tls = new
        for pool in self.cm.pools.values():
            if pool.ssl is not None:
                pool.ssl = new.client
        for listener in self.listeners.values():
            if listener.tls_id is not None:
                listener.tls_id = new.spiffe_id
                listener.server.ctx = new.server
        log.info("certificates reloaded: %s", new.spiffe_id)

    def _access_log_for(self, b):
        key = (b.access_log_file, b.access_log_encoding, b.access_log_format)
        if not b.access_log_file:
            if self.access_log is not None:
                self.access_log.close()
            self.access_log, self._access_log_key = None, key
            return None
        if key != self._access_log_key:
            from meshproxy.accesslog import AccessLog
            new = AccessLog(b.access_log_file, b.access_log_encoding, b.access_log_format)
            if self.access_log is not None:
                self.access_log.close()
            self.access_log, self._access_log_key = new, key
        return self.access_log

    # -- housekeeping --------------------------------------------------------------------------

    def _tick(self):
        """Once a second: the Date header, idle-connection expiry, access-log flush."""
        stream.set_date(http_date())
        self.cm.tick(time.monotonic())
        if self.cm.tls is not None:
            self._check_certificates()
        if self.access_log is not None:
            self.access_log.flush()
        self._tick_handle = self.loop.call_later(1.0, self._tick)

    def _stop_listeners(self) -> None:
        self.state = "DRAINING"
        for listener in self.listeners.values():
            listener.server.close()
            listener.drain()

    def active_connections(self) -> int:
        return sum(len(listener.connections) for listener in self.listeners.values())

    async def drain_listeners(self) -> None:
        """Envoy's ``POST /drain_listeners``: stop accepting, close idle keep-alive connections,
        close busy ones after their response; the process keeps running (admin still answers)
        until SIGTERM or /quitquitquit, unless ``exit_on_zero_active_connections`` is set: then
        it exits as soon as no connection is active (Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS)."""
        log.info("draining listeners (admin /drain_listeners)")
        self._stop_listeners()
        b = self.snapshot.bootstrap if self.snapshot else None
        if b is not None and b.exit_on_zero_active_connections and self._idle_task is None:
            self._idle_task = self.loop.create_task(self._exit_when_idle())

    async def _exit_when_idle(self) -> None:
        while self.active_connections():
            await asyncio.sleep(0.05)
        log.info("no active connection left while draining: exiting (exitOnZeroActiveConnections)")
        if self.on_idle is not None:
            await self.on_idle()
        elif self.quit is not None:
            await self.quit()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout`` s), then close."""
        self._stop_listeners()
        if self._idle_task is not None and self._idle_task is not asyncio.current_task():
            self._idle_task.cancel()
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            if not any(listener.connections for listener in self.listeners.values()):
                break
            await asyncio.sleep(0.05)
        for listener in self.listeners.values():
            for c in list(listener.connections):
                c._close()
        self.cm.close()
        if self.access_log is not None:
            self.access_log.flush()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.timers.stop()

    # -- what the admin endpoints read (AdminProvider) -------------------------------------

    def ready(self) -> bool:
        """LIVE: the first snapshot is applied and every one of its listeners is bound."""
        return (self.state == "LIVE" and self.snapshot is not None
                and all(lst.name in self.listeners for lst in self.snapshot.listeners))

    def config_dump(self) -> dict:
        d = self.snapshot.to_dict() if self.snapshot else {}
        return {"snapshot": d, "compiled_core": COMPILED}

    def cluster_infos(self) -> list:
        return self.cm.cluster_infos(self.snapshot)

    def local_stats(self) -> dict:
        listeners = []
        for name, s in self.listener_stats.items():
            snap = s.snapshot()
            if name in self.rbac_stats:
                snap["rbac"] = dict(self.rbac_stats[name])  # http.<listener>.rbac.*
            listeners.append(snap)
        return {
            "clusters": [s.snapshot() for s in self.cm.stats.values()],
            "listeners": listeners,
        }

    async def stats(self) -> dict:
        d = self.local_stats()
        d["workload"] = _workload_dict(self.snapshot)
        return d

    def server_info(self) -> dict:
        return {
            "version": __version__, "state": self.state,
            "uptime_s": int(time.time() - self.started), "concurrency": 1,
            "snapshot_version": self.snapshot.version if self.snapshot else None,
            "compiled_core": COMPILED, "pid": os.getpid(),
            "active_connections": self.active_connections(),
        }


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(t: Optional[float] = None) -> bytes:
    """RFC 9110 IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), locale-independent."""
    g = time.gmtime(t)
    return ("%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[g.tm_wday], g.tm_mday, _MONTHS[g.tm_mon - 1], g.tm_year, g.tm_hour, g.tm_min,
        g.tm_sec)).encode("ascii")


def _workload_dict(snap: Optional[Snapshot]):
    if snap is None or snap.workload is None:
        return None
    w = snap.workload
    return {"name": w.name, "namespace": w.namespace, "labels": dict(w.labels),
            "service_account": w.service_account}
