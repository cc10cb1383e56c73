"""Istio AuthorizationPolicy on the inbound listener (Envoy's RBAC HTTP filter).

Control selects the policies that apply to this sidecar's workload and puts them in the snapshot
(``Listener.authorization``: ``AuthzPolicy`` > ``AuthzRule`` > ``AuthzMatch``). At apply time
``Authorizer`` compiles them once into matchers over precomputed structures (sets of exact values,
tuples of prefixes and suffixes, ``ipaddress`` networks, regexes for path templates); per request
``RbacFilter`` (stateless: one shared instance per route) evaluates them as Istio does:

1. any DENY policy matches: denied (403 ``RBAC: access denied``);
2. there are ALLOW policies and none matches: denied;
3. otherwise allowed.

AUDIT policies never change the decision; a match is logged and counted (``rbac.logged``).
A policy matches when one of its rules does; a rule when one of its ``from`` sources, one of its
``to`` operations and all its ``when`` conditions match (an absent list matches anything); a
policy without rules matches nothing.

Inputs that do not exist yet are read where they will be filled in: the peer's identity from
``stream.conn.peer_principal`` (a SPIFFE ID, ``spiffe://td/ns/NS/sa/SA``, set by an mTLS
transport; absent on plaintext) and the request's JWT attributes from
``stream.state_dict()["request_auth"]`` (``{"principal", "audiences", "presenter", "claims"}``,
set by a RequestAuthentication filter). Absent, they are None: positive fields on them never match
and ``not*`` fields always do, as in Envoy for a plaintext peer or a request without a token.
``remote.ip`` / ``remoteIpBlocks`` use the peer address (Istio's default ``numTrustedProxies: 0``);
``destination.port`` is the application port of the inbound cluster the request routes to (what
the original destination port is under Istio's redirection), else the listener's port.

Denials are counted in ``stats["denied"]``, allowed requests in ``stats["allowed"]`` (Envoy's
``http.<listener>.rbac.*``), written to the access log with Envoy's response code details
``rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[I]]`` (``[none]`` when no ALLOW
policy matched) and no response flag, as Envoy's RBAC filter does, and logged at info.
"""
from __future__ import annotations

import ipaddress
import logging
import re

from meshproxy.filters import CONTINUE, STOP, FilterFactory, HttpFilter

log = logging.getLogger("meshproxy.rbac")

DENIED_BODY = b"RBAC: access denied"

#: The counters' names (Envoy's ``http.<prefix>.rbac.<name>``).
STAT_NAMES = ("allowed", "denied", "logged", "not_logged")

ALLOWED, DENIED = True, False


def new_stats() -> dict:
    return {n: 0 for n in STAT_NAMES}


# --- value matchers ---------------------------------------------------------------------------------


class StringMatcher:
    """Istio's string values: ``abc`` exact, ``abc*`` prefix, ``*abc`` suffix, ``*`` presence."""

    __slots__ = ("exact", "prefixes", "suffixes", "any", "lower")

    def __init__(self, values, lower=False):
        exact, prefixes, suffixes = set(), [], []
        self.any = False
        self.lower = lower
        for v in values:
            if lower:
                v = v.lower()
            if v == "*":
                self.any = True
            elif v.endswith("*"):
                prefixes.append(v[:-1])
            elif v.startswith("*"):
                suffixes.append(v[1:])
            else:
                exact.add(v)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)

    def match(self, v):
        if v is None:
            return False
        if type(v) is list or type(v) is tuple:  # a list attribute (audiences, list claims): any
            return any(self.match(x) for x in v)
        if type(v) is not str:
            v = str(v)
        if self.lower:
            v = v.lower()
        return (self.any or v in self.exact or (self.prefixes and v.startswith(self.prefixes))
                or bool(self.suffixes and v.endswith(self.suffixes)))


class IpMatcher:
    """CIDR blocks or single addresses (``ipBlocks``, ``source.ip``...)."""

    __slots__ = ("networks",)

    def __init__(self, values):
        self.networks = tuple(ipaddress.ip_network(v, strict=False) for v in values)

    def match(self, ip):
        if ip is None:
            return False
        return any(ip in n for n in self.networks if n.version == ip.version)


class PortMatcher:
    __slots__ = ("ports",)

    def __init__(self, values):
        self.ports = frozenset(int(v) for v in values)

    def match(self, port):
        return port in self.ports


def template_regex(path):
    """Istio's path template (``{*}`` one segment, ``{**}`` any segments) as a regex."""
    out = []
    for part in re.split(r"(\{\*\*\}|\{\*\})", path):
        if part == "{**}":
            out.append(r"[^?#]*")
        elif part == "{*}":
            out.append(r"[^/?#]+")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


