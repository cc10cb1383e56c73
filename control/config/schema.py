"""The config schema's framework: field types, validation machinery and did-you-mean hints.

A kind's schema is written as data: a ``Struct`` of ``Field`` s; a field names its ``Type`` (``Str``,
``Int``, ``Port``, ``Enum``, ``ListOf``, ``MapOf``, a nested ``Struct``...), whether it is required,
its default and, for fields that are accepted but not acted on yet, the warning to give. Checks that
span several fields of one document (``endpoints`` vs ``workloadSelector``, endpoint port names that
must name a service port...) are small functions listed in the ``Struct`` 's ``checks``.

The tables themselves live in one module per API group: ``networking`` (ServiceEntry,
WorkloadEntry, VirtualService, DestinationRule), ``security``, ``telemetry`` and ``extensions``
(Istio kinds not supported yet), ``meshproxy`` (the meshproxy.io Bootstrap). ``kinds`` gathers them
into ``KINDS`` and ``UNSUPPORTED_KINDS``; adding a kind means adding its table to its group's module
and its ``KindSchema`` to that module's ``KINDS``; nothing else changes.

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


class Float(Type):
    """A number (YAML int or float), normalised to float."""

    describe = "a number"

    def __init__(self, min: Optional[float] = None, max: Optional[float] = None):
        self.min, self.max = min, max

    def check(self, value, path, rep):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self._wrong(value, path, rep)
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            rep.issue(path, f"{value:g} is out of range ({self.min:g}-{self.max:g})")
            return INVALID
        return float(value)


class AnyValue(Type):
    """Anything (for fields reported as unsupported whatever their value)."""

    def check(self, value, path, rep):
        return value


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
    unsupported: str = ""  # a valid Istio field not implemented yet: the error given when it is set


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
            if f.unsupported:
                rep.issue(p, f.unsupported)
                bad = True
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
    """A DNS name, or a wildcard ``*.example.com`` (a leading ``*.`` only, as Istio requires)."""
    name = value[2:] if value.startswith("*.") else value
    if "*" in name:
        return f'"{value}" is not a valid host name (a wildcard is only allowed as a leading "*.")'
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(name):
        return f'"{value}" is not a valid host name (a DNS name such as "echo.default.svc.cluster.local")'
    return None


def regex(value: str) -> Optional[str]:
    """An RE2 pattern (Istio's StringMatch.regex, uriRegexRewrite.match), checked by RE2."""
    from control import regex as re2_check

    msg = re2_check.check(value)
    return f"invalid regex: {msg}" if msg else None


# --- Shared by every kind ---------------------------------------------------------------------------

NOT_USED = "not used by meshproxy yet"


def not_yet(name: str) -> Field:
    """A valid Istio field meshproxy does not implement yet: an error when set."""
    return Field(AnyValue(), unsupported=f"{name} is not supported yet")


LABELS = MapOf(Str())

# Kubernetes ObjectMeta, the same for every kind.
METADATA = Struct({
    "name": Field(Str(dns1123_subdomain), required=True),
    "namespace": Field(Str(dns1123_label), default="default"),
    "labels": Field(LABELS),
    "annotations": Field(MapOf(Str())),
})


@dataclass(frozen=True)
class KindSchema:
    """One kind: its apiVersions and spec table (the envelope is checked against ``METADATA``)."""

    kind: str
    api_versions: tuple
    spec: Struct
    singleton: bool = False  # at most one document of this kind
    doc: str = ""
    extra: dict = field(default_factory=dict)

