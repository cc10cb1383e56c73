"""`meshproxy ca init / issue / inspect`, run as real subprocesses, checked with openssl too."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


def ca(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "meshproxy", "ca", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def openssl(*args, cwd):
    return subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=30)


def no_traceback(r):
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


@pytest.fixture(scope="module")
def root_ca(tmp_path_factory):
    d = tmp_path_factory.mktemp("rootca")
    r = ca("init", "ca", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


def test_init_root(root_ca):
    d = root_ca / "ca"
    assert sorted(os.listdir(d)) == ["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    assert stat.S_IMODE(os.stat(d / "ca-key.pem").st_mode) == 0o600


def test_init_output_and_refuses_overwrite(tmp_path):
    r = ca("init", "ca", "--key-type", "rsa", "--rsa-bits", "3072", "--trust-domain", "example.org",
           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "root CA 'CN=meshproxy root CA,O=meshproxy', RSA 3072, trust domain example.org" in r.stdout
    before = (tmp_path / "ca" / "ca-key.pem").read_bytes()
    r = ca("init", "ca", cwd=tmp_path)
    assert r.returncode == 1 and "already holds a CA" in r.stderr and "--force" in r.stderr
    assert (tmp_path / "ca" / "ca-key.pem").read_bytes() == before
    assert ca("init", "ca", "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "ca" / "ca-key.pem").read_bytes() != before


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_issue_and_inspect(root_ca, tmp_path, key_type):
    r = ca("issue", root_ca / "ca", "-n", "default", "-s", "reviews", "--ttl", "2h",
           "--key-type", key_type, "--out", tmp_path / "reviews", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("meshproxy ca issue: spiffe://cluster.local/ns/default/sa/reviews until ")
    for name in ("reviews-cert.pem", "reviews-key.pem", "reviews-chain.pem", "root-cert.pem"):
        assert (tmp_path / name).exists()
    assert stat.S_IMODE(os.stat(tmp_path / "reviews-key.pem").st_mode) == 0o600
    assert "PRIVATE KEY" not in r.stdout + r.stderr
    r = ca("inspect", tmp_path / "reviews-cert.pem", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines())
    assert lines["SPIFFE ID"].strip() == "spiffe://cluster.local/ns/default/sa/reviews"
    assert lines["subject"].strip() == "(empty)"
    assert lines["issuer"].strip() == "CN=meshproxy root CA,O=meshproxy"
    assert lines["key"].strip() == ("ECDSA P-256" if key_type == "ec" else "RSA 2048")
    assert lines["not after"].strip().endswith("left)") and "1h59m" in lines["not after"]
    assert lines["chain"].strip().startswith("ok (signed by the root")
    assert lines["SVID rules"].strip() == "ok"


def test_inspect_failures_exit_1(root_ca, tmp_path):
    assert ca("init", "other", cwd=tmp_path).returncode == 0
    assert ca("issue", "other", "-n", "a", "-s", "b", "--out", "b", cwd=tmp_path).returncode == 0
    # a certificate from another CA, checked against our root
    r = ca("inspect", "b-cert.pem", "--roots", root_ca / "ca" / "root-cert.pem", cwd=tmp_path)
    assert r.returncode == 1
    assert "chain:       FAILED: chain does not verify to a trusted root" in r.stdout
    assert "SVID rules:  ok" in r.stdout
    # a CA certificate is not an SVID
    r = ca("inspect", root_ca / "ca" / "ca-cert.pem", cwd=tmp_path)
    assert r.returncode == 1 and "SVID rules:  FAILED: " in r.stdout
    # wrong trust domain asked for
    r = ca("inspect", "b-cert.pem", "--trust-domain", "example.org", cwd=tmp_path)
    assert r.returncode == 1 and "expected 'example.org'" in r.stdout
    # no roots anywhere
    os.makedirs(tmp_path / "alone")
    shutil.copy(tmp_path / "b-cert.pem", tmp_path / "alone" / "x.pem")
    r = ca("inspect", "x.pem", cwd=tmp_path / "alone")
    assert r.returncode == 1 and "chain:       NOT CHECKED: no roots" in r.stdout
    no_traceback(r)


@pytest.mark.parametrize("args,words", [
    (["inspect", "missing.pem"], "missing.pem: no such file"),
    (["inspect", "notpem.txt"], "notpem.txt: not a PEM certificate file"),
    (["inspect", "ca/ca-key.pem"], "holds a private key, expected a PEM certificate"),
    (["issue", "nowhere", "-n", "a", "-s", "b"], "nowhere: not a CA directory"),
    (["issue", "ca", "-n", "a", "-s", "b/c"], "service account 'b/c'"),
    (["issue", "ca", "-n", "a", "-s", "b", "--ttl", "5"], 'is not a duration'),
    (["issue", "ca", "-n", "a", "-s", "b", "--trust-domain", "example.org"],
     "signs for trust domain 'cluster.local', not 'example.org'"),
    (["init", "x", "--root-cert", "ca/ca-cert.pem"], "--root-cert and --root-key go together"),
    (["init", "x", "--root-cert", "ca/ca-cert.pem", "--root-key", "ca/ca-key.pem"],
     "pathLen 0: it cannot sign an intermediate CA"),
    (["init", "x", "--root-cert", "notpem.txt", "--root-key", "ca/ca-key.pem"],
     "notpem.txt: not a PEM certificate file"),
])
def test_errors_are_one_line(root_ca, args, words):
    (root_ca / "notpem.txt").write_text("hello\n")
    r = ca(*args, cwd=root_ca)
    assert r.returncode == 1, r.stdout
    no_traceback(r)
    assert words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bare_ca_prints_help():
    r = ca(cwd=ROOT)
    assert r.returncode == 2 and "init" in r.stdout and "inspect" in r.stdout


@needs_openssl
def test_openssl_agrees_root(root_ca, tmp_path):
    assert ca("issue", root_ca / "ca", "-n", "prod", "-s", "web", "--out", "web",
              cwd=tmp_path).returncode == 0
    v = openssl("verify", "-CAfile", "root-cert.pem", "-untrusted", "web-chain.pem",
                "web-cert.pem", cwd=tmp_path)
    assert v.returncode == 0 and "web-cert.pem: OK" in v.stdout, v.stdout + v.stderr
    san = openssl("x509", "-in", "web-cert.pem", "-noout", "-ext", "subjectAltName", cwd=tmp_path)
    assert "critical" in san.stdout and "URI:spiffe://cluster.local/ns/prod/sa/web" in san.stdout
    assert san.stdout.count("URI:") == 1
    # purpose checks: both TLS client and server
    for purpose in ("sslclient", "sslserver"):
        v = openssl("verify", "-purpose", purpose, "-x509_strict", "-CAfile", "root-cert.pem",
                    "web-cert.pem", cwd=tmp_path)
        assert v.returncode == 0, v.stdout + v.stderr
    # the key file is a real key for this certificate
    a = openssl("x509", "-in", "web-cert.pem", "-noout", "-pubkey", cwd=tmp_path).stdout
    b = openssl("pkey", "-in", "web-key.pem", "-pubout", cwd=tmp_path).stdout
    assert a and a == b


@needs_openssl
def test_intermediate_under_openssl_root(tmp_path):
    """A user's root made by openssl; `ca init` makes an intermediate under it, openssl verifies
    the workload certificate through it, and the password of an encrypted root key is honoured."""
    r = openssl("req", "-x509", "-newkey", "rsa:2048", "-keyout", "corp-key.pem", "-out",
                "corp.pem", "-days", "30", "-subj", "/O=corp/CN=corp root",
                "-passout", "pass:s3cret",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "badpw").write_text("nope\n")
    r = ca("init", "ica", "--root-cert", "corp.pem", "--root-key", "corp-key.pem", cwd=tmp_path)
    assert r.returncode == 1 and "encrypted; give its password" in r.stderr
    r = ca("init", "ica", "--root-cert", "corp.pem", "--root-key", "corp-key.pem",
           "--root-key-password-file", "badpw", cwd=tmp_path)
    assert r.returncode == 1 and "wrong password" in r.stderr
    no_traceback(r)
    r = ca("init", "ica", "--root-cert", "corp.pem", "--root-key", "corp-key.pem",
           "--root-key-password-file", "pw", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "intermediate CA 'CN=meshproxy intermediate CA,O=meshproxy' under 'CN=corp root,O=corp'" \
        in r.stdout
    assert "cert-chain.pem (2 certs)" in r.stdout
    r = ca("issue", "ica", "-n", "prod", "-s", "api", "--out", "api", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    v = openssl("verify", "-x509_strict", "-CAfile", "root-cert.pem", "-untrusted", "api-chain.pem",
                "api-cert.pem", cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    v = openssl("verify", "-CAfile", "root-cert.pem", "api-cert.pem", cwd=tmp_path)
    assert v.returncode != 0  # the intermediate is needed
    r = ca("inspect", "api-cert.pem", cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert "chain:       ok (via 1 intermediate" in r.stdout
    assert "issuer:      CN=meshproxy intermediate CA,O=meshproxy" in r.stdout
    r = ca("inspect", "api-cert.pem", "--chain", "corp.pem", cwd=tmp_path)
    assert r.returncode == 1 and "neither a trusted root nor in the chain" in r.stdout
