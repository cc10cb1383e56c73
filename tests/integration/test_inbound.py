"""Two sidecars on one host: client (127.0.0.2) -> its outbound -> server sidecar's inbound
(127.0.0.3) -> the app on 127.0.0.3."""
import json
import re

import pytest
from harness import ECHO_HOST, Backend, RawConn, curl, service_entry, workload_entry

ISTIO = {"security.istio.io/tlsMode": "istio"}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def app():
    b = Backend(host="127.0.0.3")
    yield b
    b.stop()


def _h(doc, name):
    return [v for k, v in doc["headers"] if k.lower() == name]


def test_two_hops_through_inbound(make_sidecar, app):
    app.reset()
    server = make_sidecar([], host="127.0.0.3", workload="server", name="server", start=False)
    docs = [
        workload_entry("client", "127.0.0.2", labels={"app": "client", **ISTIO}),
        workload_entry("server", "127.0.0.3", ports={"http": app.port},
                       labels={"app": "echo", **ISTIO},
                       annotations={"meshproxy.io/inbound-port": str(server.inbound)}),
        service_entry("echo", ECHO_HOST, selector={"app": "echo"}),
    ]
    server.write_config(docs)
    server.start()
    client = make_sidecar(docs, host="127.0.0.2", workload="client", name="client")

    # the client's cluster dials the server's sidecar, not the app
    snap = json.loads(client.admin_get("/config_dump")[1])["snapshot"]
    ep = [c for c in snap["clusters"] if c["service"] == ECHO_HOST][0]["endpoints"][0]
    assert (ep["address"], ep["port"], ep["sidecar"]) == ("127.0.0.3", server.inbound, True)

    r = curl("-H", "Host: echo", f"http://127.0.0.2:{client.outbound}/two-hops")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["target"] == "/two-hops"
    xff = _h(d, "x-forwarded-for")
    assert len(xff) == 1 and len(xff[0].split(", ")) == 2, xff
    rid = _h(d, "x-request-id")
    assert len(rid) == 1 and UUID4.match(rid[0])
    assert app.stats()["requests"] == 1

    # the inbound listener routes an unknown Host to the only app port (default cluster)
    c = RawConn("127.0.0.3", server.inbound)
    c.send(b"GET /direct HTTP/1.1\r\nHost: whatever\r\n\r\n")
    st, _, body, _ = c.read_response()
    c.close()
    assert st == 200 and json.loads(body)["target"] == "/direct"
    # and the outbound side of each sidecar counted its request
    for s in (client, server):
        st, body = s.admin_get("/stats/prometheus", port=s.prometheus)
        assert b"istio_requests_total" in body
