"""A backend with an identity, for the traffic-management tests (test_routing.py).

    python routing_backend.py --host 127.0.0.21 --name v1 [--port N] [--delay S]
        -> prints "PORT <n>" and serves HTTP/1.1 (keep-alive, Content-Length or chunked bodies)

Every answer is JSON ``{"name", "addr", "peer", "method", "target", "headers": [[name, value]...],
"body"}`` with the header ``x-served-by: <name>`` and three fixed headers a route can edit:
``x-up-set: original``, ``x-up-remove: gone``, ``x-up-keep: yes``.

    /sleep/<seconds>...   sleep before answering (any suffix)
    --delay S             sleep S seconds before every answer
    --status N            answer every request with status N (default 200)
    HEAD anything         the head of the answer GET would get, without its body
    GET /__log            what was received so far (not recorded itself), as a JSON list
    GET /__reset          forget it (and the counters)
    GET /__stats          {"count", "active", "max_active"}

The ``RoutingBackend`` class runs one as a subprocess (the test's side). ``serve()`` starts one in
the caller's event loop; it also takes a delay function (a delay drawn per answer) and can keep no
log (the demo's services, demo/mesh.py, are routing backends that run for hours).
"""
import argparse
import asyncio
import http.client
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

LOG = []
STATS = {"count": 0, "active": 0, "max_active": 0}


async def _read_body(reader, headers):
    te = ",".join(v for k, v in headers if k.lower() == "transfer-encoding").lower()
    if "chunked" in te:
        out = b""
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return out
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    n = 0
    for k, v in headers:
        if k.lower() == "content-length":
            n = int(v)
    return await reader.readexactly(n) if n else b""


def _answer(status, body, extra=(), close=False, head_only=False):
    head = [f"HTTP/1.1 {status} OK", f"Content-Length: {len(body)}",
            "Content-Type: application/json"] + list(extra)
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


async def handle(reader, writer, name, delay, log=True, status=200):
    addr = "%s:%d" % writer.get_extra_info("sockname")[:2]
    peer = "%s:%d" % writer.get_extra_info("peername")[:2]
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers = []
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                headers.append([k, v.strip()])
            body = await _read_body(reader, headers)
            close = any(k.lower() == "connection" and "close" in v.lower() for k, v in headers) \
                or version == "HTTP/1.0"
            if target.startswith("/__"):
                if target == "/__log":
                    out = json.dumps(LOG)
                elif target == "/__reset":
                    LOG.clear()
                    STATS.update(count=0, active=0, max_active=0)
                    out = "{}"
                else:
                    out = json.dumps(STATS)
                writer.write(_answer(200, out.encode(), close=close))
                await writer.drain()
                if close:
                    return
                continue
            rec = {"name": name, "addr": addr, "peer": peer, "method": method, "target": target,
                   "headers": headers, "body": body.decode("latin-1")}
            if log:
                LOG.append(rec)
            STATS["count"] += 1
            STATS["active"] += 1
            STATS["max_active"] = max(STATS["max_active"], STATS["active"])
            try:
                wait = delay() if callable(delay) else delay
                if target.startswith("/sleep/"):
                    wait = float(target.split("/")[2].split("?")[0])
                if wait:
                    await asyncio.sleep(wait)
            finally:
                STATS["active"] -= 1
            writer.write(_answer(status, json.dumps(rec).encode(), close=close, extra=(
                f"x-served-by: {name}", "x-up-set: original", "x-up-remove: gone",
                "x-up-keep: yes"), head_only=method == "HEAD"))
            await writer.drain()
            if close:
                return
    except (ConnectionError, ValueError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(host, port, name, delay=0.0, log=True, status=200):
    """Start answering as ``name`` on host:port (0: any free port); returns the asyncio server.
    ``delay``: seconds before every answer, or a function returning each answer's delay.
    ``log=False`` keeps nothing for /__log (a long-running backend's memory stays flat)."""
    return await asyncio.start_server(lambda r, w: handle(r, w, name, delay, log, status), host, port,
                                      backlog=1024, reuse_address=True)


async def main(host, port, name, delay, status=200):
    server = await serve(host, port, name, delay, status=status)
    print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class RoutingBackend:
    """One routing backend process on ``host`` (a loopback address) answering as ``name``."""

    def __init__(self, host, name, port=0, delay=0.0, status=200):
        self.host, self.name, self.delay, self.status = host, name, delay, status
        self.port = port
        self.proc = None
        self.start()

    def start(self):
        from harness import PY, clean_env
        self.proc = subprocess.Popen(
            [PY, str(HERE / "routing_backend.py"), "--host", self.host, "--port", str(self.port),
             "--name", self.name, "--delay", str(self.delay), "--status", str(self.status)],
            stdout=subprocess.PIPE, env=clean_env())
        line = self.proc.stdout.readline().decode()
        assert line.startswith("PORT "), f"routing backend {self.name} did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def _get(self, path):
        c = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            c.request("GET", path)
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def log(self):
        return self._get("/__log")

    def reset(self):
        return self._get("/__reset")

    def stats(self):
        return self._get("/__stats")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--status", type=int, default=200)
    a = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(main(a.host, a.port, a.name, a.delay, a.status))
    except KeyboardInterrupt:
        sys.exit(0)
