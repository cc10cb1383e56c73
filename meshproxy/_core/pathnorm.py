"""Request path normalisation, as Istio's ``meshConfig.pathNormalization`` configures Envoy.

One source, two builds: Cython compiles this file with ``pathnorm.pxd``; ``meshproxy._py.pathnorm``
is the same file uncompiled. Keep it plain Python.

What each mode does (Envoy ``ConnectionManagerUtility::maybeNormalizePath``, in this order):

* every mode, ``NONE`` included: a ``#fragment`` is stripped (it is never part of a request target,
  RFC 9112 section 3.2; Istio runs Envoy with ``http_reject_path_with_fragment`` off, so Envoy strips
  it instead of rejecting: CVE-2021-39156);
* ``DECODE_AND_MERGE_SLASHES``: ``%2F``/``%2f`` are decoded to ``/`` and ``%5C``/``%5c`` to ``\\``
  (Envoy ``path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD``, CVE-2021-31920);
* ``BASE`` and above: Envoy's ``normalize_path`` (Chromium's URL path canonicaliser): ``\\`` becomes
  ``/``; ``.`` and ``%2e``/``%2E`` segments are removed as RFC 3986 section 5.2.4 says (``..`` never
  climbs above the root: CVE-2019-9901); percent-encoded unreserved characters (``ALPHA``,
  ``DIGIT``, ``-``, ``.``, ``_``, ``~``) are decoded; other escapes are kept exactly (hex case
  included); the characters Chromium escapes in a path (``"`` ``<`` ``>`` ``^`` `````` ``{`` ``|``
  ``}``) are percent-encoded; ``%00`` makes the path invalid (the request is answered 400);
* ``MERGE_SLASHES`` and above: runs of ``/`` become one (after the above, so ``/%2e//`` merges too).

Only the path is touched: the query string (from the first ``?``) is kept byte for byte.
``normalize`` returns its argument itself (no copy) when there is nothing to do, which
``needs_normalizing`` decides in one pass over the path: that is all a normal request costs.
"""

NONE = 0
BASE = 1
MERGE_SLASHES = 2
DECODE_AND_MERGE_SLASHES = 3

#: Istio's ``PathNormalization.NormalizationType`` names (``DEFAULT`` is ``BASE``, as in Istio).
MODES = {"NONE": NONE, "BASE": BASE, "MERGE_SLASHES": MERGE_SLASHES,
         "DECODE_AND_MERGE_SLASHES": DECODE_AND_MERGE_SLASHES, "DEFAULT": BASE}
NAMES = ("NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")

# Bytes that make a path need the slow path in BASE and above: ``%`` (any escape may change),
# ``\\``, ``#`` and the bytes Chromium escapes; ``.`` and ``/`` are decided by the byte before.
_SPECIAL = frozenset(b'%\\#"<>^`{|}')
_HEX = b"0123456789ABCDEF"
# Decoded escapes Chromium unescapes in a path: the RFC 3986 unreserved characters.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Chromium escapes these when they appear literally in a path (the request line allows them).
_ESCAPE = frozenset(b'"<>^`{|}')

def needs_normalizing(path, mode):
    """Whether ``normalize(path, mode)`` could differ from ``path`` (one pass, no allocation)."""
    if _COMPILED:
        return _scan(path, mode)
    if b"#" in path:
        return True
    if mode == 0:  # NONE
        return False
    if (b"%" in path or b"/." in path or b"\\" in path or b'"' in path or b"<" in path
            or b">" in path or b"^" in path or b"`" in path or b"{" in path or b"|" in path
            or b"}" in path):
        return True
    return mode >= 2 and b"//" in path  # MERGE_SLASHES and above


def _scan(path, mode):
    # One pass up to the query: compiled, ``for c in path`` is a loop over the bytes' chars.
    prev = 0
    if mode == 0:  # NONE
        return b"#" in path
    merge = mode >= 2  # MERGE_SLASHES and above
    for c in path:
        if 97 <= c <= 122 or 65 <= c <= 90 or 48 <= c <= 57:  # letters and digits: most bytes
            prev = c
            continue
        if c == 63:  # '?': the query is never normalised (a '#' after it still needs stripping)
            return b"#" in path
        if c == 46:  # '.'
            if prev == 47:
                return True
        elif c == 47:  # '/'
            if merge and prev == 47:
                return True
        elif c == 37 or c == 92 or c == 35 or c == 34 or c == 60 or c == 62 or c == 94 \
                or c == 96 or c == 123 or c == 124 or c == 125:
            return True
        prev = c
    return False


