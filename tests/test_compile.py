"""control.compile: what the sidecar routes with, built from real YAML files."""
import json
import os
import textwrap

import pytest

from control import ConfigError, build_snapshot, compile_snapshot, load_config
from control.snapshot import INBOUND_RETRY_POLICY, Bootstrap, Endpoint, Limits, RetryPolicy, Snapshot

HERE = os.path.dirname(__file__)
MESH = os.path.join(HERE, "configs", "mesh.yaml")


def write(tmp_path, text, name="mesh.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def doc(kind, name, spec, namespace="default", api="networking.istio.io/v1", meta=""):
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"{meta}spec:\n{body}\n---\n")


def vhost(listener, name):
    [vh] = [v for v in listener.virtual_hosts if v.name == name]
    return vh


# --- The sample config (tests/configs/mesh.yaml, also in docs/configuration.md) -----------------------


def test_client_sidecar_outbound():
    snap = build_snapshot(MESH, workload="client")
    out = snap.listener("outbound")
    assert (out.name, out.address, out.port) == ("virtualOutbound", "127.0.0.2", 15001)
    assert snap.bootstrap.admin_address == "127.0.0.2"  # extra loopback: each sidecar its own address
    [vh] = out.virtual_hosts
    assert vh.name == "echo.default.svc.cluster.local:80"
    assert vh.domains == (
        "echo.default.svc.cluster.local:80", "echo.default.svc.cluster.local",
        "echo.default.svc:80", "echo.default.svc", "echo.default:80", "echo.default", "echo:80", "echo")
    [route] = vh.routes
    assert (route.name, route.matches, route.cluster) == ("default", (), "outbound|80||echo.default.svc.cluster.local")
    assert route.is_simple
    cluster = snap.cluster(route.cluster)
    assert (cluster.direction, cluster.service, cluster.namespace, cluster.port, cluster.port_name,
            cluster.protocol, cluster.lb_policy) == (
        "outbound", "echo.default.svc.cluster.local", "default", 80, "http", "HTTP", "LEAST_REQUEST")
    assert (cluster.connect_timeout, cluster.idle_timeout) == (2.0, 60.0)
    # the server has a sidecar (tlsMode: istio): dial its inbound port, remember the app port
    assert cluster.endpoints == (Endpoint("127.0.0.3", 15006, 8080, labels={
        "app": "echo", "security.istio.io/tlsMode": "istio"}, workload="default/server", sidecar=True,
        identity="spiffe://cluster.local/ns/default/sa/default"),)
    inbound = snap.listener("inbound")
    assert (inbound.address, inbound.port, inbound.virtual_hosts, inbound.default_cluster) == (
        "127.0.0.2", 15006, (), None)
    assert snap.workload.name == "client" and snap.workload.address == "127.0.0.2"
    assert snap.sources == (MESH,)
    assert snap.bootstrap.access_log_file == "/dev/stdout"


def test_server_sidecar_inbound():
    snap = build_snapshot(MESH, workload="default/server")
    inbound = snap.listener("inbound")
    assert (inbound.name, inbound.address, inbound.port) == ("virtualInbound", "127.0.0.3", 15006)
    assert inbound.default_cluster == "inbound|8080||"
    vh = vhost(inbound, "echo.default.svc.cluster.local:80")
    assert vh.domains == vhost(snap.listener("outbound"), vh.name).domains
    assert vh.routes[0].cluster == "inbound|8080||"
    c = snap.cluster("inbound|8080||")
    assert (c.direction, c.service, c.namespace, c.port) == ("inbound", "", "", 8080)
    assert [(e.address, e.port, e.target_port, e.sidecar) for e in c.endpoints] == [("127.0.0.3", 8080, 8080, False)]
    assert snap.workload.ports == {"http": 8080}
    assert [li.name for li in snap.listeners] == ["virtualInbound", "virtualOutbound"]


def test_inbound_routes_get_istios_inbound_retry_policy():
    # Istio >= 1.24 (istio/istio#52055): inbound routes retry reset-before-request, twice
    assert INBOUND_RETRY_POLICY == RetryPolicy(attempts=2, retry_on=("reset-before-request",))
    assert not INBOUND_RETRY_POLICY.configured and INBOUND_RETRY_POLICY.status_codes == ()
    snap = build_snapshot(MESH, workload="default/server")
    inbound = [r for v in snap.listener("inbound").virtual_hosts for r in v.routes]
    assert inbound and all(r.retries == INBOUND_RETRY_POLICY for r in inbound)
    # outbound routes keep Istio's outbound default
    outbound = [r for v in snap.listener("outbound").virtual_hosts for r in v.routes]
    assert outbound and all(r.retries == RetryPolicy() for r in outbound)
    assert Snapshot.from_dict(snap.to_dict()) == snap


