"""The cluster manager: clusters, their endpoints, connection pools, DNS refresh, endpoint health.

It turns a snapshot's clusters into the data plane's ``cluster.Cluster`` objects and keeps what
must outlive a reload:

* **pools**, keyed by (address, port, transport, protocol): warm connections stay warm across
  reloads, and a connection is only ever reused for a request that needs the same transport;
* **endpoints**, keyed by (cluster, address, port): live request counts and health (an ejected
  endpoint stays ejected through a reload);
* **counters** and **circuit breakers** (``cluster.Resources``: the limits and what they count),
  keyed by cluster name.

Each cluster carries its own settings (connect timeout, idle timeout, idle connections kept), so
two clusters reaching the same address each behave as configured. ``DNS`` and ``DNS_ROUND_ROBIN``
clusters are resolved here, off the hot path, again when the shortest record TTL runs out (Envoy's
``respect_dns_ttl``). ``tick()`` (once a second) expires idle connections and returns ejected
endpoints whose time is over.

Active health checks (clusters whose snapshot entry has a ``health_check``) run in
``control.health.HealthChecker``; its results come back through ``set_active_health``, the one
way an endpoint's ``H_ACTIVE_HC`` bit is set or cleared (results computed elsewhere, e.g. by a
control-plane server, would enter there too).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time

from meshproxy import dns as dns_mod
# H_* are C constants in the compiled build: the pure module's values are the same.
from meshproxy._py.cluster import H_ACTIVE_HC, H_OUTLIER
from meshproxy.core import cluster as cl
from meshproxy.core import counters

log = logging.getLogger("meshproxy")

#: DNS clusters are re-resolved when their records' TTL runs out (checked every DNS_TICK s), or
#: after DNS_RETRY s when resolution failed; the first resolution may hold up applying a snapshot
#: for DNS_FIRST_TIMEOUT s.
DNS_TICK = 0.5
DNS_RETRY = 5.0
DNS_FIRST_TIMEOUT = 5.0


class ClusterManager:
    """Owns the data plane's clusters, endpoints and pools in one worker process."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pools: dict = {}  # pool key -> cluster.Pool
        self.endpoints: dict = {}  # (cluster name, address, port) -> cluster.Endpoint
        self.stats: dict = {}  # cluster name -> counters.ClusterStats
        self.resources: dict = {}  # cluster name -> cluster.Resources (circuit breakers)
        self.clusters: dict = {}  # cluster name -> cluster.Cluster (the applied snapshot's)
        self.dns_clusters: list = []
        self.dns_due: dict = {}  # cluster name -> monotonic time its records expire
        self.resolver = None
        self._dns_task = None
        self._closing = False
        self.tls = None  # meshproxy.tls.TlsConfig when the sidecar has certificates (auto mTLS)
        self.checker = None  # control.health.HealthChecker, made when a cluster is health-checked
        self.hc_targets: dict = {}  # Target -> [cluster name]

    # -- building ------------------------------------------------------------------------------

    def pool_for(self, address: str, port: int, transport=cl.TRANSPORT_PLAINTEXT,
                 protocol=cl.PROTOCOL_HTTP1, scope: str = ""):
        """The pool for a key, made on first use (``scope``: a cluster whose pools are its own)."""
        key = cl.pool_key(address, port, transport, protocol, scope)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = cl.Pool(key)
            if transport.startswith(cl.TRANSPORT_ISTIO_MUTUAL):
                pool.ssl = self.tls.client
                pool.identity = transport.split("|", 1)[1]
        return pool

    def endpoint(self, cluster_name: str, address: str, port: int, scope: str = "",
                 identity: str = ""):
        """The cluster's endpoint for ``address:port`` (kept across reloads), on the shared pool
        or, with ``scope``, on a pool of the cluster's own. ``identity``: the SPIFFE ID of a
        sidecar endpoint: with certificates, it is dialled with mutual TLS and must present it."""
        transport = cl.TRANSPORT_PLAINTEXT
        if identity and self.tls is not None:
            transport = f"{cl.TRANSPORT_ISTIO_MUTUAL}|{identity}"
        key = (cluster_name, address, port)
        ep = self.endpoints.get(key)
        if ep is None:
            ep = self.endpoints[key] = cl.Endpoint(address, port, self.pool_for(
                address, port, transport, scope=scope))
        elif ep.pool.key[4] != scope or ep.pool.key[2] != transport:
            ep.pool = self.pool_for(address, port, transport, scope=scope)
        return ep

    def build(self, snap) -> dict:
        """New Cluster objects for ``snap`` (nothing is switched until ``commit``)."""
        clusters = {}
        for c in snap.clusters:
            stats = self.stats.get(c.name)
            if stats is None:
                stats = self.stats[c.name] = counters.ClusterStats(c.name)
            passthrough = c.resolution == "NONE" or c.lb_policy == "PASSTHROUGH"
            res = self._resources(c)
            # A connection limit counts the cluster's own connections: it gets pools of its own
            # (Envoy's pools are per cluster); otherwise pools are shared by address.
            scope = c.name if res.max_connections < cl.MAX_UNLIMITED else ""
            pool_for = self.pool_for if not scope else functools.partial(self.pool_for, scope=scope)
            cluster = cl.Cluster(
                c.name, stats, c, c.lb_policy, c.hash_policy,
                connect_timeout=c.connect_timeout, idle_timeout=c.idle_timeout,
                max_idle=c.max_idle_per_endpoint, passthrough=passthrough,
                default_port=c.port, pool_for=pool_for, resources=res)
            cb = c.circuit_breakers
            cluster.max_requests_per_connection = cb.max_requests_per_connection
            cluster.max_connection_duration = cb.max_connection_duration
            od = c.outlier_detection
            if od is not None:
                cluster.detector = cl.OutlierDetection(
                    cluster, od.consecutive_5xx, od.consecutive_gateway, od.consecutive_local_origin,
                    od.split_external_local_origin_errors, od.interval, od.base_ejection_time,
                    od.max_ejection_time, float(od.max_ejection_percent))
                cluster.panic_threshold = float(od.min_health_percent)
            eps = [self.endpoint(c.name, e.address, e.port, scope, e.identity) for e in c.endpoints]
            # Weights and priorities (locality failover) were computed by control.
            cluster.set_endpoints(eps, [e.weight for e in c.endpoints],
                                  [e.priority for e in c.endpoints])
            old = self.clusters.get(c.name)
            if old is not None:
                if old.endpoints and c.resolution in ("DNS", "DNS_ROUND_ROBIN"):
                    # Keep the resolved addresses until the next resolution.
                    cluster.set_endpoints(old.endpoints, old.weights, old.priorities)
                # Ejected endpoints stay ejected, and come back when their time is over; the
                # ejection counters go on (per-endpoint state lives on the shared Endpoints).
                cluster.detector.take_state(old.detector)
            clusters[c.name] = cluster
        return clusters

    def _resources(self, c):
        """The circuit breakers of snapshot cluster ``c``: its name's Resources with ``c``'s
        limits (the counts carry on through reloads)."""
        res = self.resources.get(c.name)
        if res is None:
            res = self.resources[c.name] = cl.Resources()
        cb = c.circuit_breakers
        rb = c.retry_budget
        res.configure(cb.max_connections, cb.max_pending_requests, cb.max_requests,
                      cb.max_retries, rb.percent if rb is not None else -1.0,
                      rb.min_retry_concurrency if rb is not None else 3,
                      rb.budget_interval if rb is not None else 0.0)
        return res

    async def commit(self, snap, clusters: dict) -> None:
        """Make ``clusters`` current: resolve DNS clusters (bounded), drop unused pools."""
        self.clusters = clusters
        b = snap.bootstrap
        self.dns_clusters = [clusters[c.name] for c in snap.clusters
                             if c.resolution in ("DNS", "DNS_ROUND_ROBIN")]
        if self.dns_clusters:
            self.resolver = dns_mod.Resolver(list(b.dns_servers) or None)
            await asyncio.wait([asyncio.ensure_future(self._resolve(c))
                                for c in self.dns_clusters], timeout=DNS_FIRST_TIMEOUT)
            if self._dns_task is None:
                self._dns_task = self.loop.create_task(self._dns_loop())
        self._forget_unused()
        self._sync_health()

    # -- active health checks ------------------------------------------------------------------

    def _sync_health(self) -> None:
        """Check the current clusters' endpoints, and make every endpoint's H_ACTIVE_HC bit
        agree with the checker (a new cluster over a failing address starts out of rotation; a
        cluster whose HealthCheck went away gets its endpoints back)."""
        targets: dict = {}
        for c in self.clusters.values():
            hc = c.info.health_check if c.info is not None else None
            if hc is None:
                continue
            # imported with the first HealthCheck: a sidecar without one never loads the checker
            from control.health import Target
            for ep in c.endpoints:
                targets.setdefault(Target(ep.address, ep.port, hc, c.info.service), []).append(c.name)
        self.hc_targets = targets
        if targets and self.checker is None and not self._closing:
            from control.health import HealthChecker
            self.checker = HealthChecker(self._hc_changed, active=self._hc_active)
        if self.checker is not None:
            self.checker.set_targets(targets)
        failing = {(name, t.address, t.port) for t, names in targets.items()
                   if not self.checker.healthy(t) for name in names}
        for c in self.clusters.values():
            changed = False
            for ep in c.endpoints:
                if ep.set_health_flag(H_ACTIVE_HC, (c.name, ep.address, ep.port) in failing):
                    changed = True
            if changed:
                c.health_changed()

    def _hc_changed(self, target, healthy: bool) -> None:
        for name in self.hc_targets.get(target, ()):
            self.set_active_health(name, target.address, target.port, healthy)

    def _hc_active(self, target) -> bool:
        """Has a cluster checked through ``target`` carried traffic (else noTrafficInterval)?"""
        for name in self.hc_targets.get(target, ()):
            c = self.clusters.get(name)
            if c is not None and any(ep.rq_total for ep in c.endpoints):
                return True
        return False

    def set_active_health(self, cluster_name: str, address: str, port: int, healthy: bool) -> None:
        """An active health-check result for one endpoint of one cluster: clear or set its
        H_ACTIVE_HC bit (it leaves the picker while any H_* bit is set)."""
        ep = self.endpoints.get((cluster_name, address, port))
        cluster = self.clusters.get(cluster_name)
        if ep is None or cluster is None:
            return
        if ep.set_health_flag(H_ACTIVE_HC, not healthy):
            cluster.health_changed()

    def _forget_unused(self) -> None:
        live_eps = set()
        live_pools = set()
        for c in self.clusters.values():
            for ep in c.endpoints:
                live_eps.add((c.name, ep.address, ep.port))
                live_pools.add(ep.pool.key)
            if c.original:
                for ep in c.original.values():
                    live_pools.add(ep.pool.key)
        for key in [k for k in self.endpoints if k not in live_eps]:
            del self.endpoints[key]
        for key in [k for k in self.pools if k not in live_pools]:
            self.pools.pop(key).close_idle()

    # -- DNS -------------------------------------------------------------------------------------

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
                eps.append(self.endpoint(cluster.name, a, port))
                weights.append(max(1, weight))
        self.dns_due[cluster.name] = time.monotonic() + next_in
        old = [(e.address, e.port) for e in cluster.endpoints]
        if [(e.address, e.port) for e in eps] != old and (eps or not cluster.endpoints):
            cluster.set_endpoints(eps, weights)
            log.info("dns: %s -> %s", cluster.name,
                     ", ".join(e.host for e in eps) or "(no addresses)")
            self._forget_unused()
            self._sync_health()

    async def _dns_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(DNS_TICK)
            now = time.monotonic()
            for c in list(self.dns_clusters):
                if self.dns_due.get(c.name, 0.0) <= now:
                    await self._resolve(c)

    # -- housekeeping ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire idle connections; return ejected endpoints whose time is over."""
        for pool in self.pools.values():
            if pool.idle:
                pool.sweep(now)
        for c in self.clusters.values():
            c.detector.tick(now)

    def close(self) -> None:
        """Close every idle connection and stop resolving (the process is going away)."""
        self._closing = True
        for pool in self.pools.values():
            pool.close_idle()
        if self._dns_task is not None:
            self._dns_task.cancel()
            self._dns_task = None
        if self.checker is not None:
            self.checker.close()

    # -- what admin reads ------------------------------------------------------------------------

    def cluster_infos(self, snap) -> list:
        """``/clusters``: every cluster with its live endpoints."""
        out = []
        if snap is None:
            return out
        now = time.monotonic()
        for c in snap.clusters:
            live = self.clusters.get(c.name)
            meta = {(e.address, e.port): e for e in c.endpoints}
            eps = []
            prios = live.priorities if live is not None else []
            for i, ep in enumerate(live.all_endpoints() if live is not None else []):
                e = meta.get((ep.address, ep.port))
                eps.append({
                    "address": ep.address, "port": ep.port, "health": ep.health,
                    "health_flags": _health_flags(ep.health_flags),
                    "weight": e.config_weight if e is not None else 1,
                    "lb_weight": e.weight if e is not None else 1,
                    "priority": prios[i] if i < len(prios) else 0,
                    "locality": e.locality if e is not None else "",
                    "workload": e.workload if e is not None else "",
                    "sidecar": e.sidecar if e is not None else False,
                    "rq_active": ep.rq_active, "rq_total": ep.rq_total,
                    "cx_active": ep.pool.cx_active, "cx_idle": len(ep.pool.idle),
                    "ejections": ep.ejections,
                    "outlier_detection": outlier_status(ep, now),
                })
            det = live.detector if live is not None else None
            out.append({"name": c.name, "direction": c.direction, "service": c.service,
                        "namespace": c.namespace, "port": c.port, "lb_policy": c.lb_policy,
                        "connect_timeout": c.connect_timeout, "idle_timeout": c.idle_timeout,
                        "outlier_detection": {"settings": det.settings(), **det.counters()}
                        if det is not None else None,
                        "circuit_breakers": live.res.state(live.stats) if live is not None else None,
                        "max_requests_per_connection": c.circuit_breakers.max_requests_per_connection,
                        "max_connection_duration": c.circuit_breakers.max_connection_duration,
                        "endpoints": eps})
        return out


#: Envoy's ``/clusters`` health flag for each H_* bit.
HEALTH_FLAG_NAMES = ((H_ACTIVE_HC, "/failed_active_hc"), (H_OUTLIER, "/failed_outlier_check"))


def _health_flags(bits: int) -> list:
    return [name for bit, name in HEALTH_FLAG_NAMES if bits & bit]
def outlier_status(ep, now: float) -> dict:
    """One endpoint's outlier detection state for ``/clusters``."""
    ejected = bool(ep.health_flags & H_OUTLIER)
    return {"ejected": ejected,
            "ejected_for": round(max(0.0, ep.ejected_until - now), 3) if ejected else 0.0,
            "ejections": ep.ejections, "ejection_multiplier": ep.eject_multiplier,
            "consecutive_5xx": ep.cons_5xx, "consecutive_gateway_failure": ep.cons_gateway,
            "consecutive_local_origin_failure": ep.cons_local}
