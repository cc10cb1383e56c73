"""control/certs.py: the mesh CA, X.509-SVIDs, their verification, and the certificate sources."""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import random
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control import certs
from control.certs import (CA, CAError, FileSource, LocalCASource, SVIDError, WorkloadCert,
                           make_csr, new_key, parse_spiffe_id, spiffe_id, verify_svid)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ec_ca():
    return CA.create(now=NOW)


@pytest.fixture(scope="module")
def rsa_ca():
    return CA.create("rsa", now=NOW)


@pytest.fixture(scope="module")
def chain_ca():
    """A user's root (pathLen 1) and a meshproxy intermediate under it."""
    root = CA.create(path_len=1, now=NOW)
    return root, CA.create(root_cert=root.cert, root_key=root._key, now=NOW)


@pytest.fixture(scope="module")
def live_ca():
    """A root and an intermediate valid now, for the tests that run on the real clock."""
    root = CA.create(path_len=1)
    return root, CA.create(root_cert=root.cert, root_key=root._key)


def ext(cert, cls):
    return cert.extensions.get_extension_for_class(cls)


# --- SPIFFE IDs ---------------------------------------------------------------------------------

def test_spiffe_id_istio_shape():
    sid = spiffe_id("cluster.local", "default", "reviews")
    assert sid == "spiffe://cluster.local/ns/default/sa/reviews"
    p = parse_spiffe_id(sid)
    assert (p.trust_domain, p.path, p.namespace, p.service_account) == (
        "cluster.local", "/ns/default/sa/reviews", "default", "reviews")
    assert parse_spiffe_id("spiffe://example.org").path == ""
    assert parse_spiffe_id("spiffe://td/a/b").namespace is None


@pytest.mark.parametrize("uri,words", [
    ("http://cluster.local/ns/a/sa/b", "must start with 'spiffe://'"),
    ("SPIFFE://cluster.local/ns/a", "lowercase"),
    ("spiffe://Cluster.local/ns/a", "lowercase letters"),
    ("spiffe:///ns/a", "trust domain is empty"),
    ("spiffe://cluster.local:8080/ns/a", "no port"),
    ("spiffe://user@cluster.local/ns/a", "no userinfo"),
    ("spiffe://cluster.local/ns/a?x=1", "no query"),
    ("spiffe://cluster.local/ns/a#frag", "no fragment"),
    ("spiffe://cluster.local/ns//sa/b", "empty path segment"),
    ("spiffe://cluster.local/ns/a/", "empty path segment"),
    ("spiffe://cluster.local/ns/../sa", "not allowed"),
    ("spiffe://cluster.local/ns/a%20b", "may only hold"),
    ("spiffe://cluster.local/ns/a b", "may only hold"),
])
def test_parse_spiffe_id_rejects(uri, words):
    with pytest.raises(ValueError, match=words.replace("?", r"\?").replace(".", r"\.")):
        parse_spiffe_id(uri)


def test_spiffe_id_validates_parts():
    with pytest.raises(ValueError, match="namespace"):
        spiffe_id("cluster.local", "", "sa")
    with pytest.raises(ValueError, match="service account"):
        spiffe_id("cluster.local", "ns", "a/b")
    with pytest.raises(ValueError, match="trust domain"):
        spiffe_id("Cluster.Local", "ns", "sa")


