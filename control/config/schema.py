"""The config schema, written as data: one declarative field table per kind.

A table is a ``Struct`` of ``Field`` s; a field names its ``Type`` (``Str``, ``Int``, ``Port``,
``Enum``, ``ListOf``, ``MapOf``, a nested ``Struct``...), whether it is required, its default and,
for fields that are accepted but not acted on yet, the warning to give. Checks that span several
fields of one document (``endpoints`` vs ``workloadSelector``, endpoint port names that must name a
service port...) are small functions listed in the kind's ``KindSchema.checks``. Adding a kind
(VirtualService, DestinationRule...) means adding a table to ``KINDS``; nothing else changes.

Every ``Type.check`` reports problems through a ``Reporter`` (it never raises) and returns the
normalised value (hosts lowercased, protocols uppercased, durations in seconds...) or ``INVALID``.
Field paths are written the way users write them: ``spec.endpoints[1].ports.http``.
"""
from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from control.duration import parse_duration

INVALID = object()  # a value that failed its check (already reported)

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Reporter:
    """Collects issues and warnings for one document. ``issue``/``warn`` take a field path."""

    def __init__(self, make_issue: Callable[[str, str], Any]):
        self._make = make_issue
        self.issues: list = []
        self.warnings: list = []

    def issue(self, path: str, message: str) -> None:
        self.issues.append(self._make(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(self._make(path, message))


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def did_you_mean(word: str, known) -> str:
    """' (did you mean "x"?)' for the closest known name, or ""."""
    known = list(known)
    folded = {k.lower().replace("_", "").replace("-", ""): k for k in known}
    key = str(word).lower().replace("_", "").replace("-", "")
    if key in folded:
        return f' (did you mean "{folded[key]}"?)'
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.6)
        close = [folded[c] for c in close]
    return f' (did you mean "{close[0]}"?)' if close else ""


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- Types -----------------------------------------------------------------------------------------


class Type:
    """A value's type and constraints. ``describe`` is what the docs and type errors call it."""

    describe = "a value"

    def check(self, value: Any, path: str, rep: Reporter) -> Any:
        raise NotImplementedError

    def _wrong(self, value: Any, path: str, rep: Reporter) -> Any:
        rep.issue(path, f"expected {self.describe}, got {type_name(value)}")
        return INVALID


class Str(Type):
    """A string; ``validate(value)`` returns an error message or None; ``normalise`` maps it."""

    describe = "a string"

    def __init__(self, validate: Optional[Callable[[str], Optional[str]]] = None,
                 normalise: Optional[Callable[[str], str]] = None, non_empty: bool = False):
        self.validate, self.normalise, self.non_empty = validate, normalise, non_empty

    def check(self, value, path, rep):
        if not isinstance(value, str):
            return self._wrong(value, path, rep)
        if self.normalise:
            value = self.normalise(value)
        if self.non_empty and not value:
            rep.issue(path, "must not be empty")
            return INVALID
        if self.validate:
            msg = self.validate(value)
            if msg:
                rep.issue(path, msg)
                return INVALID
        return value


class Bool(Type):
    describe = "a boolean"

    def check(self, value, path, rep):
        return value if isinstance(value, bool) else self._wrong(value, path, rep)


class Int(Type):
    describe = "an integer"

    def __init__(self, min: Optional[int] = None, max: Optional[int] = None, out_of_range: str = ""):
        self.min, self.max, self.out_of_range = min, max, out_of_range

    def check(self, value, path, rep):
        if isinstance(value, bool) or not isinstance(value, int):
            return self._wrong(value, path, rep)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            if self.out_of_range:
                rep.issue(path, self.out_of_range.format(value=value))
            elif self.max is None:
                rep.issue(path, f"{value} is out of range (must be >= {self.min})")
            else:
                rep.issue(path, f"{value} is out of range ({self.min}-{self.max})")
            return INVALID
        return value


def Port() -> Int:
    return Int(1, 65535, "{value} is not a port (1-65535)")


class Enum(Type):
    """One of ``values`` (matched case-insensitively, normalised to the listed spelling).

    ``unsupported`` maps a valid Istio value that meshproxy does not implement yet to the message
    given for it (an error: such values change behaviour, so they are never ignored).
    """

    def __init__(self, values, unsupported: Optional[dict] = None):
        self.values = tuple(values)
        self.unsupported = dict(unsupported or {})
        self.describe = "one of " + ", ".join(self.values + tuple(self.unsupported))

    def check(self, value, path, rep):
        if not isinstance(value, str):
            return self._wrong(value, path, rep)
        for v in self.values + tuple(self.unsupported):
            if value.upper() == v.upper():
                if v in self.unsupported:
                    rep.issue(path, self.unsupported[v])
                    return INVALID
                return v
        rep.issue(path, f'"{value}" is not valid: expected {self.describe}')
        return INVALID


class Duration(Type):
    """An Istio duration string, normalised to seconds (float)."""

    describe = 'a duration string ("5s", "100ms", "1m")'

    def __init__(self, positive: bool = False):
        self.positive = positive

    def check(self, value, path, rep):
        if not isinstance(value, str):
            return self._wrong(value, path, rep)
        try:
            seconds = parse_duration(value)
        except ValueError as e:
            rep.issue(path, str(e))
            return INVALID
        if self.positive and seconds <= 0:
            rep.issue(path, f'"{value}" must be greater than zero')
            return INVALID
        return seconds


class ListOf(Type):
    describe = "a list"

    def __init__(self, item: Type, min_items: int = 0):
        self.item, self.min_items = item, min_items

    def check(self, value, path, rep):
        if not isinstance(value, list):
            return self._wrong(value, path, rep)
        if len(value) < self.min_items:
            rep.issue(path, f"at least {self.min_items} item{'s' if self.min_items > 1 else ''} required")
            return INVALID
        out = [self.item.check(v, f"{path}[{i}]", rep) for i, v in enumerate(value)]
        return INVALID if any(v is INVALID for v in out) else out


class MapOf(Type):
    """A mapping with string keys (checked by ``key``) and values checked by ``value``."""

    describe = "a mapping"

    def __init__(self, value: Type, key: Optional[Type] = None):
        self.value, self.key = value, key or Str()

    def check(self, value, path, rep):
        if not isinstance(value, dict):
            return self._wrong(value, path, rep)
        out, bad = {}, False
        for k, v in value.items():
            p = join(path, str(k))
            ck = self.key.check(k, p, rep)
            cv = self.value.check(v, p, rep)
            if ck is INVALID or cv is INVALID:
                bad = True
            else:
                out[ck] = cv
        return INVALID if bad else out


@dataclass(frozen=True)
class Field:
    type: Type
    required: bool = False
    default: Any = None  # filled in when absent (None: left absent)
    warn: str = ""  # accepted but not acted on: the warning given when the field is set
    doc: str = ""


class Struct(Type):
    """A mapping with a fixed set of fields. Unknown fields are errors with a did-you-mean hint.

    A null value counts as absent (as Kubernetes does), so ``hosts:`` with nothing after it reports
    a missing required field rather than a type error.
    """

    describe = "a mapping"

    def __init__(self, fields: dict, checks: tuple = ()):
        self.fields, self.checks = fields, checks

    def check(self, value, path, rep):
        if not isinstance(value, dict):
            return self._wrong(value, path, rep)
        out, bad = {}, False
        for k, v in value.items():
            p = join(path, str(k))
            f = self.fields.get(k)
            if f is None:
                rep.issue(p, "unknown field" + did_you_mean(str(k), self.fields))
                bad = True
                continue
            if v is None:
                continue
            cv = f.type.check(v, p, rep)
            if cv is INVALID:
                bad = True
                continue
            if f.warn:
                rep.warn(p, f.warn)
            out[k] = cv
        for name, f in self.fields.items():
            if name in value and value[name] is not None:
                continue
            if f.required:
                rep.issue(join(path, name), "required field is missing")
                bad = True
            elif f.default is not None:
                out[name] = f.default
        if bad:
            return INVALID
        before = len(rep.issues)
        for chk in self.checks:
            chk(out, path, rep)
        return INVALID if len(rep.issues) > before else out


# --- Value validators --------------------------------------------------------------------------------


def ip_address(value: str) -> Optional[str]:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if value.startswith("unix://"):
            return f'"{value}": unix domain socket endpoints are not supported yet'
        return f'"{value}" is not an IP address (DNS names need resolution DNS, which is not supported yet)'
    return None


def bind_address(value: str) -> Optional[str]:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f'"{value}" is not an IP address'
    return None


def dns1123_subdomain(value: str) -> Optional[str]:
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        return (f'"{value}" is not a valid name (DNS-1123: lowercase letters, digits, "-" and ".", '
                "starting and ending with a letter or digit)")
    return None


def dns1123_label(value: str) -> Optional[str]:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        return (f'"{value}" is not a valid name (DNS-1123 label: lowercase letters, digits and "-", '
                "at most 63 characters)")
    return None


def host_name(value: str) -> Optional[str]:
    if value.startswith("*") or "*" in value:
        return "wildcard hosts are not supported yet"
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        return f'"{value}" is not a valid host name (a DNS name such as "echo.default.svc.cluster.local")'
    return None


def workload_ref(value: str) -> Optional[str]:
    parts = value.split("/")
    if len(parts) > 2 or not all(parts) or any(dns1123_subdomain(p) for p in parts):
        return f'"{value}" is not a WorkloadEntry name ("name" or "namespace/name")'
    return None


# --- Cross-field checks within one document -------------------------------------------------------

HTTP_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")
PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC", "TCP", "TLS", "MONGO", "REDIS", "MYSQL")


def protocol_from_name(port_name: str) -> str:
    """Istio's protocol selection by port name (``<protocol>[-<suffix>]``), else HTTP."""
    prefix = port_name.split("-", 1)[0].upper()
    return prefix if prefix in PROTOCOLS else "HTTP"


def _check_service_ports(spec: dict, path: str, rep: Reporter) -> None:
    names: dict = {}
    numbers: dict = {}
    for i, p in enumerate(spec.get("ports", [])):
        pp = f"{join(path, 'ports')}[{i}]"
        if p["name"] in names:
            rep.issue(f"{pp}.name", f'port name "{p["name"]}" is already used by ports[{names[p["name"]]}]')
        names.setdefault(p["name"], i)
        if p["number"] in numbers:
            rep.issue(f"{pp}.number", f"port {p['number']} is already used by ports[{numbers[p['number']]}]")
        numbers.setdefault(p["number"], i)
        if "protocol" not in p:
            p["protocol"] = protocol_from_name(p["name"])
        if p["protocol"] not in HTTP_PROTOCOLS:
            rep.warn(pp, f"port {p['name']} protocol {p['protocol']}: only HTTP is proxied in this release; "
                         "the port is not served")


def _check_service_hosts(spec: dict, path: str, rep: Reporter) -> None:
    seen: dict = {}
    for i, h in enumerate(spec.get("hosts", [])):
        if h in seen:
            rep.issue(f"{join(path, 'hosts')}[{i}]", f'host "{h}" is already listed as hosts[{seen[h]}]')
        seen.setdefault(h, i)


def _check_service_endpoints(spec: dict, path: str, rep: Reporter) -> None:
    if "endpoints" in spec and "workloadSelector" in spec:
        rep.issue(join(path, "workloadSelector"), "only one of workloadSelector or endpoints may be set")
    port_names = [p["name"] for p in spec.get("ports", [])]
    for i, ep in enumerate(spec.get("endpoints", [])):
        for name in ep.get("ports", {}):
            if name not in port_names:
                rep.issue(f"{join(path, 'endpoints')}[{i}].ports.{name}",
                          f'"{name}" is not a port name of this ServiceEntry' + did_you_mean(name, port_names)
                          + (f" (port names: {', '.join(port_names)})" if port_names else ""))
    if spec.get("resolution") == "STATIC" and "endpoints" not in spec and "workloadSelector" not in spec:
        rep.warn(join(path, "resolution"), "STATIC with neither endpoints nor workloadSelector: "
                                           "the service has no endpoints (requests get 503)")


# --- Tables -------------------------------------------------------------------------------------------

NOT_USED = "not used by meshproxy yet"

LABELS = MapOf(Str())

# Istio's WorkloadEntry fields; ServiceEntry.endpoints[] has the same shape.
WORKLOAD_ENTRY = Struct({
    "address": Field(Str(ip_address), required=True, doc="IP address of the workload"),
    "ports": Field(MapOf(Port()), doc="port name -> application port on this workload"),
    "labels": Field(LABELS, doc="labels, matched by workloadSelector"),
    "network": Field(Str(), doc="accepted; single-network only in this release"),
    "locality": Field(Str(), doc="region/zone/subzone"),
    "weight": Field(Int(0, 2**32 - 1), doc="load-balancing weight; 0 excludes the endpoint"),
    "serviceAccount": Field(Str(), doc="service account of the workload"),
})

SERVICE_PORT = Struct({
    "number": Field(Port(), required=True),
    "protocol": Field(Enum(PROTOCOLS), doc="default: from the port name prefix, else HTTP"),
    "name": Field(Str(dns1123_label), required=True),
    "targetPort": Field(Port()),
})

SERVICE_ENTRY = Struct({
    "hosts": Field(ListOf(Str(host_name, normalise=str.lower), min_items=1), required=True),
    "addresses": Field(ListOf(Str()), warn=NOT_USED),
    "ports": Field(ListOf(SERVICE_PORT, min_items=1), required=True),
    "location": Field(Enum(("MESH_EXTERNAL", "MESH_INTERNAL")), default="MESH_EXTERNAL"),
    "resolution": Field(
        Enum(("STATIC",), unsupported={r: f"resolution {r} is not supported yet"
                                       for r in ("NONE", "DNS", "DNS_ROUND_ROBIN")}),
        required=True, doc="STATIC (Istio's default NONE is not supported yet, so it must be set)"),
    "endpoints": Field(ListOf(WORKLOAD_ENTRY)),
    "workloadSelector": Field(Struct({"labels": Field(LABELS, default={})})),
    "exportTo": Field(ListOf(Str()), warn=NOT_USED),
    "subjectAltNames": Field(ListOf(Str()), warn=NOT_USED),
}, checks=(_check_service_ports, _check_service_hosts, _check_service_endpoints))

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
    "limits": Field(Struct({
        "maxRequestHeadersKb": Field(Int(1, 8192)),
        "maxRequestLine": Field(Int(1, 1 << 20)),
        "maxHeaders": Field(Int(1, 10000)),
    })),
    "upstream": Field(Struct({
        "connectTimeout": Field(Duration(positive=True)),
        "idleTimeout": Field(Duration(positive=True)),
        "maxIdlePerEndpoint": Field(Int(0, 1 << 20)),
    })),
})

