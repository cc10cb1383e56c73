"""Mesh certificates: a CA, SPIFFE X.509-SVIDs for workloads, and where a sidecar gets them.

Theory of operation
-------------------
A mesh has one trust root. ``CA.create`` makes a self-signed root (``O=meshproxy, CN=meshproxy
root CA``, ten years), or an intermediate under a user's root, and ``CA.save`` writes it as a
*CA directory* with Istio's plug-in CA file names:

    ca-cert.pem     the signing certificate (the root itself, or the intermediate)
    ca-key.pem      its private key, mode 0600
    root-cert.pem   the trust anchor(s) a workload is given
    cert-chain.pem  ca-cert followed by its issuers up to and including the root

A workload never receives a private key from anybody: it makes its own (``new_key``), sends a
CSR (``make_csr``) and the CA signs it (``CA.sign_csr``). The CA takes nothing from the CSR but its
public key (after checking the CSR's signature, the proof that the requester holds the key): the
SPIFFE ID, the lifetime and every extension are the CA's decision. The result is an X.509-SVID
(https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md):

* exactly one URI SAN, ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``, and an
  empty subject (as Istio's workload certificates; the SAN is then critical, RFC 5280 4.2.1.6);
* basicConstraints ``cA=false``, critical;
* keyUsage critical: digitalSignature (plus keyEncipherment for an RSA key);
* extendedKeyUsage serverAuth and clientAuth (a sidecar is both);
* subject key identifier, and the authority key identifier from the issuer's SKI (the webpki
  verifier in ``cryptography`` and Python 3.13's default TLS context reject leaves without it);
* a random positive 128-bit serial; notBefore one minute in the past (clock skew); notAfter
  ``ttl`` later (24 h by default), never past the CA's own notAfter.

``verify_svid`` is the one check a peer's certificate goes through: the chain (``verify_chain``,
``cryptography``'s webpki client verifier) and then the SVID rules (``check_svid``), each failure
an ``SVIDError`` that says which rule.

A sidecar gets its certificate from a ``CertSource``: ``current()`` is the certificate to present
now, ``poll(now)`` reloads or renews it and says whether it changed, ``run()`` does that forever.
``FileSource`` reads certificate, key and roots from files and reloads them when they change
(Envoy's file-based SDS); ``LocalCASource`` signs with a CA directory on the same host (development
and tests) and renews at half-life with jitter (Istio's SECRET_GRACE_PERIOD_RATIO). A new
certificate only changes what new connections present: connections already established keep
theirs until they close, so a rotation drops nothing.

Private keys are never logged, never part of a repr, and written with mode 0600.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import re
import secrets
from typing import Callable, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("meshproxy.certs")

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_TTL = 24 * 3600.0            # workload certificate lifetime, seconds (Istio's SECRET_TTL)
CA_LIFETIME = 10 * 365 * 86400.0     # a root's lifetime, seconds
GRACE_RATIO = 0.5                    # renew at half-life (SECRET_GRACE_PERIOD_RATIO)
GRACE_JITTER = 0.1                   # ... plus or minus 10% of the lifetime
CLOCK_SKEW = 60.0                    # notBefore this far in the past
RSA_SIZES = (2048, 3072, 4096)

CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN = "ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"

__all__ = [
    "DEFAULT_TRUST_DOMAIN", "DEFAULT_TTL", "GRACE_RATIO", "GRACE_JITTER",
    "CAError", "SVIDError", "SpiffeID", "spiffe_id", "parse_spiffe_id",
    "CA", "new_key", "make_csr", "WorkloadCert", "verify_chain", "check_svid", "verify_svid",
    "CertSource", "FileSource", "LocalCASource",
    "load_certs", "load_key", "key_type", "pem", "write_private",
]


class CAError(Exception):
    """A CA or certificate file cannot be used; the message is one line, naming the file."""


class SVIDError(Exception):
    """A certificate is not a valid SVID for this mesh; the message says which rule failed."""


# ---------------------------------------------------------------------------------------------
# SPIFFE IDs (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md)

_TD_CHARS = re.compile(r"[a-z0-9._-]+")
_SEGMENT_CHARS = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeID(NamedTuple):
    trust_domain: str
    path: str                 # "" or "/seg/seg..."

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def namespace(self) -> str | None:
        """The namespace of an Istio-shaped ID (``/ns/NS/sa/SA``), else None."""
        p = self.path.split("/")
        return p[2] if len(p) == 5 and p[1] == "ns" and p[3] == "sa" else None

    @property
    def service_account(self) -> str | None:
        p = self.path.split("/")
        return p[4] if len(p) == 5 and p[1] == "ns" and p[3] == "sa" else None


def _check_trust_domain(td: str, uri: str) -> None:
    if not td:
        raise ValueError(f"{uri!r}: the trust domain is empty")
    if "@" in td:
        raise ValueError(f"{uri!r}: a SPIFFE ID has no userinfo")
    if ":" in td:
        raise ValueError(f"{uri!r}: a SPIFFE ID has no port")
    if len(td) > 255:
        raise ValueError(f"{uri!r}: the trust domain is longer than 255 characters")
    if not _TD_CHARS.fullmatch(td):
        raise ValueError(f"{uri!r}: the trust domain {td!r} may only hold lowercase letters, "
                         "digits, '.', '-' and '_'")


def _check_segment(seg: str, uri: str) -> None:
    if not seg:
        raise ValueError(f"{uri!r}: empty path segment (no '//' and no trailing '/')")
    if seg in (".", ".."):
        raise ValueError(f"{uri!r}: path segment {seg!r} is not allowed")
    if not _SEGMENT_CHARS.fullmatch(seg):
        raise ValueError(f"{uri!r}: path segment {seg!r} may only hold letters, digits, '.', '-' "
                         "and '_'")


def parse_spiffe_id(uri: str) -> SpiffeID:
    """Parse and validate a SPIFFE ID.

    Args:
        uri: e.g. ``"spiffe://cluster.local/ns/default/sa/reviews"``.

    Returns:
        A ``SpiffeID(trust_domain, path)``; ``namespace`` and ``service_account`` are set for
        Istio-shaped paths.

    Raises:
        ValueError: not a SPIFFE ID; the message names the rule (scheme, trust domain characters,
            empty or invalid path segment, query, fragment, port, userinfo, length).
    """
    if not isinstance(uri, str):
        raise ValueError(f"a SPIFFE ID is a string, got {type(uri).__name__}")
    if len(uri.encode()) > 2048:
        raise ValueError("a SPIFFE ID is at most 2048 bytes")
    if not uri.startswith("spiffe://"):
        scheme = uri.partition(":")[0] if ":" in uri else ""
        if scheme.lower() == "spiffe":
            raise ValueError(f"{uri!r}: the scheme must be lowercase 'spiffe://'")
        raise ValueError(f"{uri!r}: not a SPIFFE ID (it must start with 'spiffe://')")
    rest = uri[len("spiffe://"):]
    if "?" in rest:
        raise ValueError(f"{uri!r}: a SPIFFE ID has no query")
    if "#" in rest:
        raise ValueError(f"{uri!r}: a SPIFFE ID has no fragment")
    td, slash, path = rest.partition("/")
    _check_trust_domain(td, uri)
    if slash:
        for seg in path.split("/"):
            _check_segment(seg, uri)
        path = "/" + path
    return SpiffeID(td, path)


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``, validated.

    Raises:
        ValueError: a part breaks the SPIFFE rules.
    """
    uri = f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
    _check_trust_domain(trust_domain, uri)
    for what, seg in (("namespace", namespace), ("service account", service_account)):
        if not seg or not _SEGMENT_CHARS.fullmatch(seg) or seg in (".", ".."):
            raise ValueError(f"{uri!r}: the {what} {seg!r} must be non-empty letters, digits, "
                             "'.', '-' or '_'")
    return str(parse_spiffe_id(uri))