class PathMatcher:
    """``paths``: exact, prefix, suffix, presence, and templates (matched on the normalised path
    without its query)."""

    __slots__ = ("strings", "templates")

    def __init__(self, values):
        plain = [v for v in values if "{*}" not in v and "{**}" not in v]
        self.strings = StringMatcher(plain) if plain else None
        self.templates = tuple(template_regex(v) for v in values if "{*}" in v or "{**}" in v)

    def match(self, path):
        if path is None:
            return False
        if self.strings is not None and self.strings.match(path):
            return True
        for rx in self.templates:
            if rx.fullmatch(path) is not None:
                return True
        return False


_IP_KEYS = frozenset(("source.ip", "remote.ip", "destination.ip"))


def _matcher(key, values):
    if key in _IP_KEYS:
        return IpMatcher(values)
    if key == "destination.port":
        return PortMatcher(values)
    if key == "request.path":
        return PathMatcher(values)
    if key == "request.host":
        return StringMatcher(values, lower=True)
    return StringMatcher(values)


# --- request attributes -----------------------------------------------------------------------------

_MISSING = object()


def _ip(text):
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _host_ip(addr):
    """``"ip:port"`` / ``"[v6]:port"`` -> ip_address (None when unknown)."""
    if not addr:
        return None
    host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 or addr.startswith("[") else addr
    return _ip(host.strip("[]"))


class Attributes:
    """The attributes of one request, computed on first use (one object per evaluated request).

    Built from a stream by ``from_stream``; tests and ``meshproxy explain`` fill ``values``
    directly (attribute name -> value).
    """

    __slots__ = ("stream", "values")

    def __init__(self, stream=None, values=None):
        self.stream = stream
        self.values = {} if values is None else values

    def get(self, key):
        v = self.values.get(key, _MISSING)
        if v is _MISSING:
            v = self.values[key] = self._compute(key)
        return v

    def _compute(self, key):
        s = self.stream
        if s is None:
            if key == "source.principal.raw" or key == "request_auth":
                return None
            return _derived(self, key)
        if key == "request.path":
            return s.view.uri().decode("latin-1")
        if key == "request.method":
            m = s.request.method
            return m.decode("latin-1") if m is not None else None
        if key == "request.host":
            h = s.request.host
            return _strip_port(h.decode("latin-1")) if h is not None else None
        if key.startswith("request.headers["):
            v = s.header(key[16:-1].lower().encode("latin-1"))
            return v.decode("latin-1") if v is not None else None
        if key == "source.ip" or key == "remote.ip":
            return _ip(s.conn.client_addr.decode("latin-1"))
        if key == "destination.ip":
            return _host_ip(s.conn.addresses()[0])
        if key == "destination.port":
            c = s.cluster
            info = c.info if c is not None else None
            return info.port if info is not None else s.view.port
        if key == "source.principal.raw":
            return getattr(s.conn, "peer_principal", None)
        if key == "request_auth":
            fs = s.filter_state
            return fs.get("request_auth") if fs is not None else None
        return _derived(self, key)


def _strip_port(host):
    """Istio matches hosts without the port (``host`` and ``host:<port>`` alike), case-insensitively."""
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    i = host.rfind(":")
    return host[:i] if i >= 0 and host[i + 1:].isdigit() else host


def _derived(attrs, key):
    """Attributes computed from the peer identity and the request-auth dict."""
    if key.startswith("source."):
        spiffe = attrs.get("source.principal.raw")
        if not spiffe:
            return None
        principal = spiffe[len("spiffe://"):] if spiffe.startswith("spiffe://") else spiffe
        if key == "source.principal":
            return principal
        parts = principal.split("/")
        td = parts[0]
        ns = parts[parts.index("ns") + 1] if "ns" in parts[1:-1] else None
        sa = parts[parts.index("sa") + 1] if "sa" in parts[1:-1] else None
        if key == "source.trustDomain":
            return td
        if key == "source.namespace":
            return ns
        if key == "source.serviceAccount":
            return f"{ns}/{sa}" if ns is not None and sa is not None else None
        return None
    if key.startswith("request.auth."):
        ra = attrs.get("request_auth")
        if not ra:
            return None
        if key.startswith("request.auth.claims["):
            v = ra.get("claims")
            for name in key[len("request.auth.claims["):-1].split("]["):
                if not isinstance(v, dict):
                    return None
                v = v.get(name)
            if isinstance(v, bool):
                return "true" if v else "false"
            return v
        return ra.get(key[len("request.auth."):])
    return None  # connection.sni (no TLS yet), unknown


# --- policies -----------------------------------------------------------------------------------------


class _Field:
    __slots__ = ("key", "matcher", "negate", "field")

    def __init__(self, m):
        key = m.key
        if key.startswith("request.headers["):  # header names are case-insensitive
            key = "request.headers[" + key[16:-1].lower() + "]"
        self.key = key
        self.matcher = _matcher(m.key, m.values)
        self.negate = m.negate
        self.field = m.field

    def match(self, attrs):
        return self.matcher.match(attrs.get(self.key)) is not self.negate


def _all(fields, attrs):
    for f in fields:
        if not f.match(attrs):
            return False
    return True


