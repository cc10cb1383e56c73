"""The sidecar's DNS stub resolver: answers, TTLs, CNAME chains, errors (against a fake server)."""
import asyncio

import pytest

from meshproxy import dns
from tests.dns_server import FakeDNS


@pytest.fixture
def server():
    s = FakeDNS()
    yield s
    s.stop()


def run(coro):
    return asyncio.run(coro)


def test_a_and_aaaa_with_min_ttl(server):
    server.records[("svc.test", 1)] = [(1, "127.0.0.7", 30), (1, "127.0.0.8", 12)]
    server.records[("svc.test", 28)] = [(28, "::1", 20)]
    r = dns.Resolver([server.address])
    addrs, ttl = run(r.resolve("svc.test"))
    assert addrs == ["127.0.0.7", "127.0.0.8", "::1"]
    assert ttl == 12


def test_cname_chain_ttl_counts(server):
    server.records[("alias.test", 5)] = [(5, "mid.test", 7)]
    server.records[("mid.test", 5)] = [(5, "real.test", 50)]
    server.records[("real.test", 1)] = [(1, "127.0.0.9", 60)]
    addrs, ttl = run(dns.Resolver([server.address]).resolve("alias.test"))
    assert addrs == ["127.0.0.9"] and ttl == 7


def test_zero_ttl_is_floored_and_long_ttl_capped(server):
    server.records[("zero.test", 1)] = [(1, "127.0.0.1", 0)]
    server.records[("long.test", 1)] = [(1, "127.0.0.1", 86400)]
    r = dns.Resolver([server.address])
    assert run(r.resolve("zero.test"))[1] == dns.MIN_TTL
    assert run(r.resolve("long.test"))[1] == dns.MAX_TTL


def test_nxdomain_and_empty_answers_raise(server):
    server.nxdomain.add("gone.test")
    r = dns.Resolver([server.address])
    with pytest.raises(OSError, match="NXDOMAIN"):
        run(r.resolve("gone.test"))
    with pytest.raises(OSError, match="cannot resolve"):
        run(r.resolve("empty.test"))


def test_dead_server_times_out_with_an_error():
    r = dns.Resolver(["127.0.0.1:9"], timeout=0.3)  # discard port: nothing answers
    with pytest.raises(OSError):
        run(r.resolve("x.test"))


def test_ip_literals_and_hosts_file_answer_locally(server):
    r = dns.Resolver([server.address])
    assert run(r.resolve("127.0.0.5")) == (["127.0.0.5"], dns.MAX_TTL)
    addrs, ttl = run(r.resolve("localhost"))
    assert "127.0.0.1" in addrs and ttl == dns.HOSTS_TTL
    assert "localhost" not in server.queries


@pytest.mark.parametrize("spec,expected", [
    ("10.0.0.2", ("10.0.0.2", 53)), ("10.0.0.2:5353", ("10.0.0.2", 5353)),
    ("[::1]:53", ("::1", 53)), ("::1", ("::1", 53)),
])
def test_parse_server(spec, expected):
    assert dns.parse_server(spec) == expected


def test_parse_answer_rejects_garbage():
    with pytest.raises(OSError):
        dns.parse_answer(b"\x00\x01", 1, "a.test", 1)
    q = dns.build_query(7, "a.test", 1)
    with pytest.raises(OSError, match="mismatched"):
        dns.parse_answer(q, 8, "a.test", 1)
    # a compression pointer loop must not hang
    loop = q[:12] + b"\xc0\x0c" + q[-4:]
    with pytest.raises(OSError):
        dns.parse_answer(loop[:4] + b"\x00\x01\x00\x01" + loop[8:], 7, "a.test", 1)
