"""A test backend for the integration suite, run as its own process.

    python backend.py [--host 127.0.0.1]   -> prints "PORTS <data port> <control port>" and serves

Data port (HTTP/1.1, parsed by hand so framing is seen exactly as the sidecar sent it):

    /big/<n>            n bytes of body (Content-Length), streamed from a 1 MiB buffer
    /chunked            a chunked response with trailers (CHUNKED_BODY below, byte for byte)
    /ws                 WebSocket (RFC 6455) echo: text/binary frames echoed, ping->pong, close
    /close-before       read the request, close without answering
    /flaky-reuse        echo on a connection's first request, close unanswered on later ones
    /close-mid          send a head (Content-Length 100) and 10 bytes, then close
    /invalid            answer with bytes that are not HTTP
    /early              answer 413 + close before reading the request body
    /status/<code>      a bodiless response with that status (204, 304)
    /close-after        a keep-alive response, then close the idle connection 50 ms later
    /http10             an HTTP/1.0 response delimited by close
    /bad-framing        a response with Content-Length and Transfer-Encoding
    /bad-chunks         a chunked response with a bad chunk size after the first chunk
    /resp-close         a response with Connection: close, then close
    HEAD anything       Content-Length: 12345 and no body
    /delay/<seconds>    sleep, then echo
    anything else       echo as JSON: method, target, version, headers (names as received),
                        body (when <= 64 KiB), body_len, raw_body (body bytes as framed on the
                        wire, when <= 64 KiB), conn (connection number), peer, nreq (request
                        number on this connection)

An ``Expect: 100-continue`` request gets ``100 Continue`` before its body is read.

Control port: ``GET /stats`` -> JSON counters (connections, heads, requests, bytes, peers);
``POST /reset`` zeroes them. The control port is never proxied, so it does not count.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import sys

CHUNKED_BODY = (b"5;ext=1\r\nhello\r\n"
                b"6\r\n world\r\n"
                b"0\r\nX-Checksum: abc123\r\nX-Trailer-Two: 2\r\n\r\n")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SMALL = 65536
ZEROS = b"z" * (1 << 20)

STATS = {}


def reset():
    STATS.clear()
    STATS.update(connections=0, heads=0, requests=0, bytes=0, peers=[], targets=[])


reset()


class Bad(Exception):
    pass


async def read_head(reader, count=True):
    data = await reader.readuntil(b"\r\n\r\n")
    if count:
        STATS["bytes"] += len(data)
    lines = data[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise Bad(lines[0])
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise Bad(line)
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return parts[0].decode(), parts[1].decode("latin-1"), parts[2].decode(), headers


def hget(headers, name):
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def tokens(headers, name):
    out = []
    for k, v in headers:
        if k.lower() == name:
            out += [t.strip().lower() for t in v.split(",") if t.strip()]
    return out


async def read_body(reader, headers):
    """(body or None when large, body_len, raw framed bytes or None when large)."""
    te = tokens(headers, "transfer-encoding")
    keep = []
    raw = []
    total = 0
    rawlen = 0

    def took(b, is_data):
        nonlocal total, rawlen
        STATS["bytes"] += len(b)
        rawlen += len(b)
        if rawlen <= SMALL:
            raw.append(b)
        if is_data:
            total += len(b)
            if total <= SMALL:
                keep.append(b)

    if te and te[-1] == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            took(line, False)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:
                    t = await reader.readuntil(b"\r\n")
                    took(t, False)
                    if t == b"\r\n":
                        break
                break
            left = size
            while left:
                b = await reader.read(min(left, 1 << 20))
                if not b:
                    raise asyncio.IncompleteReadError(b"", left)
                took(b, True)
                left -= len(b)
            crlf = await reader.readexactly(2)
            took(crlf, False)
    else:
        n = int(hget(headers, "content-length") or 0)
        left = n
        while left:
            b = await reader.read(min(left, 1 << 20))
            if not b:
                raise asyncio.IncompleteReadError(b"", left)
            took(b, True)
            left -= len(b)
    body = b"".join(keep) if total <= SMALL else None
    rawb = b"".join(raw) if rawlen <= SMALL else None
    return body, total, rawb


def response(status, body, ctype="application/json", close=False, extra=()):
    reason = {200: "OK", 101: "Switching Protocols"}.get(status, "X")
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}",
            f"Content-Type: {ctype}", "X-Backend: yes"]
    head += list(extra)
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def ws_echo(reader, writer):
    """Minimal RFC 6455 server side: echo data frames unmasked, answer ping, close on close."""
    while True:
        b0, b1 = await reader.readexactly(2)
        opcode = b0 & 0x0F
        masked = b1 & 0x80
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
        payload = bytearray(await reader.readexactly(n))
        for i in range(n):
            payload[i] ^= mask[i % 4]
        if opcode == 0x9:
            opcode = 0xA
        if n < 126:
            hdr = bytes([0x80 | opcode, n])
        elif n < 65536:
            hdr = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            hdr = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        writer.write(hdr + bytes(payload))
        await writer.drain()
        if opcode == 0x8:
            writer.close()
            return


async def handle(reader, writer):
    STATS["connections"] += 1
    conn = STATS["connections"]
    peer = writer.get_extra_info("peername")
    STATS["peers"].append(list(peer))
    nreq = 0
    try:
        while True:
            try:
                method, target, version, headers = await read_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            STATS["heads"] += 1
            STATS["targets"].append(target)
            nreq += 1
            if (hget(headers, "expect") or "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if target == "/ws":
                key = hget(headers, "sec-websocket-key") or ""
                acc = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
                STATS["requests"] += 1
                writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc
                              + "\r\n\r\n").encode())
                await ws_echo(reader, writer)
                return
            if target == "/early":
                # answer without reading the body (as a server rejecting an upload would)
                writer.write(response(413, b"too big", "text/plain", close=True))
                await writer.drain()
                writer.close()
                return
            body, body_len, raw = await read_body(reader, headers)
            STATS["requests"] += 1
            conn_tokens = tokens(headers, "connection")
            if version == "HTTP/1.0":
                close = "keep-alive" not in conn_tokens
            else:
                close = "close" in conn_tokens
            if target.startswith("/delay/"):
                await asyncio.sleep(float(target.split("/")[2]))
            if target.startswith("/big/"):
                n = int(target.split("/")[2])
                writer.write((f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n"
                              f"Content-Type: application/octet-stream\r\n\r\n").encode())
                while n:
                    k = min(n, len(ZEROS))
                    writer.write(ZEROS if k == len(ZEROS) else ZEROS[:k])
                    n -= k
                    await writer.drain()
            elif target == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                             b"Trailer: X-Checksum\r\nContent-Type: text/plain\r\n\r\n")
                await writer.drain()
                writer.write(CHUNKED_BODY[:16])
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.write(CHUNKED_BODY[16:])
            elif target.startswith("/status/"):
                code = int(target.split("/")[2])
                writer.write(f"HTTP/1.1 {code} X\r\nX-Backend: yes\r\n\r\n".encode())
            elif target == "/close-after":
                # a complete keep-alive response, then the server closes the idle connection
                writer.write(response(200, b"bye", "text/plain"))
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.close()
                return
            elif target == "/http10":
                writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
                writer.write(b"old-style body delimited by close")
                await writer.drain()
                writer.close()
                return
            elif target == "/bad-framing":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            elif target == "/bad-chunks":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"3\r\nabc\r\nZZ\r\n")
                await writer.drain()
                await asyncio.sleep(0.5)
                writer.close()
                return
            elif target == "/resp-close":
                writer.write(response(200, b"closing", "text/plain", close=True))
                await writer.drain()
                writer.close()
                return
            elif method == "HEAD":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nX-Backend: yes\r\n\r\n")
            elif target == "/flaky-reuse" and nreq > 1:
                # a reused connection the server has given up on: close without answering
                writer.close()
                return
            elif target == "/close-before":
                writer.close()
                return
            elif target == "/close-mid":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                await writer.drain()
                writer.close()
                return
            elif target == "/invalid":
                writer.write(b"THIS IS NOT HTTP\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            else:
                doc = {"method": method, "target": target, "version": version,
                       "headers": headers, "body_len": body_len, "conn": conn, "nreq": nreq,
                       "peer": list(peer),
                       "body": body.decode("latin-1") if body is not None else None,
                       "raw_body": raw.decode("latin-1") if raw is not None else None}
                writer.write(response(200, json.dumps(doc).encode(), close=close))
            await writer.drain()
            if close:
                writer.close()
                return
    except (ConnectionError, asyncio.IncompleteReadError, Bad, ValueError):
        pass
    finally:
        if not writer.is_closing():
            writer.close()


async def control(reader, writer):
    try:
        method, target, _, headers = await read_head(reader, count=False)
        if target == "/reset":
            reset()
        body = json.dumps(STATS).encode()
        writer.write(response(200, body, close=True))
        await writer.drain()
    finally:
        writer.close()


async def main(host):
    data = await asyncio.start_server(handle, host, 0, backlog=1024, limit=1 << 20)
    ctrl = await asyncio.start_server(control, host, 0)
    dport = data.sockets[0].getsockname()[1]
    cport = ctrl.sockets[0].getsockname()[1]
    print(f"PORTS {dport} {cport}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(main(args.host))
    except KeyboardInterrupt:
        sys.exit(0)
