"""AuthorizationPolicy through a real sidecar's inbound listener (127.0.0.140-149): an allowed
request reaches the app, a denied one is answered 403 ``RBAC: access denied``, the decisions are
counted on /stats/prometheus and /stats, and the access log shows Envoy's response code details."""
import json
import time

import pytest
from harness import ECHO_HOST, Backend, RawConn, doc, service_entry, workload_entry

HOST = "127.0.0.140"


@pytest.fixture(scope="module")
def app():
    b = Backend(host=HOST)
    yield b
    b.stop()


def policy(name, spec, namespace="default"):
    return doc("AuthorizationPolicy", name, spec, namespace=namespace, api="security.istio.io/v1")


def get(port, path, host="echo"):
    c = RawConn(HOST, port)
    try:
        c.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        st, _, body, _ = c.read_response()
    finally:
        c.close()
    return st, body


def test_inbound_authorization(make_sidecar, app, tmp_path):
    app.reset()
    log_path = tmp_path / "access.log"
    server = make_sidecar([], host=HOST, workload="server", name="server", start=False,
                          boot={"accessLogFile": str(log_path)})
    docs = [
        workload_entry("server", HOST, ports={"http": app.port}, labels={"app": "echo"}),
        service_entry("echo", ECHO_HOST, selector={"app": "echo"}),
        policy("allow-public", {"selector": {"matchLabels": {"app": "echo"}},
                                "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/public/*"]}}]}]}),
        policy("deny-secret", {"action": "DENY",
                               "rules": [{"to": [{"operation": {"paths": ["/public/secret"]}}]}]}),
        policy("mesh-audit", {"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/public/*"]}}]}]},
               namespace="istio-system"),
    ]
    server.write_config(docs)
    server.start()

    # /config_dump shows the policies that apply to the inbound listener
    snap = json.loads(server.admin_get("/config_dump")[1])["snapshot"]
    [inbound] = [lst for lst in snap["listeners"] if lst["name"] == "virtualInbound"]
    assert [p["name"] for p in inbound["authorization"]] == [
        "default/allow-public", "default/deny-secret", "istio-system/mesh-audit"]

    st, body = get(server.inbound, "/public/hello")
    assert st == 200 and json.loads(body)["target"] == "/public/hello"
    st, body = get(server.inbound, "/private")
    assert (st, body) == (403, b"RBAC: access denied")
    st, body = get(server.inbound, "/public/../public/secret")  # normalised, then denied
    assert (st, body) == (403, b"RBAC: access denied")
    assert app.stats()["requests"] == 1

    st, prom = server.admin_get("/stats/prometheus", port=server.prometheus)
    prom = prom.decode()
    assert 'envoy_http_rbac_allowed{envoy_http_conn_manager_prefix="virtualInbound"} 1' in prom
    assert 'envoy_http_rbac_denied{envoy_http_conn_manager_prefix="virtualInbound"} 2' in prom
    assert 'envoy_http_rbac_logged{envoy_http_conn_manager_prefix="virtualInbound"} 2' in prom
    assert "virtualOutbound\"} " not in "".join(ln for ln in prom.splitlines() if "rbac" in ln)
    st, text = server.admin_get("/stats?filter=rbac")
    assert b"http.virtualInbound.rbac.denied: 2" in text

    server.wait_log("rbac: virtualInbound: denied GET /private")
    server.wait_log("DENY policy default/deny-secret rule[0]")
    lines = []
    for _ in range(100):
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        if len(lines) >= 3:
            break
        time.sleep(0.05)
    denied = [ln for ln in lines if '"GET /private HTTP/1.1" 403' in ln]
    assert denied and " 403 - rbac_access_denied_matched_policy[none] " in denied[0], lines
    secret = [ln for ln in lines if "secret" in ln]
    assert secret and "rbac_access_denied_matched_policy[ns[default]-policy[deny-secret]-rule[0]]" in secret[0]


def test_no_policy_no_filter(make_sidecar, app):
    app.reset()
    server = make_sidecar([], host=HOST, workload="server", name="plain", start=False)
    server.write_config([workload_entry("server", HOST, ports={"http": app.port}, labels={"app": "echo"}),
                         service_entry("echo", ECHO_HOST, selector={"app": "echo"}),
                         policy("elsewhere", {}, namespace="other")])
    server.start()
    st, _ = get(server.inbound, "/private")
    assert st == 200
    _, prom = server.admin_get("/stats/prometheus", port=server.prometheus)
    assert b"envoy_http_rbac" not in prom