# ---------------------------------------------------------------------------------------------
# Keys, PEM files

def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _aware(t: datetime.datetime | None) -> datetime.datetime:
    if t is None:
        return _utcnow()
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def new_key(key_type: str = "ec", rsa_bits: int = 2048):
    """A new private key: ECDSA P-256 (``"ec"``, the default) or RSA (``"rsa"``, 2048/3072/4096)."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        if rsa_bits not in RSA_SIZES:
            raise ValueError(f"RSA key size {rsa_bits}: use one of {', '.join(map(str, RSA_SIZES))}")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"key type {key_type!r}: use 'ec' or 'rsa'")


def key_type(key) -> str:
    """``"ECDSA P-256"``, ``"RSA 2048"``... for a private or public key."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ECDSA P-256", "secp384r1": "ECDSA P-384",
                "secp521r1": "ECDSA P-521"}.get(pub.curve.name, f"ECDSA {pub.curve.name}")
    if isinstance(pub, rsa.RSAPublicKey):
        return f"RSA {pub.key_size}"
    return type(pub).__name__


def _hash_for(key):
    return hashes.SHA256()


def pem(*certs: x509.Certificate) -> bytes:
    """The PEM encoding of certificates, concatenated."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, created with ``mode``.

    A reader (a sidecar's FileSource) sees the old file or the new one, never half of one; a key
    file is never readable by others, not even for a moment.
    """
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_private(path: str, key) -> None:
    """Write a private key (PKCS#8 PEM, unencrypted) with mode 0600."""
    _write_atomic(path, _key_pem(key), 0o600)


