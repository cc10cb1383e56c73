"""AuthorizationPolicy: validation (field paths), which policies apply to a workload (root
namespace, namespace, selector), Istio's evaluation (a table over ``filters.rbac.Authorizer``),
and the filter in the engine on both builds (403 ``RBAC: access denied``, path normalisation
before matching, counters, response code details, AUDIT)."""
import textwrap

import pytest

from control import ConfigError, compile_snapshot, load_config
from control.compile import authorization_policies
from control.snapshot import Snapshot, Workload
from meshproxy.filters import rbac
import test_engine
from test_engine import OK, default_snapshot, respond

b = test_engine.b  # the fixtures: both builds, an engine over fake transports
make_engine = test_engine.make_engine

AP = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"


def policy(name, spec, namespace="default", api="security.istio.io/v1"):
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") if spec.strip() else "  {}"
    return (f"apiVersion: {api}\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n{body}\n---\n")


def load(tmp_path, text):
    p = tmp_path / "mesh.yaml"
    p.write_text(text)
    return load_config(str(p))


def issues(tmp_path, text):
    return [str(i).split(": ", 1)[1] for i in load(tmp_path, text).issues]


# --- validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    ("action: CUSTOM\nprovider: {name: ext}",
     ["AuthorizationPolicy default/p: spec.action: action CUSTOM (external authorization) is not supported yet",
      "AuthorizationPolicy default/p: spec.provider: provider (CUSTOM action) is not supported yet"]),
    ("targetRefs: [{kind: Gateway, name: gw}]",
     ["AuthorizationPolicy default/p: spec.targetRefs: targetRefs (waypoint and gateway policies) is not "
      "supported yet"]),
    ("rules: [{when: [{key: request.foo, values: [a]}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].when[0].key: unknown key "request.foo" (known keys: '
      "request.headers[<name>], source.ip, remote.ip, source.namespace, source.principal, "
      "source.serviceAccount, source.trustDomain, request.auth.principal, request.auth.audiences, "
      "request.auth.presenter, request.auth.claims[<name>], destination.ip, destination.port, "
      "connection.sni)"]),
    ("rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].when[0].key: "experimental.envoy.filters.network.mysql_proxy'
      '[db.table]": experimental.envoy.filters.* keys are not supported yet']),
    ("rules: [{when: [{key: source.ip, values: [10.0.0.0/33]}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].when[0].values[0]: "10.0.0.0/33" is not an IP address '
      "or CIDR block"]),
    ("rules: [{from: [{source: {notIpBlocks: [1.2.3]}}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].from[0].source.notIpBlocks[0]: "1.2.3" is not an IP '
      "address or CIDR block"]),
    ("rules: [{when: [{key: 'request.headers[x-a]'}]}]",
     ["AuthorizationPolicy default/p: spec.rules[0].when[0].values: at least one of values or notValues must "
      "be set for key request.headers[x-a]"]),
    ("rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].to[0].operation.paths[0]: invalid path template '
      '"/a/{**}/{*}": {**} is not the last operator']),
    ("rules: [{to: [{operation: {notPaths: ['/a/{id}']}}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].to[0].operation.notPaths[0]: invalid path template '
      '"/a/{id}": "{" or "}" beyond a supported template ({*} or {**} as a whole segment)']),
    ("rules: [{to: [{operation: {paths: [admin]}}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].to[0].operation.paths[0]: "admin" is not a path (it '
      'starts with "/", or "*" for a suffix match)']),
    ("rules: [{to: [{operation: {ports: ['0']}}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].to[0].operation.ports[0]: "0" is not a port (1-65535)']),
    ("rules: [{from: [{source: {}}]}]",
     ["AuthorizationPolicy default/p: spec.rules[0].from[0].source: `source` must not be empty (set at least "
      "one field)"]),
    ("rules: [{from: []}]",
     ["AuthorizationPolicy default/p: spec.rules[0].from: at least 1 item required"]),
    ("rules: [{from: [{source: {serviceAccounts: [sleep]}}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].from[0].source.serviceAccounts[0]: "sleep" is not a '
      'service account ("namespace/name")']),
    ("action: PERMIT",
     ['AuthorizationPolicy default/p: spec.action: "PERMIT" is not valid: expected one of ALLOW, DENY, AUDIT, '
      "CUSTOM"]),
    ("rules: [{form: [{source: {principals: [a]}}]}]",
     ['AuthorizationPolicy default/p: spec.rules[0].form: unknown field (did you mean "from"?)']),
], ids=["custom", "targetRefs", "unknown-key", "experimental-key", "bad-cidr", "bad-ipblock", "no-values",
        "template-any-not-last", "template-brace", "path-not-slash", "port-0", "empty-source", "empty-from",
        "service-account-form", "bad-action", "typo"])
