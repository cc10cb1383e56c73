"""Mutual TLS between two real sidecars (both builds), with certificates from the mesh CA.

client app -> client sidecar (127.0.0.150) --mTLS--> [recording relay] --> server sidecar's inbound
(127.0.0.151) -> the application on 127.0.0.151.

* the hop is TLS: the relay sees a TLS handshake record first and never a plaintext request line;
* the application learns the client's SPIFFE ID (``x-forwarded-client-cert``, Envoy's format);
* the inbound port is PERMISSIVE: a plaintext client is served too (without the header);
* a server with the wrong identity, a certificate from another CA, an expired certificate: the
  connection is refused and the client gets 503 ``UF``, nothing reaches the application;
* certificate files rewritten (rotation) are picked up for new connections, none is dropped.
"""
import datetime
import http.client
import json
import socket
import threading
import time

import pytest

from control.certs import CA
from harness import doc, service_entry, workload_entry
from routing_backend import RoutingBackend

CLIENT, SERVER = "127.0.0.150", "127.0.0.151"
HOST = "echo.default.svc.cluster.local"
ISTIO = {"security.istio.io/tlsMode": "istio"}


class Relay:
    """A TCP relay that records the first bytes each way (to show what crosses the hop)."""

    def __init__(self, host, upstream):
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen = bytearray()  # client -> server bytes (first 64 KiB)
        self.conns = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            self.conns += [c, u]
            threading.Thread(target=self._pipe, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, False), daemon=True).start()

    def _pipe(self, a, b, record):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                if record and len(self.seen) < 65536:
                    self.seen += data
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture(scope="module")
def ca():
    return CA.create()


@pytest.fixture
def app():
    b = RoutingBackend(SERVER, "app")
    yield b
    b.stop()


def certs(tmp_path, ca, name, sa, **kw):
    """Certificate files for service account ``sa`` (the Bootstrap ``certificates`` block)."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    paths = ca.issue("default", sa, **kw).write(str(d / sa), str(d / "root-cert.pem"))
    return {"certificateChain": paths["chain"], "privateKey": paths["key"],
            "caCertificates": paths["roots"]}


def mesh(app, server_port):
    """The client's view: echo is the server workload, with a sidecar on ``server_port``."""
    return [
        workload_entry("client", CLIENT, labels={"app": "client", **ISTIO}),
        doc("WorkloadEntry", "server", {"address": SERVER, "ports": {"http": app.port},
                                         "labels": {"app": "echo", **ISTIO}, "serviceAccount": "server"},
            annotations={"meshproxy.io/inbound-port": str(server_port)}),
        service_entry("echo", HOST, selector={"app": "echo"}),
    ]


def start_pair(make_sidecar, tmp_path, ca, app, server_sa="server", client_certs=None):
    server = make_sidecar([], host=SERVER, workload="server", name="server", start=False,
                          boot={"certificates": certs(tmp_path, ca, "server", server_sa)})
    server.write_config(mesh(app, server.inbound))
    server.start()
    relay = Relay(SERVER, (SERVER, server.inbound))  # (dialled at the server workload address)
    client = make_sidecar([], host=CLIENT, workload="client", name="client", start=False,
                          boot={"certificates": client_certs or certs(tmp_path, ca, "client", "client")})
    client.write_config(mesh(app, relay.port))
    client.start()
    return client, server, relay


def xfcc(body):
    return [v for k, v in json.loads(body)["headers"] if k.lower() == "x-forwarded-client-cert"]


def test_sidecars_speak_mutual_tls_and_the_app_learns_the_client(make_sidecar, tmp_path, ca, app):
    client, server, relay = start_pair(make_sidecar, tmp_path, ca, app)
    try:
        for i in range(3):
            st, h, body = client.request(path=f"/hello/{i}", host=HOST, headers={
                "x-forwarded-client-cert": "By=forged;URI=spiffe://evil/ns/x/sa/y"})
            assert st == 200, body
        (x,) = xfcc(body)
        assert x.startswith("By=spiffe://cluster.local/ns/default/sa/server;Hash=")
        assert x.endswith(';Subject="";URI=spiffe://cluster.local/ns/default/sa/client')
        assert relay.seen[:1] == b"\x16", "the hop starts with a TLS handshake record"
        assert b"GET /hello" not in bytes(relay.seen) and b"HTTP/1.1" not in bytes(relay.seen)
        assert len(relay.conns) == 2, "one pooled TLS connection for the three requests"
        # PERMISSIVE: a plaintext client on the same inbound port is served, without the header
        c = http.client.HTTPConnection(SERVER, server.inbound, timeout=10)
        c.request("GET", "/plain", headers={"Host": HOST})
        r = c.getresponse()
        body = r.read()
        c.close()
        assert r.status == 200 and xfcc(body) == []
    finally:
        relay.stop()


