"""A tiny authoritative DNS server for tests (UDP, A/AAAA/CNAME, changeable answers, TTLs)."""
import socket
import struct
import threading


class FakeDNS:
    """Answers on 127.0.0.1:<port>. ``records[(name, qtype)] = [(rtype, value, ttl), ...]``;
    a CNAME value is a name. Counts queries per name in ``queries``."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.records = {}
        self.queries = {}
        self.nxdomain = set()
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        self._stop = True
        self.thread.join(2)
        self.sock.close()

    def _serve(self):
        while not self._stop:
            try:
                msg, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self._answer(msg), addr)
            except Exception:  # noqa: BLE001 - a test server must keep serving
                continue

    @staticmethod
    def _name(msg, pos):
        labels = []
        while msg[pos]:
            n = msg[pos]
            labels.append(msg[pos + 1:pos + 1 + n].decode())
            pos += 1 + n
        return ".".join(labels).lower(), pos + 1

    @staticmethod
    def _encode(name):
        return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"

    def _answer(self, msg):
        qid, _flags, _qd = struct.unpack("!HHH", msg[:6])
        name, pos = self._name(msg, 12)
        qtype, = struct.unpack("!H", msg[pos:pos + 2])
        question = msg[12:pos + 4]
        self.queries[name] = self.queries.get(name, 0) + 1
        if name in self.nxdomain:
            return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
        answers = []
        want = name
        for _ in range(8):
            recs = self.records.get((want, 5))
            if not recs:
                break
            _, target, ttl = recs[0]
            answers.append(self._encode(want) + struct.pack("!HHIH", 5, 1, ttl, len(
                self._encode(target))) + self._encode(target))
            want = target
        for rtype, value, ttl in self.records.get((want, qtype), []):
            fam = socket.AF_INET if rtype == 1 else socket.AF_INET6
            rdata = socket.inet_pton(fam, value)
            answers.append(self._encode(want) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata))
                           + rdata)
        return (struct.pack("!HHHHHH", qid, 0x8180, 1, len(answers), 0, 0) + question
                + b"".join(answers))
