"""Envoy-style admin server (127.0.0.1:15000), Prometheus port (15090) and status port (15021).

HTTP/1.1 through h11 on asyncio streams (works under uvloop). Nothing here is on the data path: the
admin server asks the sidecar (an ``AdminProvider``) for state when a request comes in, and renders
metrics with ``meshproxy.telemetry``.

Endpoints (main admin port)::

    GET  /                  index of the endpoints (also /help)
    GET  /ready             200 "LIVE\\n" | 503 "PRE_INITIALIZING\\n" | 503 "DRAINING\\n"
                            | 503 "HEALTHCHECK_FAILED\\n" (after POST /healthcheck/fail)
    GET  /healthz/ready     same answer as /ready (Istio's status-port probe)
    GET  /stats             Envoy's plain "name: value" lines, sorted (?filter=REGEX,
                            ?format=json, ?format=prometheus)
    GET  /stats/prometheus  Prometheus text exposition (Istio + Envoy metrics)
    GET  /config_dump       active snapshot as pretty JSON
    GET  /clusters          Envoy's "cluster::host::stat::value" lines (?format=json)
    GET  /server_info       JSON
    POST /quitquitquit      begin a graceful drain; answers "OK\\n" first
    POST /drain_listeners   stop accepting connections and drain them, keep running (exit once
                            idle with exitOnZeroActiveConnections / EXIT_ON_ZERO_ACTIVE_CONNECTIONS)
    POST /healthcheck/fail  readiness answers 503 from now on; traffic is still served
    POST /healthcheck/ok    undo /healthcheck/fail

The Prometheus port serves only ``/stats/prometheus``; the status port only ``/healthz/ready``
(as Istio's agent does). Unknown paths get 404, a
known path with the wrong method 405 (with ``Allow``), a malformed request 400 and the connection is
closed; a provider that raises gives 500 with a one-line body (the traceback goes to the log). The
server never lets an exception escape a connection handler.
"""
from __future__ import annotations

import asyncio
import http
import json
import logging
import re
from typing import Any, Awaitable, Callable, Protocol
from urllib.parse import parse_qs, urlsplit

import h11

from meshproxy import telemetry

__all__ = ["AdminProvider", "AdminServer", "start_admin", "ENDPOINTS"]

log = logging.getLogger("meshproxy.admin")

#: Largest request head or body the admin server accepts.
MAX_REQUEST_SIZE = 64 * 1024
#: A connection with no complete request for this long is closed.
IDLE_TIMEOUT = 60.0


class AdminProvider(Protocol):
    """What the admin server needs from the sidecar (duck-typed)."""

    def ready(self) -> bool:
        """True once the first snapshot is applied and listeners are up."""

    def config_dump(self) -> dict:
        """The active snapshot as a dict (plus anything the sidecar adds)."""

    def cluster_infos(self) -> list[dict]:
        """``[{"name", "direction", "service", "namespace", "port", "lb_policy",
        "endpoints": [{"address", "port", "health", "weight", "locality", "rq_active",
        "cx_active", "rq_total"}]}]``."""

    async def stats(self) -> dict:
        """``{"clusters": [snapshot], "listeners": [snapshot], "workload": dict | None}``, the
        snapshots merged across worker processes."""

    def server_info(self) -> dict:
        """``{"version", "state": "LIVE"|"DRAINING"|"PRE_INITIALIZING", "uptime_s",
        "concurrency", "snapshot_version"}``."""

    async def quit(self) -> None:
        """Begin a graceful drain (like SIGTERM)."""

    async def drain_listeners(self) -> None:
        """Stop accepting and drain connections; keep running (Envoy's /drain_listeners)."""