def test_validation_errors_name_the_field(tmp_path, spec, expected):
    assert issues(tmp_path, policy("p", spec)) == expected


def test_valid_policies_both_api_versions_and_other_security_kinds_still_refused(tmp_path):
    text = (policy("a", "rules: [{}]") + policy("b", "", api="security.istio.io/v1beta1")
            + policy("c", """\
                action: DENY
                rules:
                - from: [{source: {notPrincipals: ['*'], remoteIpBlocks: [10.0.0.0/8], trustDomains: [td]}}]
                  to: [{operation: {hosts: ['*.example.com'], methods: [GET], paths: ['/a/{*}/b/{**}', '*.png']}}]
                  when:
                  - {key: 'request.auth.claims[groups][0]', values: [admin]}
                  - {key: destination.port, notValues: ['9090']}
                """)
            + "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {}\n")
    cfg = load(tmp_path, text)
    assert [str(i).split(": ", 1)[1] for i in cfg.issues] == [
        "RequestAuthentication default/r: kind RequestAuthentication is not supported yet"]
    assert sorted(r.name for r in cfg.of_kind("AuthorizationPolicy")) == ["a", "b", "c"]
    assert [r.spec["action"] for r in sorted(cfg.of_kind("AuthorizationPolicy"), key=lambda r: r.name)] == [
        "ALLOW", "ALLOW", "DENY"]


# --- scope ------------------------------------------------------------------------------------------

MESH = """\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server, namespace: prod}
spec: {address: 127.0.0.141, labels: {app: echo, version: v1}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: prod}
spec:
  hosts: [echo.prod.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
"""


def inbound_policies(tmp_path, text, workload="prod/server"):
    cfg = load(tmp_path, MESH + text)
    assert not cfg.issues, cfg.issues
    snap = compile_snapshot(cfg, workload=workload)
    return [(p.name, p.scope) for p in snap.listener("inbound").authorization]


def test_scope_root_namespace_namespace_and_selector(tmp_path):
    text = (policy("mesh", "rules: [{}]", namespace="istio-system")
            + policy("ns", "rules: [{}]", namespace="prod")
            + policy("other-ns", "rules: [{}]", namespace="dev")
            + policy("sel", "selector: {matchLabels: {app: echo}}\nrules: [{}]", namespace="prod")
            + policy("sel-miss", "selector: {matchLabels: {app: echo, version: v2}}", namespace="prod")
            + policy("mesh-sel", "selector: {matchLabels: {version: v1}}", namespace="istio-system"))
    assert inbound_policies(tmp_path, text) == [
        ("istio-system/mesh", "mesh"), ("istio-system/mesh-sel", "selector"), ("prod/ns", "namespace"),
        ("prod/sel", "selector")]


def test_root_namespace_is_a_bootstrap_setting(tmp_path):
    boot = "apiVersion: meshproxy.io/v1alpha1\nkind: Bootstrap\nmetadata: {name: b}\nspec: {rootNamespace: mesh}\n---\n"
    text = boot + policy("a", "", namespace="mesh") + policy("b", "", namespace="istio-system")
    assert inbound_policies(tmp_path, text) == [("mesh/a", "mesh")]


