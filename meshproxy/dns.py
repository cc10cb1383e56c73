"""A small asynchronous DNS stub resolver that reports record TTLs (RFC 1035).

``ServiceEntry`` clusters with ``resolution: DNS`` / ``DNS_ROUND_ROBIN`` are re-resolved when their
records expire, as Envoy does with ``respect_dns_ttl`` (Istio's setting). The standard library's
``getaddrinfo`` hides TTLs, so the sidecar asks the name servers itself: A and AAAA queries over
UDP (TCP when the answer is truncated), CNAME chains followed within the answer. Names in
``/etc/hosts`` and IP literals are answered locally with ``HOSTS_TTL``. Everything runs off the hot
path, in the worker's event loop, bounded by ``timeout`` per server.

Name servers: the Bootstrap's ``dnsServers`` when set, else ``/etc/resolv.conf``. When neither
gives a server, ``getaddrinfo`` is used with ``HOSTS_TTL``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import struct
from typing import Optional

HOSTS_TTL = 5.0  # seconds, for /etc/hosts, IP literals and getaddrinfo answers
MIN_TTL = 1.0  # a 0-second TTL still waits this long before asking again
MAX_TTL = 300.0

T_A, T_CNAME, T_AAAA = 1, 5, 28


class DNSError(OSError):
    pass


def parse_server(spec: str) -> tuple[str, int]:
    """``"10.0.0.2"``, ``"10.0.0.2:5353"`` or ``"[::1]:53"`` to (address, port)."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif spec.count(":") == 1:
        host, port_s = spec.split(":")
        port = int(port_s)
    else:
        host, port = spec, 53
    ipaddress.ip_address(host)
    return host, port


def system_servers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        out.append(parse_server(parts[1].split("%")[0]))
                    except ValueError:
                        continue
    except OSError:
        pass
    return out


def hosts_file(path: str = "/etc/hosts") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].split()
                if len(line) < 2:
                    continue
                for name in line[1:]:
                    out.setdefault(name.lower().rstrip("."), []).append(line[0])
    except OSError:
        pass
    return out


def build_query(qid: int, name: str, qtype: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p for p in
                      (x.encode("idna") for x in name.rstrip(".").split(".")) if p)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(
        "!HH", qtype, 1)


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels = []
    end = None
    for _ in range(128):  # bounded: compression loops are rejected
        if pos >= len(msg):
            raise DNSError("truncated name")
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise DNSError("truncated pointer")
            if end is None:
                end = pos + 2
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            continue
        if n == 0:
            return ".".join(labels).lower(), (end if end is not None else pos + 1)
        labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    raise DNSError("name compression loop")


def parse_answer(msg: bytes, qid: int, name: str, qtype: int) -> tuple[list[str], float, bool]:
    """(addresses, min TTL, truncated) for the query's name, following CNAMEs in the answer."""
    if len(msg) < 12:
        raise DNSError("short DNS message")
    rid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid:
        raise DNSError("mismatched DNS id")
    if flags & 0x0200:
        return [], 0.0, True
    rcode = flags & 0x000F
    if rcode == 3:
        raise DNSError(f"{name}: no such name (NXDOMAIN)")
    if rcode != 0:
        raise DNSError(f"{name}: DNS error rcode {rcode}")
    pos = 12
    for _ in range(qd):
        _, pos = _read_name(msg, pos)
        pos += 4
    records = []
    for _ in range(an):
        rname, pos = _read_name(msg, pos)
        if pos + 10 > len(msg):
            raise DNSError("truncated record")
        rtype, _rclass, ttl, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        rdata = msg[pos:pos + rdlen]
        if rtype == T_CNAME:
            target, _ = _read_name(msg, pos)
            records.append((rname, rtype, ttl, target))
        elif rtype == T_A and rdlen == 4:
            records.append((rname, rtype, ttl, socket.inet_ntop(socket.AF_INET, rdata)))
        elif rtype == T_AAAA and rdlen == 16:
            records.append((rname, rtype, ttl, socket.inet_ntop(socket.AF_INET6, rdata)))
        pos += rdlen
    want = name.lower().rstrip(".")
    ttl_min = None
    for _ in range(16):  # follow a CNAME chain
        cname = [r for r in records if r[0] == want and r[1] == T_CNAME]
        if not cname:
            break
        ttl_min = cname[0][2] if ttl_min is None else min(ttl_min, cname[0][2])
        want = cname[0][3]
    addrs = [r for r in records if r[0] == want and r[1] == qtype]
    for r in addrs:
        ttl_min = r[2] if ttl_min is None else min(ttl_min, r[2])
    return [r[3] for r in addrs], float(ttl_min or 0), False


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future):
        self.fut = fut

    def datagram_received(self, data, addr):
        if not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc):
        if not self.fut.done():
            self.fut.set_exception(exc)


class Resolver:
    def __init__(self, servers: Optional[list[str]] = None, timeout: float = 2.0):
        self.servers = [parse_server(s) for s in servers] if servers else system_servers()
        self.timeout = timeout
        self._hosts: Optional[dict] = None
        self._hosts_mtime = None

    def _from_hosts(self, name: str) -> Optional[list[str]]:
        try:
            mtime = os.stat("/etc/hosts").st_mtime
        except OSError:
            mtime = None
        if self._hosts is None or mtime != self._hosts_mtime:
            self._hosts, self._hosts_mtime = hosts_file(), mtime
        return self._hosts.get(name.lower().rstrip("."))

    async def resolve(self, name: str, port: int = 0) -> tuple[list[str], float]:
        """(addresses, seconds until they should be asked for again).

        Raises:
            OSError: the name does not resolve.
        """
        try:
            ipaddress.ip_address(name)
            return [name], MAX_TTL
        except ValueError:
            pass
        local = self._from_hosts(name)
        if local:
            return list(dict.fromkeys(local)), HOSTS_TTL
        if not self.servers:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
            return list(dict.fromkeys(i[4][0] for i in infos)), HOSTS_TTL
        addrs: list[str] = []
        ttls: list[float] = []
        last: Optional[Exception] = None
        for qtype in (T_A, T_AAAA):
            for server in self.servers:
                try:
                    got, ttl = await self._query(server, name, qtype)
                except (OSError, asyncio.TimeoutError) as e:
                    last = e
                    continue
                addrs += got
                if got:
                    ttls.append(ttl)
                last = None
                break
        if not addrs:
            raise DNSError(f"cannot resolve {name}: {last or 'no addresses'}")
        ttl = min(ttls) if ttls else HOSTS_TTL
        return list(dict.fromkeys(addrs)), max(MIN_TTL, min(MAX_TTL, ttl))

    async def _query(self, server: tuple[str, int], name: str, qtype: int):
        loop = asyncio.get_running_loop()
        qid = random.getrandbits(16)
        q = build_query(qid, name, qtype)
        fut = loop.create_future()
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(fut), family=family,
                                                           remote_addr=server)
        try:
            transport.sendto(q)
            msg = await asyncio.wait_for(fut, self.timeout)
        finally:
            transport.close()
        addrs, ttl, truncated = parse_answer(msg, qid, name, qtype)
        if truncated:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(server[0], server[1]), self.timeout)
            try:
                writer.write(struct.pack("!H", len(q)) + q)
                n = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2),
                                                               self.timeout))[0]
                msg = await asyncio.wait_for(reader.readexactly(n), self.timeout)
            finally:
                writer.close()
            addrs, ttl, _ = parse_answer(msg, qid, name, qtype)
        return addrs, ttl