def _write_public(path: str, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CAError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CAError(f"{path}: is a directory, expected a PEM file") from None
    except OSError as e:
        raise CAError(f"{path}: {e.strerror or e}") from None


def load_certs(path: str, data: bytes | None = None) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order.

    Raises:
        CAError: the file is missing, unreadable, or holds no PEM certificate.
    """
    data = _read(path) if data is None else data
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if b"PRIVATE KEY-----" in data:
            raise CAError(f"{path}: holds a private key, expected a PEM certificate")
        raise CAError(f"{path}: not a PEM certificate file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CAError(f"{path}: bad PEM certificate ({_first_line(e)})") from None


def load_key(path: str, password: bytes | None = None, data: bytes | None = None):
    """A PEM private key (PKCS#8, PKCS#1 or SEC1), decrypted with ``password`` if it is encrypted.

    Raises:
        CAError: missing or unreadable file, not a PEM key, encrypted without a password, wrong
            password, or an unsupported key type. The message never contains key material.
    """
    data = _read(path) if data is None else data
    if b"PRIVATE KEY-----" not in data:
        raise CAError(f"{path}: not a PEM private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        if password is None:
            raise CAError(f"{path}: the key is encrypted; give its password") from None
        raise CAError(f"{path}: the key is not encrypted, but a password was given") from None
    except ValueError:
        if password is not None:
            raise CAError(f"{path}: wrong password for the key") from None
        raise CAError(f"{path}: bad PEM private key") from None
    except UnsupportedAlgorithm:
        raise CAError(f"{path}: unsupported key algorithm") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CAError(f"{path}: {type(key).__name__} keys are not supported (use ECDSA or RSA)")
    return key


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _same_key(cert: x509.Certificate, key) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _ext(cert, cls):
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


# ---------------------------------------------------------------------------------------------
# The CA

def _serial() -> int:
    # RFC 5280: positive, at most 20 octets. 128 random bits, top bit cleared to stay positive
    # in DER without a leading zero, and never 0.
    return secrets.randbits(127) | 1


class CA:
    """A signing CA: its certificate and key, the chain up to the root, and the roots.

    Build one with ``CA.create`` or ``CA.load``; ``save`` writes the CA directory.

    Attributes:
        cert: the signing certificate (``ca-cert.pem``).
        chain: ``cert`` followed by its issuers up to and including the root (``cert-chain.pem``).
        roots: the trust anchors handed to workloads (``root-cert.pem``).
        trust_domain: from the CA certificate's ``spiffe://<td>`` URI SAN, else ``cluster.local``.
    """

    def __init__(self, cert: x509.Certificate, key, chain: list[x509.Certificate],
                 roots: list[x509.Certificate]):
        self.cert = cert
        self._key = key
        self.chain = list(chain) or [cert]
        self.roots = list(roots)

    def __repr__(self) -> str:
        return (f"<CA {self.cert.subject.rfc4514_string()!r} {key_type(self.cert.public_key())} "
                f"trust domain {self.trust_domain} until {self.cert.not_valid_after_utc:%Y-%m-%d}>")

    @property
    def trust_domain(self) -> str:
        san = _ext(self.cert, x509.SubjectAlternativeName)
        if san is not None:
            for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
                try:
                    return parse_spiffe_id(uri).trust_domain
                except ValueError:
                    pass
        return DEFAULT_TRUST_DOMAIN

    @property
    def is_root(self) -> bool:
        return _is_self_signed(self.cert)

    @classmethod
    def create(cls, key_type: str = "ec", *, rsa_bits: int = 2048,
               trust_domain: str = DEFAULT_TRUST_DOMAIN, root_cert: x509.Certificate | None = None,
               root_key=None, root_chain: list[x509.Certificate] | None = None,
               lifetime: float = CA_LIFETIME, path_len: int | None = None,
               now: datetime.datetime | None = None) -> "CA":
        """A new mesh CA.

        Args:
            key_type: ``"ec"`` (ECDSA P-256, default) or ``"rsa"`` (``rsa_bits``).
            trust_domain: written as the CA's ``spiffe://<trust_domain>`` URI SAN.
            root_cert, root_key: a user's root (or intermediate) to sign under; the new CA is then
                an intermediate, its chain the new certificate followed by ``root_chain`` (or
                ``root_cert``). Without them, a self-signed root.
            lifetime: seconds (10 years); an intermediate's never outlives its issuer.
            path_len: basicConstraints pathLen; default 0 (it signs only workload certificates).
            now: for tests.

        Raises:
            CAError: the user's root cannot sign a CA (not a CA, pathLen 0, expired, key does not
                match).
            ValueError: bad key type or trust domain.
        """
        parse_spiffe_id(f"spiffe://{trust_domain}")
        now = _aware(now)
        key = new_key(key_type, rsa_bits)
        pub = key.public_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshproxy"),
                          x509.NameAttribute(NameOID.COMMON_NAME,
                                             "meshproxy root CA" if root_cert is None
                                             else "meshproxy intermediate CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(pub)
        not_after = now + datetime.timedelta(seconds=lifetime)
        if root_cert is not None:
            if root_key is None:
                raise CAError("an intermediate CA needs the root's key as well as its certificate")
            _check_can_sign_ca(root_cert, root_key, now)
            issuer, signer = root_cert.subject, root_key
            not_after = min(not_after, root_cert.not_valid_after_utc)
            root_ski = _ext(root_cert, x509.SubjectKeyIdentifier)
            aki = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski.value)
                   if root_ski else x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       root_cert.public_key()))
        else:
            issuer, signer = name, key
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        b = (x509.CertificateBuilder()
             .subject_name(name).issuer_name(issuer).public_key(pub)
             .serial_number(_serial())
             .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW))
             .not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=True, path_length=0 if path_len is None
                                                  else path_len), critical=True)
             .add_extension(x509.KeyUsage(
                 digital_signature=False, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                 encipher_only=False, decipher_only=False), critical=True)
             .add_extension(ski, critical=False)
             .add_extension(aki, critical=False)
             .add_extension(x509.SubjectAlternativeName(
                 [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False))
        cert = b.sign(signer, _hash_for(signer))
        if root_cert is None:
            return cls(cert, key, [cert], [cert])
        upper = list(root_chain) if root_chain else [root_cert]
        roots = [c for c in upper if _is_self_signed(c)] or [upper[-1]]
        return cls(cert, key, [cert] + upper, roots)

    @classmethod
    def load(cls, directory: str, password: bytes | None = None) -> "CA":
        """Read a CA directory (``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem``,
        ``cert-chain.pem``; the last two default to ``ca-cert.pem`` when absent).

        Raises:
            CAError: a file is missing or bad, or the key does not match the certificate.
        """
        if not os.path.isdir(directory):
            raise CAError(f"{directory}: not a CA directory (run `meshproxy ca init {directory}`)")
        cert_path = os.path.join(directory, CA_CERT)
        cert = load_certs(cert_path)[0]
        key = load_key(os.path.join(directory, CA_KEY), password)
        if not _same_key(cert, key):
            raise CAError(f"{os.path.join(directory, CA_KEY)}: does not match {cert_path}")
        bc = _ext(cert, x509.BasicConstraints)
        if bc is None or not bc.value.ca:
            raise CAError(f"{cert_path}: not a CA certificate (basicConstraints cA is not true)")
        chain_path, roots_path = (os.path.join(directory, n) for n in (CERT_CHAIN, ROOT_CERT))
        chain = load_certs(chain_path) if os.path.exists(chain_path) else [cert]
        roots = load_certs(roots_path) if os.path.exists(roots_path) else [chain[-1]]
        if chain[0] != cert:
            chain = [cert] + chain
        return cls(cert, key, chain, roots)

    def save(self, directory: str) -> None:
        """Write the CA directory (created mode 0700 if missing; the key file mode 0600)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_private(os.path.join(directory, CA_KEY), self._key)
        _write_public(os.path.join(directory, CA_CERT), pem(self.cert))
        _write_public(os.path.join(directory, CERT_CHAIN), pem(*self.chain))
        _write_public(os.path.join(directory, ROOT_CERT), pem(*self.roots))

    @property
    def intermediates(self) -> list[x509.Certificate]:
        """What a workload sends after its leaf: the chain without its self-signed root."""
        return [c for c in self.chain if not _is_self_signed(c)]

    def sign_csr(self, csr_pem: bytes, spiffe_id: str, ttl: float = DEFAULT_TTL, *,
                 now: datetime.datetime | None = None) -> x509.Certificate:
        """Sign a workload's CSR as an X.509-SVID for ``spiffe_id``.

        Everything the CSR asks for (subject, SANs, extensions) is ignored; only its public key is
        used, after checking its signature.

        Args:
            csr_pem: the PEM CSR.
            spiffe_id: the workload's SPIFFE ID, in this CA's trust domain.
            ttl: lifetime in seconds (24 h); capped at the CA certificate's notAfter.
            now: for tests.

        Raises:
            CAError: the CSR is not a PEM CSR, its signature does not verify, its key is neither
                ECDSA nor RSA (or RSA below 2048 bits), or the CA has expired.
            ValueError: bad SPIFFE ID, other trust domain, ttl not positive.
        """
        sid = parse_spiffe_id(spiffe_id)
        if not sid.path:
            raise ValueError(f"{spiffe_id!r}: a workload's SPIFFE ID needs a path")
        if sid.trust_domain != self.trust_domain:
            raise ValueError(f"{spiffe_id!r}: this CA signs for trust domain {self.trust_domain!r}")
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise CAError("not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise CAError("the CSR's signature does not verify (no proof of key possession)")
        pub = csr.public_key()
        if isinstance(pub, rsa.RSAPublicKey):
            if pub.key_size < 2048:
                raise CAError(f"RSA {pub.key_size} key: at least 2048 bits are required")
            key_enc = True
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            key_enc = False
        else:
            raise CAError(f"{type(pub).__name__}: only ECDSA and RSA keys are signed")
        now = _aware(now)
        ca_end = self.cert.not_valid_after_utc
        if now >= ca_end:
            raise CAError(f"the CA certificate expired at {_fmt(ca_end)}")
        if now < self.cert.not_valid_before_utc:
            raise CAError(f"the CA certificate is not valid before "
                          f"{_fmt(self.cert.not_valid_before_utc)} (check the clock)")
        not_after = min(now + datetime.timedelta(seconds=ttl), ca_end)
        ca_ski = _ext(self.cert, x509.SubjectKeyIdentifier)
        aki = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value)
               if ca_ski else x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   self.cert.public_key()))
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([])).issuer_name(self.cert.subject).public_key(pub)
             .serial_number(_serial())
             .not_valid_before(max(now - datetime.timedelta(seconds=CLOCK_SKEW),
                                   self.cert.not_valid_before_utc))  # RFC 5280 6.1.3 nests them
             .not_valid_after(not_after)
             .add_extension(x509.SubjectAlternativeName(
                 [x509.UniformResourceIdentifier(str(sid))]), critical=True)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.KeyUsage(
                 digital_signature=True, content_commitment=False, key_encipherment=key_enc,
                 data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                 encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                 critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
             .add_extension(aki, critical=False))
        return b.sign(self._key, _hash_for(self._key))

    def issue(self, namespace: str, service_account: str, ttl: float = DEFAULT_TTL, *,
              key_type: str = "ec", now: datetime.datetime | None = None,
              rng: random.Random | None = None) -> "WorkloadCert":
        """Issue a workload certificate the way a sidecar gets one: a key made here, a CSR, and
        ``sign_csr``. (Used by ``meshproxy ca issue`` and ``LocalCASource``.)"""
        sid = spiffe_id(self.trust_domain, namespace, service_account)
        key = new_key(key_type)
        cert = self.sign_csr(make_csr(key, sid), sid, ttl, now=now)
        return WorkloadCert(cert, key, self.intermediates, self.roots, rng=rng,
                            issued_at=_aware(now))


