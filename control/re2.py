"""Istio regexes (RE2 syntax, full-match semantics) checked and compiled with Python's ``re``.

Istio's ``StringMatch.regex`` and ``uriRegexRewrite.match`` use Google RE2 syntax, which Envoy
matches against the *whole* value. Python's ``re`` accepts a superset of RE2 (backreferences,
lookaround, possessive quantifiers, atomic groups, conditionals...) and spells a few things
differently. ``check`` rejects what RE2 rejects, with a short reason; ``to_python`` rewrites the
few RE2 spellings Python lacks; ``compile`` gives the pattern to use with ``fullmatch``::

    from control import re2
    re2.check(r"(a)\\1")            # 'backreference \\1 is not supported (RE2 syntax)'
    re2.compile(r"/api/v[0-9]+/.*").fullmatch("/api/v2/x")

RE2's ``\\d``, ``\\w``, ``\\s`` and ``\\b`` are ASCII-only, so patterns are compiled with
``re.ASCII``. Some RE2 features Python has no equivalent for (``\\pL`` Unicode classes, ``\\Q...\\E``,
``\\C``, ``(?U)``) are rejected as "not supported yet". Pure Python, no imports beyond ``re``.
"""
from __future__ import annotations

import re
from typing import Optional

MAX_REPEAT = 1000  # RE2's limit on {n,m}

# POSIX classes RE2 accepts inside [...]; Python would read "[:alpha:]" as a set of characters.
_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_FLAGS = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")


class RegexError(ValueError):
    """The pattern is not valid RE2 (or uses RE2 syntax this release cannot run)."""


def check(pattern: str) -> Optional[str]:
    """None if ``pattern`` is valid RE2 that meshproxy can run, else a short reason."""
    try:
        compile(pattern)
    except RegexError as e:
        return str(e)
    return None


def compile(pattern: str) -> "re.Pattern":
    """Compile an RE2 pattern for ``fullmatch``; raises ``RegexError`` with a short reason."""
    py = to_python(pattern)
    try:
        return re.compile(py, re.ASCII)
    except re.error as e:
        msg = e.msg + (f" at position {e.pos}" if e.pos is not None else "")
        raise RegexError(msg) from None
    except (OverflowError, RecursionError) as e:  # pragma: no cover - pathological patterns
        raise RegexError(str(e)) from None