def test_no_policy_and_no_workload(tmp_path):
    assert inbound_policies(tmp_path, "") == []
    cfg = load(tmp_path, MESH + policy("p", "", namespace="prod"))
    snap = compile_snapshot(cfg)
    assert snap.listener("inbound") is None  # no workload: no inbound listener, nothing to enforce
    assert all(not lst.authorization for lst in snap.listeners)


def test_policies_round_trip_through_config_dump(tmp_path):
    cfg = load(tmp_path, MESH + policy("p", """\
        action: DENY
        rules: [{from: [{source: {notNamespaces: [prod]}}], when: [{key: source.ip, values: [10.0.0.1]}]}]
        """, namespace="prod"))
    snap = compile_snapshot(cfg, workload="prod/server")
    again = Snapshot.from_json(snap.to_json())
    assert again == snap
    [p] = again.listener("inbound").authorization
    [rule] = p.rules
    assert rule.sources[0][0].key == "source.namespace" and rule.sources[0][0].negate
    assert rule.conditions[0].field == "when[0].values"


def test_unsupported_field_errors_do_not_compile(tmp_path):
    with pytest.raises(ConfigError, match="targetRef"):
        compile_snapshot(load(tmp_path, MESH + policy("p", "targetRef: {kind: Gateway, name: g}")),
                         workload="prod/server")


# --- evaluation -------------------------------------------------------------------------------------

WL = Workload("server", "prod", "127.0.0.141", labels={"app": "echo"})


class _Cfg:
    def __init__(self, resources):
        self.resources = resources

    def of_kind(self, kind):
        return [r for r in self.resources if r.kind == kind]


def authorizer(tmp_path, *specs):
    """An Authorizer over policies ``(name, spec yaml)`` in namespace prod."""
    text = "".join(policy(name, spec, namespace="prod") for name, spec in specs)
    cfg = load(tmp_path, text)
    assert not cfg.issues, [str(i) for i in cfg.issues]
    return rbac.Authorizer(authorization_policies(_Cfg(cfg.resources), WL, "istio-system"))


def req(method="GET", path="/", host="echo.prod.svc.cluster.local:80", headers=None, ip="10.0.0.5",
        principal=None, auth=None, port=8080, dest="127.0.0.141"):
    import ipaddress
    values = {"request.method": method, "request.path": path, "request.host": rbac._strip_port(host),
              "source.ip": ipaddress.ip_address(ip), "remote.ip": ipaddress.ip_address(ip),
              "destination.ip": ipaddress.ip_address(dest), "destination.port": port,
              "source.principal.raw": principal, "request_auth": auth}
    for k, v in (headers or {}).items():
        values[f"request.headers[{k.lower()}]"] = v
    return rbac.Attributes(values=values)


SLEEP = "spiffe://cluster.local/ns/dev/sa/sleep"
ALLOW_GET = ("allow-get", "rules: [{to: [{operation: {methods: [GET]}}]}]")

