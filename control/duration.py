"""Istio duration strings ("5s", "1.5s", "100ms", "1m", "1h30m") to seconds.

Istio's CRDs carry ``google.protobuf.Duration`` (JSON form ``"1.5s"``); MeshConfig and ProxyConfig
values are also written the Go ``time.ParseDuration`` way (``"100ms"``, ``"1m"``, ``"1h30m"``). Both
are accepted. Negative durations and bare numbers are rejected: a unit is always required, so that
``drainDuration: 5`` cannot silently mean five nanoseconds or five hours.
"""
from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a duration string.

    Args:
        text: e.g. ``"5s"``, ``"1.5s"``, ``"100ms"``, ``"1m"``, ``"1h30m"``.

    Returns:
        The duration in seconds (float, >= 0).

    Raises:
        ValueError: ``text`` is not a duration; the message says what is accepted.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as \"5s\", got {text!r}")
    s = text.strip()
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f'"{text}" is not a duration (use a number and a unit: "5s", "1.5s", "100ms", "1m", "1h")')
    return total


def format_duration(seconds: float) -> str:
    """The shortest Istio-style string for ``seconds`` (used in docs and messages)."""
    if seconds and seconds == int(seconds) and seconds % 3600 == 0:
        return f"{int(seconds) // 3600}h"
    if seconds and seconds == int(seconds) and seconds % 60 == 0:
        return f"{int(seconds) // 60}m"
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"
