"""The security.istio.io API group: AuthorizationPolicy; PeerAuthentication and
RequestAuthentication are not supported yet.

AuthorizationPolicy (``security.istio.io/v1`` and ``v1beta1``) is validated with Istio's rules
(pilot's ``ValidateAuthorizationPolicy`` and ``security.ValidateAttribute``): ``values`` or
``notValues`` on every condition, IPs and CIDRs where addresses are expected, path templates
(``{*}``, ``{**}`` last), the known ``when`` keys. What meshproxy cannot enforce yet is an error
naming the field: ``action: CUSTOM`` (external authorization), ``provider``, ``targetRef`` /
``targetRefs`` (waypoints and gateways), ``experimental.envoy.filters.*`` keys.

PeerAuthentication and RequestAuthentication change who may talk to whom, so a document of one
of them is an error ("kind ... is not supported yet"), never silently ignored.
``TLS_MODE_LABEL`` is this group's endpoint label: ``security.istio.io/tlsMode: istio`` marks an
endpoint that has its own sidecar.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Optional

from control.config.schema import (LABELS, Enum, Field, KindSchema, ListOf, Reporter, Str, Struct, did_you_mean,
                                   join, not_yet)

SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")

UNSUPPORTED_KINDS = ("PeerAuthentication", "RequestAuthentication")

TLS_MODE_LABEL = "security.istio.io/tlsMode"

#: ``when`` keys Istio knows (``request.headers[...]`` and ``request.auth.claims[...]`` take a
#: name in brackets). ``experimental.envoy.filters.*`` keys exist too: not supported yet.
WHEN_KEYS = ("request.headers[<name>]", "source.ip", "remote.ip", "source.namespace", "source.principal",
             "source.serviceAccount", "source.trustDomain", "request.auth.principal",
             "request.auth.audiences", "request.auth.presenter", "request.auth.claims[<name>]",
             "destination.ip", "destination.port", "connection.sni")

_PLAIN_KEYS = frozenset(k for k in WHEN_KEYS if "[" not in k)
_CLAIMS = re.compile(r"^request\.auth\.claims(\[[^\[\]]+\])+$")
_HEADER = re.compile(r"^request\.headers\[([^\[\]]+)\]$")
_IP_KEYS = ("source.ip", "remote.ip", "destination.ip")

MATCH_ONE = "{*}"
MATCH_ANY = "{**}"
# RFC 3986 pchar without '%' escapes spelt out: what a literal segment of a path template may hold.
_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;:@=%]*$")


def ip_or_cidr(value: str) -> Optional[str]:
    """An IP address or a CIDR block (``10.0.0.0/8``), as ``ipBlocks`` and ``source.ip`` take."""
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return f'"{value}" is not an IP address or CIDR block'
    return None


def port_string(value: str) -> Optional[str]:
    if not value.isdigit() or not 0 < int(value) < 65536:
        return f'"{value}" is not a port (1-65535)'
    return None


def contains_path_template(value: str) -> bool:
    return MATCH_ONE in value or MATCH_ANY in value


def request_path(value: str) -> Optional[str]:
    """A ``paths`` value: exact, ``prefix*``, ``*suffix``, ``*``, or a template with ``{*}`` /
    ``{**}`` segments (``{**}`` at most once, as the last operator), as Istio validates them."""
    if not value:
        return "must not be empty"
    if not (value.startswith("/") or value.startswith("*")):
        return f'"{value}" is not a path (it starts with "/", or "*" for a suffix match)'
    template = contains_path_template(value)
    found_any = False
    for glob in value.strip("/").split("/"):
        if glob == MATCH_ONE and not found_any:
            continue
        if glob == MATCH_ANY and not found_any:
            found_any = True
            continue
        if glob in (MATCH_ONE, MATCH_ANY):
            return f'invalid path template "{value}": {{**}} is not the last operator'
        if "{" in glob or "}" in glob:
            return (f'invalid path template "{value}": "{{" or "}}" beyond a supported template '
                    "({*} or {**} as a whole segment)")
        if template and not _LITERAL.match(glob):
            return f'invalid path template "{value}": segment "{glob}" is not a valid literal'
    return None


def _values(validate=None) -> ListOf:
    return ListOf(Str(validate, non_empty=True))


SOURCE = Struct({
    "principals": Field(_values()), "notPrincipals": Field(_values()),
    "requestPrincipals": Field(_values()), "notRequestPrincipals": Field(_values()),
    "namespaces": Field(_values()), "notNamespaces": Field(_values()),
    "ipBlocks": Field(_values(ip_or_cidr)), "notIpBlocks": Field(_values(ip_or_cidr)),
    "remoteIpBlocks": Field(_values(ip_or_cidr)), "notRemoteIpBlocks": Field(_values(ip_or_cidr)),
    "serviceAccounts": Field(_values()), "notServiceAccounts": Field(_values()),
    "trustDomains": Field(_values()), "notTrustDomains": Field(_values()),
})

OPERATION = Struct({
    "hosts": Field(_values()), "notHosts": Field(_values()),
    "ports": Field(_values(port_string)), "notPorts": Field(_values(port_string)),
    "methods": Field(_values()), "notMethods": Field(_values()),
    "paths": Field(_values(request_path)), "notPaths": Field(_values(request_path)),
})


def _not_empty(what: str):
    def check(value: dict, path: str, rep: Reporter) -> None:
        if not value:
            rep.issue(path, f"`{what}` must not be empty (set at least one field)")
    return check


def _service_accounts(value: dict, path: str, rep: Reporter) -> None:
    for key in ("serviceAccounts", "notServiceAccounts"):
        for i, sa in enumerate(value.get(key, ())):
            if sa.count("/") != 1 or not all(sa.split("/")):
                rep.issue(f"{join(path, key)}[{i}]", f'"{sa}" is not a service account ("namespace/name")')
    for key in ("serviceAccounts", "notServiceAccounts"):
        if key in value and any(k in value for k in ("principals", "notPrincipals", "namespaces",
                                                      "notNamespaces")):
            rep.issue(join(path, key), "cannot be set with principals or namespaces (or their not* forms)")
            return


def check_when_key(key: str, values: list, path: str, rep: Reporter) -> None:
    """Istio's ``security.ValidateAttribute``: the key is known and the values fit it."""
    kp = join(path, "key")
    if key.startswith("experimental.envoy.filters."):
        rep.issue(kp, f'"{key}": experimental.envoy.filters.* keys are not supported yet')
        return
    known = key in _PLAIN_KEYS or _CLAIMS.match(key) or _HEADER.match(key)
    if not known:
        if key.startswith("request.headers") or key.startswith("request.auth.claims"):
            rep.issue(kp, f'"{key}": the name goes in brackets, as request.headers[User-Agent] or '
                          "request.auth.claims[iss]")
        else:
            rep.issue(kp, f'unknown key "{key}"' + did_you_mean(key, sorted(_PLAIN_KEYS))
                      + " (known keys: " + ", ".join(WHEN_KEYS) + ")")
        return
    for vkey, vals in values:
        for i, v in enumerate(vals):
            msg = None
            if key in _IP_KEYS:
                msg = ip_or_cidr(v)
            elif key == "destination.port":
                msg = port_string(v)
            if msg:
                rep.issue(f"{join(path, vkey)}[{i}]", msg)