def test_config_dump_shows_circuit_breakers_and_retry_budget():
    snap = build_snapshot(MESH, workload="default/server")
    dumped = json.loads(json.dumps({"snapshot": snap.to_dict()}))  # what /config_dump serves
    for c in dumped["snapshot"]["clusters"]:
        assert c["circuit_breakers"] == {
            "max_connections": 4294967295, "max_pending_requests": 4294967295, "max_requests": 4294967295,
            "max_retries": 4294967295, "max_requests_per_connection": 0, "max_connection_duration": 0.0}
        assert c["retry_budget"] is None
    [route] = [r for v in dumped["snapshot"]["listeners"] if v["direction"] == "inbound"
               for vh in v["virtual_hosts"] for r in vh["routes"]]
    assert route["retries"]["retry_on"] == ["reset-before-request"] and route["retries"]["attempts"] == 2


def test_no_workload_means_outbound_only_on_defaults():
    snap = build_snapshot(MESH)
    assert [li.name for li in snap.listeners] == ["virtualOutbound"]
    assert snap.workload is None
    assert (snap.bootstrap.outbound_address, snap.bootstrap.admin_address) == ("127.0.0.1", "127.0.0.1")


# --- Endpoints ----------------------------------------------------------------------------------------

SERVICES = (
    doc("ServiceEntry", "api", """\
        hosts: [api.example.com]
        resolution: STATIC
        ports:
        - {number: 8080, name: http, targetPort: 9000}
        - {number: 9090, name: grpc, protocol: GRPC}
        - {number: 5432, name: tcp-db}
        endpoints:
        - {address: 10.0.0.1, ports: {http: 7000}}
        - {address: 10.0.0.2, weight: 3, locality: us-east/a}
        - {address: 10.0.0.3, weight: 0}
        - {address: 10.0.0.4, labels: {security.istio.io/tlsMode: istio}}
        """)
    + doc("WorkloadEntry", "web-1", """\
        address: 10.1.0.1
        ports: {http: 8081}
        labels: {app: web, security.istio.io/tlsMode: istio}
        """, meta="  annotations: {meshproxy.io/inbound-port: '16006'}\n")
    + doc("WorkloadEntry", "web-2", "address: 10.1.0.2\nlabels: {app: web, version: v2}\nserviceAccount: web")
    + doc("WorkloadEntry", "web-other-ns", "address: 10.2.0.1\nlabels: {app: web}", namespace="other")
    + doc("ServiceEntry", "web", """\
        hosts: [web.default.svc.cluster.local]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        workloadSelector: {labels: {app: web}}
        """)
)


def test_inline_endpoints_ports_weights_and_sidecars(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES))
    http = snap.cluster("outbound|8080||api.example.com")
    assert [(e.address, e.port, e.target_port, e.weight, e.locality, e.sidecar, e.workload)
            for e in http.endpoints] == [
        ("10.0.0.1", 7000, 7000, 1, "", False, ""),  # endpoint port wins
        ("10.0.0.2", 9000, 9000, 3, "us-east/a", False, ""),  # then targetPort
        # 10.0.0.3 has weight 0: excluded
        ("10.0.0.4", 15006, 9000, 1, "", True, ""),  # sidecar: dialled at the bootstrap inbound port
    ]
    grpc = snap.cluster("outbound|9090||api.example.com")
    assert grpc.protocol == "GRPC"
    assert [(e.address, e.port) for e in grpc.endpoints][:2] == [("10.0.0.1", 9090), ("10.0.0.2", 9090)]
    assert snap.cluster("outbound|5432||api.example.com") is None  # TCP: warned, not served
    assert any("port tcp-db protocol TCP" in w for w in snap.warnings)


def test_workload_selector_same_namespace_and_inbound_port_annotation(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES))
    c = snap.cluster("outbound|80||web.default.svc.cluster.local")
    assert [(e.address, e.port, e.target_port, e.sidecar, e.workload) for e in c.endpoints] == [
        ("10.1.0.1", 16006, 8081, True, "default/web-1"),
        ("10.1.0.2", 80, 80, False, "default/web-2"),
    ]
    assert c.endpoints[1].labels == {"app": "web", "version": "v2"}


