"""HTTP/1.1 message heads and body framing for the proxy hot path (RFC 9110, RFC 9112).

This stub is the contract of both twins: ``meshproxy/_core/http1.pyx`` (Cython) and
``meshproxy/_py/http1.py`` (pure Python). Both raise ``meshproxy.errors.ProtocolError`` and nothing
else for bad input.

Theory of operation
-------------------
A parser is created once per connection and reused for every message on it. ``parse(buf, start)``
looks for a complete head beginning at ``buf[start]``. It returns 0 when more bytes are needed (and
raises at once when what it has already proves the head bad or over a limit), or the number of
bytes the head occupies (from ``start``, including any skipped leading empty lines and the final
empty line). After a successful parse the parser keeps a reference to ``buf`` and the offsets of
every header line in it; ``serialize()`` builds the outgoing head by copying the kept lines as byte
ranges. ``buf`` must not be mutated between ``parse`` and ``serialize``.

Strictness (both twins, requests and responses unless said otherwise), each a ``ProtocolError``
with ``status_hint`` 400 unless said otherwise:

* request line ``method SP target SP HTTP/1.x CRLF``; method is a token; target is 1+ bytes in
  0x21-0x7E; version exactly ``HTTP/1.1`` or ``HTTP/1.0`` (``HTTP/<digit>.<digit>`` other than
  those: 505); exactly one SP between parts. Up to 8 leading CRLF (empty lines) before the request
  line are skipped (RFC 9112 section 2.2).
* status line ``HTTP/1.x SP 3DIGIT [SP reason] CRLF`` (reason may be empty, the SP before it may be
  missing); status 100-599.
* every line ends in CRLF: a bare LF or a CR not followed by LF is an error.
* header line ``name ":" OWS value OWS CRLF``; name is a non-empty token; no whitespace between
  name and colon; a line starting with SP or HTAB (obs-fold) is an error; the value may contain
  VCHAR, obs-text (0x80-0xFF), SP and HTAB; NUL, other control bytes and DEL are errors. OWS
  around the value is not part of it.
* limits: the whole head (request/status line through the final empty line) larger than
  ``max_head_size`` -> 431 (``status_hint`` 431, raised as soon as the limit is passed, even before
  the head is complete); a request line longer than ``max_request_line`` (excluding CRLF) -> 414;
  more than ``max_headers`` header lines -> 431.
* ``Content-Length``: 1*DIGIT, at most 18 digits; repeated with the same value is accepted (one
  value), with different values or a comma list is an error; with ``Transfer-Encoding`` present
  is an error.
* ``Transfer-Encoding`` in a request: all such headers joined as one comma list (OWS around
  commas, empty elements ignored, RFC 9110 section 5.6.1.2) that must come to exactly one
  ``chunked`` (case-insensitive). The first fault, in list order, is raised once the head is
  complete: an element other than ``chunked`` (``gzip``, ``identity``, ``chunked;x=1``...) is 501
  (as Envoy and h11 answer), ``chunked`` twice is 400; an empty list is 400. With version
  HTTP/1.0 it is an error (RFC 9112 section 6.1), raised at the line.
* ``Transfer-Encoding`` in a response: known codings are ``chunked``, ``gzip``, ``x-gzip``,
  ``deflate``, ``compress``, ``x-compress``, ``identity``; an unknown coding, a last coding that is
  not ``chunked``, ``chunked`` more than once, or an empty list is an error.
* requests: HTTP/1.1 without ``Host`` is an error; more than one ``Host`` is an error; a Host
  value containing bytes outside ``[A-Za-z0-9.:_~!$&'()*+,;=%[\]-]`` is an error.
* request targets: origin-form (``/...``); absolute-form (``http://authority/path?q`` or
  ``https://...``, scheme case-insensitive; the authority becomes ``host``, the rest becomes
  ``path``, ``/`` when empty; an empty authority or one with userinfo (``@``) is an error); asterisk-form ``*`` only with
  ``OPTIONS``; authority-form only with ``CONNECT``. Anything else is an error.

Hop-by-hop headers (``Connection``, ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Upgrade``,
plus every header named in a ``Connection`` value: every token, however many, except
Content-Length, Transfer-Encoding and Host) are dropped by ``serialize``. When ``upgrade`` is set, the ``Upgrade`` line is kept as received and the ``Connection`` lines are
replaced by the single line ``Connection: upgrade``, so the upstream sees the upgrade request.
Lines the request ``serialize`` rewrites: a chunked request's Transfer-Encoding lines are replaced
by the one line ``transfer-encoding: chunked`` (bodies are forwarded with their chunked framing
unchanged); for an absolute-form target the Host line is replaced by ``host: <authority>`` (RFC 9112
section 3.2.2; left out when ``drop`` names ``host``, the caller then adds its own) and the request
line carries the origin-form ``path``. Both come after the kept lines, before ``extra``. A response's
Transfer-Encoding is kept as received.
``X-Forwarded-For`` and ``X-Forwarded-Proto`` lines are dropped by the *request* ``serialize``: the
proxy re-adds them (with the client address appended to ``forwarded_for``) in ``extra``.
"""

