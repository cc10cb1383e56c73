"""ServiceEntry resolution DNS: re-resolved when the records' TTL runs out (Envoy's
respect_dns_ttl), through a real sidecar and a fake name server given in the Bootstrap."""
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from harness import doc
from routing_backend import RoutingBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.dns_server import FakeDNS  # noqa: E402
from test_routing import Client  # noqa: E402

HOST = "api.dnstest.example"


def _common_port(*hosts):
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            with socket.socket() as s:
                try:
                    s.bind((h, port))
                except OSError:
                    ok = False
        if ok:
            return port
    pytest.skip("no common free port")


@pytest.fixture
def fake_dns():
    s = FakeDNS()
    yield s
    s.stop()


def served_by(client):
    st, _hs, data = client.request("/", host=HOST)
    assert st == 200, data
    return json.loads(data)["name"]


@pytest.mark.parametrize("resolution", ["DNS", "DNS_ROUND_ROBIN"])
def test_reresolved_when_ttl_expires(make_sidecar, fake_dns, resolution):
    port = _common_port("127.0.0.51", "127.0.0.52")
    a = RoutingBackend("127.0.0.51", "first", port=port)
    b = RoutingBackend("127.0.0.52", "second", port=port)
    try:
        fake_dns.records[(HOST, 1)] = [(1, "127.0.0.51", 1)]
        s = make_sidecar([doc("ServiceEntry", "api", {
            "hosts": [HOST], "resolution": resolution,
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": port}]})],
            boot={"dnsServers": [fake_dns.address]})
        c = Client(s)
        assert {served_by(c) for _ in range(5)} == {"first"}
        # The name moves; after its 1 s TTL the sidecar asks again and follows it.
        fake_dns.records[(HOST, 1)] = [(1, "127.0.0.52", 1)]
        deadline = time.monotonic() + 6
        seen = "first"
        while time.monotonic() < deadline and seen != "second":
            c.conn = None  # new client connection; the upstream pick happens per request anyway
            seen = served_by(c)
            time.sleep(0.1)
        assert seen == "second"
        assert fake_dns.queries[HOST] >= 4  # A and AAAA, at least twice
    finally:
        a.stop()
        b.stop()


def test_long_ttl_is_not_asked_again_early(make_sidecar, fake_dns):
    port = _common_port("127.0.0.53")
    a = RoutingBackend("127.0.0.53", "only", port=port)
    try:
        fake_dns.records[(HOST, 1)] = [(1, "127.0.0.53", 300)]
        s = make_sidecar([doc("ServiceEntry", "api", {
            "hosts": [HOST], "resolution": "DNS",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": port}]})],
            boot={"dnsServers": [fake_dns.address]})
        c = Client(s)
        asked = fake_dns.queries[HOST]
        for _ in range(10):
            assert served_by(c) == "only"
            time.sleep(0.2)
        assert fake_dns.queries[HOST] == asked
    finally:
        a.stop()


def test_bad_dns_server_in_bootstrap_is_a_config_error(tmp_path):
    from control import ConfigError, build_snapshot
    p = tmp_path / "m.yaml"
    p.write_text("apiVersion: meshproxy.io/v1alpha1\nkind: Bootstrap\nmetadata: {name: b}\n"
                 "spec:\n  dnsServers: [resolver.example, '10.0.0.1:99999']\n")
    with pytest.raises(ConfigError) as e:
        build_snapshot(str(p))
    text = str(e.value)
    assert "spec.dnsServers[0]: \"resolver.example\" is not an IP address" in text
    assert "spec.dnsServers[1]" in text and "is not a port" in text
