"""Traffic management in control: VirtualService, DestinationRule, ServiceEntry DNS/NONE/wildcards.

Real YAML (tests/configs/bookinfo.yaml, or files written to tmp_path) compiled to the Snapshot
contract; every validation error with its exact string; regexes checked by RE2.
"""
import json
import os
import textwrap

import pytest

from control import ConfigError, build_snapshot, load_config
from control import regex
from control.config.networking import LB_SIMPLE
from control.policy import SIMPLE_LB_POLICIES
from control.snapshot import (RetryPolicy, DEFAULT_LB_POLICY, LB_POLICIES, MAX_UNLIMITED, CircuitBreakers, Destination,
                              DirectResponse, Endpoint, Fault, HashPolicy, HeaderMatch, HeaderOps, LocalityLb, Mirror,
                              QueryMatch, Redirect, RetryBudget, Rewrite, Route, RouteMatch, Snapshot, StringMatch)

HERE = os.path.dirname(__file__)
BOOKINFO = os.path.join(HERE, "configs", "bookinfo.yaml")
REVIEWS = "reviews.default.svc.cluster.local"


def doc(kind, name, spec, namespace="default"):
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (f"apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n{body}\n---\n")


def write(tmp_path, text, name="mesh.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


TCP_WARNING = "only HTTP is proxied"  # SERVICES has a TCP port: that warning is not the subject here


def warnings_of(snap):
    return [str(w).split(": ", 2)[2] for w in snap.warnings if TCP_WARNING not in str(w)]


def vhost(snap, name):
    [vh] = [v for v in snap.listener("outbound").virtual_hosts if v.name == name]
    return vh


# --- Bookinfo ---------------------------------------------------------------------------------------


def test_bookinfo_reviews_routes():
    snap = build_snapshot(BOOKINFO, workload="productpage")
    assert snap.warnings == ()
    jason, split = vhost(snap, f"{REVIEWS}:9080").routes
    assert jason == Route(
        name="jason",
        matches=(RouteMatch(headers=(HeaderMatch("end-user", StringMatch("exact", "jason")),)),),
        destinations=(Destination(f"outbound|9080|v2|{REVIEWS}"),),
        virtual_service="default/reviews", index=0)
    assert split == Route(
        name="split",
        destinations=(Destination(f"outbound|9080|v1|{REVIEWS}", 90), Destination(f"outbound|9080|v3|{REVIEWS}", 10)),
        virtual_service="default/reviews", index=1)
    assert not jason.is_simple and split.cluster == ""
    # hosts without a VirtualService keep the single default route
    [default] = vhost(snap, "details.default.svc.cluster.local:9080").routes
    assert default.is_simple and default.virtual_service == ""


def test_bookinfo_subset_clusters_and_policies():
    snap = build_snapshot(BOOKINFO, workload="productpage")
    names = [c.name for c in snap.clusters]
    assert names == [
        "inbound|9080||",
        f"outbound|9080|v1|{REVIEWS}", f"outbound|9080|v2|{REVIEWS}", f"outbound|9080|v3|{REVIEWS}",
        "outbound|9080||details.default.svc.cluster.local",
        "outbound|9080||productpage.default.svc.cluster.local",
        "outbound|9080||ratings.default.svc.cluster.local",
        f"outbound|9080||{REVIEWS}",
    ]
    base = snap.cluster(f"outbound|9080||{REVIEWS}")
    assert (base.lb_policy, base.connect_timeout, base.subset, base.destination_rule) == (
        "RANDOM", 1.0, "", "default/reviews")
    assert [e.workload for e in base.endpoints] == ["default/reviews-v1", "default/reviews-v2", "default/reviews-v3"]
    v1 = snap.cluster(f"outbound|9080|v1|{REVIEWS}")
    assert (v1.lb_policy, v1.connect_timeout, v1.subset, v1.hash_policy) == ("RANDOM", 1.0, "v1", None)
    assert v1.endpoints == (Endpoint("127.0.0.11", 9080, 9080, labels={"app": "reviews", "version": "v1"},
                                     locality="us-east/zone1", workload="default/reviews-v1"),)
    v2 = snap.cluster(f"outbound|9080|v2|{REVIEWS}")
    assert (v2.lb_policy, v2.hash_policy) == ("RING_HASH", HashPolicy(header="end-user", ring_size=1024))
    assert [e.address for e in v2.endpoints] == ["127.0.0.12"]
    v3 = snap.cluster(f"outbound|9080|v3|{REVIEWS}")
    # the subset's connectionPool replaces the top-level one as a whole (Istio): connectTimeout is the
    # Bootstrap's 2s again, idleTimeout is the subset's 30s
    assert (v3.lb_policy, v3.connect_timeout, v3.idle_timeout) == ("ROUND_ROBIN", 2.0, 30.0)
    assert v3.locality_lb == LocalityLb(enabled=True, failover=(("us-west", "us-east"),))
    assert [(e.address, e.weight, e.locality) for e in v3.endpoints] == [("127.0.0.13", 2, "us-west/zone1")]
    # no DestinationRule: Istio's default LEAST_REQUEST
    assert snap.cluster("outbound|9080||details.default.svc.cluster.local").lb_policy == "LEAST_REQUEST"
    assert snap.cluster("inbound|9080||").lb_policy == "LEAST_REQUEST"


def test_bookinfo_source_labels_are_compiled_per_sidecar():
    ratings = "ratings.default.svc.cluster.local:9080"
    slow, default = vhost(build_snapshot(BOOKINFO, workload="reviews-v2"), ratings).routes
    assert slow.name == "slow-for-jason" and slow.fault == Fault(delay=7.0, delay_percent=100.0)
    assert slow.matches == (RouteMatch(headers=(HeaderMatch("end-user", StringMatch("exact", "jason")),)),)
    assert (default.name, default.index, default.cluster) == ("", 1, "outbound|9080||" + ratings[:-5])
    # productpage and reviews-v1 are not v2: their only match block is dropped, so is the route
    for wl in ("productpage", "reviews-v1"):
        [only] = vhost(build_snapshot(BOOKINFO, workload=wl), ratings).routes
        assert only.index == 1


def test_bookinfo_round_trip():
    snap = build_snapshot(BOOKINFO, workload="reviews-v2")
    assert Snapshot.from_dict(snap.to_dict()) == snap
    assert Snapshot.from_json(snap.to_json()) == snap


# --- Every route feature -----------------------------------------------------------------------------

SERVICES = doc("ServiceEntry", "web", """\
    hosts: [web.default.svc.cluster.local]
    resolution: STATIC
    ports:
    - {number: 80, name: http}
    - {number: 8080, name: http-admin}
    - {number: 3306, name: tcp-db}
    endpoints:
    - {address: 10.0.0.1, labels: {version: v1}}
    - {address: 10.0.0.2, labels: {version: v2}, ports: {http: 8000}}
    """) + doc("ServiceEntry", "shadow", """\
    hosts: [shadow.default.svc.cluster.local]
    resolution: STATIC
    ports: [{number: 80, name: http}]
    endpoints: [{address: 10.0.1.1}]
    """)

FULL_VS = doc("VirtualService", "web", """\
    hosts: [web]
    http:
    - name: everything
      match:
      - name: m0
        uri: {prefix: /api/}
        ignoreUriCase: true
        method: {exact: GET}
        scheme: {exact: http}
        authority: {regex: "web(:80)?"}
        headers:
          x-canary: {}
          X-User: {prefix: adm}
        withoutHeaders:
          x-debug: {exact: "1"}
        queryParams:
          v: {regex: "[0-9]+"}
          flag: {}
        port: 80
      - uri: {exact: /admin}
        port: 8080
      - uri: {exact: /elsewhere}
        gateways: [ingress]
      route:
      - destination: {host: web, subset: v2, port: {number: 80}}
        weight: 75
        headers:
          request: {set: {X-Subset: v2}}
          response: {remove: [Server]}
      - destination: {host: web.default.svc.cluster.local, port: {number: 8080}}
        weight: 25
      headers:
        request:
          set: {x-a: "1"}
          add: {x-b: "2"}
          remove: [x-c]
      rewrite:
        uriRegexRewrite: {match: "^/api/(.*)$", rewrite: "/\\\\1"}
        authority: backend
      fault:
        abort: {httpStatus: 503, percentage: {value: 0.5}}
        delay: {fixedDelay: 100ms, percent: 5}
      mirrors:
      - destination: {host: shadow}
        percentage: {value: 10}
      - destination: {host: shadow}
    - name: old
      match: [{uri: {prefix: /old}, port: 8080}]
      redirect: {uri: /new, authority: example.com, port: 8443, scheme: https}
    - name: teapot
      match: [{uri: {exact: /tea}}]
      directResponse: {status: 418, body: {bytes: "SSdtIGEgdGVhcG90"}}
      mirror: {host: shadow}
      mirrorPercentage: {value: 50}
    - name: rest
      route:
      - destination: {host: web, port: {number: 80}}
    """) + doc("DestinationRule", "web", """\
    host: web.default.svc.cluster.local
    subsets: [{name: v2, labels: {version: v2}}]
    """)


def test_every_route_field(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES + FULL_VS))
    assert warnings_of(snap) == []
    web = "web.default.svc.cluster.local"
    everything, teapot, rest = vhost(snap, f"{web}:80").routes
    assert everything.matches == (RouteMatch(
        name="m0", uri=StringMatch("prefix", "/api/"), ignore_uri_case=True, scheme=StringMatch("exact", "http"),
        method=StringMatch("exact", "GET"), authority=StringMatch("regex", "web(:80)?"),
        headers=(HeaderMatch("x-canary"), HeaderMatch("x-user", StringMatch("prefix", "adm")),
                 HeaderMatch("x-debug", StringMatch("exact", "1"), invert=True)),
        query_params=(QueryMatch("v", StringMatch("regex", "[0-9]+")), QueryMatch("flag")),
        port=80),)
    assert everything.destinations == (
        Destination(f"outbound|80|v2|{web}", 75, HeaderOps(set=(("x-subset", "v2"),)), HeaderOps(remove=("server",))),
        Destination(f"outbound|8080||{web}", 25))
    assert everything.request_headers == HeaderOps(set=(("x-a", "1"),), add=(("x-b", "2"),), remove=("x-c",))
    assert everything.rewrite == Rewrite(authority="backend", uri_regex="^/api/(.*)$", uri_regex_rewrite="/\\1")
    assert everything.fault == Fault(delay=0.1, delay_percent=5.0, abort_status=503, abort_percent=0.5)
    shadow = "outbound|80||shadow.default.svc.cluster.local"
    assert everything.mirrors == (Mirror(shadow, 10.0), Mirror(shadow, 100.0))
    assert (everything.virtual_service, everything.index) == ("default/web", 0)
    assert teapot.direct_response == DirectResponse(418, "I'm a teapot")
    assert teapot.mirrors == (Mirror(shadow, 50.0),) and teapot.destinations == ()
    assert (rest.index, rest.cluster) == (3, f"outbound|80||{web}")

    everything8080, old, teapot8080, rest8080 = vhost(snap, f"{web}:8080").routes
    assert teapot8080 == teapot  # no port in its match: it applies to every port of the host
    assert everything8080.matches == (RouteMatch(uri=StringMatch("exact", "/admin"), port=8080),)
    assert old.redirect == Redirect(uri="/new", authority="example.com", port=8443, scheme="https", code=301)
    assert rest8080.cluster == f"outbound|80||{web}"  # the VirtualService routes 8080 traffic to port 80

    v2 = snap.cluster(f"outbound|80|v2|{web}")
    assert [(e.address, e.port) for e in v2.endpoints] == [("10.0.0.2", 8000)]
    assert Snapshot.from_dict(snap.to_dict()) == snap