class _Rule:
    __slots__ = ("sources", "operations", "conditions")

    def __init__(self, rule):
        self.sources = tuple(tuple(_Field(m) for m in src) for src in rule.sources)
        self.operations = tuple(tuple(_Field(m) for m in op) for op in rule.operations)
        self.conditions = tuple(_Field(m) for m in rule.conditions)

    def match(self, attrs):
        if self.sources and not any(_all(src, attrs) for src in self.sources):
            return False
        if self.operations and not any(_all(op, attrs) for op in self.operations):
            return False
        return _all(self.conditions, attrs)

    def explain(self, attrs):
        """Why the rule does not match ("" when it does)."""
        for what, alts in (("from", self.sources), ("to", self.operations)):
            if alts and not any(_all(a, attrs) for a in alts):
                firsts = [next(f for f in a if not f.match(attrs)) for a in alts]
                return "; ".join(f"{f.field} does not match" for f in firsts)
        for f in self.conditions:
            if not f.match(attrs):
                return f"{f.field} ({f.key}) does not match"
        return ""


class CompiledPolicy:
    __slots__ = ("name", "namespace", "policy", "action", "rules", "scope")

    def __init__(self, p):
        self.name = p.name
        self.namespace, _, self.policy = p.name.partition("/")
        self.action = p.action
        self.scope = p.scope
        self.rules = tuple(_Rule(r) for r in p.rules)

    def match(self, attrs):
        """The index of the first rule that matches, or -1."""
        for i, r in enumerate(self.rules):
            if r.match(attrs):
                return i
        return -1

    def policy_id(self, rule):
        """Istio's Envoy policy name: ``ns[NS]-policy[NAME]-rule[I]``."""
        return f"ns[{self.namespace}]-policy[{self.policy}]-rule[{rule}]"


class Authorizer:
    """The compiled AuthorizationPolicies of one listener."""

    def __init__(self, policies):
        compiled = [CompiledPolicy(p) for p in policies]
        self.policies = tuple(compiled)
        self.deny = tuple(p for p in compiled if p.action == "DENY")
        self.allow = tuple(p for p in compiled if p.action == "ALLOW")
        self.audit = tuple(p for p in compiled if p.action == "AUDIT")

    def decide(self, attrs):
        """``(allowed, policy or None, rule index)``: the DENY policy that matched, the ALLOW
        policy that matched, or (False, None, -1) when ALLOW policies exist and none matched."""
        for p in self.deny:
            i = p.match(attrs)
            if i >= 0:
                return DENIED, p, i
        if not self.allow:
            return ALLOWED, None, -1
        for p in self.allow:
            i = p.match(attrs)
            if i >= 0:
                return ALLOWED, p, i
        return DENIED, None, -1

    def audited(self, attrs):
        """The first AUDIT policy that matches and its rule, or (None, -1)."""
        for p in self.audit:
            i = p.match(attrs)
            if i >= 0:
                return p, i
        return None, -1


def response_details(policy, rule):
    return "rbac_access_denied_matched_policy[%s]" % (
        policy.policy_id(rule) if policy is not None else "none")


class RbacFilter(HttpFilter):
    """Enforces a listener's AuthorizationPolicies before routing (config: ``(Authorizer, stats,
    listener name)``)."""

    STATELESS = True

    def __init__(self, config):
        self.authz, self.stats, self.listener = config

    def on_request_head(self, stream):
        authz = self.authz
        attrs = Attributes(stream)
        stats = self.stats
        if authz.audit:
            p, i = authz.audited(attrs)
            if p is not None:
                stats["logged"] += 1
                log.info("rbac: %s: AUDIT %s rule[%d] matched %s %s", self.listener, p.name, i,
                         attrs.get("request.method"), attrs.get("request.path"))
            else:
                stats["not_logged"] += 1
        allowed, p, i = authz.decide(attrs)
        if allowed:
            stats["allowed"] += 1
            return CONTINUE
        stats["denied"] += 1
        if p is not None:
            log.info("rbac: %s: denied %s %s from %s: DENY policy %s rule[%d]", self.listener,
                     attrs.get("request.method"), attrs.get("request.path"),
                     stream.conn.client_addr.decode("latin-1"), p.name, i)
        else:
            log.info("rbac: %s: denied %s %s from %s: no ALLOW policy matched (%s)", self.listener,
                     attrs.get("request.method"), attrs.get("request.path"),
                     stream.conn.client_addr.decode("latin-1"), ", ".join(a.name for a in authz.allow))
        stream.state_dict()["response_code_details"] = response_details(p, i)
        stream.local_reply(403, DENIED_BODY, "", b"")
        return STOP


def factory(policies, stats, listener):
    """The ``FilterFactory`` of a listener's RBAC filter (``policies``: ``snapshot.AuthzPolicy``s)."""
    return FilterFactory(RbacFilter, (Authorizer(policies), stats, listener))