CASES = [
    # (id, policies, request kwargs, expected: "allow" | "deny:<ns/name>:<rule>" | "deny:none")
    ("no-policy", [], {}, "allow"),
    ("allow-match", [ALLOW_GET], {}, "allow:prod/allow-get:0"),
    ("allow-no-match", [ALLOW_GET], {"method": "POST"}, "deny:none"),
    ("deny-match", [("d", "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]")],
     {"path": "/admin"}, "deny:prod/d:0"),
    ("deny-no-match", [("d", "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]")], {}, "allow"),
    ("deny-over-allow", [ALLOW_GET, ("d", "action: DENY\nrules: [{to: [{operation: {methods: [POST]}}]}, "
                                          "{to: [{operation: {methods: [GET]}}]}]")], {}, "deny:prod/d:1"),
    ("empty-spec-denies-all", [("nothing", "")], {}, "deny:none"),
    ("allow-all-rule", [("all", "rules: [{}]")], {"method": "DELETE", "path": "/x"}, "allow:prod/all:0"),
    ("deny-without-rules-matches-nothing", [("d", "action: DENY")], {}, "allow"),
    ("audit-does-not-decide", [("a", "action: AUDIT\nrules: [{}]")], {}, "allow"),
    ("audit-with-allow", [("a", "action: AUDIT\nrules: [{}]"), ("nothing", "")], {}, "deny:none"),
    # not* forms
    ("notMethods", [("p", "rules: [{to: [{operation: {notMethods: [DELETE]}}]}]")], {"method": "DELETE"},
     "deny:none"),
    ("notPaths", [("p", "rules: [{to: [{operation: {notPaths: ['/private/*']}}]}]")], {"path": "/public"},
     "allow:prod/p:0"),
    ("notHosts", [("p", "rules: [{to: [{operation: {notHosts: [echo.prod.svc.cluster.local]}}]}]")],
     {"host": "ECHO.prod.svc.cluster.local:80"}, "deny:none"),
    ("notPorts", [("p", "rules: [{to: [{operation: {notPorts: ['8080']}}]}]")], {"port": 9090},
     "allow:prod/p:0"),
    ("notIpBlocks", [("p", "rules: [{from: [{source: {notIpBlocks: [10.0.0.0/24]}}]}]")], {"ip": "10.0.0.9"},
     "deny:none"),
    ("notRemoteIpBlocks", [("p", "rules: [{from: [{source: {notRemoteIpBlocks: [10.0.0.5]}}]}]")],
     {"ip": "10.0.1.5"}, "allow:prod/p:0"),
    ("notPrincipals-plaintext-matches", [("p", "rules: [{from: [{source: {notPrincipals: ['*']}}]}]")], {},
     "allow:prod/p:0"),
    ("notNamespaces-with-identity", [("p", "rules: [{from: [{source: {notNamespaces: [dev]}}]}]")],
     {"principal": SLEEP}, "deny:none"),
    ("notRequestPrincipals-no-token", [("p", "action: DENY\nrules: [{from: [{source: "
                                             "{notRequestPrincipals: ['*']}}]}]")], {}, "deny:prod/p:0"),
    ("notServiceAccounts", [("p", "rules: [{from: [{source: {notServiceAccounts: [dev/sleep]}}]}]")],
     {"principal": SLEEP}, "deny:none"),
    ("notTrustDomains", [("p", "rules: [{from: [{source: {notTrustDomains: [other.td]}}]}]")],
     {"principal": SLEEP}, "allow:prod/p:0"),
    ("notValues-header-absent", [("p", "rules: [{when: [{key: 'request.headers[x-debug]', notValues: ['on']}]}]")],
     {}, "allow:prod/p:0"),
    # identities absent today (plaintext, no JWT): positive fields do not match
    ("principals-plaintext", [("p", "rules: [{from: [{source: {principals: ['*']}}]}]")], {}, "deny:none"),
    ("namespaces-plaintext", [("p", "rules: [{from: [{source: {namespaces: [dev]}}]}]")], {}, "deny:none"),
    ("request-principals-no-token", [("p", "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]")], {},
     "deny:none"),
    # ... and match once the inputs are there
    ("principals-mtls", [("p", "rules: [{from: [{source: {principals: [cluster.local/ns/dev/sa/sleep]}}]}]")],
     {"principal": SLEEP}, "allow:prod/p:0"),
    ("namespaces-prefix", [("p", "rules: [{from: [{source: {namespaces: ['de*']}}]}]")], {"principal": SLEEP},
     "allow:prod/p:0"),
    ("service-account", [("p", "rules: [{from: [{source: {serviceAccounts: [dev/sleep]}}]}]")],
     {"principal": SLEEP}, "allow:prod/p:0"),
    ("when-source-namespace", [("p", "rules: [{when: [{key: source.namespace, values: [dev]}]}]")],
     {"principal": SLEEP}, "allow:prod/p:0"),
    ("jwt-claims-nested", [("p", "rules: [{when: [{key: 'request.auth.claims[org][team]', values: [blue]}, "
                                 "{key: request.auth.audiences, values: [api*]}]}]")],
     {"auth": {"principal": "iss/sub", "audiences": ["web", "api.example"], "claims": {"org": {"team": "blue"}}}},
     "allow:prod/p:0"),
    ("request-principal", [("p", "rules: [{from: [{source: {requestPrincipals: ['iss/*']}}]}]")],
     {"auth": {"principal": "iss/sub"}}, "allow:prod/p:0"),
    # string forms
    ("prefix-path", [("p", "rules: [{to: [{operation: {paths: ['/api/*']}}]}]")], {"path": "/api/v1"},
     "allow:prod/p:0"),
    ("suffix-path", [("p", "rules: [{to: [{operation: {paths: ['*.png']}}]}]")], {"path": "/img/a.png"},
     "allow:prod/p:0"),
    ("exact-path-no-prefix", [("p", "rules: [{to: [{operation: {paths: [/api]}}]}]")], {"path": "/api/v1"},
     "deny:none"),
    ("presence-path", [("p", "rules: [{to: [{operation: {paths: ['*']}}]}]")], {"path": "/x"}, "allow:prod/p:0"),
    ("template-one", [("p", "rules: [{to: [{operation: {paths: ['/users/{*}/profile']}}]}]")],
     {"path": "/users/42/profile"}, "allow:prod/p:0"),
    ("template-one-not-two", [("p", "rules: [{to: [{operation: {paths: ['/users/{*}/profile']}}]}]")],
     {"path": "/users/4/2/profile"}, "deny:none"),
    ("template-one-not-empty", [("p", "rules: [{to: [{operation: {paths: ['/users/{*}']}}]}]")],
     {"path": "/users/"}, "deny:none"),
    ("template-any", [("p", "rules: [{to: [{operation: {paths: ['/files/{**}']}}]}]")],
     {"path": "/files/a/b/c.txt"}, "allow:prod/p:0"),
    ("template-any-then-literal", [("p", "rules: [{to: [{operation: {paths: ['/a/{**}/edit']}}]}]")],
     {"path": "/a/x/y/edit"}, "allow:prod/p:0"),
    ("template-literal-differs", [("p", "rules: [{to: [{operation: {paths: ['/files/{**}']}}]}]")],
     {"path": "/filesx/a"}, "deny:none"),
    ("host-suffix-port-ignored", [("p", "rules: [{to: [{operation: {hosts: ['*.prod.svc.cluster.local']}}]}]")],
     {"host": "Echo.Prod.svc.cluster.local:80"}, "allow:prod/p:0"),
    ("ports", [("p", "rules: [{to: [{operation: {ports: ['8080']}}]}]")], {}, "allow:prod/p:0"),
    # when
    ("when-header", [("p", "rules: [{when: [{key: 'request.headers[X-Tenant]', values: [acme, 'glo*']}]}]")],
     {"headers": {"x-tenant": "globex"}}, "allow:prod/p:0"),
    ("when-header-missing", [("p", "rules: [{when: [{key: 'request.headers[X-Tenant]', values: ['*']}]}]")],
     {}, "deny:none"),
    ("when-source-ip", [("p", "action: DENY\nrules: [{when: [{key: source.ip, values: [10.0.0.0/16]}]}]")],
     {"ip": "10.0.200.1"}, "deny:prod/p:0"),
    ("when-source-ip-v6-no-match", [("p", "rules: [{when: [{key: source.ip, values: [10.0.0.0/8]}]}]")],
     {"ip": "::1"}, "deny:none"),
    ("when-destination-port", [("p", "rules: [{when: [{key: destination.port, values: ['8080']}]}]")], {},
     "allow:prod/p:0"),
    ("when-sni-absent", [("p", "rules: [{when: [{key: connection.sni, values: ['*']}]}]")], {}, "deny:none"),
    # AND within a source, OR across from[], all when[]
    ("and-within-source", [("p", "rules: [{from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.0.0.5]}}]}]")],
     {}, "deny:none"),
    ("or-across-from", [("p", "rules: [{from: [{source: {ipBlocks: [192.168.0.0/16]}}, "
                              "{source: {ipBlocks: [10.0.0.0/8]}}]}]")], {}, "allow:prod/p:0"),
    ("all-of-when", [("p", "rules: [{when: [{key: source.ip, values: [10.0.0.5]}, "
                           "{key: 'request.headers[x-a]', values: [b]}]}]")], {}, "deny:none"),
    ("from-and-to", [("p", "rules: [{from: [{source: {ipBlocks: [10.0.0.5]}}], to: [{operation: {methods: [PUT]}}]}]")],
     {}, "deny:none"),
]


