"""Istio regexes (RE2 syntax), checked with RE2 itself (the ``google-re2`` binding).

Istio's ``StringMatch.regex`` and ``uriRegexRewrite.match`` are Google RE2 patterns, which Envoy
compiles with RE2's default options (UTF-8) and matches against the *whole* value. RE2 runs in
time linear in the input, whatever the pattern: there is no backtracking, so no pattern a user
writes can stall the sidecar. The data plane (``meshproxy._core.router``) compiles the same
patterns with the same options; this module says whether it can, and why not::

    from control import regex
    regex.check(r"(a)\\1")       # 'invalid escape sequence: \\1 (RE2 has no backreferences)'
    regex.check_rewrite(r"/\\2", 1)  # '\\2 refers to a group the match does not have (1)'

Besides RE2's own errors, a pattern whose compiled program is larger than ``MAX_PROGRAM_SIZE``
(Istio's ``re2.max_program_size.error_level`` for Envoy) is refused, as Envoy refuses it.
"""
from __future__ import annotations

import re
from typing import Optional

import re2

#: Istio configures Envoy's ``re2.max_program_size.error_level`` to 32768 (Envoy's own default is
#: 100); a larger program is a configuration error there, and here.
MAX_PROGRAM_SIZE = 32768

# RE2's error for a syntax Python's re has and RE2 does not: a hint after RE2's message.
_HINTS = (
    (re.compile(r"invalid escape sequence: \\[1-9kg]"), "RE2 has no backreferences"),
    (re.compile(r"invalid perl operator: \(\?P$"), "RE2 has no backreferences"),
    (re.compile(r"invalid perl operator: \(\?<?[=!]"), "RE2 has no lookaround"),
    (re.compile(r"invalid perl operator: \(\?>"), "RE2 has no atomic groups"),
    (re.compile(r"invalid escape sequence: \\Z"), "use \\z or $"),
    (re.compile(r"bad repetition operator: (?:[*+?]|\{[0-9,]*\})\+$"),
     "RE2 has no possessive quantifiers"),
)


class RegexError(ValueError):
    """The pattern is not valid RE2, or is too large."""


def options(ignore_case: bool = False) -> "re2.Options":
    """RE2's options for a route regex: Envoy's (UTF-8, case-sensitive unless ``ignore_case``),
    without RE2 logging its parse errors to stderr."""
    o = re2.Options()
    o.log_errors = False
    if ignore_case:
        o.case_sensitive = False
    return o


def compile(pattern: str, ignore_case: bool = False):
    """The compiled RE2 pattern (``re2._Regexp``: ``fullmatch``, ``groups``, ``programsize``);
    raises ``RegexError`` with RE2's reason."""
    if not isinstance(pattern, str):
        raise RegexError("expected a string")
    try:
        rx = re2.compile(pattern.encode("utf-8"), options(ignore_case))
    except re2.error as e:
        raise RegexError(_message(e)) from None
    size = rx.programsize
    if size > MAX_PROGRAM_SIZE:
        raise RegexError(f"pattern too large: RE2 program size {size} is over {MAX_PROGRAM_SIZE} "
                         "(Istio's limit for Envoy)")
    return rx


def check(pattern: str) -> Optional[str]:
    """None if ``pattern`` is a valid RE2 pattern the data plane accepts, else RE2's reason."""
    try:
        compile(pattern)
    except RegexError as e:
        return str(e)
    return None


def check_rewrite(rewrite: str, groups: int) -> Optional[str]:
    """None if ``rewrite`` is a valid RE2 rewrite string for a pattern with ``groups`` capture
    groups (``\\0``-``\\9`` are groups, ``\\\\`` a backslash, as RE2::Rewrite), else why not."""
    i, n = 0, len(rewrite)
    while i < n:
        if rewrite[i] != "\\":
            i += 1
            continue
        d = rewrite[i + 1:i + 2]
        if d == "\\":
            i += 2
            continue
        if not d or not d.isdigit() or not d.isascii():
            return (f"invalid rewrite {'trailing backslash' if not d else repr(chr(92) + d)}: "
                    "only \\0 to \\9 (groups) and \\\\ (a backslash) may follow a backslash")
        if int(d) > groups:
            return f"\\{d} refers to a group the match does not have ({groups})"
        i += 2
    return None


def _message(e: "re2.error") -> str:
    msg = e.args[0] if e.args else str(e)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    msg = str(msg)
    for rx, hint in _HINTS:
        if rx.search(msg):
            return f"{msg} ({hint})"
    return msg
