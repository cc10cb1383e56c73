"""Access log: one line per request in Envoy's command-operator format (TEXT) or as JSON.

Off by default; the sidecar creates an ``AccessLog`` when telemetry settings ask for one and calls
``log(record)`` once per finished request, ``flush()`` every second and ``close()`` at shutdown.

Theory of operation
-------------------
* The format is compiled ONCE, at construction, into a Python function made of literals and field
  expressions (``"[" + _start_time(r.start_time) + "] \\"" + (r.method or "-") ...``), so logging a
  record does no parsing and no dispatch over a list of parts. Unknown ``%OPERATOR%`` raises
  ``ValueError`` then; the config validator calls ``AccessLog.validate_format(fmt)`` for the same
  check without opening anything.
* ``log`` appends the formatted line to an in-memory list; past 64 KiB it flushes. ``flush`` hands
  the joined bytes to a writer thread, so the event loop never waits on a slow disk or a full
  pipe (like Envoy's access-log flush thread). If more than ``MAX_PENDING`` bytes are waiting for
  the writer, new data is dropped and counted (``dropped_bytes``) rather than growing without bound.
* An unwritable path produces one error log line (logger ``meshproxy.accesslog``) and the data is
  dropped; the next successful write logs a recovery line. Nothing is raised to the data plane.

Supported command operators (Envoy's names and output; a missing value prints ``-``):
``START_TIME`` (optional strftime argument, plus ``%3f``/``%6f``/``%9f``, UTC),
``REQ(H?ALT):N`` and ``RESP(H?ALT):N`` (header, fallback header, max length),
``PROTOCOL``, ``RESPONSE_CODE``, ``RESPONSE_FLAGS``, ``RESPONSE_CODE_DETAILS``,
``CONNECTION_TERMINATION_DETAILS``, ``UPSTREAM_TRANSPORT_FAILURE_REASON``, ``BYTES_RECEIVED``,
``BYTES_SENT``, ``DURATION``, ``UPSTREAM_HOST``, ``UPSTREAM_CLUSTER``, ``UPSTREAM_LOCAL_ADDRESS``,
``DOWNSTREAM_LOCAL_ADDRESS``, ``DOWNSTREAM_REMOTE_ADDRESS``,
``DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT``, ``DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT``,
``REQUESTED_SERVER_NAME``, ``ROUTE_NAME``. ``%%`` is a literal ``%``.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time

__all__ = ["AccessLog", "AccessRecord", "DEFAULT_TEXT_FORMAT", "DEFAULT_JSON_FORMAT"]

log = logging.getLogger("meshproxy.accesslog")

#: Istio's default TEXT access-log format (meshConfig.accessLogFormat unset).
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% '
    '%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n'
)

#: Istio's default JSON access-log keys and their commands (accessLogEncoding: JSON).
DEFAULT_JSON_FORMAT = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}

#: Flush when the in-memory buffer passes this many characters.
FLUSH_THRESHOLD = 64 * 1024
#: Drop (and count) data when this many bytes are already waiting for the writer thread.
MAX_PENDING = 16 * 1024 * 1024


class AccessRecord:
    """What the data plane knows about one finished request (all fields optional keywords).

    Strings are ``str | None``; ``start_time`` is epoch seconds (float); ``response_code`` is 0 when
    no response was sent; ``response_flags`` is Envoy's flags string ("" = none); ``duration_ms``
    and the byte counts are ints; ``upstream_service_time_ms`` is ``int | None``.
    ``req_headers`` / ``resp_headers`` are optional callables ``name -> str | None`` (name in lower
    case) used for ``%REQ(...)%`` / ``%RESP(...)%`` headers that are not fields here (cold path).
    """

    __slots__ = ("start_time", "method", "path", "protocol", "response_code", "response_flags",
                 "response_code_details", "connection_termination_details",
                 "upstream_transport_failure_reason", "bytes_received", "bytes_sent", "duration_ms",
                 "upstream_service_time_ms", "x_forwarded_for", "user_agent", "request_id",
                 "authority", "upstream_host", "upstream_cluster", "upstream_local_address",
                 "downstream_local_address", "downstream_remote_address", "requested_server_name",
                 "route_name", "req_headers", "resp_headers")

    def __init__(self, start_time: float = 0.0, method=None, path=None, protocol=None,
                 response_code: int = 0, response_flags: str = "", response_code_details=None,
                 connection_termination_details=None, upstream_transport_failure_reason=None,
                 bytes_received: int = 0, bytes_sent: int = 0, duration_ms: int = 0,
                 upstream_service_time_ms=None, x_forwarded_for=None, user_agent=None,
                 request_id=None, authority=None, upstream_host=None, upstream_cluster=None,
                 upstream_local_address=None, downstream_local_address=None,
                 downstream_remote_address=None, requested_server_name=None, route_name=None,
                 req_headers=None, resp_headers=None):
        self.start_time = start_time
        self.method = method
        self.path = path
        self.protocol = protocol
        self.response_code = response_code
        self.response_flags = response_flags
        self.response_code_details = response_code_details
        self.connection_termination_details = connection_termination_details
        self.upstream_transport_failure_reason = upstream_transport_failure_reason
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        self.duration_ms = duration_ms
        self.upstream_service_time_ms = upstream_service_time_ms
        self.x_forwarded_for = x_forwarded_for
        self.user_agent = user_agent
        self.request_id = request_id
        self.authority = authority
        self.upstream_host = upstream_host
        self.upstream_cluster = upstream_cluster
        self.upstream_local_address = upstream_local_address
        self.downstream_local_address = downstream_local_address
        self.downstream_remote_address = downstream_remote_address
        self.requested_server_name = requested_server_name
        self.route_name = route_name
        self.req_headers = req_headers
        self.resp_headers = resp_headers


# ---------------------------------------------------------------------------------------------
# Field helpers used by the generated formatter functions


_time_cache = [-1, ""]


def _start_time(t) -> str:
    """Envoy's default START_TIME: ``%Y-%m-%dT%H:%M:%S.mmmZ`` in UTC (cached per second)."""
    if not t:
        return "-"
    ms_total = int(t * 1000)
    sec, ms = divmod(ms_total, 1000)
    if sec != _time_cache[0]:
        _time_cache[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _time_cache[0] = sec
    return f"{_time_cache[1]}.{ms:03d}Z"


def _start_time_fmt(spec: str):
    """A START_TIME(spec) getter: strftime in UTC plus Envoy's ``%3f``/``%6f``/``%9f``/``%f``."""
    def get(t):
        if not t:
            return None
        sec = int(t)
        frac_ns = int(round((t - sec) * 1e9))
        s = spec.replace("%3f", f"{frac_ns // 1000000:03d}").replace("%6f", f"{frac_ns // 1000:06d}")
        s = s.replace("%9f", f"{frac_ns:09d}").replace("%f", f"{frac_ns:09d}")
        return time.strftime(s, time.gmtime(sec))
    return get


def _s(v) -> str:
    # Missing (None or "") prints "-", like Envoy.
    if v is None or v == "":
        return "-"
    return str(v)


def _strip_port(addr):
    if not addr:
        return None
    if addr.startswith("["):
        return addr[1:addr.find("]")] if "]" in addr else addr
    host, sep, _ = addr.rpartition(":")
    return host if sep and host.count(":") == 0 else addr


def _header(r, which: str, name: str):
    fn = getattr(r, which, None)
    if fn is None:
        return None
    try:
        v = fn(name)
    except Exception:  # a broken header callable must not take the data plane down
        return None
    return v if v else None


# Fields of AccessRecord that stand for request / response headers (names in lower case).
_REQ_FIELDS = {":method": "method", ":path": "path", ":authority": "authority", "host": "authority",
               "x-forwarded-for": "x_forwarded_for", "user-agent": "user_agent",
               "x-request-id": "request_id"}
_RESP_FIELDS = {"x-envoy-upstream-service-time": "upstream_service_time_ms"}

# Operator -> (expression over record ``r`` giving the typed value (None = missing), is_int).
_SIMPLE = {
    "PROTOCOL": ("r.protocol", False),
    "RESPONSE_CODE": ("(r.response_code or 0)", True),
    "RESPONSE_FLAGS": ("(r.response_flags or '-')", False),
    "RESPONSE_CODE_DETAILS": ("r.response_code_details", False),
    "CONNECTION_TERMINATION_DETAILS": ("r.connection_termination_details", False),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": ("r.upstream_transport_failure_reason", False),
    "BYTES_RECEIVED": ("(r.bytes_received or 0)", True),
    "BYTES_SENT": ("(r.bytes_sent or 0)", True),
    "DURATION": ("(r.duration_ms or 0)", True),
    "UPSTREAM_HOST": ("r.upstream_host", False),
    "UPSTREAM_CLUSTER": ("r.upstream_cluster", False),
    "UPSTREAM_LOCAL_ADDRESS": ("r.upstream_local_address", False),
    "DOWNSTREAM_LOCAL_ADDRESS": ("r.downstream_local_address", False),
    "DOWNSTREAM_REMOTE_ADDRESS": ("r.downstream_remote_address", False),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": ("_strip_port(r.downstream_local_address)", False),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": ("_strip_port(r.downstream_remote_address)", False),
    "REQUESTED_SERVER_NAME": ("r.requested_server_name", False),
    "ROUTE_NAME": ("r.route_name", False),
}
SUPPORTED_OPERATORS = tuple(sorted(set(_SIMPLE) | {"START_TIME", "REQ", "RESP"}))

_OP_RE = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::(\d+))?%")


