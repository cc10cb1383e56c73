"""meshproxy.tls: the sidecar's TLS contexts from certificate files, the peer's SPIFFE ID, the
PERMISSIVE listener (TLS and plaintext on one port), x-forwarded-client-cert."""
import asyncio
import datetime
import os

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from control.certs import CA
from meshproxy import tls


@pytest.fixture(scope="module")
def ca():
    return CA.create()


def files(tmp_path, ca, sa):
    p = ca.issue("default", sa).write(str(tmp_path / sa), str(tmp_path / "root-cert.pem"))
    return p["chain"], p["key"], p["roots"]


def test_config_knows_its_own_identity(tmp_path, ca):
    cfg = tls.TlsConfig(*files(tmp_path, ca, "reviews"))
    assert cfg.spiffe_id == "spiffe://cluster.local/ns/default/sa/reviews"
    assert cfg.client.verify_mode == cfg.server.verify_mode
    assert not cfg.client.check_hostname


def test_unusable_files_are_a_clear_error(tmp_path, ca):
    chain, key, roots = files(tmp_path, ca, "a")
    with pytest.raises(tls.TlsError, match="No such file"):
        tls.TlsConfig(str(tmp_path / "missing.pem"), key, roots)
    other_key = files(tmp_path, ca, "b")[1]
    with pytest.raises(tls.TlsError, match="cannot use"):
        tls.TlsConfig(chain, other_key, roots)  # the key does not match the certificate
    assert issubclass(tls.TlsError, OSError), "a bad file fails an apply like an unbindable port"
    # a certificate that is not an SVID (no spiffe:// URI SAN)
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(k.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1)).sign(k, hashes.SHA256()))
    (tmp_path / "plain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "plain-key.pem").write_bytes(k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(tls.TlsError, match="not a SPIFFE X.509-SVID"):
        tls.TlsConfig(str(tmp_path / "plain.pem"), str(tmp_path / "plain-key.pem"), roots)


def test_permissive_server_takes_tls_and_plaintext_on_one_port(tmp_path, ca):
    srv = tls.TlsConfig(*files(tmp_path, ca, "server"))
    cli = tls.TlsConfig(*files(tmp_path, ca, "client"))
    seen = []

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
            seen.append(tls.peer_id(t.get_extra_info("ssl_object")))

        def data_received(self, data):
            self.t.write(data.upper())

    class Client(asyncio.Protocol):
        def __init__(self):
            self.got = asyncio.get_running_loop().create_future()

        def connection_made(self, t):
            self.peer = tls.peer_id(t.get_extra_info("ssl_object"))
            t.write(b"ping")

        def data_received(self, data):
            if not self.got.done():
                self.got.set_result(data)

    async def main():
        loop = asyncio.get_running_loop()
        server = tls.PermissiveServer(loop, Echo, "127.0.0.1", 0, srv.server, first_byte_timeout=0.3)
        port = server.sock.getsockname()[1]
        _, c1 = await loop.create_connection(Client, "127.0.0.1", port, ssl=cli.client)
        assert await asyncio.wait_for(c1.got, 5) == b"PING"
        assert c1.peer == "spiffe://cluster.local/ns/default/sa/server"
        _, c2 = await loop.create_connection(Client, "127.0.0.1", port)
        assert await asyncio.wait_for(c2.got, 5) == b"PING"
        # a connection that never says anything is dropped after first_byte_timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        writer.close()
        # a TLS client without a certificate: the handshake fails, the server goes on
        bare = tls.ssl.SSLContext(tls.ssl.PROTOCOL_TLS_CLIENT)
        bare.check_hostname = False
        bare.load_verify_locations(files(tmp_path, ca, "x")[2])
        try:
            t, c3 = await loop.create_connection(Client, "127.0.0.1", port, ssl=bare)
            await asyncio.wait_for(c3.got, 2)  # TLS 1.3: refused after the client's handshake
            raise AssertionError("a client without a certificate was served")
        except (OSError, asyncio.TimeoutError):
            pass
        for _ in range(50):
            if server.handshake_failures:
                break
            await asyncio.sleep(0.02)
        assert server.handshake_failures == 1
        server.close()
        with pytest.raises(OSError):
            await loop.create_connection(Client, "127.0.0.1", port)

    uvloop.run(main())
    assert seen == ["spiffe://cluster.local/ns/default/sa/client", None]


def test_xfcc_line_is_envoys_format():
    pc = tls.PeerCert("spiffe://cluster.local/ns/default/sa/client", "ab" * 32)
    assert tls.xfcc_line("spiffe://cluster.local/ns/default/sa/server", pc) == (
        b'x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/server;'
        b'Hash=' + b"ab" * 32 + b';Subject="";URI=spiffe://cluster.local/ns/default/sa/client\r\n')
    assert tls.peer_cert(None) is None and tls.peer_id(None) is None


def test_files_stamp_changes_when_a_file_is_rewritten(tmp_path, ca):
    paths = files(tmp_path, ca, "r")
    before = tls.files_stamp(paths)
    assert before == tls.files_stamp(paths)
    os.utime(paths[0], ns=(0, 1))
    assert tls.files_stamp(paths) != before
    assert tls.files_stamp([str(tmp_path / "gone")]) == (None,)


def test_the_compiled_build_drives_tls_with_aiofastnet_and_the_pure_build_with_ssl(monkeypatch):
    """TLS connections use aiofastnet's transport when the compiled core is in use (the pure
    build, MESHPROXY_NO_EXTENSIONS=1, keeps the event loop's own TLS on the ssl module)."""
    import meshproxy.core
    monkeypatch.setattr(tls, "_FAST", None)
    monkeypatch.setattr(meshproxy.core, "COMPILED", False)
    assert tls.fast_transport() is None
    monkeypatch.setattr(tls, "_FAST", None)
    monkeypatch.setattr(meshproxy.core, "COMPILED", True)
    import aiofastnet
    assert tls.fast_transport() is aiofastnet