def _check_can_sign_ca(root: x509.Certificate, root_key, now: datetime.datetime) -> None:
    subject = root.subject.rfc4514_string() or "(empty subject)"
    bc = _ext(root, x509.BasicConstraints)
    if bc is None or not bc.value.ca:
        raise CAError(f"the root certificate {subject!r} is not a CA (basicConstraints cA is not true)")
    if bc.value.path_length is not None and bc.value.path_length < 1:
        raise CAError(f"the root certificate {subject!r} has pathLen 0: it cannot sign an intermediate CA")
    ku = _ext(root, x509.KeyUsage)
    if ku is not None and not ku.value.key_cert_sign:
        raise CAError(f"the root certificate {subject!r} lacks keyUsage keyCertSign")
    if not root.not_valid_before_utc <= now < root.not_valid_after_utc:
        raise CAError(f"the root certificate {subject!r} is not valid now (valid "
                      f"{root.not_valid_before_utc:%Y-%m-%d} to {root.not_valid_after_utc:%Y-%m-%d})")
    if not _same_key(root, root_key):
        raise CAError("the root key does not match the root certificate")


# ---------------------------------------------------------------------------------------------
# The workload side

def make_csr(key, spiffe_id: str) -> bytes:
    """A PEM CSR for ``spiffe_id`` signed with ``key`` (the CA reads only its public key)."""
    parse_spiffe_id(spiffe_id)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
           .sign(key, _hash_for(key)))
    return csr.public_bytes(serialization.Encoding.PEM)


