"""Admin endpoints of a running sidecar, and the command line (validate, help, run errors)."""
import json
import subprocess

import pytest
from harness import ECHO_HOST, PY, ROOT, clean_env
from prometheus_client.parser import text_string_to_metric_families

CLUSTER = f"outbound|80||{ECHO_HOST}"


def meshproxy(*args, timeout=30):
    return subprocess.run([PY, "-m", "meshproxy"] + list(args), capture_output=True, text=True,
                          env=clean_env(), cwd=str(ROOT), timeout=timeout)


def test_ready_and_status_port(sidecar):
    assert sidecar.admin_get("/ready")[0] == 200
    assert sidecar.admin_get("/healthz/ready", port=sidecar.status)[0] == 200
    # the Prometheus port serves only /stats/prometheus
    assert sidecar.admin_get("/config_dump", port=sidecar.prometheus)[0] == 404


def test_config_dump(sidecar, echo):
    st, body = sidecar.admin_get("/config_dump")
    assert st == 200
    d = json.loads(body)
    snap = d["snapshot"]
    assert d["compiled_core"] == (sidecar.impl == "c")
    names = [c["name"] for c in snap["clusters"]]
    assert names == [CLUSTER]
    ep = snap["clusters"][0]["endpoints"][0]
    assert (ep["address"], ep["port"]) == ("127.0.0.1", echo.port)
    lst = [x for x in snap["listeners"] if x["name"] == "virtualOutbound"][0]
    assert lst["port"] == sidecar.outbound
    assert snap["bootstrap"]["admin_port"] == sidecar.admin
    info = json.loads(sidecar.admin_get("/server_info")[1])
    assert info["snapshot_version"] == snap["version"] and info["state"] == "LIVE"


def test_clusters_lists_endpoints(sidecar, echo):
    for _ in range(3):
        assert sidecar.request()[0] == 200
    st, body = sidecar.admin_get("/clusters")
    assert st == 200
    text = body.decode()
    assert f"{CLUSTER}::127.0.0.1:{echo.port}::" in text, text
    assert f"{CLUSTER}::127.0.0.1:{echo.port}::rq_total::3\n" in text, text
    st, body = sidecar.admin_get("/clusters?format=json")
    assert st == 200
    assert "127.0.0.1" in body.decode() and str(echo.port) in body.decode()


def _requests_by_code(body):
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == "istio_requests_total":
                code = s.labels["response_code"]
                out[code] = out.get(code, 0) + s.value
    return out


def test_prometheus_istio_requests_total(sidecar, echo):
    n = 7
    for _ in range(n):
        assert sidecar.request()[0] == 200
    assert sidecar.request(host="nope.example")[0] == 404
    st, body = sidecar.admin_get("/stats/prometheus", port=sidecar.prometheus)
    assert st == 200
    by_code = _requests_by_code(body)
    assert by_code.get("200") == n, by_code
    st2, body2 = sidecar.admin_get("/stats/prometheus")
    assert st2 == 200 and _requests_by_code(body2).get("200") == n


@pytest.mark.parametrize("impl", ["c"])
def test_stats_text(sidecar, echo):
    for _ in range(4):
        sidecar.request()
    st, body = sidecar.admin_get("/stats")
    assert st == 200
    lines = dict(ln.rsplit(": ", 1) for ln in body.decode().splitlines() if ": " in ln)
    assert lines.get(f"cluster.{CLUSTER}.upstream_rq_total") == "4", body.decode()[:2000]


# -- CLI ------------------------------------------------------------------------------------------

GOOD = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: echo
spec:
  hosts: [echo.default.svc.cluster.local]
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - address: 127.0.0.1
    ports: {http: 8080}
"""


def test_validate_ok(tmp_path):
    f = tmp_path / "mesh.yaml"
    f.write_text(GOOD)
    r = meshproxy("validate", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"{f}: valid: 1 file(s), 1 service(s), 1 cluster(s), "
                               f"1 endpoint(s), 0 warning(s); snapshot "), r.stdout


def test_validate_errors_exact_lines(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("resolution:", "resolutoin:").replace("address:", "adress:"))
    r = meshproxy("validate", str(f))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert f'{f}: ServiceEntry default/echo: spec.resolutoin: unknown field ' \
           f'(did you mean "resolution"?)' in lines, r.stdout
    assert f'{f}: ServiceEntry default/echo: spec.endpoints[0].adress: unknown field ' \
           f'(did you mean "address"?)' in lines, r.stdout
    assert r.stderr.strip().splitlines()[-1] == f"{f}: {len(lines)} errors"


def test_validate_yaml_syntax_error(tmp_path):
    f = tmp_path / "syntax.yaml"
    f.write_text("apiVersion: v1\nkind: [unclosed\n")
    r = meshproxy("validate", str(f))
    assert r.returncode == 1
    assert r.stdout.startswith(f"{f}: line "), r.stdout
    r = meshproxy("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1


def test_run_invalid_config_exits_1(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace("resolution:", "resolutoin:"))
    r = meshproxy("run", "--config", str(f))
    assert r.returncode == 1
    assert f"meshproxy: invalid config {f}:" in r.stderr
    assert "spec.resolutoin: unknown field" in r.stderr


def test_help():
    r = meshproxy("--help")
    assert r.returncode == 0
    for word in ("run", "validate", "examples:"):
        assert word in r.stdout
    r = meshproxy("run", "--help")
    assert r.returncode == 0
    for opt in ("--config", "--workload", "--concurrency", "--access-log", "--drain-duration",
                "SIGHUP", "SIGTERM"):
        assert opt in r.stdout, opt
    r = meshproxy("validate", "--help")
    assert r.returncode == 0 and "--workload" in r.stdout
    r = meshproxy("run")
    assert r.returncode == 2 and "--config" in r.stderr