def normalize(path, mode):
    """``path`` (origin form, with its query) normalised for ``mode``; None if it is invalid.

    Returns ``path`` itself when nothing changes. A target that is not a path (``*``, a CONNECT
    authority) is returned unchanged.
    """
    if not needs_normalizing(path, mode):
        return path
    h = path.find(b"#")
    if h >= 0:
        path = path[:h]
    q = path.find(b"?")
    if q >= 0:
        p = path[:q]
        query = path[q:]
    else:
        p = path
        query = b""
    if mode != NONE and p[:1] in (b"/", b"\\"):
        if mode == DECODE_AND_MERGE_SLASHES:
            p = _unescape_slashes(p)
        p = canonical_path(p)
        if p is None:
            return None
        if mode >= MERGE_SLASHES:
            p = merge_slashes(p)
    out = p + query if query else p
    return path if out == path else out


def _unescape_slashes(p):
    """``%2F``/``%2f`` to ``/`` and ``%5C``/``%5c`` to ``\\`` (Envoy ``PathUtil::unescapeSlashes``)."""
    if b"%" not in p:
        return p
    for enc, dec in ((b"%2F", b"/"), (b"%2f", b"/"), (b"%5C", b"\\"), (b"%5c", b"\\")):
        if enc in p:
            p = p.replace(enc, dec)
    return p


def merge_slashes(p):
    """Runs of ``/`` as one (Envoy ``PathUtil::mergeSlashes``; ``p`` has no query)."""
    while b"//" in p:
        p = p.replace(b"//", b"/")
    return p


def _hexval(c):
    if 48 <= c <= 57:
        return c - 48
    if 65 <= c <= 70:
        return c - 55
    if 97 <= c <= 102:
        return c - 87
    return -1


def _is_dot(p, i, n):
    """Length of a dot at ``p[i]`` (``.`` is 1, ``%2e``/``%2E`` is 3), else 0 (Chromium IsDot)."""
    c = p[i]
    if c == 46:
        return 1
    if c == 37 and i + 3 <= n and p[i + 1] == 50 and (p[i + 2] == 101 or p[i + 2] == 69):
        return 3
    return 0


def canonical_path(p):
    """Chromium's ``CanonicalizePath`` (what Envoy's ``normalize_path`` runs) over a path without
    its query; None if it is invalid (an escaped NUL)."""
    n = len(p)
    out = bytearray()
    i = 0
    last_bad_pct = -10  # index in ``out`` of a '%' that began no valid escape
    while i < n:
        c = p[i]
        d = _is_dot(p, i, n)
        if d:
            if out and out[len(out) - 1] == 47:
                # A dot right after a slash: "." or ".." segment, or part of a name.
                j = i + d
                if j == n:
                    i = j  # "/." at the end: the current directory
                    continue
                if p[j] == 47 or p[j] == 92:
                    i = j + 1  # "./"
                    continue
                d2 = _is_dot(p, j, n)
                if d2:
                    k = j + d2
                    if k == n or p[k] == 47 or p[k] == 92:
                        _back_up(out)  # ".." or "../": drop the last segment, never the root
                        i = k + 1 if k < n else k
                        continue
            out.append(46)
            i += d
            continue
        if c == 92:
            out.append(47)
        elif c == 37:
            hi = lo = -1
            if i + 3 <= n:
                hi = _hexval(p[i + 1])
                lo = _hexval(p[i + 2])
            if hi >= 0 and lo >= 0:
                v = hi * 16 + lo
                if v in _UNRESERVED:
                    out.append(v)
                    if last_bad_pct >= len(out) - 3:
                        _nested_escape(p, i + 3, n, last_bad_pct, out)
                else:
                    if v == 0:
                        return None  # %00: Chromium fails the path, Envoy answers 400
                    out += p[i:i + 3]  # kept exactly, hex case included
                i += 3
                continue
            last_bad_pct = len(out)
            out.append(37)  # not an escape: kept as it is
        elif c in _ESCAPE:
            out.append(37)
            out.append(_HEX[c >> 4])
            out.append(_HEX[c & 15])
        else:
            out.append(c)
        i += 1
    if not out:
        return b"/"
    return bytes(out)


# The compiled build scans with a C loop (``_scan``); the twin with ``in``, one C search each.
_COMPILED = type(_scan).__name__ != "function"


def _back_up(out):
    """Drop the last segment of ``out`` (which ends with '/'), keeping the first slash."""
    i = len(out) - 1
    if i == 0:
        return
    i -= 1
    while i > 0 and out[i] != 47:
        i -= 1
    del out[i + 1:]


def _nested_escape(p, nxt, n, pct, out):
    """Chromium's CheckForNestedEscapes: a '%' that began no escape must not begin one after the
    bytes that follow it were unescaped (``%%30`` + ``0`` would read ``%00``): it becomes ``%25``."""
    length = len(out)
    last = out[length - 1]
    append_next = pct == length - 2
    if append_next:
        if nxt >= n:
            return
        out.append(p[nxt])
    if _hexval(out[pct + 1]) >= 0 and _hexval(out[pct + 2]) >= 0:
        if not append_next:
            out.append(out[pct + 1])
        out[pct + 1] = 50  # '2'
        out[pct + 2] = 53  # '5'
        out.append(last)
    elif append_next:
        del out[length:]
