"""The demo (``python -m demo``, the demo/ package): end to end as a subprocess (not a TTY),
Ctrl-C, start-up failure, no leftovers."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from demo import mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVIEWS = {"reviews-v1": "127.0.0.11", "reviews-v2": "127.0.0.12", "reviews-v3": "127.0.0.13"}


def _procs_with(marker: str) -> list:
    """Command lines of live (non-zombie) processes that mention ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"{pid}: {cmd}")
    return found


def _marker(out: str) -> str:
    m = re.search(r"^config: (\S*/(meshproxy-demo-[^/\s]+)/mesh\.yaml)", out, re.M)
    assert m, out
    return m.group(2)


def _no_leftovers(marker: str, out: str):
    deadline = time.time() + 5
    while _procs_with(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert _procs_with(marker) == [], out
    assert not any(n.startswith(marker) for n in os.listdir(mesh.tempfile.gettempdir()))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _check_summary(out: str, min_total: int):
    m = re.search(r"^ran [\d.]+s: (\d+) requests \([\d.]+ req/s\), (\d+) errors", out, re.M)
    assert m, out
    total, errors = int(m.group(1)), int(m.group(2))
    assert total >= min_total, out
    assert errors <= max(1, total // 1000), out  # ~0 errors
    assert re.search(r"^client latency: p50 [\d.]+ ms  p90 [\d.]+ ms  p99 [\d.]+ ms", out, re.M), out
    # every reviews endpoint got traffic, and the sidecar's count matches what the client saw
    for name, addr in REVIEWS.items():
        m = re.search(rf"^  {name}\s+{re.escape(addr)}:\d+\s+sidecar\s+(\d+)\s+client\s+(\d+)", out, re.M)
        assert m, out
        side, client = int(m.group(1)), int(m.group(2))
        assert side > 0 and client > 0, out
        assert abs(side - client) <= 2, out
    # the sidecar's istio_requests_total agrees with the client, per service
    for svc in ("frontend", "reviews", "ratings"):
        m = re.search(rf"^  {svc}\.default\.svc\.cluster\.local\s+client\s+(\d+) \(.*?\)\s+"
                      rf"sidecar istio_requests_total\s+(\d+)", out, re.M)
        assert m, out
        assert int(m.group(1)) > 0 and abs(int(m.group(1)) - int(m.group(2))) <= 2, out
    assert "sidecar exited with code 0" in out, out


def test_demo_end_to_end():
    p = subprocess.run([sys.executable, "-m", "demo", "--duration", "6", "--rate", "100"],
                       cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=90)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    marker = _marker(p.stdout)
    # not a TTY: one status line per second, no ANSI escapes
    status = [ln for ln in p.stdout.splitlines() if re.match(r"^\[\s*\d+s\]", ln)]
    assert len(status) >= 4, out
    assert "\x1b[" not in p.stdout
    assert "try: curl -H 'Host: reviews.default.svc.cluster.local' http://127.0.0.1:" in p.stdout
    assert re.search(r"reviews endpoints \(sidecar rq_total\) v1=[1-9]\d* v2=[1-9]\d* v3=[1-9]\d*",
                     status[-1]), out
    _check_summary(p.stdout, min_total=400)
    _no_leftovers(marker, out)


def test_demo_ctrl_c_stops_everything():
    p = subprocess.Popen([sys.executable, "-m", "demo", "--rate", "100"], cwd=ROOT,
                         env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if re.match(r"^\[\s*2s\]", line):
                break
        assert any(re.match(r"^\[\s*2s\]", ln) for ln in lines), "".join(lines)
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = "".join(lines) + rest
    assert p.returncode == 0, out
    _check_summary(out, min_total=150)
    _no_leftovers(_marker(out), out)


def test_demo_sidecar_fails_to_start(monkeypatch, capsys):
    monkeypatch.setattr(mesh, "sidecar_command", lambda path: [
        sys.executable, "-c", "import sys; sys.stderr.write('boom: cannot bind\\n'); sys.exit(3)"])
    assert mesh.main(duration=2, rate=50) == 1
    cap = capsys.readouterr()
    assert "the sidecar exited with code 3" in cap.err
    assert "boom: cannot bind" in cap.err
    _no_leftovers(_marker(cap.out), cap.out + cap.err)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_a_killed_demo():
    p = subprocess.Popen([sys.executable, "-m", "demo", "--rate", "50"], cwd=ROOT,
                         env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        while True:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("sidecar pid"):
                break
        out = "".join(lines)
        marker = _marker(out)
        assert len(_procs_with(marker)) >= 6, out  # 5 services + the sidecar
    finally:
        p.kill()  # SIGKILL: no cleanup code runs in the demo
        p.wait()
    deadline = time.time() + 5
    while _procs_with(marker) and time.time() < deadline:
        time.sleep(0.1)
    assert _procs_with(marker) == [], out
    mesh.shutil.rmtree(os.path.join(mesh.tempfile.gettempdir(), marker), ignore_errors=True)


def test_config_and_parsers():
    from control import build_snapshot

    insts = [mesh.Instance(*spec) for spec in mesh.INSTANCES]
    text = mesh.render_config(insts, ("127.0.0.1", 15001), ("127.0.0.1", 15000), 15090, 15021, 15006)
    tmp = os.path.join(mesh.tempfile.mkdtemp(prefix="meshproxy-demo-test-"), "mesh.yaml")
    try:
        with open(tmp, "w") as f:
            f.write(text)
        snap = build_snapshot(tmp)
    finally:
        mesh.shutil.rmtree(os.path.dirname(tmp))
    reviews = [c for c in snap.clusters if c.name == "outbound|9080||reviews.default.svc.cluster.local"]
    assert len(reviews) == 1 and len(reviews[0].endpoints) == 3
    assert not snap.warnings

    prom = ('# TYPE istio_requests_total counter\n'
            'istio_requests_total{reporter="source",destination_service_name="reviews",'
            'response_code="200",response_flags="-"} 7\n'
            'istio_requests_total{reporter="source",destination_service_name="reviews",'
            'response_code="503",response_flags="UF"} 1\n'
            'istio_requests_total{reporter="destination",destination_service_name="reviews",'
            'response_code="200",response_flags="-"} 99\n')
    assert mesh.parse_istio_requests(prom) == {"reviews": {"200": 7, "503 UF": 1}}
    doc = {"cluster_statuses": [{"name": "c", "host_statuses": [
        {"address": {"socket_address": {"address": "127.0.0.11", "port_value": 9080}},
         "stats": [{"name": "cx_active", "value": "1"}, {"name": "rq_active", "value": "0"},
                   {"name": "rq_total", "value": "42"}]}]}]}
    assert mesh.parse_clusters(doc) == {"127.0.0.11:9080": {"cluster": "c", "rq_total": 42,
                                                            "cx_active": 1, "rq_active": 0}}
    assert mesh.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert mesh.percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