def _refused(client, app, what):
    before = app.stats()["count"]
    st, h, body = client.request(path="/x", host=HOST)
    assert st == 503, (what, st, body)
    # (TLS 1.3: a client certificate the server refuses is only known once the client has
    # sent its request, so that one reads "connection termination" rather than "failure")
    assert b"reset reason: connection" in body, (what, body)
    assert app.stats()["count"] == before, f"{what}: nothing may reach the application"


def test_a_server_with_the_wrong_identity_is_refused(make_sidecar, tmp_path, ca, app):
    client, server, relay = start_pair(make_sidecar, tmp_path, ca, app, server_sa="impostor")
    try:
        _refused(client, app, "wrong service account")
        client.wait_log("presented spiffe://cluster.local/ns/default/sa/impostor, expected "
                        "spiffe://cluster.local/ns/default/sa/server")
    finally:
        relay.stop()


def test_a_client_certificate_from_another_ca_is_refused(make_sidecar, tmp_path, ca, app):
    other = CA.create()
    d = tmp_path / "other"
    d.mkdir()
    paths = other.issue("default", "client").write(str(d / "client"), str(d / "root-cert.pem"))
    # the client trusts the mesh roots (so it accepts the server) but presents a foreign cert
    mesh_roots = certs(tmp_path, ca, "roots", "x")["caCertificates"]
    client, server, relay = start_pair(
        make_sidecar, tmp_path, ca, app,
        client_certs={"certificateChain": paths["chain"], "privateKey": paths["key"],
                      "caCertificates": mesh_roots})
    try:
        _refused(client, app, "foreign client certificate")
        server.wait_log("TLS handshake failed")
    finally:
        relay.stop()


def test_an_expired_server_certificate_is_refused(make_sidecar, tmp_path, app):
    now = datetime.datetime.now(datetime.timezone.utc)
    old = CA.create(now=now - datetime.timedelta(hours=3))
    server = make_sidecar([], host=SERVER, workload="server", name="server", start=False, boot={
        "certificates": certs(tmp_path, old, "server", "server", ttl=3600,
                              now=now - datetime.timedelta(hours=2))})
    server.write_config(mesh(app, server.inbound))
    server.start()
    client = make_sidecar(mesh(app, server.inbound), host=CLIENT, workload="client", name="client",
                          boot={"certificates": certs(tmp_path, old, "client", "client")})
    _refused(client, app, "expired server certificate")
    client.wait_log("certificate has expired")


def test_rotated_certificates_are_used_for_new_connections(make_sidecar, tmp_path, ca, app):
    client, server, relay = start_pair(make_sidecar, tmp_path, ca, app)
    try:
        assert client.request(path="/before", host=HOST)[0] == 200
        # reissue both sides' files in place; the pooled connection keeps working meanwhile
        certs(tmp_path, ca, "server", "server")
        certs(tmp_path, ca, "client", "client")
        stop = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < stop:
            st, _, body = client.request(path=f"/during/{n}", host=HOST)
            assert st == 200, body
            n += 1
        client.wait_log("certificates reloaded: spiffe://cluster.local/ns/default/sa/client")
        server.wait_log("certificates reloaded: spiffe://cluster.local/ns/default/sa/server")
        # a new connection now: handshakes with the new certificates on both sides
        for c in relay.conns:
            c.close()
        st, _, body = client.request(path="/after", host=HOST)
        assert st == 200, body
        (x,) = xfcc(body)
        assert x.endswith("URI=spiffe://cluster.local/ns/default/sa/client")
    finally:
        relay.stop()


def test_authorization_policy_matches_the_mtls_principal(make_sidecar, tmp_path, ca, app):
    """AuthorizationPolicy ``principals`` see the client's SPIFFE ID from the mTLS handshake: the
    client sidecar's requests are allowed, a plaintext client on the same port is denied."""
    policy = doc("AuthorizationPolicy", "only-client", {
        "selector": {"matchLabels": {"app": "echo"}}, "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}]}]},
        api="security.istio.io/v1")
    server = make_sidecar([], host=SERVER, workload="server", name="server", start=False,
                          boot={"certificates": certs(tmp_path, ca, "server", "server")})
    server.write_config(mesh(app, server.inbound) + [policy])
    server.start()
    client = make_sidecar(mesh(app, server.inbound), host=CLIENT, workload="client", name="client",
                          boot={"certificates": certs(tmp_path, ca, "client", "client")})
    st, _, body = client.request(path="/allowed", host=HOST)
    assert st == 200, body
    c = http.client.HTTPConnection(SERVER, server.inbound, timeout=10)
    c.request("GET", "/plain", headers={"Host": HOST})
    r = c.getresponse()
    assert (r.status, r.read()) == (403, b"RBAC: access denied")
    c.close()