def _header_expr(which: str, arg: str, env: dict) -> str:
    """Expression for REQ(a?b) / RESP(a?b): the first header present, else None."""
    names = [n.strip().lower() for n in arg.split("?")]
    if not 1 <= len(names) <= 2 or not all(names):
        raise ValueError(f"access log format: %{which}({arg})%: expected a header name or NAME?ALTERNATIVE")
    fields = _REQ_FIELDS if which == "REQ" else _RESP_FIELDS
    parts = []
    for n in names:
        if n in fields:
            parts.append(f"r.{fields[n]}")
        else:
            parts.append(f"_header(r, {('req_headers' if which == 'REQ' else 'resp_headers')!r}, {n!r})")
    if len(parts) == 1:
        return parts[0] if parts[0].startswith("r.") else f"_none_if_empty({parts[0]})"
    return f"_first({parts[0]}, {parts[1]})"


def _none_if_empty(v):
    return None if v is None or v == "" else v


def _first(a, b):
    if a is None or a == "":
        return None if b is None or b == "" else b
    return a


def _compile_parts(fmt: str, env: dict) -> list:
    """Split ``fmt`` into literals (str) and (expression, is_int) pairs; raise ValueError."""
    if not isinstance(fmt, str):
        raise ValueError(f"access log format must be a string, not {type(fmt).__name__}")
    parts: list = []
    lit: list[str] = []
    i = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            lit.append(fmt[i:])
            break
        lit.append(fmt[i:j])
        if fmt.startswith("%%", j):
            lit.append("%")
            i = j + 2
            continue
        m = _OP_RE.match(fmt, j)
        if m is None:
            raise ValueError(f"access log format: invalid or unterminated command at position {j}: "
                             f"{fmt[j:j + 40]!r} (commands look like %NAME%, %NAME(ARG)% or "
                             f"%NAME(ARG):LEN%; write %% for a literal %)")
        name, arg, maxlen = m.group(1), m.group(2), m.group(3)
        if name in ("REQ", "RESP"):
            if arg is None:
                raise ValueError(f"access log format: %{name}% needs a header name: %{name}(NAME)%")
            expr, is_int = _header_expr(name, arg, env), False
            if name == "RESP" and arg.strip().lower() == "x-envoy-upstream-service-time":
                expr = f"_str_or_none({expr})"  # an int field standing for a header (a string)
        elif name == "START_TIME":
            if arg:
                key = f"_st{len(env)}"
                env[key] = _start_time_fmt(arg)
                expr = f"{key}(r.start_time)"
            else:
                expr = "_start_time_or_none(r.start_time)"
            is_int = False
        elif name in _SIMPLE:
            if arg is not None:
                raise ValueError(f"access log format: %{name}% takes no argument (got {arg!r})")
            expr, is_int = _SIMPLE[name]
        else:
            raise ValueError(f"access log format: unknown command %{name}% at position {j}; "
                             f"supported: {', '.join(SUPPORTED_OPERATORS)}")
        if maxlen is not None:
            expr = f"_trunc({expr}, {int(maxlen)})"
            is_int = False
        if "".join(lit):
            parts.append("".join(lit))
        lit = []
        parts.append((expr, is_int))
        i = m.end()
    if lit and "".join(lit):
        parts.append("".join(lit))
    return parts


