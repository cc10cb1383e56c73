"""The meshproxy.io API group: the Bootstrap kind (what Istio keeps in MeshConfig / ProxyConfig)
and the HealthCheck kind (active health checks, which Istio has no API for: istio/istio#10537).

At most one Bootstrap per config; any number of HealthChecks, each selecting one service host
(optionally one subset and one port) with Envoy's health-check fields. ``INBOUND_PORT_ANNOTATION`` is the meshproxy.io annotation read on
WorkloadEntry metadata (the port a workload's own sidecar listens on for inbound traffic).
"""
from __future__ import annotations

import ipaddress
from typing import Optional

from control.config.schema import (Bool, Duration, Enum, Field, Int, KindSchema, ListOf, MapOf, Port, Str,
                                   Struct, bind_address, dns1123_label, dns1123_subdomain, host_name, join)

INBOUND_PORT_ANNOTATION = "meshproxy.io/inbound-port"

#: Istio ``MeshConfig.ProxyPathNormalization.NormalizationType`` (``DEFAULT`` is ``BASE``).
PATH_NORMALIZATIONS = ("DEFAULT", "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")


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
    "rootNamespace": Field(Str(dns1123_label),
                           doc="the mesh's root namespace (Istio meshConfig.rootNamespace): an "
                               "AuthorizationPolicy there applies to every workload; default istio-system"),
    "workload": Field(Str(workload_ref), doc='this sidecar\'s WorkloadEntry: "name" or "namespace/name"'),
    "outbound": Field(ADDRESS_PORT),
    "inbound": Field(Struct({"port": Field(Port())})),
    "admin": Field(ADDRESS_PORT),
    "prometheusPort": Field(Port()),
    "statusPort": Field(Port()),
    "concurrency": Field(Int(1, 1024)),
    "drainDuration": Field(Duration()),
    "exitOnZeroActiveConnections": Field(
        Bool(), doc="after POST /drain_listeners, exit as soon as no connection is active "
                    "(Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS; the environment variable works too)"),
    "accessLogFile": Field(Str()),
    "accessLogEncoding": Field(Enum(("TEXT", "JSON"))),
    "accessLogFormat": Field(Str()),
    "pathNormalization": Field(Struct({
        "normalization": Field(Enum(PATH_NORMALIZATIONS),
                               doc="how request paths are normalised before routing, authorization and "
                                   "forwarding (Istio meshConfig.pathNormalization); default BASE"),
    })),
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
    "certificates": Field(Struct({
        "certificateChain": Field(Str(), required=True,
                                  doc="PEM: this workload's SPIFFE X.509-SVID, then its issuers"),
        "privateKey": Field(Str(), required=True, doc="PEM: the certificate's private key"),
        "caCertificates": Field(Str(), required=True, doc="PEM: the mesh's trust roots"),
    }), doc="mutual TLS between sidecars (files as Envoy's file-based secrets; `meshproxy ca "
            "issue` makes them)"),
    "upstream": Field(Struct({
        "connectTimeout": Field(Duration(positive=True)),
        "idleTimeout": Field(Duration(positive=True)),
        "maxIdlePerEndpoint": Field(Int(0, 1 << 20)),
    })),
})



def http_path(value: str) -> Optional[str]:
    if not value.startswith("/") or any(c in value for c in " \r\n\t"):
        return f'"{value}" is not a request path (it starts with "/" and has no spaces)'
    return None


def header_name(value: str) -> Optional[str]:
    if not value or any(c in value for c in " :\r\n\t()<>@,;\\\"/[]?={}"):
        return f'"{value}" is not a valid header name'
    return None


def header_value(value: str) -> Optional[str]:
    if any(c in value for c in "\r\n\0"):
        return "a header value must not contain CR, LF or NUL"
    return None


def _status_range(value: dict, path: str, rep) -> None:
    if value["start"] >= value["end"]:
        rep.issue(path, f"empty range: start {value['start']} must be below end {value['end']} "
                        "(start inclusive, end exclusive, as Envoy's)")


STATUS_RANGE = Struct({
    "start": Field(Int(100, 599), required=True),
    "end": Field(Int(101, 600), required=True),
}, checks=(_status_range,))

HTTP_CHECK = Struct({
    "path": Field(Str(http_path), required=True),
    "host": Field(Str(host_name), doc="the Host header; default: the HealthCheck's host"),
    "expectedStatuses": Field(ListOf(STATUS_RANGE, min_items=1),
                              doc="[start, end) ranges; default [{start: 200, end: 201}]"),
    "requestHeaders": Field(MapOf(Str(header_value), key=Str(header_name))),
})

TCP_CHECK = Struct({
    "send": Field(Str(), doc="text written once connected (UTF-8); none: connect only"),
    "expect": Field(Str(non_empty=True), doc="text that must arrive (anywhere in the reply)"),
})


def _one_check(value: dict, path: str, rep) -> None:
    if ("http" in value) == ("tcp" in value):
        rep.issue(join(path, "http"), "exactly one of http and tcp must be set")
    if "timeout" in value and "interval" in value and value["timeout"] > value["interval"]:
        rep.issue(join(path, "timeout"), "must not be longer than interval")


HEALTH_CHECK = Struct({
    "host": Field(Str(host_name, normalise=str.lower), required=True,
                  doc="the service (a ServiceEntry host; short names resolve in the namespace)"),
    "subset": Field(Str(dns1123_label), doc="only this DestinationRule subset's cluster"),
    "port": Field(Port(), doc="only this service port's clusters"),
    "http": Field(HTTP_CHECK),
    "tcp": Field(TCP_CHECK),
    "interval": Field(Duration(positive=True), default=10.0),
    "timeout": Field(Duration(positive=True), default=1.0),
    "intervalJitter": Field(Duration(), default=0.0),
    "unhealthyThreshold": Field(Int(1, 1000), default=3),
    "healthyThreshold": Field(Int(1, 1000), default=2),
    "noTrafficInterval": Field(Duration(positive=True), default=60.0,
                               doc="interval while the cluster has carried no request yet"),
}, checks=(_one_check,))

KINDS = {
    "Bootstrap": KindSchema("Bootstrap", ("meshproxy.io/v1alpha1",), BOOTSTRAP, singleton=True),
    "HealthCheck": KindSchema("HealthCheck", ("meshproxy.io/v1alpha1",), HEALTH_CHECK),
}