def _condition(value: dict, path: str, rep: Reporter) -> None:
    if not value.get("values") and not value.get("notValues"):
        rep.issue(join(path, "values"), f'at least one of values or notValues must be set for key '
                                        f'{value["key"]}')
        return
    check_when_key(value["key"], [(k, value[k]) for k in ("values", "notValues") if k in value], path, rep)


CONDITION = Struct({
    "key": Field(Str(non_empty=True), required=True),
    "values": Field(_values()),
    "notValues": Field(_values()),
}, checks=(_condition,))

RULE = Struct({
    "from": Field(ListOf(Struct({"source": Field(Struct(SOURCE.fields, checks=(_not_empty("source"),
                                                                              _service_accounts)),
                                                 required=True)}), min_items=1)),
    "to": Field(ListOf(Struct({"operation": Field(Struct(OPERATION.fields, checks=(_not_empty("operation"),)),
                                                  required=True)}), min_items=1)),
    "when": Field(ListOf(CONDITION)),
})

ACTIONS = ("ALLOW", "DENY", "AUDIT")


AUTHORIZATION_POLICY = Struct({
    "selector": Field(Struct({"matchLabels": Field(LABELS, default={})})),
    "targetRef": not_yet("targetRef (waypoint and gateway policies)"),
    "targetRefs": not_yet("targetRefs (waypoint and gateway policies)"),
    "action": Field(Enum(ACTIONS, unsupported={
        "CUSTOM": "action CUSTOM (external authorization) is not supported yet"}), default="ALLOW"),
    "provider": not_yet("provider (CUSTOM action)"),
    "rules": Field(ListOf(RULE)),
})

KINDS = {
    "AuthorizationPolicy": KindSchema("AuthorizationPolicy", SECURITY, AUTHORIZATION_POLICY),
}