def _str_or_none(v):
    return None if v is None else str(v)


def _start_time_or_none(t):
    return _start_time(t) if t else None


def _trunc(v, n):
    return None if v is None else str(v)[:n]


_ENV_BASE = {"_s": _s, "_start_time": _start_time, "_start_time_or_none": _start_time_or_none,
             "_strip_port": _strip_port, "_header": _header, "_none_if_empty": _none_if_empty,
             "_first": _first, "_str_or_none": _str_or_none, "_trunc": _trunc, "str": str}


_PLAIN_ATTR = re.compile(r"r\.[a-z_]+$")


def _compile_text(fmt: str):
    """One ``template % (values...)`` per record: a single C-level formatting operation."""
    env = dict(_ENV_BASE)
    parts = _compile_parts(fmt, env)
    template = []
    values = []
    for p in parts:
        if isinstance(p, str):
            template.append(p.replace("%", "%%"))
            continue
        expr, is_int = p
        template.append("%s")
        if is_int:
            values.append(expr)
        elif _PLAIN_ATTR.match(expr):
            values.append(f"({expr} or '-')")  # str | None fields: "" and None print "-"
        else:
            values.append(f"_s({expr})")
    env["_T"] = "".join(template)
    if not values:
        line = env["_T"] % ()
        return lambda r: line
    return eval(f"lambda r: _T % ({', '.join(values)},)", env)  # noqa: S307 - our own expressions