def test_clusters_are_sorted_and_version_is_stable(tmp_path):
    path = write(tmp_path, SERVICES)
    a, b = build_snapshot(path), build_snapshot(path)
    names = [c.name for c in a.clusters]
    assert names == sorted(names) and len(names) == 3
    assert a.version == b.version and len(a.version) == 12
    # same content in another file order -> same version
    other = tmp_path / "d"
    other.mkdir()
    parts = SERVICES.split("---\n")[:-1]
    for i, part in enumerate(reversed(parts)):
        (other / f"{i}.yaml").write_text(part)
    assert build_snapshot(str(other)).version == a.version
    # content change -> new version
    assert build_snapshot(write(tmp_path, SERVICES.replace("weight: 3", "weight: 4"), "m2.yaml")).version != a.version
    assert build_snapshot(path, overrides={"concurrency": 4}).version != a.version


def test_snapshot_round_trip(tmp_path):
    snap = build_snapshot(MESH, workload="server", overrides={"concurrency": 3})
    again = Snapshot.from_dict(snap.to_dict())
    assert again == snap
    assert Snapshot.from_json(snap.to_json()) == snap
    assert json.loads(snap.to_json())["version"] == snap.version
    snap2 = build_snapshot(write(tmp_path, SERVICES))
    assert Snapshot.from_dict(json.loads(json.dumps(snap2.to_dict()))) == snap2


# --- Domains ------------------------------------------------------------------------------------------


def test_domains_default_port_and_short_names(tmp_path):
    text = (
        doc("ServiceEntry", "multi", """\
            hosts: [multi.default.svc.cluster.local]
            resolution: STATIC
            ports: [{number: 8080, name: http}, {number: 8081, name: http-admin}]
            endpoints: [{address: 10.0.0.1}]
            """)
        + doc("ServiceEntry", "remote", """\
            hosts: [Remote.Prod.svc.cluster.local]
            resolution: STATIC
            ports: [{number: 9000, name: http}, {number: 80, name: http-web}]
            endpoints: [{address: 10.0.0.2}]
            """, namespace="prod")
        + doc("ServiceEntry", "ext", """\
            hosts: [api.example.com]
            resolution: STATIC
            ports: [{number: 443, name: https, protocol: HTTPS}, {number: 8443, name: http}]
            endpoints: [{address: 10.0.0.3}]
            """)
    )
    out = build_snapshot(write(tmp_path, text)).listener("outbound")
    assert [v.name for v in out.virtual_hosts] == [
        "api.example.com:8443", "multi.default.svc.cluster.local:8080", "multi.default.svc.cluster.local:8081",
        "remote.prod.svc.cluster.local:80", "remote.prod.svc.cluster.local:9000"]
    # no port 80: the first port also gets the bare names
    assert vhost(out, "multi.default.svc.cluster.local:8080").domains == (
        "multi.default.svc.cluster.local:8080", "multi.default.svc.cluster.local", "multi.default.svc:8080",
        "multi.default.svc", "multi.default:8080", "multi.default", "multi:8080", "multi")
    assert vhost(out, "multi.default.svc.cluster.local:8081").domains == (
        "multi.default.svc.cluster.local:8081", "multi.default.svc:8081", "multi.default:8081", "multi:8081")
    # another namespace: no bare <svc>; port 80 gets the bare names even though it is not first
    assert vhost(out, "remote.prod.svc.cluster.local:80").domains == (
        "remote.prod.svc.cluster.local:80", "remote.prod.svc.cluster.local", "remote.prod.svc:80",
        "remote.prod.svc", "remote.prod:80", "remote.prod")
    assert vhost(out, "remote.prod.svc.cluster.local:9000").domains == (
        "remote.prod.svc.cluster.local:9000", "remote.prod.svc:9000", "remote.prod:9000")
    # not a cluster.local service name: no short forms; first port is HTTPS (not served) so no bare host
    assert vhost(out, "api.example.com:8443").domains == ("api.example.com:8443",)


def test_sidecar_namespace_is_the_workloads(tmp_path):
    text = doc("WorkloadEntry", "me", "address: 10.9.0.1", namespace="prod") + doc("ServiceEntry", "remote", """\
        hosts: [remote.prod.svc.cluster.local]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints: [{address: 10.0.0.2}]
        """, namespace="prod")
    snap = build_snapshot(write(tmp_path, text), workload="prod/me")
    assert "remote" in snap.listener("outbound").virtual_hosts[0].domains
    assert (snap.bootstrap.outbound_address, snap.bootstrap.admin_address) == ("127.0.0.1", "127.0.0.1")


# --- Inbound ------------------------------------------------------------------------------------------


