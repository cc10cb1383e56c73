"""Mutual TLS between sidecars: the TLS contexts and the peer's SPIFFE identity (off the hot path).

The sidecar's certificate, key and trust roots come from files (the Bootstrap's ``certificates``:
Envoy's file-based secrets; issue them with ``meshproxy ca issue`` or bring your own). From them
``TlsConfig`` makes two ``ssl.SSLContext``s:

* ``client``: what the sidecar presents when it dials another sidecar (Istio's ``ISTIO_MUTUAL``):
  its certificate chain, the mesh roots to verify the server, TLS 1.2 at least, no hostname check
  (a workload is named by the SPIFFE ID in its certificate's URI SAN, not by a DNS name; the
  expected ID is checked after the handshake, ``peer_id``), ALPN ``istio-http/1.1``;
* ``server``: what the inbound listener answers with: the same chain, a client certificate
  required and verified against the roots.

``peer_id(ssl_object)`` is the peer certificate's one ``spiffe://`` URI SAN (None when there is
not exactly one): the client side compares it with the identity the destination endpoint must have,
the server side hands it to the codec (``x-forwarded-client-cert``, authorization). It runs once
per connection; connections are pooled per identity, so per request TLS costs only the records.
"""
from __future__ import annotations

import asyncio
import hashlib
import socket
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger("meshproxy")

#: Istio's ALPN for sidecar-to-sidecar HTTP/1.1 (``istio-http/1.0``, ``istio-h2`` and ``istio``
#: are the others); plain ``http/1.1`` is offered too.
ALPN = ["istio-http/1.1", "istio-http/1.0", "istio", "http/1.1"]


class TlsError(OSError):
    """The certificate files cannot be used (missing, not PEM, key does not match). An OSError:
    like a port that cannot be bound, it makes a snapshot fail to apply (the old one stays)."""


@dataclass(frozen=True)
class PeerCert:
    """What a connection's peer certificate says (one per connection)."""

    spiffe_id: Optional[str]  # the one spiffe:// URI SAN, or None
    sha256: str  # hex digest of the DER certificate (x-forwarded-client-cert's Hash)


def _uri_sans(der: bytes) -> list:
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def peer_cert(ssl_object) -> Optional[PeerCert]:
    """The peer certificate of an established TLS connection (None without one)."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    uris = _uri_sans(der)
    spiffe = uris[0] if len(uris) == 1 and uris[0].startswith("spiffe://") else None
    return PeerCert(spiffe, hashlib.sha256(der).hexdigest())


def peer_id(ssl_object) -> Optional[str]:
    """The peer's SPIFFE ID: its certificate's one ``spiffe://`` URI SAN, else None."""
    pc = peer_cert(ssl_object)
    return pc.spiffe_id if pc is not None else None


class TlsConfig:
    """The sidecar's certificate, key and roots, and the contexts made from them."""

    def __init__(self, certificate_chain: str, private_key: str, ca_certificates: str):
        tune_malloc()
        self.paths = (certificate_chain, private_key, ca_certificates)
        self.stamp = files_stamp(self.paths)
        self.client = self._context(ssl.PROTOCOL_TLS_CLIENT)
        self.server = self._context(ssl.PROTOCOL_TLS_SERVER)
        self.spiffe_id = self._own_id(certificate_chain)

    def _context(self, protocol) -> ssl.SSLContext:
        chain, key, roots = self.paths
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_cert_chain(chain, key)
            ctx.load_verify_locations(cafile=roots)
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"certificates: cannot use {chain} / {key} / {roots}: {e}") from None
        ctx.set_alpn_protocols(ALPN)
        return ctx

    @staticmethod
    def _own_id(chain: str) -> str:
        from cryptography import x509
        try:
            with open(chain, "rb") as f:
                leaf = x509.load_pem_x509_certificates(f.read())[0]
        except (OSError, ValueError) as e:
            raise TlsError(f"certificates: cannot read {chain}: {e}") from None
        from cryptography.hazmat.primitives.serialization import Encoding
        uris = _uri_sans(leaf.public_bytes(Encoding.DER))
        if len(uris) != 1 or not uris[0].startswith("spiffe://"):
            raise TlsError(f"certificates: {chain} is not a SPIFFE X.509-SVID (it needs exactly one "
                           f"spiffe:// URI SAN, it has {uris or 'none'})")
        return uris[0]


def files_stamp(paths) -> tuple:
    """(mtime, size) of each file: a change means the files were rewritten (rotation)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


# -- the TLS transport ------------------------------------------------------------------------

def fast_transport():
    """aiofastnet (OpenSSL driven from Cython, no memory-BIO copies through Python) when it is
    installed and the compiled core is in use; None: the event loop's own TLS (uvloop's
    ``SSLProtocol`` on the standard ``ssl`` module), which is also the pure build's twin."""
    global _FAST
    if _FAST is None:
        _FAST = False
        from meshproxy.core import COMPILED
        if COMPILED:
            try:
                import aiofastnet
                _FAST = aiofastnet
            except ImportError:
                pass
    return _FAST or None


