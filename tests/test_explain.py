"""``meshproxy explain``: the command (subprocess) and ``meshproxy.explain.explain()`` on a table
of requests against bookinfo and a fuller VirtualService."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from control import build_snapshot
from meshproxy.explain import ExplainError, explain

ROOT = Path(__file__).resolve().parents[1]
BOOKINFO = ROOT / "tests" / "configs" / "bookinfo.yaml"
REVIEWS = "reviews.default.svc.cluster.local"
V1 = f"outbound|9080|v1|{REVIEWS}"
V2 = f"outbound|9080|v2|{REVIEWS}"
V3 = f"outbound|9080|v3|{REVIEWS}"

FULL = textwrap.dedent("""\
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: web-v1}
    spec: {address: 127.0.0.31, ports: {http: 8080}, labels: {app: web, version: v1}}
    ---
    apiVersion: networking.istio.io/v1
    kind: WorkloadEntry
    metadata: {name: web-v2}
    spec: {address: 127.0.0.32, ports: {http: 8080}, labels: {app: web, version: v2}}
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: web}
    spec:
      hosts: [web.default.svc.cluster.local]
      location: MESH_INTERNAL
      resolution: STATIC
      ports: [{number: 80, name: http, protocol: HTTP}]
      workloadSelector: {labels: {app: web}}
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: shadow}
    spec:
      hosts: [shadow.default.svc.cluster.local]
      location: MESH_INTERNAL
      resolution: STATIC
      ports: [{number: 80, name: http, protocol: HTTP}]
      endpoints: [{address: 127.0.0.33}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: strict}
    spec:
      hosts: [strict.default.svc.cluster.local]
      location: MESH_INTERNAL
      resolution: STATIC
      ports: [{number: 80, name: http, protocol: HTTP}]
      endpoints: [{address: 127.0.0.34}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: plain}
    spec:
      hosts: [plain.default.svc.cluster.local]
      location: MESH_INTERNAL
      resolution: STATIC
      ports: [{number: 80, name: http, protocol: HTTP}]
      endpoints: [{address: 127.0.0.35}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: web}
    spec:
      host: web
      subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: strict}
    spec:
      hosts: [strict]
      http:
      - match: [{uri: {prefix: /only}}]
        route: [{destination: {host: strict}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: web}
    spec:
      hosts: [web]
      http:
      - name: moved
        match: [{uri: {prefix: /old-site}}]
        redirect: {uri: /new-site, authority: www.example.com, port: 8443, scheme: https,
                   redirectCode: 302}
      - name: maintenance
        match: [{uri: {exact: /down}}]
        directResponse: {status: 503, body: {string: "back soon"}}
      - name: chaos
        match: [{headers: {x-chaos: {exact: "on"}}}]
        fault:
          abort: {httpStatus: 503, percentage: {value: 25}}
          delay: {fixedDelay: 300ms, percentage: {value: 50}}
        route: [{destination: {host: web, subset: v2}}]
      - name: api
        match: [{uri: {prefix: /api/}, method: {exact: GET}}]
        rewrite: {uri: /v1/, authority: api.internal}
        headers:
          request: {set: {x-route: api}, remove: [x-debug]}
          response: {add: {x-served: web}}
        route:
        - destination: {host: web, subset: v1}
          weight: 75
          headers: {request: {set: {x-subset: v1}}}
        - destination: {host: web, subset: v2}
          weight: 25
        mirror: {host: shadow}
        mirrorPercentage: {value: 10}
      - name: rx
        match: [{uri: {regex: "/items/[0-9]+/.*"}}]
        rewrite: {uriRegexRewrite: {match: "^/items/([0-9]+)/(.*)$", rewrite: "/i/\\\\2?id=\\\\1"}}
        route: [{destination: {host: web, subset: v1}}]
    """)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    p = tmp_path_factory.mktemp("explain") / "full.yaml"
    p.write_text(FULL)
    return p


@pytest.fixture(scope="module")
def bookinfo():
    return build_snapshot(str(BOOKINFO), workload="productpage")


def run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                     else "")
    return subprocess.run([sys.executable, "-m", "meshproxy", "explain"] + list(args),
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=60)


def cli_json(*args):
    r = run_cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.rstrip("\n").split("\n")
    return lines[:-1], json.loads(lines[-1])


# -- bookinfo: the table ------------------------------------------------------------------------------

BOOKINFO_TABLE = [
    # (url, headers, summary subset, lines that must appear)
    (f"http://{REVIEWS}:9080/reviews/1", ["end-user: jason"],
     {"route": "default/reviews http[0]", "cluster": V2, "destinations": [[V2, 100]]},
     ["  MATCH  default/reviews http[0] 'jason': match[0]: header end-user exact 'jason'",
      f"  {V2}  weight 100 (100%)",
      "  lb        RING_HASH on header end-user (DestinationRule default/reviews)"]),
    ("http://reviews:9080/reviews/1", ["end-user: bob"],
     {"route": "default/reviews http[1]", "destinations": [[V1, 90], [V3, 10]]},
     ["    no   default/reviews http[0] 'jason': match[0]: header end-user: bob does not match "
      "exact 'jason'",
      "  MATCH  default/reviews http[1] 'split': matches every request",
      "destinations", f"  {V1}  weight 90 (90%)", f"  {V3}  weight 10 (10%)",
      "  lb        RANDOM (DestinationRule default/reviews)",
      "  lb        ROUND_ROBIN (DestinationRule default/reviews)",
      "  endpoint  127.0.0.13:9080  weight 2  locality us-west/zone1  workload "
      "default/reviews-v3  app=reviews,version=v3"]),
    ("http://reviews/", [],
     {"route": "default/reviews http[1]"},
     ["    no   default/reviews http[0] 'jason': match[0]: header end-user is absent"]),
    ("http://reviews/", ["End-User: JASON"],
     {"route": "default/reviews http[1]"},
     ["    no   default/reviews http[0] 'jason': match[0]: header end-user: JASON does not "
      "match exact 'jason'"]),
    ("http://details:9080/x", [],
     {"route": "default", "cluster": "outbound|9080||details.default.svc.cluster.local"},
     ["routes    no VirtualService for this host: the default route sends everything to the "
      "service", "  lb        LEAST_REQUEST (Istio's default)"]),
    ("http://unknown.example.com/", [],
     {"status": 404, "flags": "NR"},
     ["no virtual host has the domain 'unknown.example.com': 404 NR (no route)"]),
]


@pytest.mark.parametrize("url,headers,summary,want", BOOKINFO_TABLE,
                         ids=["jason", "bob", "no-user", "case", "no-vs", "unknown"])
def test_bookinfo_function(bookinfo, url, headers, summary, want):
    lines, s = explain(bookinfo, "GET", url, headers)
    for k, v in summary.items():
        got = s.get(k)
        assert (json.loads(json.dumps(got)) if got is not None else None) == v, (k, s)
    for w in want:
        assert w in lines, "\n".join(lines)


@pytest.mark.parametrize("url,headers,summary,want", BOOKINFO_TABLE[:2] + BOOKINFO_TABLE[5:],
                         ids=["jason", "bob", "unknown"])
def test_bookinfo_cli(url, headers, summary, want):
    args = ["--config", str(BOOKINFO), "GET", url]
    for h in headers:
        args += ["-H", h]
    lines, s = cli_json(*args)
    for k, v in summary.items():
        assert s.get(k) == v, (k, s)
    for w in want:
        assert w in lines, "\n".join(lines)


def test_unknown_host_lists_known_domains(bookinfo):
    lines, s = explain(bookinfo, "GET", "http://nope/", [])
    assert s == {"status": 404, "flags": "NR"}
    known = [ln for ln in lines if ln.startswith("  known domains: ")]
    assert len(known) == 1
    names = known[0][len("  known domains: "):].rstrip(" .").split(", ")
    assert "details" in names and "productpage" in names
    assert names == sorted(names)


def test_jason_source_labels_fault_only_for_reviews_v2():
    """ratings' 7s delay route has sourceLabels {app: reviews, version: v2}."""
    url = "http://ratings.default.svc.cluster.local:9080/ratings/0"
    v2 = build_snapshot(str(BOOKINFO), workload="reviews-v2")
    lines, s = explain(v2, "GET", url, ["end-user: jason"])
    assert s["route"] == "default/ratings http[0]"
    assert "fault     delay 7s for 100% of requests (flag DI)" in lines
    lines, s = explain(v2, "GET", url, ["end-user: bob"])
    assert s["route"] == "default/ratings http[1]"
    assert not any(ln.startswith("fault") for ln in lines)
    pp = build_snapshot(str(BOOKINFO), workload="productpage")
    lines, s = explain(pp, "GET", url, ["end-user: jason"])
    assert not any(ln.startswith("fault") for ln in lines)
    # the CLI with --workload agrees
    lines, s = cli_json("--config", str(BOOKINFO), "--workload", "reviews-v2", "GET", url,
                        "-H", "end-user: jason")
    assert s["route"] == "default/ratings http[0]"
    assert "fault     delay 7s for 100% of requests (flag DI)" in lines


# -- a fuller VirtualService ----------------------------------------------------------------------

WEB = "web.default.svc.cluster.local"
W1 = f"outbound|80|v1|{WEB}"
W2 = f"outbound|80|v2|{WEB}"


def test_redirect(full):
    lines, s = explain(build_snapshot(str(full)), "GET", "http://web/old-site/a?x=1", [])
    assert s["status"] == 302
    assert s["location"] == "https://www.example.com:8443/new-site?x=1"
    assert "result    redirect 302 to https://www.example.com:8443/new-site?x=1" in lines
    assert any(line.startswith("  MATCH  default/web http[0] 'moved': match[0]: ")
               for line in lines)


def test_direct_response(full):
    lines, s = explain(build_snapshot(str(full)), "GET", "http://web/down", [])
    assert s == {"route": "default/web http[1]", "status": 503}
    assert "result    direct response 503 body 'back soon'" in lines
    assert "    no   default/web http[0] 'moved': match[0]: uri /down does not match prefix " \
           "'/old-site'" in lines


def test_fault(full):
    lines, s = explain(build_snapshot(str(full)), "GET", "http://web/x", ["x-chaos: on"])
    assert s["route"] == "default/web http[2]" and s["cluster"] == W2
    assert "fault     abort with 503 for 25% of requests (flag FI)" in lines
    assert "fault     delay 0.3s for 50% of requests (flag DI)" in lines


def test_rewrite_headers_weights_mirror(full):
    lines, s = explain(build_snapshot(str(full)), "GET", "http://web/api/items?q=1",
                       ["x-debug: 1"])
    assert s["route"] == "default/web http[3]"
    assert s["destinations"] == [(W1, 75), (W2, 25)]
    assert "cluster" not in s
    for want in [
        "    no   default/web http[2] 'chaos': match[0]: header x-chaos is absent",
        "rewrite   path /api/items?q=1 -> /v1/items?q=1",
        "rewrite   authority web -> api.internal",
        "request headers: set x-route: api; remove x-debug",
        "response headers: add x-served: web",
        f"  {W1}  weight 75 (75%)",
        "      request headers: set x-subset: v1",
        f"  {W2}  weight 25 (25%)",
        "mirror    outbound|80||shadow.default.svc.cluster.local for 10% of requests "
        "(fire and forget; Host gets -shadow)",
    ]:
        assert want in lines, "\n".join(lines)


def test_method_mismatch_falls_through(full):
    lines, s = explain(build_snapshot(str(full)), "POST", "http://web/api/items", [])
    assert s == {"status": 404, "flags": "NR"}
    assert "    no   default/web http[3] 'api': match[0]: method POST does not match exact " \
           "'GET'" in lines
    assert "result    no route matched: 404 NR" in lines


def test_regex_rewrite(full):
    lines, s = explain(build_snapshot(str(full)), "GET", "http://web/items/42/detail", [])
    assert s["route"] == "default/web http[4]" and s["cluster"] == W1
    assert "rewrite   path /items/42/detail -> /i/detail?id=42" in lines


def test_all_routes_miss_is_404(full):
    lines, s = cli_json("--config", str(full), "GET", "http://strict/elsewhere")
    assert s == {"status": 404, "flags": "NR"}
    assert "    no   default/strict http[0]: match[0]: uri /elsewhere does not match prefix " \
           "'/only'" in lines
    assert lines[-1] == "result    no route matched: 404 NR"


def test_cli_full_json(full):
    lines, s = cli_json("--config", str(full), "GET", "http://web.default.svc.cluster.local/api/x")
    assert s["route"] == "default/web http[3]"
    assert s["destinations"] == [[W1, 75], [W2, 25]]
    assert lines[0] == "request   GET /api/x  Host: web.default.svc.cluster.local"


# -- errors -----------------------------------------------------------------------------------------

def test_cli_without_json_prints_no_summary():
    r = run_cli("--config", str(BOOKINFO), "GET", "http://reviews/")
    assert r.returncode == 0
    assert not r.stdout.strip().splitlines()[-1].startswith("{")


def test_cli_bad_config(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(FULL.replace("redirectCode: 302", "redirectCode: 299"))
    r = run_cli("--config", str(p), "GET", "http://web/")
    assert r.returncode == 1
    assert "VirtualService default/web: spec.http[0].redirect.redirectCode" in r.stderr


def test_cli_url_without_host():
    r = run_cli("--config", str(BOOKINFO), "GET", "http:///path")
    assert r.returncode == 2
    assert "the URL needs a host" in r.stderr


def test_function_bad_header(bookinfo):
    with pytest.raises(ExplainError):
        explain(bookinfo, "GET", "http://reviews/", ["no-colon"])


def test_inbound_needs_workload():
    snap = build_snapshot(str(BOOKINFO).replace("bookinfo", "mesh"))
    with pytest.raises(ExplainError):
        explain(snap, "GET", "http://echo/", [], inbound=True)


# -- every outcome of the route decision, explain next to the engine's decide ----------------------

OUTCOMES = [
    # (method, url, headers, explain's status, the decision's action and status)
    ("GET", "http://web/api/x", [], None, "route", 0),
    ("GET", "http://web/down", [], 503, "local", 503),  # direct response
    ("GET", "http://web/old-site/a", [], 302, "local", 302),  # redirect
    ("GET", "http://strict/elsewhere", [], 404, "local", 404),  # no route matched: NR
    ("GET", "http://nowhere.example/", [], 404, "local", 404),  # no virtual host: NR
    ("GET", "http://plain/", [], None, "route", 0),  # no VirtualService: the default route
    ("CONNECT", "http://plain/", [], 405, "local", 405),  # CONNECT on the default route
    # CONNECT's target is an authority, not a path: it matches no uri route here
    ("CONNECT", "http://web/api/x", [], 404, "local", 404),
]


@pytest.mark.parametrize("method,url,headers,status,action,dstatus", OUTCOMES,
                         ids=["route", "direct", "redirect", "nr-route", "nr-host", "default",
                              "connect-default", "connect-vs"])
def test_explain_and_the_engine_decide_alike(full, impl, method, url, headers, status, action,
                                             dstatus):
    from meshproxy.explain import build_request
    snap = build_snapshot(str(full))
    _, s = explain(snap, method, url, headers)
    assert s.get("status") == status, s
    # The engine's own decision for the same request, on both builds.
    router, http1 = impl.router, impl.http1
    lst = snap.listener("outbound")
    rc = router.build_route_context(lst, {c.name: c.name for c in snap.clusters})
    p = http1.RequestParser()
    p.parse(build_request(method, url, headers))
    d = router.decide(rc, router.RequestView(p, b"http", lst.port))
    assert (("route" if d.action == router.A_ROUTE else "local"), d.status) == (action, dstatus)
    if action == "local" and status == 404:
        assert d.flags == "NR"


def test_connect_on_a_matching_virtualservice_route_is_405(bookinfo):
    # reviews' second route matches every request: CONNECT is then refused, not proxied
    lines, s = explain(bookinfo, "CONNECT", f"http://{REVIEWS}:9080/", [])
    assert s["status"] == 405 and s["route"] == "default/reviews http[1]", s
    assert "result    CONNECT is not proxied: 405" in lines


# -- circuit breakers, retry budget, the inbound retry policy ---------------------------------------

WEB_RULE = """\
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
# FULL with limits on web (v2 with its own, and a retry budget) and an all-defaults budget on shadow.
BREAKERS = FULL.replace(WEB_RULE, """\
  host: web
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, maxConnectionDuration: 30s}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 1}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 100, maxRetries: 10}}
      retryBudget: {percent: 25, minRetryConcurrency: 5, budgetInterval: 10s}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shadow}