# --- the CA -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_root_ca_shape(kind, ec_ca, rsa_ca):
    ca = ec_ca if kind == "ec" else rsa_ca
    c = ca.cert
    assert c.subject.rfc4514_string() == "CN=meshproxy root CA,O=meshproxy"
    assert c.issuer == c.subject and ca.is_root
    bc = ext(c, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(c, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ext(c, x509.SubjectKeyIdentifier)
    assert (c.not_valid_after_utc - NOW).days >= 3649
    assert isinstance(c.public_key(), ec.EllipticCurvePublicKey if kind == "ec" else rsa.RSAPublicKey)
    assert ca.trust_domain == "cluster.local"
    assert ca.chain == [c] and ca.roots == [c] and ca.intermediates == []


def test_rsa_3072_and_bad_key_type():
    assert certs.key_type(new_key("rsa", 3072)) == "RSA 3072"
    with pytest.raises(ValueError, match="key type"):
        new_key("dsa")
    with pytest.raises(ValueError, match="RSA key size"):
        new_key("rsa", 1024)


def test_intermediate_under_user_root(chain_ca):
    root, inter = chain_ca
    assert ext(root.cert, x509.BasicConstraints).value.path_length == 1
    assert inter.cert.issuer == root.cert.subject
    assert ext(inter.cert, x509.BasicConstraints).value.path_length == 0
    assert ext(inter.cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(root.cert, x509.SubjectKeyIdentifier).value.digest
    assert inter.chain == [inter.cert, root.cert] and inter.roots == [root.cert]
    assert inter.intermediates == [inter.cert] and not inter.is_root


def test_intermediate_refuses_unusable_roots(ec_ca, chain_ca):
    root, _ = chain_ca
    with pytest.raises(CAError, match="pathLen 0"):
        CA.create(root_cert=ec_ca.cert, root_key=ec_ca._key, now=NOW)
    with pytest.raises(CAError, match="does not match"):
        CA.create(root_cert=root.cert, root_key=ec_ca._key, now=NOW)
    with pytest.raises(CAError, match="not valid now"):
        CA.create(root_cert=root.cert, root_key=root._key, now=NOW + datetime.timedelta(days=4000))
    leaf = ec_ca.issue("ns", "sa", now=NOW)
    with pytest.raises(CAError, match="not a CA"):
        CA.create(root_cert=leaf.cert, root_key=leaf.key, now=NOW)


def test_save_load_roundtrip_and_modes(tmp_path, chain_ca):
    _, inter = chain_ca
    d = tmp_path / "ca"
    inter.save(str(d))
    names = sorted(os.listdir(d))
    assert names == ["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    assert stat.S_IMODE(os.stat(d / "ca-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    loaded = CA.load(str(d))
    assert loaded.cert == inter.cert and loaded.chain == inter.chain and loaded.roots == inter.roots
    # A key file that already existed with a loose mode is tightened when rewritten.
    os.chmod(d / "ca-key.pem", 0o644)
    inter.save(str(d))
    assert stat.S_IMODE(os.stat(d / "ca-key.pem").st_mode) == 0o600


def test_load_errors_are_one_line(tmp_path, ec_ca, rsa_ca):
    with pytest.raises(CAError, match="not a CA directory"):
        CA.load(str(tmp_path / "nope"))
    d = tmp_path / "ca"
    ec_ca.save(str(d))
    (d / "ca-key.pem").write_text("hello")
    with pytest.raises(CAError, match="not a PEM private key"):
        CA.load(str(d))
    certs.write_private(str(d / "ca-key.pem"), rsa_ca._key)
    with pytest.raises(CAError, match="does not match"):
        CA.load(str(d))
    (d / "ca-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n")
    with pytest.raises(CAError, match="bad PEM certificate"):
        CA.load(str(d))
    enc = ec_ca._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.BestAvailableEncryption(b"secret"))
    (d / "k.pem").write_bytes(enc)
    with pytest.raises(CAError, match="encrypted; give its password"):
        certs.load_key(str(d / "k.pem"))
    with pytest.raises(CAError, match="wrong password"):
        certs.load_key(str(d / "k.pem"), b"nope")
    assert certs.load_key(str(d / "k.pem"), b"secret").private_numbers() == \
        ec_ca._key.private_numbers()


# --- signing ------------------------------------------------------------------------------------

def _greedy_csr(key) -> bytes:
    """A CSR that asks for everything a CA must not give."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")]))
           .add_extension(x509.SubjectAlternativeName([
               x509.DNSName("evil.example"),
               x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin")]),
               critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_sign_csr_ignores_what_the_csr_asks(kind, ec_ca):
    key = new_key(kind)
    sid = "spiffe://cluster.local/ns/default/sa/reviews"
    c = ec_ca.sign_csr(_greedy_csr(key), sid, now=NOW)
    assert c.public_key().public_numbers() == key.public_key().public_numbers()
    assert c.subject == x509.Name([])
    san = ext(c, x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(sid)]
    bc = ext(c, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(c, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment == (kind == "rsa")
    assert list(ext(c, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext(c, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert ext(c, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(ec_ca.cert, x509.SubjectKeyIdentifier).value.digest
    assert {e.oid for e in c.extensions} == {e.oid for e in (
        san, bc, ku, ext(c, x509.ExtendedKeyUsage), ext(c, x509.SubjectKeyIdentifier),
        ext(c, x509.AuthorityKeyIdentifier))}
    assert c.not_valid_before_utc == NOW - datetime.timedelta(minutes=1)
    assert c.not_valid_after_utc == NOW + datetime.timedelta(hours=24)
    assert 0 < c.serial_number < 2 ** 128
    assert verify_svid(c, [], ec_ca.roots, now=NOW) == sid


def test_sign_csr_ttl_capped_at_ca_and_refusals(ec_ca):
    key = new_key()
    sid = "spiffe://cluster.local/ns/a/sa/b"
    late = ec_ca.cert.not_valid_after_utc - datetime.timedelta(hours=1)
    c = ec_ca.sign_csr(make_csr(key, sid), sid, now=late)
    assert c.not_valid_after_utc == ec_ca.cert.not_valid_after_utc
    c = ec_ca.sign_csr(make_csr(key, sid), sid, ttl=600, now=NOW)
    assert c.not_valid_after_utc == NOW + datetime.timedelta(minutes=10)
    with pytest.raises(ValueError, match="trust domain 'cluster.local'"):
        ec_ca.sign_csr(make_csr(key, sid), "spiffe://other.org/ns/a/sa/b", now=NOW)
    with pytest.raises(ValueError, match="needs a path"):
        ec_ca.sign_csr(make_csr(key, sid), "spiffe://cluster.local", now=NOW)
    with pytest.raises(ValueError, match="positive"):
        ec_ca.sign_csr(make_csr(key, sid), sid, ttl=0, now=NOW)
    with pytest.raises(CAError, match="not a PEM certificate signing request"):
        ec_ca.sign_csr(b"garbage", sid, now=NOW)
    with pytest.raises(CAError, match="expired"):
        ec_ca.sign_csr(make_csr(key, sid), sid, now=ec_ca.cert.not_valid_after_utc)
    serials = {ec_ca.sign_csr(make_csr(key, sid), sid, now=NOW).serial_number for _ in range(20)}
    assert len(serials) == 20


def test_other_trust_domain_ca(tmp_path):
    ca = CA.create(trust_domain="example.org", now=NOW)
    assert ca.trust_domain == "example.org"
    wc = ca.issue("ns", "sa", now=NOW)
    assert wc.spiffe_id == "spiffe://example.org/ns/ns/sa/sa"
    assert verify_svid(wc.cert, wc.chain, wc.roots, NOW, trust_domain="example.org") == wc.spiffe_id
    with pytest.raises(SVIDError, match="trust domain 'example.org', expected 'cluster.local'"):
        verify_svid(wc.cert, wc.chain, wc.roots, NOW)
    ca.save(str(tmp_path / "ca"))
    assert CA.load(str(tmp_path / "ca")).trust_domain == "example.org"


# --- verification -------------------------------------------------------------------------------

def _leaf(ca, *, uris=("spiffe://cluster.local/ns/a/sa/b",), ca_flag=False, ku=True,
          digital_signature=True, ski=True, aki=True, eku=True, nb=None, na=None):
    """A leaf built by hand, to break exactly one SVID rule at a time."""
    key = new_key()
    b = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(nb or NOW - datetime.timedelta(minutes=1))
         .not_valid_after(na or NOW + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=True)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("a.example")]),
                            critical=False)
    if ku:
        b = b.add_extension(x509.KeyUsage(digital_signature, False, False, False, False, ca_flag,
                                          False, False, False), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                   ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    if aki:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ext(ca.cert, x509.SubjectKeyIdentifier).value), False)
    return b.sign(ca._key, hashes.SHA256())


def test_hand_built_leaf_passes(ec_ca):
    assert verify_svid(_leaf(ec_ca), [], ec_ca.roots, NOW) == "spiffe://cluster.local/ns/a/sa/b"


@pytest.mark.parametrize("kw,words", [
    (dict(uris=("spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/c")),
     "exactly one URI SAN, this one has 2"),
    (dict(uris=()), "exactly one URI SAN, this one has 0"),
    (dict(uris=("https://cluster.local/ns/a",)), "URI SAN is not a SPIFFE ID"),
    (dict(uris=("spiffe://cluster.local",)), "needs a path"),
    (dict(uris=("spiffe://evil.org/ns/a/sa/b",)), "trust domain 'evil.org', expected"),
    (dict(ca_flag=True), "cA=false"),
    (dict(ku=False), "no keyUsage"),
    (dict(digital_signature=False), "lacks digitalSignature"),
    (dict(ski=False), "no subject key identifier"),
    (dict(aki=False), "no authority key identifier"),
])
def test_svid_rules(ec_ca, kw, words):
    with pytest.raises(SVIDError, match=words):
        verify_svid(_leaf(ec_ca, **kw), [], ec_ca.roots, NOW)


def test_aki_missing_refused_by_chain_check_too(ec_ca):
    with pytest.raises(SVIDError, match="no authority key identifier"):
        certs.verify_chain(_leaf(ec_ca, aki=False), [], ec_ca.roots, NOW)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_expiry_and_not_yet_valid(kind, ec_ca, rsa_ca):
    ca = ec_ca if kind == "ec" else rsa_ca
    wc = ca.issue("ns", "sa", ttl=3600, key_type=kind, now=NOW)
    assert verify_svid(wc.cert, wc.chain, wc.roots, NOW) == "spiffe://cluster.local/ns/ns/sa/sa"
    # notBefore is one minute back: a peer whose clock is 30 s behind still accepts it.
    verify_svid(wc.cert, wc.chain, wc.roots, NOW - datetime.timedelta(seconds=30))
    with pytest.raises(SVIDError, match="not yet valid: valid from 2030-06-01 11:59:00Z"):
        verify_svid(wc.cert, wc.chain, wc.roots, NOW - datetime.timedelta(minutes=2))
    with pytest.raises(SVIDError, match="expired at 2030-06-01 13:00:00Z"):
        verify_svid(wc.cert, wc.chain, wc.roots, NOW + datetime.timedelta(hours=1))


def test_cert_from_another_ca_refused(ec_ca):
    other = CA.create(now=NOW)  # same name, another key
    wc = other.issue("ns", "sa", now=NOW)
    with pytest.raises(SVIDError, match="signature does not verify with the key of"):
        verify_svid(wc.cert, wc.chain, ec_ca.roots, NOW)
    stranger = CA.create(now=NOW, trust_domain="cluster.local", path_len=1)
    inter = CA.create(root_cert=stranger.cert, root_key=stranger._key, now=NOW)
    wc = inter.issue("ns", "sa", now=NOW)
    with pytest.raises(SVIDError, match="chain does not verify"):
        verify_svid(wc.cert, wc.chain, ec_ca.roots, NOW)


def test_intermediate_chain(chain_ca):
    root, inter = chain_ca
    for kind in ("ec", "rsa"):
        wc = inter.issue("default", "web", key_type=kind, now=NOW)
        assert wc.chain == [inter.cert] and wc.roots == [root.cert]
        assert verify_svid(wc.cert, wc.chain, wc.roots, NOW) == \
            "spiffe://cluster.local/ns/default/sa/web"
        # the leaf and root in the chain are ignored, as a peer may send them
        verify_svid(wc.cert, [wc.cert, inter.cert, root.cert], wc.roots, NOW)
        with pytest.raises(SVIDError, match="neither a trusted root nor in the chain"):
            verify_svid(wc.cert, [], wc.roots, NOW)
    # a leaf signed directly by a root with pathLen 1 is fine; an intermediate under a pathLen 0
    # root is not (hand-made: CA.create refuses to make one)
    verify_svid(root.issue("a", "b", now=NOW).cert, [], root.roots, NOW)


def test_intermediate_not_a_ca_refused(ec_ca):
    # a leaf used as an "intermediate": the chain walks by name and signature, the verifier refuses
    fake_inter = ec_ca.issue("ns", "sa", now=NOW)
    fake = CA(fake_inter.cert, fake_inter.key, [fake_inter.cert], ec_ca.roots)
    leaf = fake.sign_csr(make_csr(new_key(), "spiffe://cluster.local/ns/x/sa/y"),
                         "spiffe://cluster.local/ns/x/sa/y", now=NOW)
    with pytest.raises(SVIDError):
        verify_svid(leaf, [fake_inter.cert], ec_ca.roots, NOW)


def test_python_ssl_mutual_tls(tmp_path, live_ca):
    """The certificates work for stdlib TLS both ways with VERIFY_X509_STRICT (Python 3.13's default)."""
    root, inter = live_ca
    server = inter.issue("default", "server")
    client = inter.issue("default", "client")
    sp, cp = server.write(str(tmp_path / "server")), client.write(str(tmp_path / "client"))
    strict = getattr(ssl, "VERIFY_X509_STRICT", 0) | getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(sp["chain"], sp["key"])
    sctx.load_verify_locations(sp["roots"])
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.verify_flags |= strict
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False  # SPIFFE identities are URIs: the TLS layer checks them itself
    cctx.load_cert_chain(cp["chain"], cp["key"])
    cctx.load_verify_locations(cp["roots"])
    cctx.verify_flags |= strict
    import socket
    a, b = socket.socketpair()
    seen = {}

    def serve():
        with sctx.wrap_socket(a, server_side=True) as s:
            der = s.getpeercert(binary_form=True)
            seen["client"] = x509.load_der_x509_certificate(der)
            s.sendall(b"ok")

    t = threading.Thread(target=serve)
    t.start()
    with cctx.wrap_socket(b) as c:
        assert c.recv(2) == b"ok"
        peer = x509.load_der_x509_certificate(c.getpeercert(binary_form=True))
    t.join(5)
    assert verify_svid(peer, [inter.cert], [root.cert]) == "spiffe://cluster.local/ns/default/sa/server"
    assert verify_svid(seen["client"], [inter.cert], [root.cert]) == \
        "spiffe://cluster.local/ns/default/sa/client"


# --- workload certificates ----------------------------------------------------------------------

def test_renew_at_bounds(ec_ca):
    key = new_key()
    sid = "spiffe://cluster.local/ns/a/sa/b"
    cert = ec_ca.sign_csr(make_csr(key, sid), sid, now=NOW)
    life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    fractions = []
    for seed in range(300):
        wc = WorkloadCert(cert, key, [], ec_ca.roots, rng=random.Random(seed))
        fractions.append((wc.renew_at - cert.not_valid_before_utc).total_seconds() / life)
    assert 0.4 <= min(fractions) < 0.42 and 0.58 < max(fractions) <= 0.6
    # from the issue time, not the backdated notBefore: a 10-minute certificate renews at ~5 min
    for seed in range(50):
        wc = ec_ca.issue("a", "b", ttl=600, now=NOW, rng=random.Random(seed))
        assert NOW + datetime.timedelta(seconds=240) <= wc.renew_at <= \
            NOW + datetime.timedelta(seconds=360)


def test_workload_cert_key_must_match(ec_ca):
    wc = ec_ca.issue("a", "b", now=NOW)
    with pytest.raises(CAError, match="does not match"):
        WorkloadCert(wc.cert, new_key(), [], ec_ca.roots)


def test_write_modes(tmp_path, chain_ca):
    _, inter = chain_ca
    wc = inter.issue("a", "b", now=NOW)
    paths = wc.write(str(tmp_path / "w"))
    assert stat.S_IMODE(os.stat(paths["key"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths["cert"]).st_mode) == 0o644
    assert paths["roots"] == str(tmp_path / "root-cert.pem")
    assert certs.load_certs(paths["chain"]) == [wc.cert, inter.cert]
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def _secret_markers(*keys):
    out = ["PRIVATE KEY"]
    for k in keys:
        body = certs._key_pem(k).decode().splitlines()[1:-1]
        out += [line for line in body if len(line) > 20]
        nums = k.private_numbers()
        out.append(str(getattr(nums, "private_value", getattr(nums, "d", ""))))
    return out


def test_no_key_in_reprs_or_logs(tmp_path, caplog, live_ca):
    root, inter = live_ca
    d = str(tmp_path / "ca")
    inter.save(d)
    caplog.set_level(logging.DEBUG)
    src = LocalCASource(d, "default", "reviews")
    wc = src.current()
    wc.write(str(tmp_path / "w"))
    fsrc = FileSource(str(tmp_path / "w-cert.pem"), str(tmp_path / "w-key.pem"),
                      str(tmp_path / "root-cert.pem"))
    fsrc.current()
    (tmp_path / "w-key.pem").write_text("junk")
    fsrc.poll()
    logging.getLogger("test").info("objects: %s %r %s %r %r", wc, wc, src, fsrc, inter)
    text = "\n".join([caplog.text, repr(wc), str(wc), repr(src), repr(fsrc), repr(inter), str(inter),
                      json.dumps(src.info()), json.dumps(fsrc.info()), json.dumps(wc.info())])
    assert "spiffe://cluster.local/ns/default/sa/reviews" in text
    for marker in _secret_markers(wc.key, inter._key):
        assert marker not in text


# --- sources ------------------------------------------------------------------------------------

def test_file_source_reloads_on_change(tmp_path, ec_ca):
    first = ec_ca.issue("default", "a", now=NOW)
    p = first.write(str(tmp_path / "w"))
    src = FileSource(p["cert"], p["key"], p["roots"], chain_file=p["chain"])
    seen = []
    src.subscribe(seen.append)
    assert src.current().cert == first.cert and seen == [src.current()]
    assert src.poll() is False
    second = ec_ca.issue("default", "b", now=NOW)
    second.write(str(tmp_path / "w"))
    assert src.poll() is True
    assert src.current().spiffe_id == "spiffe://cluster.local/ns/default/sa/b" and len(seen) == 2
    # a half-updated set (new cert, old key) keeps serving the previous one
    third = ec_ca.issue("default", "c", now=NOW)
    certs._write_public(p["cert"], third.cert_pem())
    assert src.poll() is False
    assert src.current().cert == second.cert and "does not match" in src.last_error
    certs.write_private(p["key"], third.key)
    assert src.poll() is True and src.current().cert == third.cert and src.last_error is None
    assert src.info()["source"] == "file"


def test_file_source_missing_files(tmp_path):
    src = FileSource(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), str(tmp_path / "r.pem"))
    with pytest.raises(CAError, match="no such file"):
        src.current()


def test_local_ca_source_renews_at_half_life(tmp_path, ec_ca):
    d = str(tmp_path / "ca")
    ec_ca.save(d)
    src = LocalCASource(d, "default", "reviews", ttl=3600, rng=random.Random(1))
    assert src.poll(NOW) is True
    first = src.current()
    assert first.spiffe_id == "spiffe://cluster.local/ns/default/sa/reviews"
    assert verify_svid(first.cert, first.chain, first.roots, NOW) == first.spiffe_id
    assert src.next_poll(NOW) == first.renew_at
    assert src.poll(first.renew_at - datetime.timedelta(seconds=1)) is False
    assert src.poll(first.renew_at) is True
    second = src.current()
    assert second.cert != first.cert
    assert second.key.private_numbers() != first.key.private_numbers()  # a new key each time
    assert second.not_before >= first.renew_at - datetime.timedelta(seconds=61)  # whole seconds


def test_local_ca_source_failure_keeps_old_and_retries(tmp_path, ec_ca):
    d = tmp_path / "ca"
    ec_ca.save(str(d))
    src = LocalCASource(str(d), "default", "reviews", ttl=3600, retry=5)
    src.poll(NOW)
    old = src.current()
    os.unlink(d / "ca-key.pem")
    assert src.poll(old.renew_at) is False
    assert src.current() is old and "ca-key.pem: no such file" in src.last_error
    assert src.next_poll(old.renew_at) == old.renew_at + datetime.timedelta(seconds=5)
    with pytest.raises(ValueError):
        LocalCASource(str(d), "default", "a/b", trust_domain="cluster.local")
    other = LocalCASource(str(d), "default", "x", trust_domain="example.org")
    ec_ca.save(str(d))
    with pytest.raises(CAError, match="trust domain 'cluster.local', not 'example.org'"):
        other.current()


def test_source_run_loop_renews(tmp_path, live_ca):
    """run() renews without being told: a 4 s certificate (notBefore backdated) renews within ~3 s."""
    d = str(tmp_path / "ca")
    live_ca[1].save(d)
    src = LocalCASource(d, "default", "reviews", ttl=4)
    changes = []
    src.subscribe(changes.append)

    async def main():
        task = asyncio.ensure_future(src.run(max_sleep=0.5))
        try:
            for _ in range(60):
                await asyncio.sleep(0.1)
                if len(changes) >= 2:
                    break
        finally:
            task.cancel()

    asyncio.run(main())
    assert len(changes) >= 2 and changes[0].cert != changes[1].cert