def _renew_at(cert: x509.Certificate, rng: random.Random | None,
              issued_at: datetime.datetime | None) -> datetime.datetime:
    # Istio counts the lifetime from when the secret was made (CreatedTime), not from the
    # backdated notBefore: with a short ttl the minute of clock skew would otherwise put the
    # renewal in the past.
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if issued_at is not None:
        nb = min(max(_aware(issued_at), nb), na)
    life = (na - nb).total_seconds()
    jitter = (rng or random).uniform(-GRACE_JITTER, GRACE_JITTER)
    return nb + datetime.timedelta(seconds=life * (GRACE_RATIO + jitter))


class WorkloadCert:
    """A workload's certificate, its private key, the intermediates it sends and the roots it trusts.

    Attributes:
        cert: the leaf (an X.509-SVID).
        chain: intermediates to send after the leaf (empty when the root signed it directly).
        roots: trust anchors for verifying peers.
        renew_at: when to get a new one: start + (notAfter - start) x (0.5 +/- 0.1), drawn once;
            start is ``issued_at`` when given (the CA backdates notBefore by a minute), else
            notBefore.
    """

    def __init__(self, cert: x509.Certificate, key, chain: list[x509.Certificate] = (),
                 roots: list[x509.Certificate] = (), *, rng: random.Random | None = None,
                 issued_at: datetime.datetime | None = None):
        if not _same_key(cert, key):
            raise CAError("the private key does not match the certificate")
        self.cert = cert
        self._key = key
        self.chain = list(chain)
        self.roots = list(roots)
        self.renew_at = _renew_at(cert, rng, issued_at)

    def __repr__(self) -> str:
        return (f"<WorkloadCert {self.spiffe_id} {key_type(self.cert.public_key())} until "
                f"{self.not_after:%Y-%m-%dT%H:%M:%SZ} renew at {self.renew_at:%Y-%m-%dT%H:%M:%SZ}>")

    __str__ = __repr__

    @property
    def key(self):
        """The private key object (for the TLS layer; never logged)."""
        return self._key

    @property
    def spiffe_id(self) -> str:
        uris = _uri_sans(self.cert)
        return uris[0] if len(uris) == 1 else ""

    @property
    def not_before(self) -> datetime.datetime:
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.cert.not_valid_after_utc

    @property
    def serial(self) -> str:
        return f"{self.cert.serial_number:x}"

    def cert_pem(self) -> bytes:
        return pem(self.cert)

    def chain_pem(self) -> bytes:
        """The leaf followed by the intermediates (what a TLS server presents)."""
        return pem(self.cert, *self.chain)

    def roots_pem(self) -> bytes:
        return pem(*self.roots)

    def key_pem(self) -> bytes:
        """The private key, PKCS#8 PEM. For the TLS layer and ``write``; never log it."""
        return _key_pem(self._key)

    def info(self, now: datetime.datetime | None = None) -> dict:
        """What the admin ``/certs`` endpoint shows: no key material."""
        now = _aware(now)
        return {"spiffe_id": self.spiffe_id, "serial": self.serial,
                "key_type": key_type(self.cert.public_key()),
                "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
                "renew_at": self.renew_at.isoformat(),
                "seconds_left": int((self.not_after - now).total_seconds()),
                "issuer": self.cert.issuer.rfc4514_string(),
                "chain": [c.subject.rfc4514_string() for c in self.chain],
                "roots": [c.subject.rfc4514_string() for c in self.roots]}

    def write(self, prefix: str, roots_path: str | None = None) -> dict[str, str]:
        """Write ``PREFIX-cert.pem``, ``PREFIX-key.pem`` (0600), ``PREFIX-chain.pem`` (leaf +
        intermediates) and the roots (``root-cert.pem`` beside them unless ``roots_path``).

        Returns:
            {"cert": path, "key": path, "chain": path, "roots": path}.
        """
        d = os.path.dirname(os.path.abspath(prefix))
        paths = {"cert": f"{prefix}-cert.pem", "key": f"{prefix}-key.pem",
                 "chain": f"{prefix}-chain.pem",
                 "roots": roots_path or os.path.join(d, ROOT_CERT)}
        write_private(paths["key"], self._key)
        _write_public(paths["cert"], self.cert_pem())
        _write_public(paths["chain"], self.chain_pem())
        _write_public(paths["roots"], self.roots_pem())
        return paths