def test_inbound_with_two_app_ports_has_no_default_cluster(tmp_path):
    text = doc("WorkloadEntry", "app", "address: 127.0.0.5\nports: {http: 8080, http-admin: 9901}\nlabels: {app: a}") \
        + doc("ServiceEntry", "a", """\
            hosts: [a.default.svc.cluster.local]
            resolution: STATIC
            ports: [{number: 80, name: http}, {number: 9901, name: http-admin}]
            workloadSelector: {labels: {app: a}}
            """) \
        + doc("ServiceEntry", "inline", """\
            hosts: [legacy.example.com]
            resolution: STATIC
            ports: [{number: 80, name: http, targetPort: 7070}]
            endpoints: [{address: 127.0.0.5}, {address: 127.0.0.6}]
            """)
    snap = build_snapshot(write(tmp_path, text), workload="app")
    inbound = snap.listener("inbound")
    assert inbound.default_cluster is None
    assert [(v.name, v.routes[0].cluster) for v in inbound.virtual_hosts] == [
        ("a.default.svc.cluster.local:80", "inbound|8080||"),
        ("a.default.svc.cluster.local:9901", "inbound|9901||"),
        ("legacy.example.com:80", "inbound|7070||"),
    ]
    assert [c.name for c in snap.clusters if c.direction == "inbound"] == [
        "inbound|7070||", "inbound|8080||", "inbound|9901||"]
    assert snap.workload.ports == {"http": 8080, "http-admin": 9901}


def test_own_inbound_port_annotation_moves_the_inbound_listener(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES), workload="web-1")
    assert snap.listener("inbound").port == 16006
    assert snap.listener("inbound").default_cluster == "inbound|8081||"
    assert snap.workload.service_account == ""
    assert build_snapshot(write(tmp_path, SERVICES), workload="web-2").workload.service_account == "web"


# --- Bootstrap, workload selection and overrides -------------------------------------------------------

BOOT = """\
apiVersion: meshproxy.io/v1alpha1
kind: Bootstrap
metadata: {name: boot}
spec:
  trustDomain: example.org
  workload: two
  outbound: {address: 127.0.0.1, port: 16001}
  inbound: {port: 16006}
  admin: {port: 16000}
  prometheusPort: 16090
  statusPort: 16021
  concurrency: 2
  drainDuration: 1.5s
  accessLogFile: /tmp/access.log
  accessLogEncoding: json
  accessLogFormat: "%START_TIME%"
  limits: {maxRequestHeadersKb: 96, maxRequestLine: 8192, maxHeaders: 50}
  upstream: {connectTimeout: 250ms, idleTimeout: 1h, maxIdlePerEndpoint: 8}
---
"""
TWO = doc("WorkloadEntry", "one", "address: 127.0.0.8") + doc("WorkloadEntry", "two", "address: 127.0.0.9") \
    + doc("WorkloadEntry", "two", "address: 127.0.0.10", namespace="other")


def test_bootstrap_fields(tmp_path):
    snap = build_snapshot(write(tmp_path, BOOT + doc("WorkloadEntry", "two", "address: 127.0.0.9")
                                + doc("ServiceEntry", "s", """\
                                      hosts: [s.example.com]
                                      resolution: STATIC
                                      ports: [{number: 80, name: http}]
                                      endpoints: [{address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio}}]
                                      """)))
    assert snap.bootstrap == Bootstrap(
        trust_domain="example.org", admin_address="127.0.0.9", admin_port=16000, outbound_address="127.0.0.1",
        outbound_port=16001, inbound_port=16006, prometheus_port=16090, status_port=16021, concurrency=2,
        drain_duration=1.5, access_log_file="/tmp/access.log", access_log_encoding="JSON",
        access_log_format="%START_TIME%", limits=Limits(96, 8192, 50))
    assert snap.workload.name == "two"  # from spec.workload
    c = snap.cluster("outbound|80||s.example.com")
    assert (c.connect_timeout, c.idle_timeout, c.max_idle_per_endpoint) == (0.25, 3600.0, 8)
    assert c.endpoints[0].port == 16006  # peers are assumed to use the Bootstrap's inbound port


def test_workload_argument_wins_and_bare_names_must_be_unique(tmp_path):
    path = write(tmp_path, BOOT + TWO)
    assert build_snapshot(path, workload="one").workload.address == "127.0.0.8"
    assert build_snapshot(path, workload="other/two").workload.address == "127.0.0.10"
    with pytest.raises(ConfigError) as ei:
        build_snapshot(path)  # spec.workload "two" exists in two namespaces
    assert [str(i) for i in ei.value.issues] == [
        f'{path}: Bootstrap default/boot: spec.workload: WorkloadEntry "two" is ambiguous: use one of '
        "default/two, other/two"]
    with pytest.raises(ConfigError) as ei:
        build_snapshot(path, workload="three")
    assert [str(i) for i in ei.value.issues] == [
        '<config>: workload: WorkloadEntry "three" not found (known: default/one, default/two, other/two)']