# --- DestinationRule policies ----------------------------------------------------------------------

def test_port_level_settings_and_hash_policies(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES + doc("DestinationRule", "web", """\
        host: web
        trafficPolicy:
          loadBalancer:
            consistentHash:
              httpCookie: {name: session, ttl: 1h, path: /}
              ringHash: {minimumRingSize: 2048}
          connectionPool:
            tcp: {connectTimeout: 3s}
            http: {idleTimeout: 5m}
          portLevelSettings:
          - port: {number: 8080}
            loadBalancer:
              consistentHash: {useSourceIp: true, maglev: {tableSize: 251}}
        subsets:
        - name: v1
          labels: {version: v1}
          trafficPolicy:
            loadBalancer: {simple: LEAST_CONN}
            portLevelSettings:
            - port: {number: 8080}
              loadBalancer:
                consistentHash: {httpQueryParameterName: user, minimumRingSize: 64}
        """) + doc("VirtualService", "web", """\
        hosts: [web]
        http:
        - route: [{destination: {host: web, subset: v1, port: {number: 80}}}]
        - route: [{destination: {host: web, subset: v1, port: {number: 8080}}}]
        """)))
    web = "web.default.svc.cluster.local"
    c80 = snap.cluster(f"outbound|80||{web}")
    assert (c80.lb_policy, c80.hash_policy, c80.connect_timeout, c80.idle_timeout) == (
        "RING_HASH", HashPolicy(cookie="session", cookie_ttl=3600.0, cookie_path="/", ring_size=2048), 3.0, 300.0)
    c8080 = snap.cluster(f"outbound|8080||{web}")
    assert (c8080.lb_policy, c8080.hash_policy, c8080.connect_timeout) == (
        "MAGLEV", HashPolicy(source_ip=True, maglev_table_size=251), 3.0)
    v1_80 = snap.cluster(f"outbound|80|v1|{web}")
    assert (v1_80.lb_policy, v1_80.hash_policy, v1_80.connect_timeout) == ("LEAST_REQUEST", None, 3.0)
    v1_8080 = snap.cluster(f"outbound|8080|v1|{web}")
    # a subset's port-level settings replace every part: connectionPool is back to the defaults
    assert (v1_8080.lb_policy, v1_8080.hash_policy, v1_8080.connect_timeout, v1_8080.idle_timeout) == (
        "RING_HASH", HashPolicy(query_param="user", ring_size=64), 10.0, 3600.0)
    assert warnings_of(snap) == [
        "spec.subsets[0].trafficPolicy.loadBalancer.simple: LEAST_CONN is deprecated: it means LEAST_REQUEST"]
    assert Snapshot.from_dict(snap.to_dict()) == snap