# ---------------------------------------------------------------------------------------------
# Verification

def _uri_sans(cert: x509.Certificate) -> list[str]:
    san = _ext(cert, x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.UniformResourceIdentifier) if san else []


def _fmt(t: datetime.datetime) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S}Z"


def verify_chain(cert: x509.Certificate, chain: list[x509.Certificate],
                 roots: list[x509.Certificate], now: datetime.datetime | None = None) -> None:
    """Check that ``cert`` chains through ``chain`` to one of ``roots`` at ``now``.

    Uses ``cryptography``'s webpki client verifier (signatures, validity periods, CA constraints,
    pathLen, keyUsage, EKU clientAuth, AKI); the leaf's own validity period is checked first so
    that its failure reads plainly.

    Raises:
        SVIDError: the reason, one line.
    """
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    now = _aware(now)
    if not roots:
        raise SVIDError("no root certificates to verify against")
    if now < cert.not_valid_before_utc:
        raise SVIDError(f"not yet valid: valid from {_fmt(cert.not_valid_before_utc)}")
    if now >= cert.not_valid_after_utc:
        raise SVIDError(f"expired at {_fmt(cert.not_valid_after_utc)}")
    if _ext(cert, x509.AuthorityKeyIdentifier) is None:
        raise SVIDError("no authority key identifier extension")
    intermediates = [c for c in chain if c != cert and c not in roots]
    _explain_path(cert, intermediates, roots)
    verifier = (PolicyBuilder().store(Store(list(roots))).time(now).max_chain_depth(4)
                .build_client_verifier())
    try:
        verifier.verify(cert, intermediates)
    except VerificationError as e:
        raise SVIDError(f"chain does not verify to a trusted root: {_first_line(e)}") from None


def _explain_path(cert, intermediates, roots) -> None:
    """Walk issuer names and signatures by hand, to say *why* a chain fails in plain words (the
    webpki verifier reports only its last candidate's error). Passing here proves nothing: the
    verifier still runs."""
    cur, seen = cert, 0
    while seen <= len(intermediates):
        if cur in roots:
            return
        issuer = cur.issuer.rfc4514_string() or "(empty name)"
        subject = "the certificate" if cur is cert else f"intermediate {cur.subject.rfc4514_string()!r}"
        named = [c for c in roots + intermediates if c.subject == cur.issuer and c is not cur]
        if not named:
            raise SVIDError(f"chain does not verify to a trusted root: {subject} is issued by "
                            f"{issuer!r}, which is neither a trusted root nor in the chain")
        for cand in named:
            try:
                cur.verify_directly_issued_by(cand)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if cand in roots:
                return
            cur, seen = cand, seen + 1
            break
        else:
            raise SVIDError(f"chain does not verify to a trusted root: {subject}'s signature does "
                            f"not verify with the key of {issuer!r} (another CA of the same name?)")


