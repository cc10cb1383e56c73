"""control.config: loading, schema validation and the exact issue strings users see."""
import os
import textwrap

import pytest

from control import ConfigError, load_config
from control.duration import parse_duration

SE_HEAD = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: echo
spec:
"""


def write(tmp_path, text, name="mesh.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def issues_of(tmp_path, text):
    """Issue strings, with the file given as its base name (we chdir so the path is "mesh.yaml")."""
    write(tmp_path, text)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = load_config("mesh.yaml")
    finally:
        os.chdir(cwd)
    return [str(i) for i in cfg.issues], [str(w) for w in cfg.warnings]


def se(spec):
    return SE_HEAD + textwrap.indent(textwrap.dedent(spec), "  ")


GOOD_SE = se("""\
hosts: [Echo.Example.COM]
resolution: STATIC
ports:
- {number: 80, name: http, protocol: http}
endpoints:
- address: 10.0.0.1
""")


def test_valid_service_entry_is_normalised(tmp_path):
    write(tmp_path, GOOD_SE)
    cfg = load_config(tmp_path / "mesh.yaml")
    assert cfg.issues == [] and cfg.warnings == []
    [r] = cfg.resources
    assert (r.kind, r.namespace, r.name) == ("ServiceEntry", "default", "echo")
    assert r.spec["hosts"] == ["echo.example.com"]
    assert r.spec["ports"] == [{"number": 80, "name": "http", "protocol": "HTTP"}]
    assert r.spec["location"] == "MESH_EXTERNAL"
    assert cfg.files == [str(tmp_path / "mesh.yaml")]


# (case id, spec or whole document, expected issue strings in order)
INVALID = [
    ("unknown-field-did-you-mean", se("""\
        hosts: [echo.example.com]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints:
        - adress: 10.0.0.1
        """), [
        'mesh.yaml: ServiceEntry default/echo: spec.endpoints[0].adress: unknown field (did you mean "address"?)',
        "mesh.yaml: ServiceEntry default/echo: spec.endpoints[0].address: required field is missing",
    ]),
    ("bad-endpoint-port", se("""\
        hosts: [echo.example.com]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints:
        - address: 10.0.0.1
        - address: 10.0.0.2
          ports: {http: 99999}
        """), [
        "mesh.yaml: ServiceEntry default/echo: spec.endpoints[1].ports.http: 99999 is not a port (1-65535)",
    ]),
    ("endpoint-port-name-not-a-service-port", se("""\
        hosts: [echo.example.com]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints:
        - {address: 10.0.0.1, ports: {htp: 8080}}
        """), [
        'mesh.yaml: ServiceEntry default/echo: spec.endpoints[0].ports.htp: "htp" is not a port name of this '
        'ServiceEntry (did you mean "http"?) (port names: http)',
    ]),
    ("wildcard-dns-without-endpoints", se("""\
        hosts: ["*.example.com"]
        resolution: DNS
        ports: [{number: 80, name: http}]
        """), [
        "mesh.yaml: ServiceEntry default/echo: spec.hosts[0]: wildcard host *.example.com needs endpoints with "
        "resolution DNS (there is no name to resolve)",
    ]),
    ("wildcard-static-and-partial", se("""\
        hosts: ["*.example.com", "a*.example.com"]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints: [{address: 10.0.0.1}]
        """), [
        'mesh.yaml: ServiceEntry default/echo: spec.hosts[1]: "a*.example.com" is not a valid host name (a '
        'wildcard is only allowed as a leading "*.")',
    ]),
    ("wildcard-static", se("""\
        hosts: ["*.example.com"]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints: [{address: 10.0.0.1}]
        """), [
        "mesh.yaml: ServiceEntry default/echo: spec.hosts[0]: wildcard hosts need resolution NONE or DNS",
    ]),
    ("dns-endpoints", se("""\
        hosts: [echo.example.com]
        resolution: DNS_ROUND_ROBIN
        ports: [{number: 80, name: http}]
        endpoints: [{address: "bad_name"}, {address: a.example.com}]
        """), [
        'mesh.yaml: ServiceEntry default/echo: spec.endpoints[0].address: "bad_name" is not an IP address or a '
        "DNS name",
        "mesh.yaml: ServiceEntry default/echo: spec.endpoints: resolution DNS_ROUND_ROBIN allows at most one "
        "endpoint",
    ]),
    ("none-with-endpoints", se("""\
        hosts: [echo.example.com]
        resolution: NONE
        ports: [{number: 80, name: http}]
        endpoints: [{address: 10.0.0.1}]
        """), [
        "mesh.yaml: ServiceEntry default/echo: spec.endpoints: endpoints with resolution NONE is not supported "
        "yet (requests go to the address the application asked for)",
    ]),
    ("resolution-missing", se("""\
        hosts: [echo.example.com]
        ports: [{number: 80, name: http}]
        """), [
        "mesh.yaml: ServiceEntry default/echo: spec.resolution: required field is missing",
    ]),
    ("types", se("""\
        hosts: echo.example.com
        resolution: STATIC
        ports:
        - {number: "80", name: http, protocol: SMTP}
        - {number: 81}
        """), [
        "mesh.yaml: ServiceEntry default/echo: spec.hosts: expected a list, got a string",
        "mesh.yaml: ServiceEntry default/echo: spec.ports[0].number: expected an integer, got a string",
        'mesh.yaml: ServiceEntry default/echo: spec.ports[0].protocol: "SMTP" is not valid: expected one of '
        "HTTP, HTTPS, HTTP2, GRPC, TCP, TLS, MONGO, REDIS, MYSQL",
        "mesh.yaml: ServiceEntry default/echo: spec.ports[1].name: required field is missing",
    ]),
    ("duplicate-ports-and-hosts", se("""\
        hosts: [a.example.com, A.example.com]
        resolution: STATIC
        ports: [{number: 80, name: http}, {number: 80, name: http}]
        """), [
        'mesh.yaml: ServiceEntry default/echo: spec.ports[1].name: port name "http" is already used by ports[0]',
        "mesh.yaml: ServiceEntry default/echo: spec.ports[1].number: port 80 is already used by ports[0]",
        'mesh.yaml: ServiceEntry default/echo: spec.hosts[1]: host "a.example.com" is already listed as hosts[0]',
    ]),
    ("endpoints-and-selector", se("""\
        hosts: [echo.example.com]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints: [{address: 10.0.0.1}]
        workloadSelector: {labels: {app: echo}}
        """), [
        "mesh.yaml: ServiceEntry default/echo: spec.workloadSelector: only one of workloadSelector or "
        "endpoints may be set",
    ]),
    ("static-needs-ip", se("""\
        hosts: [echo.example.com]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        endpoints: [{address: echo.internal}]
        """), [
        'mesh.yaml: ServiceEntry default/echo: spec.endpoints[0].address: "echo.internal" is not an IP address '
        "(DNS names need resolution DNS)",
    ]),
    ("unsupported-kind", """\
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: ingress}
        spec: {servers: []}
        """, ["mesh.yaml: Gateway default/ingress: kind Gateway is not supported yet"]),
    ("unsupported-security-kind", """\
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: strict, namespace: prod}
        """, ["mesh.yaml: PeerAuthentication prod/strict: kind PeerAuthentication is not supported yet"]),
    ("unknown-kind", """\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntri
        metadata: {name: x}
        """, ['mesh.yaml: ServiceEntri default/x: unknown kind ServiceEntri (did you mean "ServiceEntry"?)']),
    ("bad-envelope", """\
        apiVersion: networking.istio.io/v2
        kind: WorkloadEntry
        metadata: {name: Web_1, lables: {}}
        spec: {address: 10.0.0.1}
        status: {}
        """, [
        "mesh.yaml: WorkloadEntry default/Web_1: status: unknown field",
        'mesh.yaml: WorkloadEntry default/Web_1: apiVersion: "networking.istio.io/v2" is not valid for '
        "WorkloadEntry (expected networking.istio.io/v1 or networking.istio.io/v1beta1 or "
        "networking.istio.io/v1alpha3)",
        'mesh.yaml: WorkloadEntry default/Web_1: metadata.name: "Web_1" is not a valid name (DNS-1123: '
        'lowercase letters, digits, "-" and ".", starting and ending with a letter or digit)',
        'mesh.yaml: WorkloadEntry default/Web_1: metadata.lables: unknown field (did you mean "labels"?)',
    ]),
    ("no-name", """\
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {}
        spec: {address: 10.0.0.1}
        """, ["mesh.yaml: WorkloadEntry: metadata.name: required field is missing (document at line 1)"]),
    ("not-a-mapping", "- a\n- b\n",
     ["mesh.yaml: document at line 1 is a list; expected a mapping with apiVersion, kind, metadata and spec"]),
    ("workload-entry-types", """\
        apiVersion: networking.istio.io/v1beta1
        kind: WorkloadEntry
        metadata:
          name: web
          annotations: {meshproxy.io/inbound-port: "http"}
        spec: {address: 10.0.0.1, ports: {http: "8080"}, labels: {canary: true}, weight: -1}
        """, [
        'mesh.yaml: WorkloadEntry default/web: metadata.annotations.meshproxy.io/inbound-port: "http" is not '
        "a port (1-65535)",
        "mesh.yaml: WorkloadEntry default/web: spec.ports.http: expected an integer, got a string",
        "mesh.yaml: WorkloadEntry default/web: spec.labels.canary: expected a string, got a boolean",
        "mesh.yaml: WorkloadEntry default/web: spec.weight: -1 is out of range (0-4294967295)",
    ]),
    ("bootstrap", """\
        apiVersion: meshproxy.io/v1alpha1
        kind: Bootstrap
        metadata: {name: boot}
        spec:
          drainDuration: 5
          concurency: 2
          accessLogEncoding: XML
          admin: {address: localhost, port: 0}
          upstream: {connectTimeout: 0s, idleTimeout: 5 minutes}
        """, [
        'mesh.yaml: Bootstrap default/boot: spec.drainDuration: expected a duration string ("5s", "100ms", '
        '"1m"), got an integer',
        'mesh.yaml: Bootstrap default/boot: spec.concurency: unknown field (did you mean "concurrency"?)',
        'mesh.yaml: Bootstrap default/boot: spec.accessLogEncoding: "XML" is not valid: expected one of TEXT, JSON',
        'mesh.yaml: Bootstrap default/boot: spec.admin.address: "localhost" is not an IP address',
        "mesh.yaml: Bootstrap default/boot: spec.admin.port: 0 is not a port (1-65535)",
        'mesh.yaml: Bootstrap default/boot: spec.upstream.connectTimeout: "0s" must be greater than zero',
        'mesh.yaml: Bootstrap default/boot: spec.upstream.idleTimeout: "5 minutes" is not a duration (use a '
        'number and a unit: "5s", "1.5s", "100ms", "1m", "1h")',
    ]),
    ("yaml-syntax", """\
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: a}
        spec:
          address: [10.0.0.1
          ports: {}
        """, ["mesh.yaml: line 6: while parsing a flow sequence (line 5): did not find expected ',' or ']'"]),
    ("yaml-duplicate-key", """\
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: a}
        spec:
          address: 10.0.0.1
          address: 10.0.0.2
        """, ['mesh.yaml: line 6: duplicate key "address" (first at line 5)']),
    ("duplicate-resource", """\
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: a}
        spec: {address: 10.0.0.1}
        ---
        apiVersion: networking.istio.io/v1
        kind: WorkloadEntry
        metadata: {name: a, namespace: default}
        spec: {address: 10.0.0.2}
        """, ["mesh.yaml: WorkloadEntry default/a: defined more than once (first in mesh.yaml, line 1)"]),
    ("two-bootstraps", """\
        apiVersion: meshproxy.io/v1alpha1
        kind: Bootstrap
        metadata: {name: one}
        ---
        apiVersion: meshproxy.io/v1alpha1
        kind: Bootstrap
        metadata: {name: two}
        """, ["mesh.yaml: Bootstrap default/two: only one Bootstrap is allowed (already defined: Bootstrap "
              "default/one in mesh.yaml)"]),
    ("host-port-conflict", GOOD_SE + "---\n" + se("""\
        hosts: [other.example.com, echo.example.com]
        resolution: STATIC
        ports: [{number: 8080, name: http-alt}, {number: 80, name: http}]
        """).replace("name: echo", "name: echo-copy", 1), [
        "mesh.yaml: ServiceEntry default/echo-copy: spec.hosts[1]: echo.example.com:80 is already defined by "
        "ServiceEntry default/echo (mesh.yaml)",
    ]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_configs(tmp_path, text, expected):
    issues, _ = issues_of(tmp_path, textwrap.dedent(text))
    assert issues == expected


# Istio kinds that would change routing or security (docs/configuration.md lists them): each API
# group's module declares its own, and every one is rejected the same way.
UNSUPPORTED = [("networking.istio.io/v1", k) for k in ("Gateway", "Sidecar", "EnvoyFilter", "WorkloadGroup")] + [
    ("networking.istio.io/v1beta1", "ProxyConfig"), ("telemetry.istio.io/v1", "Telemetry"),
    ("extensions.istio.io/v1alpha1", "WasmPlugin")] + [
    ("security.istio.io/v1", k) for k in ("PeerAuthentication", "RequestAuthentication")]


@pytest.mark.parametrize("api,kind", UNSUPPORTED, ids=[k for _, k in UNSUPPORTED])
def test_every_unsupported_istio_kind_is_an_error(tmp_path, api, kind):
    from control.config import UNSUPPORTED_KINDS

    assert kind in UNSUPPORTED_KINDS
    text = f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: x, namespace: prod}}\nspec: {{}}\n"
    assert issues_of(tmp_path, text) == ([f"mesh.yaml: {kind} prod/x: kind {kind} is not supported yet"], [])


def test_supported_and_unsupported_kinds():
    from control.config import KINDS, UNSUPPORTED_KINDS

    assert list(KINDS) == ["ServiceEntry", "WorkloadEntry", "VirtualService", "DestinationRule", "Bootstrap",
                          "HealthCheck", "AuthorizationPolicy"]
    assert sorted(UNSUPPORTED_KINDS) == sorted(k for _, k in UNSUPPORTED)
    assert all(KINDS[k].kind == k for k in KINDS)


def test_every_problem_is_collected_across_documents(tmp_path):
    text = "\n---\n".join(textwrap.dedent(c[1]) for c in INVALID
                          if c[0] in ("bad-endpoint-port", "unsupported-kind", "bootstrap", "no-name"))
    issues, _ = issues_of(tmp_path, text)
    assert len(issues) == 1 + 1 + 7 + 1
    assert issues[0].startswith("mesh.yaml: ServiceEntry default/echo: spec.endpoints[1].ports.http")
    assert "mesh.yaml: WorkloadEntry: metadata.name: required field is missing (document at line 21)" in issues


def test_warnings_for_accepted_but_unused_fields(tmp_path):
    issues, warnings = issues_of(tmp_path, se("""\
        hosts: [db.example.com]
        addresses: [10.1.0.0/16]
        exportTo: ["."]
        subjectAltNames: ["spiffe://cluster.local/ns/default/sa/db"]
        resolution: STATIC
        ports:
        - {number: 80, name: http}
        - {number: 3306, name: mysql, protocol: MYSQL}
        - {number: 5432, name: tcp-postgres}
        endpoints: [{address: 10.0.0.1}]
        """))
    assert issues == []
    assert warnings == [
        "mesh.yaml: ServiceEntry default/echo: spec.addresses: not used by meshproxy yet",
        "mesh.yaml: ServiceEntry default/echo: spec.exportTo: not used by meshproxy yet",
        "mesh.yaml: ServiceEntry default/echo: spec.subjectAltNames: not used by meshproxy yet",
        "mesh.yaml: ServiceEntry default/echo: spec.ports[1]: port mysql protocol MYSQL: only HTTP is proxied "
        "in this release; the port is not served",
        "mesh.yaml: ServiceEntry default/echo: spec.ports[2]: port tcp-postgres protocol TCP: only HTTP is "
        "proxied in this release; the port is not served",
    ]


def test_selector_matching_nothing_warns(tmp_path):
    issues, warnings = issues_of(tmp_path, se("""\
        hosts: [echo.example.com]
        resolution: STATIC
        ports: [{number: 80, name: http}]
        workloadSelector: {labels: {app: echo}}
        """))
    assert issues == []
    assert warnings == ["mesh.yaml: ServiceEntry default/echo: spec.workloadSelector.labels: selects no "
                        "WorkloadEntry in namespace default (app=echo)"]


def test_empty_documents_are_skipped(tmp_path):
    write(tmp_path, "---\n---\n# only a comment\n---\n" + GOOD_SE + "---\n")
    cfg = load_config(tmp_path / "mesh.yaml")
    assert cfg.issues == [] and len(cfg.resources) == 1


def test_documents_before_a_syntax_error_are_kept(tmp_path):
    write(tmp_path, GOOD_SE + "---\nkind: [\n")
    cfg = load_config(tmp_path / "mesh.yaml")
    assert [r.name for r in cfg.resources] == ["echo"]
    assert len(cfg.issues) == 1 and ": line " in str(cfg.issues[0])


def test_directory_loading_is_sorted_non_recursive_and_uses_base_names(tmp_path):
    d = tmp_path / "conf"
    d.mkdir()
    write(d, GOOD_SE.replace("name: echo", "name: b-second"), "20-b.yml")
    write(d, GOOD_SE.replace("Echo.Example.COM", "a.example.com").replace("name: echo", "name: a-first"),
          "10-a.yaml")
    write(d, "not: [valid", "notes.txt")
    (d / "sub").mkdir()
    write(d / "sub", "kind: [", "broken.yaml")
    write(d, "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n", "30-gw.yaml")
    cfg = load_config(d)
    assert [r.name for r in cfg.resources] == ["a-first", "b-second"]
    assert cfg.files == [str(d / "10-a.yaml"), str(d / "20-b.yml"), str(d / "30-gw.yaml")]
    assert [str(i) for i in cfg.issues] == ["30-gw.yaml: Gateway default/gw: kind Gateway is not supported yet"]


def test_missing_path_raises_config_error(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "nope.yaml")
    assert [str(i) for i in ei.value.issues] == [f"{tmp_path / 'nope.yaml'}: no such file or directory"]


def test_not_utf8_is_an_issue(tmp_path):
    (tmp_path / "mesh.yaml").write_bytes(b"kind: \xff\n")
    cfg = load_config(tmp_path / "mesh.yaml")
    assert [i.message for i in cfg.issues] == ["not UTF-8 text (byte 6)"]


@pytest.mark.parametrize("text,seconds", [("5s", 5.0), ("1.5s", 1.5), ("100ms", 0.1), ("1m", 60.0),
                                          ("1h", 3600.0), ("1h30m", 5400.0), ("250us", 0.00025)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "-1s", "5 s", "1d", "s", "1.5.2s"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_circuit_breaking_example_in_the_docs_is_valid(tmp_path):
    """docs/configuration.md's circuit-breaking example (Istio's httpbin task) loads and compiles."""
    from control import build_snapshot
    from control.snapshot import CircuitBreakers

    docs = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")
    text = open(docs, encoding="utf-8").read()
    [block] = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]
               if b.startswith("# Istio's circuit-breaking task")]
    path = write(tmp_path, block, "httpbin.yaml")
    cfg = load_config(path)
    assert (cfg.issues, cfg.warnings) == ([], [])
    c = build_snapshot(str(path)).cluster("outbound|8000||httpbin.default.svc.cluster.local")
    assert c.circuit_breakers == CircuitBreakers(max_connections=1, max_pending_requests=1,
                                                 max_requests_per_connection=1)
    assert c.outlier_detection.consecutive_5xx == 1 and c.outlier_detection.max_ejection_percent == 100