class _Response:
    __slots__ = ("status", "body", "content_type", "headers", "after")

    def __init__(self, status: int, body: bytes | str = b"", content_type: str = "text/plain; charset=utf-8",
                 headers: list | None = None, after: Callable[[], Awaitable[None]] | None = None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers or []
        self.after = after  # run once the response is written (POST /quitquitquit)


JSON_TYPE = "application/json"


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _json(obj: Any) -> _Response:
    return _Response(200, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", JSON_TYPE)


# ---------------------------------------------------------------------------------------------
# Handlers: (server, query dict) -> _Response


def _state(provider) -> tuple[bool, str]:
    try:
        state = str(provider.server_info().get("state", ""))
    except Exception:
        state = ""
    if state == "DRAINING":
        return False, "DRAINING"
    if provider.ready():
        return True, "LIVE"
    return False, "PRE_INITIALIZING"


async def _h_ready(srv: "AdminServer", q: dict) -> _Response:
    ok, state = _state(srv.provider)
    if ok and srv.health_check_failed:
        ok, state = False, "HEALTHCHECK_FAILED"
    return _Response(200 if ok else 503, state + "\n")


async def _h_hc_fail(srv: "AdminServer", q: dict) -> _Response:
    srv.health_check_failed = True
    log.warning("admin: /healthcheck/fail: readiness now answers 503 (traffic is still served)")
    return _Response(200, "OK\n")


async def _h_hc_ok(srv: "AdminServer", q: dict) -> _Response:
    srv.health_check_failed = False
    log.info("admin: /healthcheck/ok: readiness restored")
    return _Response(200, "OK\n")


async def _h_drain_listeners(srv: "AdminServer", q: dict) -> _Response:
    return _Response(200, "OK\n", after=srv.provider.drain_listeners)


async def _stats_inputs(srv: "AdminServer"):
    stats = await srv.provider.stats()
    return (srv.provider.cluster_infos(), stats.get("clusters", []), stats.get("listeners", []),
            stats.get("workload"))


async def _h_prometheus(srv: "AdminServer", q: dict) -> _Response:
    clusters, cstats, lstats, workload = await _stats_inputs(srv)
    body = telemetry.render_prometheus(clusters, cstats, lstats, workload)
    return _Response(200, body, telemetry.CONTENT_TYPE_PROMETHEUS)


async def _h_stats(srv: "AdminServer", q: dict) -> _Response:
    fmt = q.get("format", "")
    if fmt == "prometheus":
        return await _h_prometheus(srv, q)
    if fmt not in ("", "text", "json"):
        return _Response(400, f"unknown format {fmt!r}; use text, json or prometheus\n")
    clusters, cstats, lstats, _ = await _stats_inputs(srv)
    text = telemetry.render_envoy_text(cstats, lstats, clusters).decode()
    lines = text.splitlines()
    if "filter" in q:
        try:
            rx = re.compile(q["filter"])
        except re.error as exc:
            return _Response(400, f"invalid filter regex: {exc}\n")
        lines = [ln for ln in lines if rx.search(ln.split(": ", 1)[0])]
    if fmt == "json":
        out = []
        for ln in lines:
            name, _, value = ln.partition(": ")
            out.append({"name": name, "value": int(value) if value.isdigit() else value})
        return _json({"stats": out})
    return _Response(200, "".join(ln + "\n" for ln in lines))


async def _h_config_dump(srv: "AdminServer", q: dict) -> _Response:
    return _json(srv.provider.config_dump())


def _locality(loc) -> dict:
    if isinstance(loc, dict):
        return {k: loc.get(k, "") for k in ("region", "zone", "sub_zone")}
    parts = (str(loc or "").split("/") + ["", "", ""])[:3]
    return {"region": parts[0], "zone": parts[1], "sub_zone": parts[2]}


_HEALTH_FLAGS = {"HEALTHY": "healthy", "UNHEALTHY": "/failed_active_hc",
                 "EJECTED": "/failed_outlier_check", "OUTLIER": "/failed_outlier_check",
                 "DRAINING": "/pending_dynamic_removal", "DEGRADED": "/degraded_active_hc"}


def _text_health_flags(ep: dict) -> str:
    """Envoy's ``health_flags``: "healthy", or the flags run together (``/failed_active_hc``)."""
    flags = ep.get("health_flags")
    if flags is not None:
        return "".join(flags) or "healthy"
    health = str(ep.get("health", "HEALTHY")).upper()
    return _HEALTH_FLAGS.get(health, "/" + health.lower())


def _json_health(ep: dict) -> dict:
    d: dict = {"eds_health_status": "HEALTHY"}
    flags = ep.get("health_flags") or []
    if "/failed_active_hc" in flags:
        d["failed_active_health_check"] = True
    if "/failed_outlier_check" in flags:
        d["failed_outlier_check"] = True
    if ep.get("health_flags") is None and str(ep.get("health", "HEALTHY")) != "HEALTHY":
        d["eds_health_status"] = str(ep.get("health"))
    return d


#: Envoy's circuit-breaker thresholds, as ``/clusters`` prints them (``default_priority``).
_THRESHOLDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")


async def _h_clusters(srv: "AdminServer", q: dict) -> _Response:
    infos = srv.provider.cluster_infos()
    if q.get("format") == "json":
        statuses = []
        for c in infos:
            hosts = []
            for ep in c.get("endpoints") or []:
                hosts.append({
                    "address": {"socket_address": {"address": ep.get("address"), "port_value": ep.get("port")}},
                    "stats": [{"name": k, "value": str(ep.get(k, 0)), "type": "GAUGE" if k.endswith("active") else "COUNTER"}
                              for k in ("cx_active", "rq_active", "rq_total")],
                    "health_status": _json_health(ep),
                    **({"outlier_detection": ep["outlier_detection"]} if ep.get("outlier_detection") else {}),
                    "weight": ep.get("weight", 1),
                    "locality": _locality(ep.get("locality")),
                })
            status = {"name": c["name"], "observability_name": c["name"]}
            cb = c.get("circuit_breakers")
            if cb:
                # Envoy's thresholds; then the breakers' state now (Envoy's circuit_breakers.* gauges)
                status["circuit_breakers"] = {
                    "thresholds": [{"priority": "DEFAULT", **{k: cb[k] for k in _THRESHOLDS}}],
                    "state": {k: v for k, v in cb.items() if k not in _THRESHOLDS}}
            status["host_statuses"] = hosts
            statuses.append(status)
        return _json({"cluster_statuses": statuses})
    if q.get("format", "text") != "text":
        return _Response(400, f"unknown format {q.get('format')!r}; use text or json\n")
    lines = []
    for c in infos:
        name = c["name"]
        lines.append(f"{name}::observability_name::{name}")
        cb = c.get("circuit_breakers")
        if cb:
            for k in _THRESHOLDS:
                lines.append(f"{name}::default_priority::{k}::{cb[k]}")
        for ep in c.get("endpoints") or []:
            host = f"{name}::{ep.get('address')}:{ep.get('port')}"
            loc = _locality(ep.get("locality"))
            for k in ("cx_active", "rq_active", "rq_total"):
                lines.append(f"{host}::{k}::{ep.get(k, 0)}")
            lines.append(f"{host}::hostname::")
            lines.append(f"{host}::health_flags::{_text_health_flags(ep)}")
            od = ep.get("outlier_detection")
            if od:
                lines.append(f"{host}::outlier_detection::" + ("ejected" if od.get("ejected") else "ok")
                             + f" ejected_for={od.get('ejected_for', 0):g}s ejections={od.get('ejections', 0)}"
                             f" multiplier={od.get('ejection_multiplier', 0)}"
                             f" consecutive_5xx={od.get('consecutive_5xx', 0)}"
                             f" consecutive_gateway_failure={od.get('consecutive_gateway_failure', 0)}"
                             f" consecutive_local_origin_failure={od.get('consecutive_local_origin_failure', 0)}")
            lines.append(f"{host}::weight::{ep.get('weight', 1)}")
            lines.append(f"{host}::region::{loc['region']}")
            lines.append(f"{host}::zone::{loc['zone']}")
            lines.append(f"{host}::sub_zone::{loc['sub_zone']}")
            lines.append(f"{host}::canary::false")
            lines.append(f"{host}::priority::0")
    return _Response(200, "".join(ln + "\n" for ln in lines))


async def _h_server_info(srv: "AdminServer", q: dict) -> _Response:
    return _json(srv.provider.server_info())


async def _h_quit(srv: "AdminServer", q: dict) -> _Response:
    return _Response(200, "OK\n", after=srv.provider.quit)


async def _h_index(srv: "AdminServer", q: dict) -> _Response:
    width = max(len(p) for p in srv.routes)
    lines = ["admin commands are:"]
    for path, (methods, _fn, desc) in sorted(srv.routes.items()):
        lines.append(f"  {'/'.join(sorted(methods)):<5} {path:<{width}}  {desc}")
    return _Response(200, "\n".join(lines) + "\n")


#: path -> (methods, handler, description) of the main admin port.
ENDPOINTS: dict[str, tuple[frozenset, Callable, str]] = {
    "/": (frozenset({"GET"}), _h_index, "this list"),
    "/help": (frozenset({"GET"}), _h_index, "this list"),
    "/ready": (frozenset({"GET"}), _h_ready, "LIVE (200) or PRE_INITIALIZING/DRAINING (503)"),
    "/healthz/ready": (frozenset({"GET"}), _h_ready, "readiness probe, as /ready"),
    "/stats": (frozenset({"GET"}), _h_stats, "Envoy stats as text (?filter=REGEX, ?format=json|prometheus)"),
    "/stats/prometheus": (frozenset({"GET"}), _h_prometheus, "Prometheus exposition (Istio + Envoy metrics)"),
    "/config_dump": (frozenset({"GET"}), _h_config_dump, "active configuration snapshot (JSON)"),
    "/clusters": (frozenset({"GET"}), _h_clusters, "upstream clusters and endpoints (?format=json)"),
    "/server_info": (frozenset({"GET"}), _h_server_info, "version, state, uptime (JSON)"),
    "/quitquitquit": (frozenset({"POST"}), _h_quit, "begin a graceful drain and exit"),
    "/drain_listeners": (frozenset({"POST"}), _h_drain_listeners,
                         "stop accepting connections and drain them (the process keeps running)"),
    "/healthcheck/fail": (frozenset({"POST"}), _h_hc_fail,
                          "make /ready and /healthz/ready answer 503 (traffic still served)"),
    "/healthcheck/ok": (frozenset({"POST"}), _h_hc_ok, "undo /healthcheck/fail"),
}
PROMETHEUS_ENDPOINTS = {"/stats/prometheus": ENDPOINTS["/stats/prometheus"]}
STATUS_ENDPOINTS = {"/healthz/ready": ENDPOINTS["/healthz/ready"]}


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 connection handling


class _Port:
    """One listening socket and its route table."""

    def __init__(self, admin: "AdminServer", routes: dict):
        self.admin = admin
        self.routes = routes
        self.server: asyncio.base_events.Server | None = None

    @property
    def provider(self):
        return self.admin.provider

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.admin._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # never let a connection bug escape: log it, drop the connection
            log.exception("admin: connection handler failed")
        finally:
            self.admin._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_SIZE)
        while True:
            try:
                request, body = await self._read_request(conn, reader)
            except h11.RemoteProtocolError as exc:
                await self._send_error(conn, writer, exc.error_status_hint or 400, str(exc))
                return
            if request is None:
                return
            if request.http_version not in (b"1.1", b"1.0"):
                await self._send_error(conn, writer, 505, "HTTP version not supported")
                return
            resp = await self._dispatch(request, body)
            keep = await self._send(conn, writer, request, resp)
            if resp.after is not None:
                asyncio.ensure_future(self._run_after(resp.after))
            if not keep:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader):
        request = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
                conn.receive_data(data)  # b"" = EOF
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST_SIZE:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None, b""

    async def _dispatch(self, request: h11.Request, body: bytes) -> _Response:
        method = request.method.decode("ascii", "replace")
        try:
            parts = urlsplit(request.target.decode("ascii", "replace"))
        except ValueError:
            return _Response(400, "bad request target\n")
        path = parts.path or "/"
        if len(path) > 1:
            path = path.rstrip("/") or "/"
        route = self.routes.get(path)
        if route is None:
            return _Response(404, f"unknown endpoint {path}; GET / on the admin port lists them\n")
        methods, handler, _desc = route
        if method == "HEAD" and "GET" in methods:
            method = "GET"
        if method not in methods:
            allow = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
            return _Response(405, f"{path} requires {' or '.join(sorted(methods))}\n",
                             headers=[("Allow", allow)])
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            return await handler(self.admin, query)
        except Exception as exc:
            log.exception("admin: %s %s failed", method, path)
            return _Response(500, f"internal error: {type(exc).__name__}\n")

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request,
                    resp: _Response) -> bool:
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body))),
                   ("Cache-Control", "no-cache, max-age=0"), ("X-Content-Type-Options", "nosniff"),
                   ("Server", "meshproxy")] + resp.headers
        out = conn.send(h11.Response(status_code=resp.status, headers=headers, reason=_reason(resp.status)))
        if request.method != b"HEAD" and resp.body:
            out += conn.send(h11.Data(data=resp.body))
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _send_error(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                          why: str) -> None:
        body = f"{'bad request' if status < 500 else 'error'}: {why}\n".encode()
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                out = conn.send(h11.Response(status_code=status, reason=_reason(status), headers=[
                    ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                    ("Connection", "close")]))
                out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                return
            writer.write(out)
            await writer.drain()

    async def _run_after(self, fn) -> None:
        try:
            await fn()
        except Exception:
            log.exception("admin: post-response action failed")