from typing import Optional, Union

Buffer = Union[bytes, bytearray]

#: Defaults (Envoy's): 60 KiB head, 100 headers; 16 KiB request line.
DEFAULT_MAX_HEAD_SIZE: int
DEFAULT_MAX_HEADERS: int
DEFAULT_MAX_REQUEST_LINE: int
#: Limit on a chunk-size line and on the trailer section (431 beyond).
DEFAULT_MAX_TRAILER_SIZE: int


class RequestParser:
    """Parses request heads, one at a time, reused for every request on a connection.

    Attributes (valid after ``parse`` returned > 0):
        method: the method, e.g. ``b"GET"``.
        target: the request target exactly as sent.
        path: the origin-form target to forward (path and query; ``b"*"`` for asterisk-form;
            the authority for CONNECT).
        host: the lowercased authority: from an absolute-form target if there is one, else the
            Host header, else ``None`` (HTTP/1.0 without Host).
        absolute: True when the target was absolute-form.
        version: 0 for HTTP/1.0, 1 for HTTP/1.1.
        content_length: the Content-Length value, or -1 when absent.
        chunked: True when the body is chunked (Transfer-Encoding is exactly ``chunked``).
        keep_alive: whether the client's connection may persist after this request: HTTP/1.1
            unless a Connection header lists ``close``; HTTP/1.0 only if it lists ``keep-alive``.
        upgrade: the lowercased Upgrade header value when a Connection header lists ``upgrade``
            and Upgrade is present, else ``None``.
        expect_continue: True when ``Expect: 100-continue`` (case-insensitive) is present.
        head_length: bytes the head occupies (same as ``parse``'s return value).
        header_count: number of header lines.
        is_head: True when the method is ``HEAD`` (the response has no body).
        request_id: the value of the first ``X-Request-Id`` header, or ``None``.
        forwarded_for: the values of all ``X-Forwarded-For`` headers joined with ``b", "``, or
            ``None`` when there is none.
    """

    is_head: bool
    request_id: Optional[bytes]
    forwarded_for: Optional[bytes]

    method: bytes
    target: bytes
    path: bytes
    host: Optional[bytes]
    absolute: bool
    version: int
    content_length: int
    chunked: bool
    keep_alive: bool
    upgrade: Optional[bytes]
    expect_continue: bool
    head_length: int
    header_count: int

    def __init__(
        self,
        max_head_size: int = ...,
        max_request_line: int = ...,
        max_headers: int = ...,
    ) -> None: ...

    def parse(self, buf: Buffer, start: int = 0) -> int:
        """Parse the head that begins at ``buf[start]``.

        Returns:
            0 if the head is not complete yet, else the number of bytes it occupies from ``start``.
        Raises:
            ProtocolError: the bytes seen so far cannot begin a valid head, or break a limit.
        """

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Every header as ``(name as sent, value without OWS)``, in order (cold path)."""

    def get(self, name: bytes) -> Optional[bytes]:
        """The value of the first header named ``name`` (lowercase, ASCII), or None (cold path)."""

    def has(self, name: bytes) -> bool:
        """Whether a header named ``name`` (lowercase) is present (allocates nothing)."""

    def uri(self) -> bytes:
        """The path to forward without its query string (Istio's ``uri`` match target)."""

    def get_all(self, name: bytes) -> Optional[bytes]:
        """Every value of header ``name`` joined with ``b","`` (as Envoy matches headers), or None."""

    def serialize(self, extra: bytes = b"", path: Optional[bytes] = None,
                  drop: Optional[tuple[bytes, ...]] = None) -> bytes:
        """The head to send upstream.

        ``drop``: lowercase header names to leave out as well (route header edits: ``remove``,
        and ``set`` which re-adds the header in ``extra``).

        ``method SP (path or self.path) SP HTTP/1.x CRLF``, then every header line copied as it was
        received (name case kept) except hop-by-hop ones (see the module doc), then ``extra``
        (already formatted ``name: value\\r\\n`` lines), then ``CRLF``.
        """


class ResponseParser:
    """Parses response heads (status line and headers); reused per upstream connection.

    Attributes (valid after ``parse`` returned > 0):
        status: the status code.
        version: 0 for HTTP/1.0, 1 for HTTP/1.1.
        content_length: Content-Length or -1.
        chunked: True when Transfer-Encoding ends in ``chunked``.
        keep_alive: whether the upstream connection may be reused: HTTP/1.1 unless
            ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``.
        upgrade: lowercased Upgrade value on a 101 response, else None.
        head_length, header_count: as for requests.
    """

    status: int
    version: int
    content_length: int
    chunked: bool
    keep_alive: bool
    upgrade: Optional[bytes]
    head_length: int
    header_count: int

    def __init__(self, max_head_size: int = ..., max_headers: int = ...) -> None: ...

    def parse(self, buf: Buffer, start: int = 0) -> int:
        """As ``RequestParser.parse``, for a status line and headers."""

    def headers(self) -> list[tuple[bytes, bytes]]: ...

    def get(self, name: bytes) -> Optional[bytes]: ...

    def serialize(self, extra: bytes = b"", body: int = 0,
                  drop: Optional[tuple[bytes, ...]] = None) -> bytes:
        """The head to send downstream, followed by the first ``body`` bytes that came after the
        head in the parsed buffer (so head and first body bytes leave in one write); ``drop`` as
        for requests. The head: the status line as received (version rewritten to
        ``HTTP/1.1``), kept header lines, ``extra``, ``CRLF``. Hop-by-hop headers are dropped except
        on a 101 response, where ``Connection`` and ``Upgrade`` are kept as the single lines
        ``Connection: upgrade`` and ``Upgrade: <value>``."""


class ChunkedFramer:
    """Follows a chunked body (RFC 9112 section 7.1) without decoding it, to find where it ends.

    Chunk sizes are 1-16 hex digits, optionally followed by chunk extensions (``;`` then any bytes
    except CTLs other than HTAB) before CRLF; whitespace before the size or between the size and
    ``;`` or CRLF is an error; each chunk's data must be followed by exactly CRLF. After the last
    chunk (size 0), trailer lines follow the header-line rules, then an empty line ends the body.
    Trailer section and each size line are limited to ``max_trailer_size`` bytes (431 beyond).

    The trailer section (the bytes after the last chunk's size line) is held back from what the
    caller forwards and, once complete, forwarded rewritten without the fields in
    ``TRAILER_FORBIDDEN`` (RFC 9110 section 6.5.1: framing, routing, authentication, request
    modifiers, response control, content format, hop-by-hop, the proxy's own). When the section
    is only the final CRLF and arrives within one ``feed`` nothing is held (zero copy).

    Attributes:
        done: True once the whole body, trailers and final CRLF included, has been seen.
        held: after each ``feed``, how many of the bytes it returned (the last ones) are trailer
            section bytes that must not be forwarded as they are.
    """

    done: bool
    held: int

    def __init__(self, max_trailer_size: int = ...) -> None: ...

    def reset(self) -> None:
        """Prepare for a new body."""

    def trailers(self) -> Optional[bytes]:
        """Once ``done``: the trailer section (kept field lines and the final CRLF) to forward in
        place of every byte that was held, or None when nothing was held."""

    def feed(self, buf: Buffer, start: int, end: int) -> int:
        """Follow ``buf[start:end]``.

        Returns:
            How many of those bytes belong to the body. When ``done`` becomes True the body ended
            at ``start + returned``; bytes after it belong to the next message.
        Raises:
            ProtocolError: bad framing (status_hint 400).
        """


#: Lowercase names of the fields dropped from trailer sections.
TRAILER_FORBIDDEN: frozenset[bytes]


def filter_trailers(section: bytes) -> bytes:
    """A validated trailer section without the ``TRAILER_FORBIDDEN`` fields."""


def request_id() -> bytes:
    """A new random version-4 UUID as 36 ASCII bytes (for ``x-request-id``)."""