METADATA = Struct({
    "name": Field(Str(dns1123_subdomain), required=True),
    "namespace": Field(Str(dns1123_label), default="default"),
    "labels": Field(LABELS),
    "annotations": Field(MapOf(Str())),
})

NETWORKING = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")
SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")


@dataclass(frozen=True)
class KindSchema:
    kind: str
    api_versions: tuple
    spec: Struct
    singleton: bool = False  # at most one document of this kind
    doc: str = ""
    extra: dict = field(default_factory=dict)


KINDS = {
    "ServiceEntry": KindSchema("ServiceEntry", NETWORKING, SERVICE_ENTRY),
    "WorkloadEntry": KindSchema("WorkloadEntry", NETWORKING, WORKLOAD_ENTRY),
    "Bootstrap": KindSchema("Bootstrap", ("meshproxy.io/v1alpha1",), BOOTSTRAP, singleton=True),
}

# Istio kinds that change routing or security: a document of one of these is an error until it is
# implemented, never silently ignored.
UNSUPPORTED_KINDS = (
    "VirtualService", "DestinationRule", "Gateway", "Sidecar", "PeerAuthentication",
    "AuthorizationPolicy", "RequestAuthentication", "EnvoyFilter", "Telemetry", "ProxyConfig",
    "WasmPlugin", "WorkloadGroup",
)

# Annotations meshproxy reads (on WorkloadEntry metadata).
INBOUND_PORT_ANNOTATION = "meshproxy.io/inbound-port"
TLS_MODE_LABEL = "security.istio.io/tlsMode"
