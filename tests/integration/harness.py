"""Helpers of the integration harness (fixtures are in conftest.py)."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PY = sys.executable
ECHO_HOST = "echo.default.svc.cluster.local"


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
           and k != "MESHPROXY_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    env.update(extra)
    return env


# -- the backend ----------------------------------------------------------------------------------

class Backend:
    def __init__(self, host="127.0.0.1"):
        self.host = host
        self.proc = subprocess.Popen([PY, str(HERE / "backend.py"), "--host", host],
                                     stdout=subprocess.PIPE, env=clean_env())
        line = self.proc.stdout.readline().decode()
        assert line.startswith("PORTS "), f"backend did not start: {line!r}"
        _, p, c = line.split()
        self.port, self.control_port = int(p), int(c)

    def _control(self, path):
        c = http.client.HTTPConnection(self.host, self.control_port, timeout=5)
        c.request("GET", path)
        d = json.loads(c.getresponse().read())
        c.close()
        return d

    def stats(self):
        return self._control("/stats")

    def reset(self):
        return self._control("/reset")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)


# -- YAML documents (JSON is YAML) --------------------------------------------------------------

def doc(kind, name, spec, namespace="default", api="networking.istio.io/v1", **meta):
    md = {"name": name, "namespace": namespace}
    md.update(meta)
    return json.dumps({"apiVersion": api, "kind": kind, "metadata": md, "spec": spec})


def service_entry(name, host, endpoints=None, port=80, selector=None, namespace="default"):
    """``endpoints``: list of (address, port) or of endpoint dicts; None with ``selector``."""
    spec = {"hosts": [host], "resolution": "STATIC", "location": "MESH_INTERNAL",
            "ports": [{"number": port, "name": "http", "protocol": "HTTP"}]}
    if selector is not None:
        spec["workloadSelector"] = {"labels": selector}
    elif endpoints is not None:
        spec["endpoints"] = [e if isinstance(e, dict) else
                             {"address": e[0], "ports": {"http": e[1]}} for e in endpoints]
    return doc("ServiceEntry", name, spec, namespace=namespace)


def workload_entry(name, address, ports=None, labels=None, annotations=None):
    spec = {"address": address, "labels": labels or {}}
    if ports:
        spec["ports"] = ports
    meta = {"annotations": annotations} if annotations else {}
    return doc("WorkloadEntry", name, spec, **meta)


def echo_entry(backend, host=ECHO_HOST, name="echo"):
    return service_entry(name, host, [("127.0.0.1", backend.port)])


# -- the sidecar ----------------------------------------------------------------------------------

class Sidecar:
    def __init__(self, tmp_path, impl, docs, args=(), boot=None, host="127.0.0.1",
                 workload=None, name="sidecar"):
        self.dir = tmp_path
        self.impl = impl
        self.host = host
        self.name = name
        self.args = list(args)
        self.workload = workload
        self.outbound = free_port(host)
        self.admin = free_port(host)
        self.prometheus = free_port(host)
        self.status = free_port(host)
        self.inbound = free_port(host)
        self.boot = dict(boot or {})
        self.config = tmp_path / f"{name}.yaml"
        self.stderr_path = tmp_path / f"{name}.stderr"
        self.proc = None
        self.write_config(docs)

    def bootstrap_doc(self, **extra):
        spec = {"outbound": {"address": self.host, "port": self.outbound},
                "admin": {"address": self.host, "port": self.admin},
                "inbound": {"port": self.inbound},
                "prometheusPort": self.prometheus, "statusPort": self.status,
                "drainDuration": "3s", "upstream": {"connectTimeout": "2s"}}
        spec.update(self.boot)
        spec.update(extra)
        return doc("Bootstrap", "bootstrap", spec, api="meshproxy.io/v1alpha1")

    def write_config(self, docs, raw=None):
        """Write the config file: our Bootstrap + ``docs`` (or ``raw`` text as it is)."""
        text = raw if raw is not None else "\n---\n".join([self.bootstrap_doc()] + list(docs))
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.config)

    def start(self, wait=True):
        env = clean_env()
        if self.impl == "py":
            env["MESHPROXY_NO_EXTENSIONS"] = "1"
        cmd = [PY, "-m", "meshproxy", "run", "--config", str(self.config)] + self.args
        if self.workload:
            cmd += ["--workload", self.workload]
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.stderr_file, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(self.dir))
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n"
                                     + self.log())
            try:
                st, _ = self.admin_get("/ready", timeout=1)
                if st == 200:
                    info = json.loads(self.admin_get("/server_info")[1])
                    assert info["compiled_core"] == (self.impl == "c"), info
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready in {timeout}s:\n" + self.log())

    @property
    def pid(self):
        return self.proc.pid

    def admin_get(self, path, port=None, timeout=5):
        c = http.client.HTTPConnection(self.host, port or self.admin, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def log(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text, timeout=10.0, after=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return True
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in {self.name}'s log:\n{self.log()}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15.0):
        """SIGTERM; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.name} did not exit {timeout}s after SIGTERM")
        self.stderr_file.close()
        return self.proc.returncode

    # -- clients -------------------------------------------------------------------------------

    def request(self, method="GET", path="/", host=ECHO_HOST, body=None, headers=None,
                timeout=10):
        """One request on a new connection; returns (status, headers dict lowercased, body)."""
        c = http.client.HTTPConnection(self.host, self.outbound, timeout=timeout)
        try:
            h = {"Host": host}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def get_json(self, path="/", **kw):
        st, h, body = self.request(path=path, **kw)
        assert st == 200, (st, body)
        return json.loads(body)


# -- raw HTTP -------------------------------------------------------------------------------------

class RawConn:
    """A socket with a read buffer, for exact bytes in and whole responses out."""

    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def read_until(self, sep):
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, head_only_1xx=True, method="GET"):
        """(status, [(name, value)], body as framed on the wire, raw head)."""
        while True:
            head = self.read_until(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            status = int(lines[0].split(b" ")[1])
            headers = [(k.decode(), v.strip().decode("latin-1"))
                       for k, _, v in (ln.partition(b":") for ln in lines[1:])]
            if 100 <= status < 200 and status != 101:
                if head_only_1xx:
                    continue
            break
        h = {k.lower(): v for k, v in headers}
        if method == "HEAD" or status in (101, 204, 304):
            body = b""
        elif h.get("transfer-encoding", "").lower().endswith("chunked"):
            body = b""
            while True:
                line = self.read_until(b"\r\n")
                body += line
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:
                        t = self.read_until(b"\r\n")
                        body += t
                        if t == b"\r\n":
                            break
                    break
                body += self.read_exact(size + 2)
        elif "content-length" in h:
            body = self.read_exact(int(h["content-length"]))
        else:
            body = self.read_all()
        return status, headers, body, head

    def read_all(self):
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionResetError):
            pass
        out, self.buf = self.buf, b""
        return out

    def is_closed(self, timeout=2.0):
        """True when the peer closed (EOF or reset) within ``timeout`` with nothing more sent."""
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        if d:
            self.buf += d
            return self.is_closed(timeout)
        return True

    def close(self):
        self.sock.close()


def raw_exchange(host, port, data, timeout=5.0):
    """Send ``data``, read until the sidecar closes; returns everything received."""
    c = RawConn(host, port, timeout)
    try:
        c.send(data)
        return c.read_all()
    finally:
        c.close()


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + list(args),
                          capture_output=True, env=clean_env(), timeout=timeout + 10)


def hdr(headers, name):
    """All values of ``name`` (case-insensitive) in a [(name, value)] list."""
    return [v for k, v in headers if k.lower() == name.lower()]
