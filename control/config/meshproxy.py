"""The meshproxy.io API group: the Bootstrap kind (what Istio keeps in MeshConfig / ProxyConfig).

At most one Bootstrap per config. ``INBOUND_PORT_ANNOTATION`` is the meshproxy.io annotation read on
WorkloadEntry metadata (the port a workload's own sidecar listens on for inbound traffic).
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from control.config.schema import (Duration, Enum, Field, Int, KindSchema, ListOf, Port, Str, Struct, bind_address,
                                   dns1123_subdomain)

INBOUND_PORT_ANNOTATION = "meshproxy.io/inbound-port"


def dns_server(value: str) -> Optional[str]:
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f'"{value}" is not an IP address with an optional port'
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f'"{value}": {port!r} is not a port (1-65535)'
    return None


def workload_ref(value: str) -> Optional[str]:
    parts = value.split("/")
    if len(parts) > 2 or not all(parts) or any(dns1123_subdomain(p) for p in parts):
        return f'"{value}" is not a WorkloadEntry name ("name" or "namespace/name")'
    return None


ADDRESS_PORT = Struct({"address": Field(Str(bind_address)), "port": Field(Port())})

BOOTSTRAP = Struct({
    "trustDomain": Field(Str(dns1123_subdomain)),
    "workload": Field(Str(workload_ref), doc='this sidecar\'s WorkloadEntry: "name" or "namespace/name"'),
    "outbound": Field(ADDRESS_PORT),
    "inbound": Field(Struct({"port": Field(Port())})),
    "admin": Field(ADDRESS_PORT),
    "prometheusPort": Field(Port()),
    "statusPort": Field(Port()),
    "concurrency": Field(Int(1, 1024)),
    "drainDuration": Field(Duration()),
    "accessLogFile": Field(Str()),
    "accessLogEncoding": Field(Enum(("TEXT", "JSON"))),
    "accessLogFormat": Field(Str()),
    "dnsServers": Field(ListOf(Str(dns_server)),
                        doc='name servers for DNS ServiceEntries: "ip" or "ip:port"; '
                            'default /etc/resolv.conf'),
    "limits": Field(Struct({
        "maxRequestHeadersKb": Field(Int(1, 8192)),
        "maxRequestLine": Field(Int(1, 1 << 20)),
        "maxHeaders": Field(Int(1, 10000)),
        "requestHeadersTimeout": Field(Duration(), doc="the whole request head within this; 0s = none"),
        "idleTimeout": Field(Duration(), doc="close a client connection idle this long; 0s = never"),
        "streamIdleTimeout": Field(Duration(), doc="a request with no activity this long; 0s = never"),
        "perConnectionBufferLimitBytes": Field(Int(16384, 1 << 30)),
        "maxDownstreamConnections": Field(Int(0, 1 << 24), doc="per listener and worker; 0 = no limit"),
    })),
    "upstream": Field(Struct({
        "connectTimeout": Field(Duration(positive=True)),
        "idleTimeout": Field(Duration(positive=True)),
        "maxIdlePerEndpoint": Field(Int(0, 1 << 20)),
    })),
})

KINDS = {
    "Bootstrap": KindSchema("Bootstrap", ("meshproxy.io/v1alpha1",), BOOTSTRAP, singleton=True),
}