spec:
  host: shadow
  trafficPolicy:
    retryBudget: {}
""")


def test_breakers_and_retry_budget_lines(tmp_path):
    assert WEB_RULE in FULL
    p = tmp_path / "breakers.yaml"
    p.write_text(BREAKERS)
    snap = build_snapshot(str(p))
    lines, s = explain(snap, "GET", "http://web/api/x", [])
    assert s["destinations"] == [(W1, 75), (W2, 25)]
    v1 = lines[lines.index(f"cluster   {W1}"):lines.index(f"cluster   {W2}")]
    v2 = lines[lines.index(f"cluster   {W2}"):]
    assert ("  breakers  maxConnections 1, http1MaxPendingRequests 1, maxRequestsPerConnection 1, "
            "maxConnectionDuration 30s (DestinationRule default/web)") in v1
    assert not any(ln.startswith("  retry budget") for ln in v1)
    # the subset's connectionPool replaces the top-level one; its budget replaces maxRetries
    assert ("  breakers  http2MaxRequests 100, maxRetries 10 (the retry budget applies instead) "
            "(DestinationRule default/web)") in v2
    assert ("  retry budget 25% of the requests of the last 10s (at least 5 concurrent retries) "
            "(DestinationRule default/web)") in v2
    lines, s = explain(snap, "GET", "http://shadow/", [])
    assert "  breakers  Istio's defaults (no limits)" in lines
    assert ("  retry budget 20% of active requests (at least 3 concurrent retries) "
            "(DestinationRule default/shadow)") in lines
    lines, s = explain(snap, "GET", "http://plain/", [])
    assert "  breakers  Istio's defaults (no limits)" in lines
    assert not any(ln.startswith("  retry budget") for ln in lines)


def test_inbound_default_route_retries_reset_before_request():
    snap = build_snapshot(str(BOOKINFO).replace("bookinfo", "mesh"), workload="default/server")
    lines, s = explain(snap, "GET", "http://echo/", [], inbound=True)
    assert s == {"status": None, "route": "default", "cluster": "inbound|8080||"}
    for want in [
        "routes    no VirtualService for this host: the default route sends everything to the application",
        "retries   2 attempts on reset-before-request (Istio's default)",
        "cluster   inbound|8080||",
        "  breakers  Istio's defaults (no limits)",
    ]:
        assert want in lines, "\n".join(lines)
    # outbound, the same host: Istio's outbound default policy
    lines, s = explain(snap, "GET", "http://echo/", [])
    assert s["route"] == "default"
    assert ("retries   2 attempts on connect-failure,refused-stream,unavailable,cancelled,"
            "retriable-status-codes (Istio's default)") in lines


def test_a_virtualservice_route_on_the_fast_path_is_named(bookinfo):
    # productpage's sidecar drops ratings' sourceLabels route: the other one matches everything
    lines, s = explain(bookinfo, "GET", "http://ratings:9080/ratings/0", ["end-user: jason"])
    assert s["route"] == "default/ratings http[1]"
    assert "routes    VirtualService default/ratings: http[1] sends everything to one destination" in lines