def _compile_json(spec: dict):
    """A function record -> dict for Envoy-style JSON: a value that is exactly one command keeps
    its type (int or str; missing -> null); anything else becomes a string."""
    if not isinstance(spec, dict) or not spec:
        raise ValueError("JSON access log format must be a non-empty object of key -> command string")
    env = dict(_ENV_BASE)
    items = []
    for key in sorted(spec):  # Envoy writes JSON keys sorted
        value = spec[key]
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"JSON access log format: {key!r}: values must be command strings")
        parts = _compile_parts(value, env)
        if len(parts) == 1 and not isinstance(parts[0], str):
            expr = parts[0][0]
        elif not parts:
            expr = "''"
        else:
            expr = " + ".join(repr(p) if isinstance(p, str) else f"_s({p[0]})" for p in parts)
        items.append(f"{key!r}: {expr}")
    return eval("lambda r: {" + ", ".join(items) + "}", env)  # noqa: S307


def _parse_json_fmt(fmt):
    if isinstance(fmt, dict):
        return fmt
    try:
        spec = json.loads(fmt)
    except ValueError as exc:
        raise ValueError(f"JSON access log format must be a JSON object: {exc}") from None
    if not isinstance(spec, dict):
        raise ValueError("JSON access log format must be a JSON object of key -> command string")
    return spec


# ---------------------------------------------------------------------------------------------


class _Writer(threading.Thread):
    """Writes flushed chunks off the event loop. One per AccessLog."""

    def __init__(self, owner: "AccessLog"):
        super().__init__(name=f"accesslog:{owner.path}", daemon=True)
        self.owner = owner
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.fd: int | None = None
        self.own_fd = False
        self.failing = False

    def _open(self) -> int:
        path = self.owner.path
        if path == "/dev/stdout":
            return 1
        if path == "/dev/stderr":
            return 2
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.own_fd = True
        return fd

    def _write(self, data: bytes) -> None:
        try:
            if self.fd is None:
                self.fd = self._open()
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            if self.failing:
                self.failing = False
                log.warning("access log %s: writable again", self.owner.path)
        except OSError as exc:
            self.owner.dropped_bytes += len(data)
            self.owner.errors += 1
            if not self.failing:
                self.failing = True
                log.error("access log %s is not writable (%s); dropping access log lines until "
                          "it is", self.owner.path, exc.strerror or exc)
            if self.own_fd and self.fd is not None:
                try:
                    os.close(self.fd)
                except OSError:
                    pass
            self.fd = None
            self.own_fd = False

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                break
            data, done = item
            if data:
                self._write(data)
                with self.owner._lock:
                    self.owner._pending -= len(data)
            if done is not None:
                done.set()
        if self.own_fd and self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


