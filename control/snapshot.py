"""The Snapshot: the immutable, versioned contract between control and the sidecar.

Like Envoy's xDS resources, a Snapshot holds everything one sidecar needs: its listeners with their
virtual hosts and routes, the clusters those routes name, each cluster's endpoints, and the bootstrap
settings (ports, limits, access log, timeouts). It is plain data: frozen dataclasses of str, int,
float, bool, tuples and small dicts, serialisable with ``to_dict`` / ``from_dict`` (JSON-safe) for
``/config_dump`` and for sending to worker processes or, later, over the control-plane wire.

Naming follows Envoy: a cluster is ``outbound|<port>||<service FQDN>`` or
``inbound|<target port>||``; listeners are ``virtualOutbound`` / ``virtualInbound`` as in Istio.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Endpoint:
    """One upstream address of a cluster.

    ``address``/``port`` is what the sidecar dials: the application port, or the inbound port of
    the endpoint's own sidecar when ``sidecar`` is True (see docs/configuration.md, "Sidecar-aware
    endpoints"). ``target_port`` is the application port on the workload.
    """

    address: str
    port: int
    target_port: int
    labels: dict = field(default_factory=dict)
    weight: int = 1
    locality: str = ""
    workload: str = ""  # "namespace/name" of the WorkloadEntry, "" for inline endpoints
    sidecar: bool = False


@dataclass(frozen=True)
class Cluster:
    name: str  # "outbound|80||echo.default.svc.cluster.local" or "inbound|8080||"
    direction: str  # "outbound" | "inbound"
    service: str  # FQDN host ("" for inbound)
    namespace: str  # namespace of the ServiceEntry ("" for inbound)
    port: int  # service port (inbound: the application port)
    port_name: str
    protocol: str  # Istio port protocol: HTTP, HTTP2, GRPC, TCP, ...
    lb_policy: str = "ROUND_ROBIN"
    endpoints: tuple = ()  # tuple[Endpoint, ...]
    connect_timeout: float = 10.0  # seconds (Istio's default)
    idle_timeout: float = 3600.0  # seconds an idle pooled upstream connection is kept (Istio: 1h)
    max_idle_per_endpoint: int = 1024  # as Envoy's default max_connections circuit breaker


@dataclass(frozen=True)
class Route:
    name: str
    prefix: str  # path prefix matched; "/" matches everything
    cluster: str


@dataclass(frozen=True)
class VirtualHost:
    """A set of domains (Host header values, lowercase, with and without ``:port``) and routes."""

    name: str  # "echo.default.svc.cluster.local:80"
    domains: tuple  # tuple[str, ...]
    routes: tuple  # tuple[Route, ...]


@dataclass(frozen=True)
class Listener:
    name: str  # "virtualOutbound" | "virtualInbound"
    direction: str  # "outbound" | "inbound"
    address: str
    port: int
    virtual_hosts: tuple  # tuple[VirtualHost, ...]
    default_cluster: Optional[str] = None  # used when no domain matches (inbound, single app port)


@dataclass(frozen=True)
class Limits:
    max_request_headers_kb: int = 60  # Envoy's default; 431 beyond
    max_request_line: int = 16384  # 414 beyond
    max_headers: int = 100  # Envoy's default; 431 beyond


@dataclass(frozen=True)
class Bootstrap:
    """What Istio keeps outside the CRDs (MeshConfig / ProxyConfig), for this sidecar."""

    trust_domain: str = "cluster.local"
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    outbound_address: str = "127.0.0.1"
    outbound_port: int = 15001
    inbound_port: int = 15006
    prometheus_port: int = 15090  # /stats/prometheus only, as Envoy's 15090 in Istio
    status_port: int = 15021  # /healthz/ready, as pilot-agent's 15021 in Istio
    concurrency: int = 1
    drain_duration: float = 5.0  # seconds (Istio ProxyConfig.drainDuration)
    access_log_file: str = ""  # "" = off; "/dev/stdout" or a path (Istio MeshConfig.accessLogFile)
    access_log_encoding: str = "TEXT"  # TEXT | JSON (MeshConfig.accessLogEncoding)
    access_log_format: str = ""  # "" = Envoy/Istio default (MeshConfig.accessLogFormat)
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Workload:
    """The workload this sidecar runs next to (from its WorkloadEntry), if any."""

    name: str
    namespace: str
    address: str
    labels: dict = field(default_factory=dict)
    ports: dict = field(default_factory=dict)  # port name -> application port
    service_account: str = ""


@dataclass(frozen=True)
class Snapshot:
    version: str
    bootstrap: Bootstrap
    listeners: tuple  # tuple[Listener, ...]
    clusters: tuple  # tuple[Cluster, ...]
    workload: Optional[Workload] = None
    warnings: tuple = ()  # tuple[str, ...]: things accepted but not acted on
    sources: tuple = ()  # tuple[str, ...]: files the snapshot was compiled from

    def cluster(self, name: str) -> Optional[Cluster]:
        for c in self.clusters:
            if c.name == name:
                return c
        return None

    def listener(self, direction: str) -> Optional[Listener]:
        for listener in self.listeners:
            if listener.direction == direction:
                return listener
        return None

    def to_dict(self) -> dict:
        return _to_plain(self)

    def to_json(self, indent: Optional[int] = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Snapshot":
        b = dict(d["bootstrap"])
        b["limits"] = Limits(**b.get("limits", {}))
        return cls(
            version=d["version"],
            bootstrap=Bootstrap(**b),
            listeners=tuple(
                Listener(
                    **{
                        **ld,
                        "virtual_hosts": tuple(
                            VirtualHost(
                                name=vh["name"],
                                domains=tuple(vh["domains"]),
                                routes=tuple(Route(**r) for r in vh["routes"]),
                            )
                            for vh in ld["virtual_hosts"]
                        ),
                    }
                )
                for ld in d["listeners"]
            ),
            clusters=tuple(
                Cluster(**{**cd, "endpoints": tuple(Endpoint(**e) for e in cd["endpoints"])})
                for cd in d["clusters"]
            ),
            workload=Workload(**d["workload"]) if d.get("workload") else None,
            warnings=tuple(d.get("warnings", ())),
            sources=tuple(d.get("sources", ())),
        )

    @classmethod
    def from_json(cls, s: str) -> "Snapshot":
        return cls.from_dict(json.loads(s))


def content_version(payload: Any) -> str:
    """A short, stable version string for a snapshot's content (first 12 hex of SHA-256)."""
    return hashlib.sha256(json.dumps(_to_plain(payload), sort_keys=True).encode()).hexdigest()[:12]


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    return obj