_FAST = None


async def connect(loop, protocol_factory, host: str, port: int, ctx: ssl.SSLContext):
    """Dial ``host:port`` with TLS (the handshake included) on the fastest transport there is."""
    fast = fast_transport()
    if fast is not None:
        return await fast.create_connection(loop, protocol_factory, host, port, ssl=ctx)
    return await loop.create_connection(protocol_factory, host, port, ssl=ctx)


async def accept(loop, protocol_factory, sock, ctx: ssl.SSLContext, handshake_timeout: float):
    """Serve an accepted socket with TLS (server side) on the fastest transport there is."""
    fast = fast_transport()
    if fast is not None:
        return await fast.connect_accepted_socket(loop, protocol_factory, sock, ssl=ctx,
                                                  ssl_handshake_timeout=handshake_timeout)
    return await loop.connect_accepted_socket(protocol_factory, sock, ssl=ctx,
                                              ssl_handshake_timeout=handshake_timeout)


def tune_malloc() -> None:
    """Keep glibc from mmap()ing transient 256 KiB read buffers (Python's ``SSLObject.read``
    allocates the largest record it may return, then shrinks it): above the default threshold
    each TLS read cost an mmap, an mremap and a munmap, about a third of the TLS cost per request.
    Allocations up to 1 MiB come from the heap instead, and up to 2 MiB of free heap is kept."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def looks_like_tls(first: bytes) -> bool:
    """Does a connection that starts with ``first`` speak TLS (a handshake record)?"""
    return len(first) >= 1 and first[0] == 0x16


class PermissiveServer:
    """A listening socket that takes TLS and plaintext on the same port (Istio's PERMISSIVE).

    Each accepted connection waits (at most ``first_byte_timeout`` s) for its first byte, read
    with ``MSG_PEEK`` so nothing is consumed: a TLS handshake record (0x16) is handed to the loop
    with the server context (``connect_accepted_socket(ssl=...)``: the handshake requires and
    verifies a client certificate), anything else as plaintext. Only accepting differs from
    ``loop.create_server``; the connections are the loop's own transports. ``close()`` stops
    accepting and drops connections still undecided.
    """

    def __init__(self, loop, protocol_factory, host: str, port: int, ctx: ssl.SSLContext,
                 reuse_port: bool = False, backlog: int = 2048, first_byte_timeout: float = 10.0):

        self.loop = loop
        self.factory = protocol_factory
        self.ctx = ctx
        self.first_byte_timeout = first_byte_timeout
        self.undecided: dict = {}  # fd -> (socket, timer)
        self.handshake_failures = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:

        for _ in range(64):
            try:
                c, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: try again on the next readiness
                log.warning("inbound: accept failed: %s", e)
                return
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = c.fileno()
            timer = self.loop.call_later(self.first_byte_timeout, self._drop, fd)
            self.undecided[fd] = (c, timer)
            self.loop.add_reader(fd, self._first_byte, fd)

    def _forget(self, fd: int):
        c, timer = self.undecided.pop(fd)
        timer.cancel()
        self.loop.remove_reader(fd)
        return c

    def _drop(self, fd: int) -> None:
        if fd in self.undecided:
            self._forget(fd).close()

    def _first_byte(self, fd: int) -> None:

        c = self.undecided[fd][0]
        try:
            first = c.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        self._forget(fd)
        if not first:
            c.close()
            return
        self.loop.create_task(self._serve(c, looks_like_tls(first)))

    async def _serve(self, c, is_tls: bool) -> None:
        try:
            if is_tls:
                await accept(self.loop, self.factory, c, self.ctx, self.first_byte_timeout)
            else:
                await self.loop.connect_accepted_socket(self.factory, c)
        except (OSError, asyncio.TimeoutError) as e:
            # A client without a certificate from the mesh's roots, a bad handshake...
            self.handshake_failures += 1
            log.info("inbound: TLS handshake failed: %s", e)
            c.close()

    def close(self) -> None:
        if self.sock is None:
            return
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        for fd in list(self.undecided):
            self._forget(fd).close()


def xfcc_line(own_id: str, peer: PeerCert) -> bytes:
    """Envoy's ``x-forwarded-client-cert`` as Istio's inbound sets it (SANITIZE_SET)."""
    return ("x-forwarded-client-cert: By=%s;Hash=%s;Subject=\"\";URI=%s\r\n"
            % (own_id, peer.sha256, peer.spiffe_id or "")).encode("latin-1")