# Every loadBalancer form a DestinationRule can take -> the cluster's lb_policy, always one of the six
# names of snapshot.LB_POLICIES (control is the only place Istio's names are interpreted).
LB_FORMS = [(f"simple-{v}", {"simple": v}, want) for v, want in [
    ("UNSPECIFIED", "LEAST_REQUEST"), ("LEAST_CONN", "LEAST_REQUEST"), ("LEAST_REQUEST", "LEAST_REQUEST"),
    ("ROUND_ROBIN", "ROUND_ROBIN"), ("RANDOM", "RANDOM"), ("PASSTHROUGH", "PASSTHROUGH"),
    ("round_robin", "ROUND_ROBIN"), ("least_conn", "LEAST_REQUEST")]] + [
    (f"consistentHash-{name}", {"consistentHash": ch}, want) for name, ch, want in [
        ("header", {"httpHeaderName": "x-user"}, "RING_HASH"),
        ("cookie", {"httpCookie": {"name": "s", "ttl": "10s"}}, "RING_HASH"),
        ("source-ip", {"useSourceIp": True}, "RING_HASH"),
        ("query", {"httpQueryParameterName": "u"}, "RING_HASH"),
        ("ring-hash", {"httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 64}}, "RING_HASH"),
        ("legacy-ring-size", {"useSourceIp": True, "minimumRingSize": 64}, "RING_HASH"),
        ("maglev", {"httpHeaderName": "x-user", "maglev": {}}, "MAGLEV"),
        ("maglev-table", {"useSourceIp": True, "maglev": {"tableSize": 7}}, "MAGLEV")]] + [
    ("no-policy", {}, "LEAST_REQUEST"),
    ("locality-only", {"localityLbSetting": {"enabled": True}}, "LEAST_REQUEST")]
WHERE = {  # (DestinationRule spec around the loadBalancer, the cluster it applies to)
    "top": (lambda lb: {"host": "web", "trafficPolicy": {"loadBalancer": lb}}, "outbound|80||"),
    "port": (lambda lb: {"host": "web", "trafficPolicy": {
        "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": lb}]}}, "outbound|80||"),
    "subset": (lambda lb: {"host": "web", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": lb}}]}, "outbound|80|v1|"),
}


@pytest.mark.parametrize("where", list(WHERE))
@pytest.mark.parametrize("lb,want", [f[1:] for f in LB_FORMS], ids=[f[0] for f in LB_FORMS])
def test_every_load_balancer_form_compiles_to_a_canonical_policy(tmp_path, lb, want, where):
    spec, prefix = WHERE[where]
    vs = doc("VirtualService", "web", json.dumps({"hosts": ["web"], "http": [
        {"route": [{"destination": {"host": "web", "subset": "v1", "port": {"number": 80}}}]}]}))
    snap = build_snapshot(write(tmp_path, SERVICES + doc("DestinationRule", "web", json.dumps(spec(lb)))
                                + (vs if where == "subset" else "")))
    assert snap.cluster(f"{prefix}web.default.svc.cluster.local").lb_policy == want
    assert {c.lb_policy for c in snap.clusters} <= set(LB_POLICIES)


@pytest.mark.parametrize("spec", [None, {"host": "web"}, {"host": "web", "trafficPolicy": {
    "connectionPool": {"tcp": {"connectTimeout": "1s"}}}}], ids=["no-destination-rule", "no-traffic-policy",
                                                                 "no-load-balancer"])
def test_no_load_balancer_is_istios_default_least_request(tmp_path, spec):
    text = SERVICES + (doc("DestinationRule", "web", json.dumps(spec)) if spec else "")
    snap = build_snapshot(write(tmp_path, text))
    assert [c.lb_policy for c in snap.clusters] == ["LEAST_REQUEST"] * 3


def test_simple_lb_table_covers_every_accepted_value():
    assert sorted(SIMPLE_LB_POLICIES) == sorted(LB_SIMPLE)
    assert set(SIMPLE_LB_POLICIES.values()) <= set(LB_POLICIES)
    assert LB_POLICIES == ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV", "PASSTHROUGH")
    assert DEFAULT_LB_POLICY == "LEAST_REQUEST"


def test_locality_distribute(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES + doc("DestinationRule", "web", """\
        host: web
        trafficPolicy:
          loadBalancer:
            simple: ROUND_ROBIN
            localityLbSetting:
              distribute:
              - from: us-west/zone1/*
                to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}
              failoverPriority: [topology.kubernetes.io/region]
        """)))
    c = snap.cluster("outbound|80||web.default.svc.cluster.local")
    assert c.locality_lb == LocalityLb(enabled=True, distribute=(
        ("us-west/zone1/*", (("us-west/zone1/*", 80), ("us-west/zone2/*", 20))),),
        failover_priority=("topology.kubernetes.io/region",))
    assert Snapshot.from_dict(snap.to_dict()) == snap


# --- ServiceEntry resolutions and wildcards --------------------------------------------------------

def test_dns_none_and_wildcard_service_entries(tmp_path):
    snap = build_snapshot(write(tmp_path, doc("ServiceEntry", "api", """\
        hosts: [api.example.com]
        resolution: DNS
        ports: [{number: 80, name: http, targetPort: 8080}]
        """) + doc("ServiceEntry", "pool", """\
        hosts: [pool.example.com]
        resolution: DNS_ROUND_ROBIN
        ports: [{number: 80, name: http}]
        endpoints: [{address: lb.example.net, weight: 3, locality: eu/a}]
        """) + doc("ServiceEntry", "mirrors", """\
        hosts: [mirrors.example.org]
        resolution: DNS
        ports: [{number: 80, name: http}]
        endpoints:
        - {address: m1.example.org, labels: {tier: gold}}
        - {address: 192.0.2.7, ports: {http: 81}}
        """) + doc("ServiceEntry", "any", """\
        hosts: ["*.wild.example.com"]
        resolution: NONE
        ports: [{number: 80, name: http}]
        """) + doc("DestinationRule", "mirrors", """\
        host: mirrors.example.org
        subsets: [{name: gold, labels: {tier: gold}}]
        """) + doc("VirtualService", "mirrors", """\
        hosts: [mirrors.example.org]
        http: [{route: [{destination: {host: mirrors.example.org, subset: gold}}]}]
        """)))
    api = snap.cluster("outbound|80||api.example.com")
    assert (api.resolution, api.dns_hosts, api.endpoints) == ("DNS", (("api.example.com", 8080, 1),), ())
    pool = snap.cluster("outbound|80||pool.example.com")
    assert (pool.resolution, pool.dns_hosts) == ("DNS_ROUND_ROBIN", (("lb.example.net", 80, 3),))
    m = snap.cluster("outbound|80||mirrors.example.org")
    assert m.dns_hosts == (("192.0.2.7", 81, 1), ("m1.example.org", 80, 1))
    assert snap.cluster("outbound|80|gold|mirrors.example.org").dns_hosts == (("m1.example.org", 80, 1),)
    wild = snap.cluster("outbound|80||*.wild.example.com")
    assert (wild.resolution, wild.endpoints, wild.dns_hosts) == ("NONE", (), ())
    assert vhost(snap, "*.wild.example.com:80").domains == ("*.wild.example.com:80", "*.wild.example.com")
    assert Snapshot.from_dict(snap.to_dict()) == snap


def test_wildcard_virtual_service_applies_to_matching_hosts(tmp_path):
    snap = build_snapshot(write(tmp_path, doc("ServiceEntry", "ext", """\
        hosts: [a.example.com, b.example.com, c.other.com]
        resolution: DNS
        ports: [{number: 80, name: http}]
        """) + doc("VirtualService", "wild", """\
        hosts: ["*.example.com"]
        http: [{directResponse: {status: 403}}]
        """) + doc("VirtualService", "b", """\
        hosts: [b.example.com]
        http: [{directResponse: {status: 200, body: {string: ok}}}]
        """)))
    assert vhost(snap, "a.example.com:80").routes[0].direct_response == DirectResponse(403)
    assert vhost(snap, "b.example.com:80").routes[0].direct_response == DirectResponse(200, "ok")  # exact wins
    assert vhost(snap, "c.other.com:80").routes[0].virtual_service == ""


def test_empty_subset_is_a_warning(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES + doc("DestinationRule", "web", """\
        host: web
        subsets: [{name: v9, labels: {version: v9}}]
        """) + doc("VirtualService", "web", """\
        hosts: [web]
        http: [{route: [{destination: {host: web, subset: v9, port: {number: 80}}}]}]
        """)))
    assert snap.cluster("outbound|80|v9|web.default.svc.cluster.local").endpoints == ()
    assert [str(w) for w in snap.warnings if TCP_WARNING not in str(w)] == [
        f"{tmp_path / 'mesh.yaml'}: DestinationRule default/web: spec.subsets[0].labels: subset \"v9\" of "
        "web.default.svc.cluster.local selects no endpoint (requests get 503)"]


