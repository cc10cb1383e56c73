"""The sidecar in one process: applies snapshots, owns listeners, pools and counters.

``Sidecar.apply(snapshot)`` builds the data plane's runtime objects (``conn.Cluster``,
``conn.ProxyContext``) from a ``control.snapshot.Snapshot`` and swaps each listener's context in
one assignment: requests already in flight keep the objects they started with. Endpoints (and
their idle upstream connections) and counters are keyed by address and by name and survive
reloads, so a reload neither drops warm connections nor resets metrics.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Optional

from control.snapshot import Snapshot
from meshproxy import __version__
from meshproxy import dns as dns_mod
from meshproxy.core import COMPILED, conn, counters, router

log = logging.getLogger("meshproxy")

#: DNS clusters are re-resolved when their records' TTL runs out (checked every DNS_TICK s), or
#: after DNS_RETRY s when resolution failed; the first resolution may hold up applying a snapshot
#: for DNS_FIRST_TIMEOUT s.
DNS_TICK = 0.5
DNS_RETRY = 5.0
DNS_FIRST_TIMEOUT = 5.0


class Sidecar:
    """The data plane of one worker process, plus what its admin endpoints read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, reuse_port: bool = False,
                 worker_id: int = 0):
        self.loop = loop
        self.reuse_port = reuse_port
        self.worker_id = worker_id
        self.snapshot: Optional[Snapshot] = None
        self.endpoints: dict = {}  # (address, port) -> conn.Endpoint
        self.cluster_stats: dict = {}  # cluster name -> ClusterStats
        self.listener_stats: dict = {}  # listener name -> ClusterStats
        self.clusters: dict = {}  # cluster name -> conn.Cluster (current snapshot)
        self.listeners: dict = {}  # listener name -> conn.Listener
        self.bound: dict = {}  # listener name -> (address, port)
        self.access_log = None
        self._access_log_key = None
        self.state = "PRE_INITIALIZING"
        self.started = time.time()
        self._tick_handle = None
        self._closed = asyncio.Event()
        self.dns_clusters: list = []
        self.dns_due: dict = {}  # cluster name -> monotonic time its records expire
        self.resolver = None
        self._dns_task = None

    # -- snapshots -----------------------------------------------------------------------------

    async def apply(self, snap: Snapshot) -> None:
        """Make ``snap`` the active configuration (binding or moving listeners as needed).

        Raises:
            OSError: a listener could not be bound; the previous snapshot stays active.
        """
        b = snap.bootstrap
        access_log = self._access_log_for(b)
        clusters = {}
        dns = []
        live = set()
        for c in snap.clusters:
            stats = self.cluster_stats.get(c.name)
            if stats is None:
                stats = self.cluster_stats[c.name] = counters.ClusterStats(c.name)
            eps = []
            for e in c.endpoints:
                key = (e.address, e.port)
                ep = self.endpoints.get(key)
                if ep is None:
                    ep = self.endpoints[key] = conn.Endpoint(e.address, e.port)
                ep.connect_timeout = c.connect_timeout
                ep.idle_timeout = c.idle_timeout
                ep.max_idle = c.max_idle_per_endpoint
                live.add(key)
                eps.append(ep)
            weights = [e.weight for e in c.endpoints]
            priorities = [e.priority for e in c.endpoints]
            clusters[c.name] = conn.Cluster(
                c.name, eps, weights, stats, c, c.lb_policy, c.hash_policy, priorities,
                passthrough=c.resolution == "NONE" or c.lb_policy == "PASSTHROUGH",
                default_port=c.port)
            if c.resolution in ("DNS", "DNS_ROUND_ROBIN"):
                dns.append(clusters[c.name])
        contexts = {}
        for lst in snap.listeners:
            stats = self.listener_stats.get(lst.name)
            if stats is None:
                stats = self.listener_stats[lst.name] = counters.ClusterStats(lst.name)
            routes = {}
            tables = {}
            wildcards = []
            route_names = {}
            for vh in lst.virtual_hosts:
                if not vh.routes:
                    continue
                if len(vh.routes) == 1 and vh.routes[0].is_simple:
                    # The fast path: the domain maps straight to its cluster.
                    target = clusters.get(vh.routes[0].cluster)
                    if target is None:
                        continue
                    into = routes
                else:
                    target = router.RouteTable(vh.name, vh.routes, clusters)
                    into = tables
                for d in vh.domains:
                    if d.startswith("*"):
                        wildcards.append((d[1:].encode("ascii"), target))
                        continue
                    into[d.encode("ascii")] = target
                    route_names[d.encode("ascii")] = vh.routes[0].name
            wildcards.sort(key=lambda w: -len(w[0]))
            default = clusters.get(lst.default_cluster) if lst.default_cluster else None
            contexts[lst.name] = conn.ProxyContext(
                lst.name, routes, default, stats, access_log,
                max_head_size=b.limits.max_request_headers_kb * 1024,
                max_request_line=b.limits.max_request_line,
                max_headers=b.limits.max_headers, version=snap.version,
                route_names=route_names, tables=tables or None, wildcards=wildcards or None)
        # Bind new listeners (or moved ones) before switching anything, so a failure changes
        # nothing.
        new_servers = {}
        try:
            for lst in snap.listeners:
                addr = (lst.address, lst.port)
                if self.bound.get(lst.name) == addr and lst.name in self.listeners:
                    continue
                listener = conn.Listener(contexts[lst.name], self.loop)
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
        for name, (listener, addr) in new_servers.items():
            self.listeners[name] = listener
            self.bound[name] = addr
        self.clusters = clusters
        self.snapshot = snap
        # DNS clusters: resolve now (bounded), then every DNS_REFRESH seconds off the hot path.
        self.dns_clusters = dns
        if dns:
            self.resolver = dns_mod.Resolver(list(b.dns_servers) or None)
            await asyncio.wait([asyncio.ensure_future(self._resolve(c)) for c in dns],
                               timeout=DNS_FIRST_TIMEOUT)
            if self._dns_task is None:
                self._dns_task = self.loop.create_task(self._dns_loop())
        # Endpoints no longer in any cluster: close their idle connections.
        for key in [k for k in self.endpoints if k not in live]:
            self.endpoints.pop(key).close_idle()
        if self.state == "PRE_INITIALIZING":
            self.state = "LIVE"
            self._tick()

    async def _resolve(self, cluster) -> None:
        """Resolve a DNS / DNS_ROUND_ROBIN cluster's hosts and install the addresses; the next
        resolution is due when the shortest record TTL runs out (Envoy's respect_dns_ttl)."""
        info = cluster.info
        eps, weights = [], []
        next_in = dns_mod.MAX_TTL
        for hostname, port, weight in info.dns_hosts:
            try:
                seen, ttl = await self.resolver.resolve(hostname, port)
            except (OSError, UnicodeError, ValueError) as e:
                log.warning("dns: cannot resolve %s for %s: %s", hostname, cluster.name, e)
                next_in = min(next_in, DNS_RETRY)
                continue
            next_in = min(next_in, ttl)
            if info.resolution == "DNS_ROUND_ROBIN":
                seen = seen[:1]  # Envoy's LOGICAL_DNS: one address for new connections
            for a in seen:
                key = (a, port)
                ep = self.endpoints.get(key)
                if ep is None:
                    ep = self.endpoints[key] = conn.Endpoint(a, port)
                ep.connect_timeout = info.connect_timeout
                ep.idle_timeout = info.idle_timeout
                ep.max_idle = info.max_idle_per_endpoint
                eps.append(ep)
                weights.append(max(1, weight))
        self.dns_due[cluster.name] = time.monotonic() + next_in
        old = [(e.address, e.port) for e in cluster.endpoints]
        if [(e.address, e.port) for e in eps] != old:
            if eps or not cluster.endpoints:
                cluster.set_endpoints(eps, weights)
                log.info("dns: %s -> %s", cluster.name,
                         ", ".join(e.host for e in eps) or "(no addresses)")

    async def _dns_loop(self) -> None:
        while self.state != "DRAINING":
            await asyncio.sleep(DNS_TICK)
            now = time.monotonic()
            for c in list(self.dns_clusters):
                if self.dns_due.get(c.name, 0.0) <= now:
                    await self._resolve(c)

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
        now = time.monotonic()
        conn.set_date(http_date())
        for ep in self.endpoints.values():
            if ep.idle:
                ep.sweep(now)
        conn.revive(self.endpoints.values(), now)
        if self.access_log is not None:
            self.access_log.flush()
        self._tick_handle = self.loop.call_later(1.0, self._tick)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout`` s), then close."""
        self.state = "DRAINING"
        for listener in self.listeners.values():
            listener.server.close()
            listener.drain()
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            if not any(listener.connections for listener in self.listeners.values()):
                break
            await asyncio.sleep(0.05)
        for listener in self.listeners.values():
            for c in list(listener.connections):
                c._close()
        for ep in self.endpoints.values():
            ep.close_idle()
        if self.access_log is not None:
            self.access_log.flush()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self._dns_task is not None:
            self._dns_task.cancel()
            self._dns_task = None

    # -- what the admin endpoints read (AdminProvider) -------------------------------------

    def ready(self) -> bool:
        return self.state == "LIVE"

    def config_dump(self) -> dict:
        d = self.snapshot.to_dict() if self.snapshot else {}
        return {"snapshot": d, "compiled_core": COMPILED}

    def cluster_infos(self) -> list:
        out = []
        snap = self.snapshot
        if snap is None:
            return out
        for c in snap.clusters:
            eps = []
            endpoints = c.endpoints
            live = self.clusters.get(c.name)
            if c.resolution in ("DNS", "DNS_ROUND_ROBIN") and live is not None:
                # DNS clusters: the addresses resolved now, not the names in the config.
                endpoints = [_Resolved(ep, c) for ep in live.endpoints]
            for e in endpoints:
                ep = self.endpoints.get((e.address, e.port))
                eps.append({
                    "address": e.address, "port": e.port, "health": ep.health if ep else "UNKNOWN",
                    "weight": e.weight, "locality": e.locality, "workload": e.workload,
                    "sidecar": e.sidecar, "rq_active": ep.rq_active if ep else 0,
                    "rq_total": ep.rq_total if ep else 0, "cx_active": ep.cx_active if ep else 0,
                    "cx_idle": len(ep.idle) if ep else 0,
                })
            out.append({"name": c.name, "direction": c.direction, "service": c.service,
                        "namespace": c.namespace, "port": c.port, "lb_policy": c.lb_policy,
                        "endpoints": eps})
        return out

    def local_stats(self) -> dict:
        return {
            "clusters": [s.snapshot() for s in self.cluster_stats.values()],
            "listeners": [s.snapshot() for s in self.listener_stats.values()],
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
        }


class _Resolved:
    """A resolved DNS endpoint shown like a snapshot Endpoint in /clusters."""

    def __init__(self, ep, c):
        self.address = ep.address
        self.port = ep.port
        self.weight = 1
        self.locality = ""
        self.workload = ""
        self.sidecar = False
        self.hostname = ",".join(h for h, _, _ in c.dns_hosts)


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