def check_svid(cert: x509.Certificate, trust_domain: str | None = None) -> str:
    """Check the X.509-SVID rules on a leaf (not its chain).

    Args:
        cert: the leaf.
        trust_domain: the expected trust domain; None accepts any.

    Returns:
        The SPIFFE ID.

    Raises:
        SVIDError: the first rule that fails: one URI SAN, a valid SPIFFE ID with a path, the
            trust domain, cA=false, keyUsage digitalSignature (and no keyCertSign/cRLSign),
            EKU serverAuth/clientAuth when present, SKI and AKI present.
    """
    uris = _uri_sans(cert)
    if len(uris) != 1:
        raise SVIDError(f"an SVID has exactly one URI SAN, this one has {len(uris)}"
                        + (f" ({', '.join(uris)})" if uris else ""))
    try:
        sid = parse_spiffe_id(uris[0])
    except ValueError as e:
        raise SVIDError(f"URI SAN is not a SPIFFE ID: {e}") from None
    if not sid.path:
        raise SVIDError(f"{uris[0]}: a workload SPIFFE ID needs a path")
    if trust_domain is not None and sid.trust_domain != trust_domain:
        raise SVIDError(f"{uris[0]}: trust domain {sid.trust_domain!r}, expected {trust_domain!r}")
    bc = _ext(cert, x509.BasicConstraints)
    if bc is not None and bc.value.ca:
        raise SVIDError("a leaf SVID must have cA=false (this is a CA certificate)")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None:
        raise SVIDError("no keyUsage extension (digitalSignature is required)")
    if not ku.value.digital_signature:
        raise SVIDError("keyUsage lacks digitalSignature")
    if ku.value.key_cert_sign or ku.value.crl_sign:
        raise SVIDError("a leaf SVID must not have keyCertSign or cRLSign")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        missing = [n for n, oid in (("serverAuth", ExtendedKeyUsageOID.SERVER_AUTH),
                                    ("clientAuth", ExtendedKeyUsageOID.CLIENT_AUTH))
                   if oid not in eku.value]
        if missing:
            raise SVIDError(f"extendedKeyUsage lacks {' and '.join(missing)}")
    if _ext(cert, x509.SubjectKeyIdentifier) is None:
        raise SVIDError("no subject key identifier extension")
    if _ext(cert, x509.AuthorityKeyIdentifier) is None:
        raise SVIDError("no authority key identifier extension")
    return str(sid)


def verify_svid(cert: x509.Certificate, chain: list[x509.Certificate],
                roots: list[x509.Certificate], now: datetime.datetime | None = None, *,
                trust_domain: str | None = DEFAULT_TRUST_DOMAIN) -> str:
    """Verify a peer's X.509-SVID: the SVID rules on the leaf, then the chain to ``roots``.

    Args:
        cert: the leaf.
        chain: intermediates the peer sent (the leaf and roots in it are ignored).
        roots: trusted roots.
        now: validation time (default: now).
        trust_domain: the expected trust domain (``cluster.local``); None accepts any.

    Returns:
        The SPIFFE ID.

    Raises:
        SVIDError: the precise reason.
    """
    sid = check_svid(cert, trust_domain)
    verify_chain(cert, chain, roots, now)
    return sid


# ---------------------------------------------------------------------------------------------
# Where a sidecar gets its certificate

class CertSource:
    """Where a sidecar's certificate comes from.

    ``current()`` is the certificate to use for new connections. ``poll(now)`` reloads or renews
    when due and returns True when ``current()`` changed; ``next_poll(now)`` says when to call it
    next. ``run()`` is the loop a sidecar starts; listeners get the change through
    ``subscribe(callback)`` (called with the new WorkloadCert) and rebuild their TLS context for
    new connections only.
    """

    def __init__(self):
        self._current: WorkloadCert | None = None
        self._callbacks: list[Callable[[WorkloadCert], None]] = []
        self.last_error: str | None = None

    def current(self) -> WorkloadCert:
        if self._current is None:
            self.poll()
            if self._current is None:
                raise CAError(self.last_error or "no certificate")
        return self._current

    def poll(self, now: datetime.datetime | None = None) -> bool:
        raise NotImplementedError

    def next_poll(self, now: datetime.datetime | None = None) -> datetime.datetime:
        raise NotImplementedError

    def subscribe(self, callback: Callable[[WorkloadCert], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self, wc: WorkloadCert) -> None:
        self._current = wc
        self.last_error = None
        for cb in list(self._callbacks):
            try:
                cb(wc)
            except Exception:
                log.exception("certificate change callback failed")

    def info(self, now: datetime.datetime | None = None) -> dict:
        """For the admin ``/certs`` endpoint: the source, the certificate, the last error."""
        d = {"source": self.kind, "last_error": self.last_error}
        if self._current is not None:
            d.update(self._current.info(now))
        return d

    async def run(self, max_sleep: float = 60.0) -> None:
        """Poll forever (until cancelled); each wait is at most ``max_sleep`` seconds, so a clock
        step or a suspended machine cannot leave a certificate past its renewal for long."""
        while True:
            try:
                self.poll()
            except Exception as e:  # a source never raises out of its loop
                self.last_error = _first_line(e)
                log.warning("%s: %s", self.kind, self.last_error)
            wait = (self.next_poll() - _utcnow()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.05), max_sleep))