class AdminServer:
    """The admin listeners of one sidecar. Create with ``await start_admin(...)``.

    Attributes:
        provider: the sidecar's ``AdminProvider``.
        port, prometheus_port, status_port: bound ports (useful with port 0), None if not bound.
    """

    def __init__(self, provider: AdminProvider):
        self.provider = provider
        self.routes = ENDPOINTS
        self._ports: list[_Port] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.port: int | None = None
        self.prometheus_port: int | None = None
        self.status_port: int | None = None
        self.health_check_failed = False  # POST /healthcheck/fail .. /healthcheck/ok

    async def _bind(self, loop: asyncio.AbstractEventLoop, host: str, port: int, routes: dict) -> int:
        p = _Port(self, routes)

        def factory():
            reader = asyncio.StreamReader(limit=MAX_REQUEST_SIZE, loop=loop)
            return asyncio.StreamReaderProtocol(reader, p.handle, loop=loop)

        p.server = await loop.create_server(factory, host, port, reuse_address=True)
        self._ports.append(p)
        return p.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop listening and close open admin connections."""
        for p in self._ports:
            if p.server is not None:
                p.server.close()
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def wait_closed(self) -> None:
        for p in self._ports:
            if p.server is not None:
                await p.server.wait_closed()


async def start_admin(loop: asyncio.AbstractEventLoop | None, host: str, port: int,
                      provider: AdminProvider, prometheus_port: int | None = None,
                      status_port: int | None = None) -> AdminServer:
    """Bind the admin server (and the Prometheus and status ports when given).

    Args:
        loop: the event loop (None: the running loop).
        host: address to bind, normally ``127.0.0.1`` (the admin API can stop the sidecar).
        port: admin port, normally 15000 (0 = any free port, see ``AdminServer.port``).
        provider: the sidecar's ``AdminProvider``.
        prometheus_port: bind ``host:prometheus_port`` serving only ``/stats/prometheus`` (15090).
        status_port: bind ``host:status_port`` serving only ``/healthz/ready`` (15021).

    Raises:
        OSError: a port cannot be bound (everything bound so far is closed again).
    """
    loop = loop or asyncio.get_running_loop()
    srv = AdminServer(provider)
    try:
        srv.port = await srv._bind(loop, host, port, ENDPOINTS)
        if prometheus_port is not None:
            srv.prometheus_port = await srv._bind(loop, host, prometheus_port, PROMETHEUS_ENDPOINTS)
        if status_port is not None:
            srv.status_port = await srv._bind(loop, host, status_port, STATUS_ENDPOINTS)
    except BaseException:
        srv.close()
        raise
    return srv