# --- Errors and warnings, exact strings ----------------------------------------------------------------

def vs(http, hosts="[web]", extra=""):
    return doc("VirtualService", "vs", f"hosts: {hosts}\n{extra}http:\n" + textwrap.indent(textwrap.dedent(http), ""))


INVALID = [
    ("weights", vs("""\
        - route:
          - {destination: {host: web, port: {number: 80}}, weight: 60}
          - {destination: {host: shadow}, weight: 30}
        """), ["spec.http[0].route[1].weight: weights must sum to 100, got 90"]),
    ("lone-weight", vs("- route: [{destination: {host: shadow}, weight: 50}]\n"),
     ["spec.http[0].route[0].weight: weights must sum to 100, got 50"]),
    ("redirect-with-route", vs("""\
        - redirect: {uri: /x}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].redirect: redirect cannot be combined with route"]),
    ("direct-response-with-route", vs("""\
        - directResponse: {status: 200}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].directResponse: directResponse cannot be combined with route"]),
    ("no-action", vs("- name: nothing\n"), ["spec.http[0]: one of route, redirect or directResponse is required"]),
    ("rewrite-both", vs("""\
        - rewrite: {uri: /a, uriRegexRewrite: {match: a, rewrite: b}}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].rewrite: only one of uri or uriRegexRewrite may be set"]),
    ("rewrite-group", vs("""\
        - rewrite: {uriRegexRewrite: {match: "/(a)", rewrite: "/\\\\2"}}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].rewrite.uriRegexRewrite.rewrite: \\2 refers to a group the match does not have (1)"]),
    ("bad-regexes", vs("""\
        - match:
          - uri: {regex: "(a)\\\\1"}
            headers: {x: {regex: "(?=x)"}}
            queryParams: {q: {regex: "a("}}
          route: [{destination: {host: shadow}}]
        """), [
        "spec.http[0].match[0].uri.regex: invalid regex: invalid escape sequence: \\1 (RE2 has no backreferences)",
        "spec.http[0].match[0].headers.x.regex: invalid regex: invalid perl operator: (?= (RE2 has no lookaround)",
        "spec.http[0].match[0].queryParams.q.regex: invalid regex: missing ): a(",
    ]),
    ("bad-rewrite-regex", vs("""\
        - rewrite: {uriRegexRewrite: {match: "(?<=/)a", rewrite: "/b"}}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].rewrite.uriRegexRewrite.match: invalid regex: invalid perl operator: (?<= "
               "(RE2 has no lookaround)"]),
    ("rewrite-escape", vs("""\
        - rewrite: {uriRegexRewrite: {match: "/(a)", rewrite: "/\\\\n"}}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].rewrite.uriRegexRewrite.rewrite: invalid rewrite '\\\\n': only \\0 to \\9 "
               "(groups) and \\\\ (a backslash) may follow a backslash"]),
    ("regex-too-large", vs("""\
        - match: [{authority: {regex: "[^a]{1000}[^b]{1000}[^c]{1000}[^d]{1000}[^e]{1000}"}}]
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].match[0].authority.regex: invalid regex: pattern too large: RE2 program size 40004 "
               "is over 32768 (Istio's limit for Envoy)"]),
    ("string-match", vs("""\
        - match:
          - uri: {}
            method: {exact: GET, prefix: G}
            queryParams: {q: {prefix: a}}
          route: [{destination: {host: shadow}}]
        """), [
        "spec.http[0].match[0].uri: one of exact, prefix or regex is required",
        "spec.http[0].match[0].method: only one of exact, prefix or regex may be set",
        "spec.http[0].match[0].queryParams.q.prefix: prefix is not supported for queryParams (use exact or regex)",
    ]),
    ("unknown-host", vs("- route: [{destination: {host: webb}}]\n"), [
        'spec.http[0].route[0].destination.host: unknown host webb.default.svc.cluster.local: not a ServiceEntry '
        'host (did you mean "web.default.svc.cluster.local"?)']),
    ("port-required", vs("- route: [{destination: {host: web}}]\n"), [
        "spec.http[0].route[0].destination.port: web.default.svc.cluster.local has several HTTP ports (80, 8080): "
        "set port.number"]),
    ("port-not-http", vs("- route: [{destination: {host: web, port: {number: 3306}}}]\n"), [
        "spec.http[0].route[0].destination.port.number: 3306 is not an HTTP port of web.default.svc.cluster.local "
        "(HTTP ports: 80, 8080)"]),
    ("unknown-subset", vs("- mirror: {host: shadow, subset: v1}\n  route: [{destination: {host: shadow}}]\n") + doc(
        "DestinationRule", "shadow", "host: shadow\nsubsets: [{name: v2, labels: {a: b}}]"), [
        'spec.http[0].mirror.subset: subset "v1" of shadow.default.svc.cluster.local is not defined by '
        'DestinationRule default/shadow (defined: v2)']),
    ("subset-without-rule", vs("- route: [{destination: {host: shadow, subset: v1}}]\n"), [
        'spec.http[0].route[0].destination.subset: subset "v1" of shadow.default.svc.cluster.local is not '
        "defined by any DestinationRule"]),
    ("not-supported-yet", vs("""\
        - corsPolicy: {}
          match: [{statPrefix: x}]
          fault: {abort: {grpcStatus: UNAVAILABLE}}
          route: [{destination: {host: shadow}}]
        """, extra="tcp: []\n"), [
        "spec.tcp: tcp is not supported yet",
        "spec.http[0].corsPolicy: corsPolicy is not supported yet",
        "spec.http[0].match[0].statPrefix: statPrefix is not supported yet",
        "spec.http[0].fault.abort.grpcStatus: grpcStatus is not supported yet",
    ]),
    ("retries", vs("""\
        - timeout: soon
          retries: {attempts: -1, perTryTimeout: 0s, retryOn: "5xx,gateway-eror,999", retries: 3}
          route: [{destination: {host: shadow}}]
        """), [
        'spec.http[0].timeout: "soon" is not a duration (use a number and a unit: "5s", "1.5s", '
        '"100ms", "1m", "1h")',
        "spec.http[0].retries.attempts: -1 is out of range (0-1000)",
        'spec.http[0].retries.perTryTimeout: "0s" must be greater than zero',
        "spec.http[0].retries.retryOn: unknown retry condition 'gateway-eror' "
        '(did you mean "gateway-error"?)',
        "spec.http[0].retries.retries: unknown field"]),
    ("retry-status", vs("""\
        - retries: {attempts: 2, retryOn: "5xx,999"}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].retries.retryOn: 999 is not an HTTP status code"]),
    ("unknown-field", vs("- route: [{destination: {host: shadow, subet: v1}}]\n"), [
        'spec.http[0].route[0].destination.subet: unknown field (did you mean "subset"?)']),
    ("fault-and-redirect-codes", vs("""\
        - fault: {}
          redirect: {uri: /x, redirectCode: 305}
        """), [
        "spec.http[0].fault: one of delay or abort is required",
        "spec.http[0].redirect.redirectCode: 305 is not a redirect code (one of 301, 302, 303, 307, 308)",
    ]),
    ("mirror-and-mirrors", vs("""\
        - mirror: {host: shadow}
          mirrors: [{destination: {host: shadow}}]
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].mirrors: only one of mirror or mirrors may be set"]),
    ("conflicting-virtual-services", vs("- route: [{destination: {host: shadow}}]\n", hosts="[shadow]") + doc(
        "VirtualService", "vs2", "hosts: [shadow.default.svc.cluster.local]\nhttp: [{directResponse: {status: 404}}]"),
     ["VirtualService default/vs2: spec.hosts[0]: host shadow.default.svc.cluster.local is already claimed by "
      "VirtualService default/vs (mesh.yaml): one VirtualService per host for sidecars"]),
    ("duplicate-destination-rules", doc("DestinationRule", "a", "host: shadow") + doc(
        "DestinationRule", "b", "host: shadow.default.svc.cluster.local"),
     ["DestinationRule default/b: spec.host: host shadow.default.svc.cluster.local is already configured by "
      "DestinationRule default/a (mesh.yaml)"]),
    ("consistent-hash", doc("DestinationRule", "a", """\
        host: shadow
        trafficPolicy:
          loadBalancer:
            consistentHash: {httpHeaderName: x, useSourceIp: true, ringHash: {}, maglev: {tableSize: 1000}}
          portLevelSettings:
          - port: {number: 80}
            loadBalancer: {simple: RANDOM, consistentHash: {minimumRingSize: 10}}
            outlierDetection: {consecutive5xxErrors: 1, interval: 0.5ms}
          - port: {number: 80}
            connectionPool: {tcp: {tcpKeepalive: {time: 5s}}, http: {maxConcurrentStreams: 1}}
        subsets:
        - {name: v1}
        - {name: v1, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, tunnel: {}}}
        """), [
        "spec.trafficPolicy.loadBalancer.consistentHash: consistentHash needs exactly one hash key: "
        "httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName, got 2 (httpHeaderName, useSourceIp)",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev: maglev cannot be combined with ringHash",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime number",
        "spec.trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash: consistentHash needs exactly one "
        "hash key: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
        "spec.trafficPolicy.portLevelSettings[0].outlierDetection.interval: must be at least 1ms",
        "spec.trafficPolicy.portLevelSettings[1].connectionPool.tcp.tcpKeepalive: tcpKeepalive is not "
        "supported yet",
        "spec.trafficPolicy.portLevelSettings[1].connectionPool.http.maxConcurrentStreams: maxConcurrentStreams "
        "is not supported yet",
        "spec.subsets[1].trafficPolicy.tls: tls is not supported yet",
        "spec.subsets[1].trafficPolicy.tunnel: tunnel is not supported yet",
    ]),
    ("policy-checks", doc("DestinationRule", "a", """\
        host: shadow
        trafficPolicy:
          loadBalancer:
            simple: RANDOM
            consistentHash: {useSourceIp: true}
        subsets:
        - name: v2
          trafficPolicy:
            loadBalancer:
              simple: FASTEST
        """), [
        "spec.trafficPolicy.loadBalancer.consistentHash: consistentHash cannot be combined with simple",
        'spec.subsets[0].trafficPolicy.loadBalancer.simple: "FASTEST" is not valid: expected one of UNSPECIFIED, '
        "RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN",
    ]),
    ("duplicates-and-locality", doc("DestinationRule", "a", """\
        host: shadow
        subsets:
        - {name: v1}
        - {name: v1}
        """) + doc("DestinationRule", "b", """\
        host: web
        trafficPolicy:
          portLevelSettings:
          - port: {number: 80}
          - port: {number: 80}
        subsets:
        - name: v2
          trafficPolicy:
            loadBalancer:
              localityLbSetting:
                distribute: [{from: a/*, to: {a/*: 60, b/*: 30}}]
                failover: [{from: us-east, to: us-east/zone2}]
        """), [
        'DestinationRule default/a: spec.subsets[1].name: subset "v1" is already defined as subsets[0]',
        "DestinationRule default/b: spec.trafficPolicy.portLevelSettings[1].port.number: port 80 is already set "
        "in portLevelSettings[0]",
        "DestinationRule default/b: spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting.failover: "
        "failover cannot be combined with distribute",
        "DestinationRule default/b: spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: "
        "weights must sum to 100, got 90",
        "DestinationRule default/b: spec.subsets[0].trafficPolicy.loadBalancer.localityLbSetting.failover[0].to: "
        'failover must be to another region (from "us-east" to "us-east/zone2")',
    ]),
    ("connection-pool-limits", doc("DestinationRule", "a", """\
        host: shadow
        trafficPolicy:
          connectionPool:
            tcp: {maxConnections: -1, maxConnectionDuration: 0s}
            http: {http1MaxPendingRequests: 2147483648, http2MaxRequests: "10", maxRetries: 1.5,
                   maxRequestsPerConnection: -2}
          portLevelSettings:
          - port: {number: 80}
            connectionPool: {tcp: {maxConnectionDuration: 500us, maxConnections: 2147483647}}
        subsets:
        - name: v1
          trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: -1s}}}
        """), [
        "spec.trafficPolicy.connectionPool.tcp.maxConnections: must not be negative",
        "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests: 2147483648 is out of range "
        "(an int32: at most 2147483647)",
        "spec.trafficPolicy.connectionPool.http.http2MaxRequests: expected an integer, got a string",
        "spec.trafficPolicy.connectionPool.http.maxRetries: expected an integer, got a number",
        "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection: must not be negative",
        "spec.trafficPolicy.portLevelSettings[0].connectionPool.tcp.maxConnectionDuration: must be at least 1ms",
        'spec.subsets[0].trafficPolicy.connectionPool.tcp.maxConnectionDuration: "-1s" is not a duration '
        '(use a number and a unit: "5s", "1.5s", "100ms", "1m", "1h")',
    ]),
    ("connection-pool-zero-duration", doc("DestinationRule", "a", """\
        host: shadow
        trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: 0s}}}
        """), ["spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration: must be at least 1ms"]),
    ("retry-budget", doc("DestinationRule", "a", """\
        host: shadow
        trafficPolicy:
          retryBudget: {percent: 101, minRetryConcurrency: -1, budgetInterval: 10, budgetPercent: 5}
          portLevelSettings:
          - port: {number: 80}
            retryBudget: {percent: 10}
        subsets:
        - name: v1
          trafficPolicy: {retryBudget: {percent: "20%"}}
        """), [
        "spec.trafficPolicy.retryBudget.percent: 101 is out of range (0-100)",
        "spec.trafficPolicy.retryBudget.minRetryConcurrency: -1 is out of range (0-4294967295)",
        'spec.trafficPolicy.retryBudget.budgetInterval: expected a duration string ("5s", "100ms", "1m"), '
        "got an integer",
        'spec.trafficPolicy.retryBudget.budgetPercent: unknown field (did you mean "percent"?)',
        "spec.trafficPolicy.portLevelSettings[0].retryBudget: unknown field",
        "spec.subsets[0].trafficPolicy.retryBudget.percent: expected a number, got a string",
    ]),
]


@pytest.mark.parametrize("case,text,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_traffic_config(tmp_path, case, text, expected):
    write(tmp_path, SERVICES + text)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cfg = load_config("mesh.yaml")
    finally:
        os.chdir(cwd)
    got = [str(i).split(": ", 1)[1] for i in cfg.issues]
    if all(e.startswith("spec.") for e in expected):
        got = [g.split(": ", 1)[1] for g in got]
    assert got == expected
    with pytest.raises(ConfigError):
        build_snapshot(str(tmp_path / "mesh.yaml"))


WARNINGS = [
    ("gateway-only", vs("- route: [{destination: {host: shadow}}]\n", extra="gateways: [istio-system/ingress]\n"),
     ['spec.gateways: applies only to gateways, not to sidecars (no "mesh"): ignored by the sidecar']),
    ("gateway-and-mesh", vs("- route: [{destination: {host: shadow}}]\n", extra="gateways: [mesh, ingress]\n"),
     ['spec.gateways: gateways are not supported yet: only "mesh" applies (ignored: ingress)']),
    ("export-to", vs("- route: [{destination: {host: shadow}}]\n", extra="exportTo: [\".\"]\n"),
     ["spec.exportTo: not used by meshproxy yet (the VirtualService applies to every sidecar)"]),
    ("host-without-service", vs("- route: [{destination: {host: shadow}}]\n", hosts="[nothing.example.com]"),
     ["spec.hosts[0]: host nothing.example.com matches no ServiceEntry host: nothing is routed by it"]),
    ("rule-without-service", doc("DestinationRule", "a", "host: nothing\nworkloadSelector: {matchLabels: {a: b}}"), [
        "spec.workloadSelector: not used by meshproxy yet (the DestinationRule applies to every sidecar)",
        "spec.host: host nothing.default.svc.cluster.local matches no ServiceEntry host: the DestinationRule "
        "does nothing"]),
    ("port-level-not-a-port", doc("DestinationRule", "a", """\
        host: shadow
        trafficPolicy: {portLevelSettings: [{port: {number: 81}, loadBalancer: {simple: RANDOM}}]}
        """), ["spec.trafficPolicy.portLevelSettings[0].port.number: 81 is not an HTTP port of "
               "shadow.default.svc.cluster.local (HTTP ports: 80): ignored"]),
    ("fault-percentages", vs("""\
        - fault: {delay: {fixedDelay: 1s}, abort: {httpStatus: 500}}
          route: [{destination: {host: shadow}}]
        """), ["spec.http[0].fault.abort.percentage: not set: no request is aborted",
               "spec.http[0].fault.delay.percentage: not set: no request is delayed"]),
]


@pytest.mark.parametrize("case,text,expected", WARNINGS, ids=[c[0] for c in WARNINGS])
def test_traffic_warnings(tmp_path, case, text, expected):
    write(tmp_path, SERVICES + text)
    cfg = load_config(tmp_path / "mesh.yaml")
    assert cfg.issues == []
    assert [str(w).split(": ", 2)[2] for w in cfg.warnings if TCP_WARNING not in str(w)] == expected
    build_snapshot(str(tmp_path / "mesh.yaml"))


# --- RE2 ---------------------------------------------------------------------------------------------
# control.regex checks patterns with RE2 itself (the data plane compiles them with the same options).

RE2_OK = [
    (r"/api/v[0-9]+/.*", "/api/v2/users", True),
    (r"(?i)jason", "JaSoN", True),
    (r"a(?i)b|c", "C", True),  # RE2: flags last to the end of the group, across |
    (r"a(?i)b|c", "Ab", False),
    (r"[[:digit:]]{3}", "123", True),
    (r"(?P<v>v[12])", "v1", True),
    (r"(?<v>v[12])", "v2", True),
    (r"a$", "a\n", False),  # RE2's $ is the end of text
    (r"x\z", "x", True),
    (r"\d+", "\u0661", False),  # ASCII \d, as RE2
    (r"a{2,3}?", "aa", True),
    (r"a{,2}", "a{,2}", True),  # not a repetition in RE2: literal
    (r"\101", "A", True),  # three-digit octal
    (r"prefix.*", "prefix-and-more", True),
    (r"\pL+", "ça", True),  # Unicode classes (UTF-8, as Envoy)
    (r"\Qa.b\E", "a.b", True),
    (r"\Qa.b\E", "axb", False),
    (r"(?U)a+", "aaa", True),
    (r"(a+)+b", "a" * 100, False),
]

RE2_REJECTED = [
    (r"(a)\1", "invalid escape sequence: \\1 (RE2 has no backreferences)"),
    (r"(?P<x>a)(?P=x)", "invalid perl operator: (?P (RE2 has no backreferences)"),
    (r"\k<x>", "invalid escape sequence: \\k (RE2 has no backreferences)"),
    (r"a(?=b)", "invalid perl operator: (?= (RE2 has no lookaround)"),
    (r"a(?!b)", "invalid perl operator: (?! (RE2 has no lookaround)"),
    (r"(?<=a)b", "invalid perl operator: (?<= (RE2 has no lookaround)"),
    (r"(?<!a)b", "invalid perl operator: (?<! (RE2 has no lookaround)"),
    (r"a*+", "bad repetition operator: *+ (RE2 has no possessive quantifiers)"),
    (r"a{2}+", "bad repetition operator: {2}+ (RE2 has no possessive quantifiers)"),
    (r"(?>a+)", "invalid perl operator: (?> (RE2 has no atomic groups)"),
    (r"a\Z", "invalid escape sequence: \\Z (use \\z or $)"),
    (r"(a)?(?(1)b|c)", "invalid perl operator: (?("),
    (r"a(?#c)", "invalid perl operator: (?#"),
    (r"a**", "bad repetition operator: **"),
    (r"a{1001}", "invalid repetition size: {1001}"),
    (r"(?x)a", "invalid perl operator: (?x"),
    (r"a(", "missing ): a("),
    (r"a)", "unexpected ): a)"),
    (r"[a", "missing ]: [a"),
    (r"*a", "no argument for repetition operator: *"),
    ("[^a]{1000}" * 5, "pattern too large: RE2 program size 40004 is over 32768 (Istio's limit for Envoy)"),
    (r"\pL{1000}", "pattern too large - compile failed"),  # over RE2's memory budget (8 MiB)
]


@pytest.mark.parametrize("pattern,text,matches", RE2_OK)
def test_re2_accepts(pattern, text, matches):
    assert regex.check(pattern) is None
    assert bool(regex.compile(pattern).fullmatch(text.encode())) is matches


@pytest.mark.parametrize("pattern,reason", RE2_REJECTED)
def test_re2_rejects(pattern, reason):
    assert regex.check(pattern) == reason
    with pytest.raises(regex.RegexError):
        regex.compile(pattern)


@pytest.mark.parametrize("rewrite,groups,reason", [
    ("/\\1/\\2", 2, None),
    ("/\\0-\\\\", 0, None),
    ("/\\10", 1, None),  # \\1 then "0" (RE2 reads one digit)
    ("/\\2", 1, "\\2 refers to a group the match does not have (1)"),
    ("/\\n", 1, "invalid rewrite '\\\\n': only \\0 to \\9 (groups) and \\\\ (a backslash) may follow a backslash"),
    ("/x\\", 1, "invalid rewrite trailing backslash: only \\0 to \\9 (groups) and \\\\ (a backslash) may follow "
     "a backslash"),
])
def test_re2_rewrite_strings(rewrite, groups, reason):
    assert regex.check_rewrite(rewrite, groups) == reason



def test_validate_refuses_non_re2_regex_naming_the_field(tmp_path, capsys):
    """``meshproxy validate``: a backreference (valid for Python's re, not for RE2) is an error on
    the field that holds it, with RE2's reason, and exit status 1."""
    from meshproxy.cli import main

    write(tmp_path, SERVICES + vs("""\
        - match: [{headers: {x-user: {regex: "(a)\\\\1"}}}]
          route: [{destination: {host: shadow}}]
        - rewrite: {uriRegexRewrite: {match: "/(?=x)", rewrite: "/"}}
          route: [{destination: {host: shadow}}]
        """))
    path = str(tmp_path / "mesh.yaml")
    assert main(["validate", path]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{path}: VirtualService default/vs: spec.http[0].match[0].headers.x-user.regex: invalid regex: "
        "invalid escape sequence: \\1 (RE2 has no backreferences)",
        f"{path}: VirtualService default/vs: spec.http[1].rewrite.uriRegexRewrite.match: invalid regex: "
        "invalid perl operator: (?= (RE2 has no lookaround)",
    ]


# --- timeouts and retries ------------------------------------------------------------------------


def test_timeout_and_retries_compile(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES + vs("""\
        - match: [{uri: {prefix: /a}}]
          timeout: 1.5s
          retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset,503,409"}
          route: [{destination: {host: shadow}}]
        - match: [{uri: {prefix: /b}}]
          retries: {attempts: 0}
          route: [{destination: {host: shadow}}]
        - retries: {attempts: 4}
          route: [{destination: {host: shadow}}]
        """, hosts="[shadow]")))
    a, b, c = vhost(snap, "shadow.default.svc.cluster.local:80").routes
    assert a.timeout == 1.5
    assert a.retries == RetryPolicy(attempts=3, per_try_timeout=0.5,
                                    retry_on=("5xx", "reset", "retriable-status-codes"),
                                    status_codes=(503, 409), configured=True)
    assert b.retries.attempts == 0 and b.timeout == 0.0
    # retryOn absent: Istio's default conditions with the route's attempts
    assert c.retries == RetryPolicy(attempts=4, configured=True)
    # a host without a VirtualService: Istio's default policy, and it stays the fast path
    [default] = vhost(snap, "web.default.svc.cluster.local:80").routes
    assert default.retries == RetryPolicy() and default.is_simple
    assert RetryPolicy().attempts == 2 and RetryPolicy().retry_on == (
        "connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes")


# --- connectionPool limits (circuit breakers) and retry budgets ---------------------------------------


def test_connection_pool_limits_compile_to_circuit_breakers(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES + doc("DestinationRule", "web", """\
        host: web
        trafficPolicy:
          connectionPool:
            tcp: {maxConnections: 1, maxConnectionDuration: 30s, connectTimeout: 2s}
            http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, http2MaxRequests: 0}
          portLevelSettings:
          - port: {number: 8080}
            connectionPool: {http: {http2MaxRequests: 100, maxRetries: 5}}
        subsets:
        - name: v1
          labels: {version: v1}
        - name: v2
          labels: {version: v2}
          trafficPolicy:
            connectionPool: {http: {idleTimeout: 10s}}
        - name: v3
          labels: {version: v2}
          trafficPolicy:
            portLevelSettings:
            - port: {number: 80}
              loadBalancer: {simple: RANDOM}
        """) + vs("""\
        - route:
          - {destination: {host: web, subset: v1, port: {number: 80}}, weight: 40}
          - {destination: {host: web, subset: v2, port: {number: 80}}, weight: 30}
          - {destination: {host: web, subset: v3, port: {number: 80}}, weight: 30}
        """, hosts="[shadow]")))
    web = "web.default.svc.cluster.local"
    c80 = snap.cluster(f"outbound|80||{web}")
    # 0 keeps Istio's default (unlimited); only what is set above 0 changes
    assert c80.circuit_breakers == CircuitBreakers(max_connections=1, max_pending_requests=1,
                                                   max_requests_per_connection=1, max_connection_duration=30.0)
    assert c80.circuit_breakers.max_requests == c80.circuit_breakers.max_retries == MAX_UNLIMITED == 2**32 - 1
    assert c80.connect_timeout == 2.0 and c80.retry_budget is None
    # portLevelSettings' connectionPool replaces the top-level one as a whole
    c8080 = snap.cluster(f"outbound|8080||{web}")
    assert c8080.circuit_breakers == CircuitBreakers(max_requests=100, max_retries=5)
    assert c8080.connect_timeout == 10.0
    # a subset without a connectionPool inherits the top-level limits (its own cluster, its own limits)
    assert snap.cluster(f"outbound|80|v1|{web}").circuit_breakers == c80.circuit_breakers
    # a subset's connectionPool replaces the whole part: no limits left
    assert snap.cluster(f"outbound|80|v2|{web}").circuit_breakers == CircuitBreakers()
    # a subset's port-level settings replace every part, connectionPool included
    assert snap.cluster(f"outbound|80|v3|{web}").circuit_breakers == CircuitBreakers()
    # no DestinationRule: Istio's defaults
    assert snap.cluster("outbound|80||shadow.default.svc.cluster.local").circuit_breakers == CircuitBreakers()
    assert CircuitBreakers() == CircuitBreakers(MAX_UNLIMITED, MAX_UNLIMITED, MAX_UNLIMITED, MAX_UNLIMITED, 0, 0.0)
    assert Snapshot.from_dict(snap.to_dict()) == snap
    dumped = json.loads(snap.to_json())
    [d80] = [c for c in dumped["clusters"] if c["name"] == f"outbound|80||{web}"]
    assert d80["circuit_breakers"] == {
        "max_connections": 1, "max_pending_requests": 1, "max_requests": MAX_UNLIMITED,
        "max_retries": MAX_UNLIMITED, "max_requests_per_connection": 1, "max_connection_duration": 30.0}
    assert d80["retry_budget"] is None


def test_retry_budget_top_level_and_subset(tmp_path):
    snap = build_snapshot(write(tmp_path, SERVICES + doc("DestinationRule", "web", """\
        host: web
        trafficPolicy:
          retryBudget: {percent: 25.5, budgetInterval: 10s}
          connectionPool: {http: {maxRetries: 3}}
          portLevelSettings:
          - port: {number: 8080}
            connectionPool: {http: {maxRetries: 7}}
        subsets:
        - name: v1
          labels: {version: v1}
        - name: v2
          labels: {version: v2}
          trafficPolicy:
            retryBudget: {minRetryConcurrency: 0}
        - name: v3
          labels: {version: v2}
          trafficPolicy:
            retryBudget: {}
            portLevelSettings:
            - port: {number: 80}
              loadBalancer: {simple: RANDOM}
        """) + vs("""\
        - route:
          - {destination: {host: web, subset: v1, port: {number: 80}}, weight: 40}
          - {destination: {host: web, subset: v2, port: {number: 8080}}, weight: 30}
          - {destination: {host: web, subset: v3, port: {number: 80}}, weight: 30}
        """, hosts="[shadow]")))
    web = "web.default.svc.cluster.local"
    top = RetryBudget(percent=25.5, min_retry_concurrency=3, budget_interval=10.0)
    c80 = snap.cluster(f"outbound|80||{web}")
    assert c80.retry_budget == top and c80.circuit_breakers == CircuitBreakers(max_retries=3)
    # retryBudget has no port-level form: every port of the service gets the top-level one
    c8080 = snap.cluster(f"outbound|8080||{web}")
    assert c8080.retry_budget == top and c8080.circuit_breakers == CircuitBreakers(max_retries=7)
    assert snap.cluster(f"outbound|80|v1|{web}").retry_budget == top
    # a subset's retryBudget replaces the top-level one as a whole (unset fields: Envoy's defaults)
    assert snap.cluster(f"outbound|8080|v2|{web}").retry_budget == RetryBudget(min_retry_concurrency=0)
    # {} is a budget with every default; the subset's port-level settings leave it in place
    v3 = snap.cluster(f"outbound|80|v3|{web}")
    assert (v3.retry_budget, v3.lb_policy) == (RetryBudget(20.0, 3, 0.0), "RANDOM")
    assert snap.cluster("outbound|80||shadow.default.svc.cluster.local").retry_budget is None
    assert Snapshot.from_dict(snap.to_dict()) == snap
    [d] = [c for c in json.loads(snap.to_json())["clusters"] if c["name"] == f"outbound|80||{web}"]
    assert d["retry_budget"] == {"percent": 25.5, "min_retry_concurrency": 3, "budget_interval": 10.0}