def to_python(pattern: str) -> str:  # noqa: C901 - one small tokenizer
    """Translate RE2 syntax to Python ``re`` syntax; raises ``RegexError`` for non-RE2 syntax."""
    if not isinstance(pattern, str):
        raise RegexError("expected a string")
    p, n = pattern, len(pattern)
    out: list = []
    multiline = bool(re.search(r"\(\?[a-zA-Z]*m", p))
    # For each open group: the "(?flags:" opened inside it for a mid-group "(?flags)", closed with it.
    groups: list = [[]]
    i = 0
    prev_quant = False  # the last token was a quantifier (so a following "+" would be possessive)
    at_start = True  # nothing that matches text emitted yet in this group (for "(?i)" placement)

    def quantifier_follow(j: int, text: str) -> int:
        """Emit quantifier ``text`` ending before ``j``; handle a lazy "?" and reject possessive "+"."""
        out.append(text)
        if j < n and p[j] == "?":
            out.append("?")
            j += 1
        if j < n and p[j] == "+":
            raise RegexError(f"possessive quantifier {text}+ is not supported (RE2 syntax)")
        return j

    while i < n:
        c = p[i]
        if c == "\\":
            j, text = _escape(p, i, in_class=False)
            if text == "\\z":
                text = "\\Z"
            out.append(text)
            i, prev_quant, at_start = j, False, False
            continue
        if c == "[":
            j, text = _char_class(p, i)
            out.append(text)
            i, prev_quant, at_start = j, False, False
            continue
        if c == "(":
            if p.startswith("(?", i):
                rest = p[i + 2:i + 5]
                if rest.startswith(("=", "!")):
                    raise RegexError(f"lookahead (?{rest[0]} is not supported (RE2 syntax)")
                if rest.startswith(("<=", "<!")):
                    raise RegexError(f"lookbehind (?{rest[:2]} is not supported (RE2 syntax)")
                if rest.startswith(">"):
                    raise RegexError("atomic group (?> is not supported (RE2 syntax)")
                if rest.startswith("("):
                    raise RegexError("conditional (?( is not supported (RE2 syntax)")
                if rest.startswith("#"):
                    raise RegexError("comment (?# is not supported (RE2 syntax)")
                if rest.startswith("|"):
                    raise RegexError("branch reset (?| is not supported (RE2 syntax)")
                if rest.startswith("P="):
                    raise RegexError("backreference (?P= is not supported (RE2 syntax)")
                if rest.startswith("P>") or rest.startswith("&") or rest[:1].isdigit() or rest.startswith("R"):
                    raise RegexError(f"recursion (?{rest[:2]} is not supported (RE2 syntax)")
                if rest.startswith("P<"):
                    out.append("(?P<")
                    groups.append([])
                    i, prev_quant, at_start = i + 4, False, True
                    continue
                if rest.startswith("<"):  # RE2's (?<name>...) is Python's (?P<name>...)
                    out.append("(?P<")
                    groups.append([])
                    i, prev_quant, at_start = i + 3, False, True
                    continue
                m = _FLAGS.match(p, i)
                if not m or (not m.group(1) and not m.group(2) and m.group(3) == ")"):
                    raise RegexError(f"invalid group {p[i:i + 3]!r} (RE2 syntax)")
                for f in (m.group(1) or "") + (m.group(2) or ""):
                    if f == "U":
                        raise RegexError("flag U (ungreedy) is not supported yet")
                    if f not in "ims":
                        raise RegexError(f"flag {f} is not supported (RE2 flags: i, m, s, U)")
                flags = m.group(1) + (f"-{m.group(2)}" if m.group(2) is not None else "")
                if m.group(3) == ":":
                    out.append(f"(?{flags}:")
                    groups.append([])
                    i, prev_quant, at_start = m.end(), False, True
                    continue
                # "(?i)" applies to the rest of the enclosing group: Python wants scoped "(?i:...)"
                if at_start and len(groups) == 1 and not out and "-" not in flags:
                    out.append(f"(?{flags})")
                else:
                    out.append(f"(?{flags}:")
                    groups[-1].append(flags)
                i, prev_quant = m.end(), False
                continue
            out.append("(")
            groups.append([])
            i, prev_quant, at_start = i + 1, False, True
            continue
        if c == ")":
            if len(groups) == 1:
                raise RegexError(f"unbalanced ) at position {i}")
            out.append(")" * len(groups.pop()))
            out.append(")")
            i, prev_quant, at_start = i + 1, False, False
            continue
        if c == "|":
            # RE2's flags last to the end of the group, across "|": close the scoped groups and reopen them
            opened = groups[-1]
            out.append(")" * len(opened) + "|" + "".join(f"(?{f}:" for f in opened))
            i, prev_quant = i + 1, False
            continue
        if c in "*+?":
            if prev_quant:
                raise RegexError(f"bad repetition operator {p[i - 1:i + 1]} (RE2 syntax)")
            i = quantifier_follow(i + 1, c)
            prev_quant, at_start = True, False
            continue
        if c == "{":
            m = _REPEAT.match(p, i)
            if m:
                lo, hi = int(m.group(1)), m.group(2)
                if lo > MAX_REPEAT or (hi and int(hi) > MAX_REPEAT):
                    raise RegexError(f"bad repetition operator {m.group(0)}: at most {MAX_REPEAT} (RE2 limit)")
                if prev_quant:
                    raise RegexError(f"bad repetition operator {m.group(0)} after a repetition (RE2 syntax)")
                i = quantifier_follow(m.end(), m.group(0))
                prev_quant, at_start = True, False
                continue
            out.append("\\{")  # RE2: a "{" that does not start a repetition is a literal
            i, prev_quant, at_start = i + 1, False, False
            continue
        if c == "$" and not multiline:
            out.append("\\Z")  # RE2's $ (without m) is the end of the text, never before a final \n
            i, prev_quant, at_start = i + 1, False, False
            continue
        out.append(c)
        i, prev_quant, at_start = i + 1, False, False
    if len(groups) > 1:
        raise RegexError("missing ), unterminated subpattern")
    out.append(")" * len(groups[0]))
    return "".join(out)


def _escape(p: str, i: int, in_class: bool):
    """(end, python text) for the escape at ``p[i] == "\\"``."""
    if i + 1 >= len(p):
        raise RegexError("trailing backslash at end of expression")
    d = p[i + 1]
    if d in "123456789":
        if d in "1234567" and len(p) > i + 3 and p[i + 2] in "01234567" and p[i + 3] in "01234567":
            return i + 4, p[i:i + 4]  # three-digit octal: the same in RE2 and Python
        raise RegexError(f"backreference \\{d} is not supported (RE2 syntax)")
    if d == "Z":
        raise RegexError("\\Z is not supported (RE2 syntax: use \\z or $)")
    if d == "z" and in_class:
        raise RegexError("\\z is not valid in a character class")
    if d in "kg":
        raise RegexError(f"backreference \\{d} is not supported (RE2 syntax)")
    if d in "pPQECX" or (d == "x" and p.startswith("{", i + 2)):
        raise RegexError(f"\\{d} is not supported yet")
    return i + 2, p[i:i + 2]


def _char_class(p: str, i: int):
    """(end, python text) for the class starting at ``p[i] == "["``."""
    n = len(p)
    out = ["["]
    j = i + 1
    if j < n and p[j] == "^":
        out.append("^")
        j += 1
    first = True
    while j < n:
        c = p[j]
        if c == "]" and not first:
            out.append("]")
            return j + 1, "".join(out)
        first = False
        if c == "\\":
            j2, text = _escape(p, j, in_class=True)
            out.append(text)
            j = j2
            continue
        if c == "[" and p.startswith("[:", j):
            end = p.find(":]", j + 2)
            if end < 0:
                out.append("\\[")
                j += 1
                continue
            name = p[j + 2:end]
            if name.startswith("^"):
                raise RegexError(f"negated class [:{name}:] is not supported yet")
            if name not in _POSIX:
                raise RegexError(f"invalid character class range [:{name}:]")
            out.append(_POSIX[name])
            j = end + 2
            continue
        if c in "[&~|":
            out.append("\\" + c)  # literal in RE2; Python would warn about set operations
            j += 1
            continue
        out.append(c)
        j += 1
    raise RegexError(f"missing ], unterminated character class at position {i}")