class FileSource(CertSource):
    """Certificate, key and roots from files, reloaded when any of them changes (Envoy's
    file-based secrets). A reload that fails (a half-written set, a key that does not match)
    keeps the previous certificate and records ``last_error``.

    Args:
        cert_file: the leaf, optionally followed by intermediates.
        key_file: its private key.
        roots_file: trusted roots.
        chain_file: intermediates, if not in ``cert_file``.
        interval: seconds between checks of the files' metadata.
    """

    kind = "file"

    def __init__(self, cert_file: str, key_file: str, roots_file: str,
                 chain_file: str | None = None, interval: float = 5.0,
                 rng: random.Random | None = None):
        super().__init__()
        self.files = [f for f in (cert_file, key_file, roots_file, chain_file) if f]
        self.cert_file, self.key_file, self.roots_file, self.chain_file = (
            cert_file, key_file, roots_file, chain_file)
        self.interval = interval
        self._rng = rng
        self._stamp = None

    def __repr__(self) -> str:
        return f"<FileSource {self.cert_file} {self._current!r}>"

    def _stat(self):
        out = []
        for f in self.files:
            try:
                st = os.stat(f)
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def poll(self, now: datetime.datetime | None = None) -> bool:
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            certs = load_certs(self.cert_file)
            key = load_key(self.key_file)
            roots = load_certs(self.roots_file)
            chain = certs[1:] + (load_certs(self.chain_file) if self.chain_file else [])
            chain = [c for c in chain if c != certs[0]]
            wc = WorkloadCert(certs[0], key, chain, roots, rng=self._rng)
        except CAError as e:
            self.last_error = f"{e}"
            log.warning("certificate files not reloaded: %s", e)
            return False
        if self._current is not None and wc.cert == self._current.cert \
                and wc.roots == self._current.roots and wc.chain == self._current.chain:
            return False
        log.info("loaded certificate %s (until %s) from %s", wc.spiffe_id,
                 _fmt(wc.not_after), self.cert_file)
        self._changed(wc)
        return True

    def next_poll(self, now: datetime.datetime | None = None) -> datetime.datetime:
        return _aware(now) + datetime.timedelta(seconds=self.interval)


class LocalCASource(CertSource):
    """A certificate signed by a CA directory on this host (development and tests).

    The sidecar makes a new key and CSR for each certificate; the CA (read from ``ca_dir`` at each
    signing, so a rotated CA is picked up) signs it. Renewed at ``renew_at``; a failed renewal is
    retried every ``retry`` seconds while the old certificate serves.
    """

    kind = "localCA"

    def __init__(self, ca_dir: str, namespace: str, service_account: str, *,
                 trust_domain: str | None = None, ttl: float = DEFAULT_TTL,
                 key_type: str = "ec", retry: float = 5.0, rng: random.Random | None = None):
        super().__init__()
        self.ca_dir, self.namespace, self.service_account = ca_dir, namespace, service_account
        self.trust_domain = trust_domain
        self.ttl, self.key_type, self.retry, self._rng = ttl, key_type, retry, rng
        self._next_try: datetime.datetime | None = None
        if trust_domain is not None:
            spiffe_id(trust_domain, namespace, service_account)

    def __repr__(self) -> str:
        return f"<LocalCASource {self.ca_dir} {self.namespace}/{self.service_account} {self._current!r}>"

    def poll(self, now: datetime.datetime | None = None) -> bool:
        now = _aware(now)
        if self._current is not None and now < self._current.renew_at:
            return False
        if self._next_try is not None and now < self._next_try:
            return False
        try:
            ca = CA.load(self.ca_dir)
            if self.trust_domain is not None and self.trust_domain != ca.trust_domain:
                raise CAError(f"{self.ca_dir}: the CA signs for trust domain {ca.trust_domain!r}, "
                              f"not {self.trust_domain!r}")
            wc = ca.issue(self.namespace, self.service_account, self.ttl, key_type=self.key_type,
                          now=now, rng=self._rng)
        except (CAError, ValueError) as e:
            self.last_error = _first_line(e)
            self._next_try = now + datetime.timedelta(seconds=self.retry)
            log.warning("certificate not issued: %s", self.last_error)
            return False
        self._next_try = None
        log.info("issued certificate %s (until %s, renew at %s)", wc.spiffe_id,
                 _fmt(wc.not_after), _fmt(wc.renew_at))
        self._changed(wc)
        return True

    def next_poll(self, now: datetime.datetime | None = None) -> datetime.datetime:
        now = _aware(now)
        if self._next_try is not None:
            return self._next_try
        if self._current is None:
            return now
        return self._current.renew_at