def test_overrides_are_applied_last_and_checked(tmp_path):
    snap = build_snapshot(MESH, workload="client", overrides={
        "concurrency": 2, "admin_port": 15100, "outbound_port": 16001, "access_log_file": "/dev/stdout",
        "outbound_address": "127.0.0.1", "drain_duration": 1, "limits": {"max_headers": 10}})
    b = snap.bootstrap
    assert (b.concurrency, b.admin_port, b.outbound_port, b.outbound_address, b.admin_address) == (
        2, 15100, 16001, "127.0.0.1", "127.0.0.2")
    assert b.drain_duration == 1.0 and b.limits == Limits(max_headers=10)
    assert snap.listener("outbound").port == 16001
    with pytest.raises(ConfigError) as ei:
        build_snapshot(MESH, overrides={"admin_prot": 1, "admin_port": 70000, "concurrency": "2",
                                        "limits": {"max_header": 1}})
    assert [str(i) for i in ei.value.issues] == [
        '<overrides>: admin_prot: unknown Bootstrap field (did you mean "admin_port"?)',
        "<overrides>: admin_port: 70000 is not a port (1-65535)",
        "<overrides>: concurrency: expected an integer, got a string",
        '<overrides>: limits.max_header: unknown field (did you mean "max_headers"?)',
    ]


def test_explicit_bootstrap_addresses_are_kept_for_extra_loopback(tmp_path):
    boot = BOOT.replace("  workload: two\n", "").replace("admin: {port: 16000}", "admin: {address: 0.0.0.0}")
    snap = build_snapshot(write(tmp_path, boot + TWO), workload="one")
    assert (snap.bootstrap.outbound_address, snap.bootstrap.admin_address) == ("127.0.0.1", "0.0.0.0")
    assert snap.listener("inbound").address == "127.0.0.8"


def test_build_snapshot_reports_every_problem(tmp_path):
    path = write(tmp_path, doc("ServiceEntry", "x", """\
        hosts: ["*.example.com"]
        resolution: DNS
        ports: [{number: 80, name: http}]
        """) + doc("VirtualService", "vs", "hosts: [x]") + doc("WorkloadEntry", "w", "address: nope"))
    with pytest.raises(ConfigError) as ei:
        build_snapshot(path, workload="w", overrides={"concurrency": 0})
    msgs = [f"{i.path}: {i.message}" for i in ei.value.issues]
    assert msgs == [
        "spec.hosts[0]: wildcard host *.example.com needs endpoints with resolution DNS (there is no name to "
        "resolve)",
        "spec.http: required field is missing",
        'spec.address: "nope" is not an IP address (a WorkloadEntry address must be an IP address in this release)',
        'workload: WorkloadEntry "w" not found (known: none defined)',
        "concurrency: 0 is out of range (1-1024)",
    ]
    assert str(ei.value).count("\n") == 4


def test_compile_snapshot_from_loaded_config():
    cfg = load_config(MESH)
    assert compile_snapshot(cfg, workload="client") == build_snapshot(MESH, workload="client")


def test_bootstrap_downstream_timeouts_and_limits(tmp_path):
    """Defaults (Envoy's names: request_headers_timeout, idle_timeout, stream_idle_timeout,
    per_connection_buffer_limit_bytes, a listener connection limit) and their Bootstrap spelling."""
    d = Limits()
    assert (d.request_headers_timeout, d.idle_timeout, d.stream_idle_timeout,
            d.per_connection_buffer_limit_bytes, d.max_downstream_connections) == (
        10.0, 3600.0, 0.0, 1 << 20, 16384)
    boot = BOOT.replace(
        "limits: {maxRequestHeadersKb: 96, maxRequestLine: 8192, maxHeaders: 50}",
        "limits: {requestHeadersTimeout: 2s, idleTimeout: 5m, streamIdleTimeout: 300s, "
        "perConnectionBufferLimitBytes: 65536, maxDownstreamConnections: 0}")
    snap = build_snapshot(write(tmp_path, boot + doc("WorkloadEntry", "two", "address: 127.0.0.9")))
    assert snap.bootstrap.limits == Limits(request_headers_timeout=2.0, idle_timeout=300.0,
                                           stream_idle_timeout=300.0,
                                           per_connection_buffer_limit_bytes=65536,
                                           max_downstream_connections=0)