class AccessLog:
    """An access log sink.

    Args:
        path: ``/dev/stdout``, ``/dev/stderr`` or a file path (opened for append, created 0644).
        encoding: ``"TEXT"`` or ``"JSON"``.
        fmt: TEXT: an Envoy format string (default: Istio's ``DEFAULT_TEXT_FORMAT``; a newline is
            appended when missing). JSON: a JSON object text (or dict) of key -> format string
            (default: Istio's ``DEFAULT_JSON_FORMAT``).

    Raises:
        ValueError: bad encoding or format (unknown ``%OPERATOR%``, bad syntax).
    """

    def __init__(self, path: str, encoding: str = "TEXT", fmt=""):
        if encoding not in ("TEXT", "JSON"):
            raise ValueError(f"access log encoding must be TEXT or JSON, not {encoding!r}")
        if not path:
            raise ValueError("access log path must not be empty")
        self.path = path
        self.encoding = encoding
        self.format = fmt or (DEFAULT_TEXT_FORMAT if encoding == "TEXT" else DEFAULT_JSON_FORMAT)
        self._format = self.compile(self.format, encoding)
        self._buf: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._pending = 0
        self.dropped_bytes = 0
        self.errors = 0
        self._closed = False
        self._writer = _Writer(self)
        self._writer.start()

    @staticmethod
    def compile(fmt, encoding: str = "TEXT"):
        """Compile ``fmt`` into a function ``AccessRecord -> str`` (one line, with newline)."""
        if encoding == "JSON":
            to_dict = _compile_json(_parse_json_fmt(fmt))
            dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
            return lambda r: dumps(to_dict(r)) + "\n"
        if encoding != "TEXT":
            raise ValueError(f"access log encoding must be TEXT or JSON, not {encoding!r}")
        if not fmt.endswith("\n"):
            fmt += "\n"
        return _compile_text(fmt)

    @staticmethod
    def validate_format(fmt, encoding: str = "TEXT") -> None:
        """Raise ``ValueError`` with a clear message if ``fmt`` is not a valid format."""
        AccessLog.compile(fmt, encoding)

    def format_record(self, record: AccessRecord) -> str:
        """The line ``log`` would write for ``record`` (with its newline)."""
        return self._format(record)

    def log(self, record: AccessRecord) -> None:
        """Format ``record`` and buffer it; flushes when the buffer passes 64 KiB."""
        line = self._format(record)
        self._buf.append(line)
        self._size += len(line)
        if self._size > FLUSH_THRESHOLD:
            self.flush()

    def flush(self, wait: bool = False, timeout: float = 5.0) -> bool:
        """Hand the buffered lines to the writer thread.

        Args:
            wait: block until they are written (tests, shutdown); the sidecar's periodic flush
                does not wait.
            timeout: how long ``wait`` may block.

        Returns:
            False if ``wait`` timed out, else True.
        """
        data = "".join(self._buf).encode("utf-8", "backslashreplace") if self._buf else b""
        self._buf.clear()
        self._size = 0
        if self._closed:
            return True
        if data:
            with self._lock:
                if self._pending + len(data) > MAX_PENDING:
                    self.dropped_bytes += len(data)
                    data = b""
                else:
                    self._pending += len(data)
        if not data and not wait:
            return True
        done = threading.Event() if wait else None
        self._writer.q.put((data, done))
        return done.wait(timeout) if done is not None else True

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the writer thread and close the file."""
        if self._closed:
            return
        self.flush(wait=True, timeout=timeout)
        self._closed = True
        self._writer.q.put(None)
        self._writer.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