@pytest.mark.parametrize("policies,kw,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_evaluation(tmp_path, policies, kw, expected):
    authz = authorizer(tmp_path, *policies)
    allowed, p, i = authz.decide(req(**kw))
    got = ("allow" if allowed else "deny") + (f":{p.name}:{i}" if p is not None else (":none" if not allowed
                                                                                      else ""))
    assert got == expected


def test_audit_is_reported_separately(tmp_path):
    authz = authorizer(tmp_path, ("a", "action: AUDIT\nrules: [{to: [{operation: {methods: [POST]}}]}]"))
    assert authz.audited(req(method="POST"))[0].name == "prod/a"
    assert authz.audited(req())[0] is None
    assert authz.decide(req(method="POST"))[0] is rbac.ALLOWED


def test_response_details_are_envoys(tmp_path):
    authz = authorizer(tmp_path, ("deny-admin", "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]"),
                       ALLOW_GET)
    allowed, p, i = authz.decide(req(path="/admin"))
    assert rbac.response_details(p, i) == "rbac_access_denied_matched_policy[ns[prod]-policy[deny-admin]-rule[0]]"
    assert rbac.response_details(*authz.decide(req(method="PUT"))[1:]) == "rbac_access_denied_matched_policy[none]"


# --- in the engine (both builds) -------------------------------------------------------------------------

def engine_with(tmp_path, make_engine, *specs):
    authz_policies = authorization_policies(
        _Cfg(load(tmp_path, "".join(policy(n, s, namespace="prod") for n, s in specs)).resources),
        WL, "istio-system")
    stats = rbac.new_stats()
    e = make_engine(default_snapshot(), extra_filters=(rbac.factory(authz_policies, stats, "virtualInbound"),))
    return e, stats


def send(e, raw):
    client_t, conn = e.client()
    conn.data_received(raw)
    e.loop.run()
    return client_t, conn


def test_engine_denies_with_403_and_counts(b, make_engine, tmp_path):
    e, stats = engine_with(tmp_path, make_engine, ("public", "rules: [{to: [{operation: {paths: ['/public/*']}}]}]"))
    client_t, conn = send(e, b"GET /public/x HTTP/1.1\r\nHost: web\r\n\r\n")
    (up_t,) = e.loop.upstreams
    assert up_t.take().startswith(b"GET /public/x HTTP/1.1")
    respond(up_t)
    assert client_t.take() == OK
    client_t, conn = send(e, b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n")
    out = client_t.take()
    assert out.startswith(b"HTTP/1.1 403 ") and out.endswith(b"\r\n\r\nRBAC: access denied"), out
    assert len(e.loop.upstreams) == 1  # nothing went upstream
    assert stats == {"allowed": 1, "denied": 1, "logged": 0, "not_logged": 0}
    assert conn.stream is None or conn.stream.filter_state["response_code_details"] == \
        "rbac_access_denied_matched_policy[none]"


def test_path_traversal_is_normalised_before_matching(b, make_engine, tmp_path):
    e, stats = engine_with(tmp_path, make_engine,
                           ("public", "rules: [{to: [{operation: {paths: ['/public/*']}}]}]"),
                           ("no-admin", "action: DENY\nrules: [{to: [{operation: {paths: ['/admin', '/admin/*']}}]}]"))
    for raw in (b"GET /public/../admin HTTP/1.1\r\nHost: web\r\n\r\n",
                b"GET /public/%2e%2e/admin/x HTTP/1.1\r\nHost: web\r\n\r\n"):
        client_t, _ = send(e, raw)
        assert client_t.take().startswith(b"HTTP/1.1 403 ")
    assert not e.loop.upstreams
    assert stats["denied"] == 2


def test_audit_in_the_engine_logs_and_does_not_deny(b, make_engine, tmp_path, caplog):
    e, stats = engine_with(tmp_path, make_engine, ("watch", "action: AUDIT\nrules: [{to: [{operation: {methods: [GET]}}]}]"))
    with caplog.at_level("INFO", logger="meshproxy.rbac"):
        client_t, _ = send(e, b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n")
    (up_t,) = e.loop.upstreams
    respond(up_t)
    assert client_t.take() == OK
    assert stats == {"allowed": 1, "denied": 0, "logged": 1, "not_logged": 0}
    assert "AUDIT prod/watch rule[0]" in caplog.text


def test_denial_is_logged_with_policy_and_rule(b, make_engine, tmp_path, caplog):
    e, _ = engine_with(tmp_path, make_engine, ("d", "action: DENY\nrules: [{}, {to: [{operation: {methods: [GET]}}]}]"))
    with caplog.at_level("INFO", logger="meshproxy.rbac"):
        send(e, b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n")
    assert "DENY policy prod/d rule[0]" in caplog.text


# --- meshproxy explain --------------------------------------------------------------------------------

def test_explain_shows_policies_and_decision(tmp_path):
    from meshproxy.explain import explain
    cfg = load(tmp_path, MESH + policy("public", "rules: [{to: [{operation: {paths: ['/public/*']}}]}]",
                                       namespace="prod")
               + policy("no-admin", "action: DENY\nrules: [{to: [{operation: {paths: ['/admin']}}]}]",
                        namespace="prod"))
    snap = compile_snapshot(cfg, workload="prod/server")
    lines, summary = explain(snap, "GET", "http://echo.prod.svc.cluster.local/public/../admin", [], inbound=True)
    text = "\n".join(lines)
    assert summary == {"status": 403, "authz": "rbac_access_denied_matched_policy[ns[prod]-policy[no-admin]-rule[0]]"}
    assert "AuthorizationPolicies: prod/no-admin (DENY, namespace), prod/public (ALLOW, namespace)" in text
    assert "result    denied by DENY policy prod/no-admin rule[0]: 403 RBAC: access denied" in text
    lines, summary = explain(snap, "GET", "http://echo.prod.svc.cluster.local/other", [], inbound=True)
    assert summary["status"] == 403 and "denied: no ALLOW policy matched" in "\n".join(lines)
    assert "prod/public rule[0]: to[0].operation.paths does not match" in "\n".join(lines)
    lines, summary = explain(snap, "GET", "http://echo.prod.svc.cluster.local/public/x", [], inbound=True)
    assert summary["status"] is None and "authz     allowed by prod/public rule[0]" in lines
    # the outbound listener has no policies
    lines, _ = explain(snap, "GET", "http://echo.prod.svc.cluster.local/admin", [])
    assert not any(ln.startswith("authz") for ln in lines)
