"""A user-written HTTP filter, run in a real sidecar: ``.venv/bin/python docs/examples/custom_filter.py``

The filter (``TenantGate``) does what a small piece of policy usually does:

* requests without an ``x-tenant`` header are answered here with 403 (the upstream never sees
  them), flag ``UAEX`` (Envoy's "unauthorized by an external filter");
* allowed requests get ``x-tenant-checked: yes`` added on the way up, after a simulated
  asynchronous check (the filter answers STOP and resumes the stream from a timer, as an
  authorisation call would);
* every response gets ``x-tenant-time-ms`` (time spent in the sidecar for this request).

The script starts an origin server and a sidecar (the same ``Sidecar`` that ``meshproxy run``
uses, in this process) on loopback, sends three requests with ``urllib``, prints what came back and
exits. See docs/filters.md.
"""
import asyncio
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from control import build_snapshot  # noqa: E402
from meshproxy.filters import CONTINUE, STOP, FilterFactory, HttpFilter  # noqa: E402
from meshproxy.sidecar import Sidecar  # noqa: E402


class TenantGate(HttpFilter):
    """One instance per request; ``config`` is the factory's configuration (here: a delay)."""

    def __init__(self, config):
        self.check_seconds = config["check_seconds"]
        self.started = time.monotonic()
        self.timer = None

    def on_request_head(self, stream):
        tenant = stream.header(b"x-tenant")
        if tenant is None:
            stream.local_reply(403, b"x-tenant required", "UAEX", b"")
            return STOP
        # An asynchronous decision: stop now, resume when the "check" answers.
        self.timer = stream.conn.loop.call_later(self.check_seconds, self._checked, stream)
        return STOP

    def _checked(self, stream):
        self.timer = None
        stream.add_request_headers(b"x-tenant-checked: yes\r\n")
        stream.resume()

    def on_response_head(self, stream):
        ms = (time.monotonic() - self.started) * 1000.0
        stream.add_response_headers(b"x-tenant-time-ms: %.1f\r\n" % ms)
        return CONTINUE

    def on_complete(self, stream):
        if self.timer is not None:  # the client left while we were checking
            self.timer.cancel()


async def origin(reader, writer):
    """Answers every request with the request headers it received (keep-alive)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        body = b"origin saw: " + b"; ".join(
            line for line in head.split(b"\r\n")[1:] if line.lower().startswith(b"x-tenant"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()


CONFIG = """\
apiVersion: meshproxy.io/v1alpha1
kind: Bootstrap
metadata: {{name: bootstrap}}
spec:
  outbound: {{address: 127.0.0.1, port: {port}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: app, namespace: default}}
spec:
  hosts: [app.default.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {origin}}}}}]
"""


def main():
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(origin, "127.0.0.1", 0))
    origin_port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = Path(tmp) / "mesh.yaml"
        path.write_text(CONFIG.format(port=port, origin=origin_port))
        snap = build_snapshot(str(path))
    sidecar = Sidecar(loop, http_filters=(FilterFactory(TenantGate, {"check_seconds": 0.05}),))
    loop.run_until_complete(sidecar.apply(snap))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    for headers in ({"x-tenant": "acme"}, {}, {"x-tenant": "globex"}):
        req = urllib.request.Request(url, headers={"Host": "app.default.svc.cluster.local",
                                                   **headers})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                status, body, took = resp.status, resp.read(), resp.headers["x-tenant-time-ms"]
        except urllib.error.HTTPError as e:
            status, body, took = e.code, e.read(), e.headers["x-tenant-time-ms"]
        print(f"{headers or 'no tenant'}: {status} {body.decode()!r} "
              f"(x-tenant-time-ms: {took})")

    async def stop():
        await sidecar.drain(0)
        server.close()
        await asyncio.sleep(0.1)  # the origin's handlers see the pooled connections close
        loop.stop()

    asyncio.run_coroutine_threadsafe(stop(), loop)
    thread.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
