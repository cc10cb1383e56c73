"""control.locality: each endpoint's locality priority and effective weight, in the compiled snapshot.

Istio's locality load balancing is computed by control for the snapshot's sidecar (as istiod does
for Envoy's EDS): the data plane only balances over the lowest priority with a healthy endpoint, by
weight. tests/integration/test_routing.py checks the same configs end to end (traffic stays in
us-east, fails over to us-west, comes back).
"""
import json

import pytest

from control import build_snapshot
from control.locality import locality_match, workload_locality
from control.snapshot import Endpoint, Snapshot, Workload, content_version

GEO = "geo.default.svc.cluster.local"


def doc(kind, name, spec):
    return json.dumps({"apiVersion": "networking.istio.io/v1", "kind": kind,
                       "metadata": {"name": name, "namespace": "default"}, "spec": spec}) + "\n---\n"


def mesh(tmp_path, endpoints, policy, client=None, name="mesh.yaml", subsets=None):
    """A "geo" service over WorkloadEntries ``[(name, address, locality, extra spec)]``, its
    DestinationRule ``policy`` (None: no DestinationRule) and a "client" WorkloadEntry."""
    text = ""
    for ep_name, address, locality, extra in endpoints:
        spec = {"address": address, "ports": {"http": 8080}, "labels": {"app": "geo"}}
        if locality:
            spec["locality"] = locality
        for k, v in extra.items():
            spec[k] = {**spec[k], **v} if k == "labels" else v
        text += doc("WorkloadEntry", ep_name, spec)
    text += doc("WorkloadEntry", "client", {"address": "127.0.0.40", "labels": {"app": "client"}, **(client or {})})
    text += doc("ServiceEntry", "geo", {"hosts": [GEO], "resolution": "STATIC",
                                        "ports": [{"number": 80, "name": "http"}],
                                        "workloadSelector": {"labels": {"app": "geo"}}})
    if policy is not None or subsets:
        dr = {"host": "geo"}
        if policy is not None:
            dr["trafficPolicy"] = {"loadBalancer": policy}
        if subsets:
            dr["subsets"] = subsets
        text += doc("DestinationRule", "geo", dr)
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def endpoints(snap, cluster=f"outbound|80||{GEO}"):
    """(WorkloadEntry name, priority, weight, config_weight) per endpoint of the cluster."""
    return [(e.workload.split("/")[1], e.priority, e.weight, e.config_weight) for e in snap.cluster(cluster).endpoints]


# --- The failover config of tests/integration/test_routing.py ----------------------------------------

GEO_EPS = [("east1", "127.0.0.41", "us-east/zone1", {}), ("east2", "127.0.0.42", "us-east/zone1", {}),
           ("west1", "127.0.0.43", "us-west/zone1", {})]
FAILOVER = {"simple": "ROUND_ROBIN", "localityLbSetting": {"enabled": True,
                                                          "failover": [{"from": "us-east", "to": "us-west"}]}}


@pytest.mark.parametrize("client", [{"locality": "us-east/zone1"},
                                    {"labels": {"app": "client", "topology.istio.io/locality": "us-east.zone1"}}],
                         ids=["workload-entry-locality", "topology-label"])
def test_failover_keeps_traffic_local_then_fails_over_to_the_named_region(tmp_path, client):
    snap = build_snapshot(mesh(tmp_path, GEO_EPS, FAILOVER, client), workload="client")
    # both us-east endpoints share priority 0 with equal weights (round robin 50/50 while they are up);
    # us-west is the failover tier, used only when no us-east endpoint is healthy
    assert endpoints(snap) == [("east1", 0, 1, 1), ("east2", 0, 1, 1), ("west1", 3, 1, 1)]
    assert snap.cluster(f"outbound|80||{GEO}").lb_policy == "ROUND_ROBIN"


def test_tiers_by_subzone_zone_region_failover_and_elsewhere(tmp_path):
    eps = [("same", "10.0.0.1", "us-east/zone1/a", {}), ("subzone", "10.0.0.2", "us-east/zone1/b", {}),
           ("zone", "10.0.0.3", "us-east/zone2/a", {}), ("failover", "10.0.0.4", "us-west/zone1/a", {}),
           ("elsewhere", "10.0.0.5", "eu/zone1/a", {}), ("none", "10.0.0.6", "", {"weight": 5})]
    snap = build_snapshot(mesh(tmp_path, eps, FAILOVER, {"locality": "us-east/zone1/a"}), workload="client")
    assert endpoints(snap) == [("same", 0, 1, 1), ("subzone", 1, 1, 1), ("zone", 2, 1, 1), ("failover", 3, 1, 1),
                               ("elsewhere", 4, 1, 1), ("none", 4, 5, 5)]
    # without failover the named region is just "elsewhere"
    snap = build_snapshot(mesh(tmp_path, eps, {"localityLbSetting": {}}, {"locality": "us-east/zone1/a"}),
                          workload="client")
    assert [p for _, p, _, _ in endpoints(snap)] == [0, 1, 2, 4, 4, 4]


def test_distribute_gives_each_locality_its_share(tmp_path):
    eps = [("w1", "10.0.0.1", "us-west/zone1/a", {"weight": 1}), ("w2", "10.0.0.2", "us-west/zone1/a", {"weight": 3}),
           ("w3", "10.0.0.3", "us-west/zone2/b", {}), ("eu", "10.0.0.4", "eu/zone1", {"weight": 7})]
    policy = {"localityLbSetting": {"distribute": [
        {"from": "eu/*", "to": {"eu/*": 100}},  # not this sidecar's locality: skipped
        {"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]}}
    snap = build_snapshot(mesh(tmp_path, eps, policy, {"locality": "us-west/zone1/a"}), workload="client")
    # zone1's 80% split 1:3 by configured weight, zone2's 20% to its one endpoint (1000 x percent);
    # eu gets no share: priority 1 (used only when no target endpoint is healthy), weight 1
    assert endpoints(snap) == [("w1", 0, 20000, 1), ("w2", 0, 60000, 3), ("w3", 0, 20000, 1), ("eu", 1, 1, 7)]
    # a sidecar that no "from" matches gets the locality tiers instead
    snap = build_snapshot(mesh(tmp_path, eps, policy, {"locality": "ap/zone1"}), workload="client")
    assert endpoints(snap) == [("w1", 4, 1, 1), ("w2", 4, 3, 3), ("w3", 4, 1, 1), ("eu", 4, 7, 7)]


def test_failover_priority_counts_matching_labels_in_order(tmp_path):
    region, zone = "topology.kubernetes.io/region", "topology.kubernetes.io/zone"
    eps = [("both", "10.0.0.1", "", {"labels": {region: "r1", zone: "z1"}}),
           ("region", "10.0.0.2", "", {"labels": {region: "r1", zone: "z2"}}),
           ("zone-only", "10.0.0.3", "", {"labels": {region: "r2", zone: "z1"}}),
           ("neither", "10.0.0.4", "", {"labels": {}, "weight": 2})]
    policy = {"localityLbSetting": {"failoverPriority": [region, zone]}}
    # no locality needed: the labels decide
    client = {"labels": {"app": "client", region: "r1", zone: "z1"}}
    snap = build_snapshot(mesh(tmp_path, eps, policy, client), workload="client")
    assert endpoints(snap) == [("both", 0, 1, 1), ("region", 1, 1, 1), ("zone-only", 2, 1, 1), ("neither", 2, 2, 2)]


@pytest.mark.parametrize("policy,client,workload", [
    (FAILOVER, {"locality": "us-east/zone1"}, None),  # no workload: no locality to prefer
    ({"localityLbSetting": {"enabled": False, "failover": [{"from": "us-east", "to": "us-west"}]}},
     {"locality": "us-east/zone1"}, "client"),  # disabled
    (FAILOVER, {}, "client"),  # the workload has no locality
    ({"simple": "ROUND_ROBIN"}, {"locality": "us-east/zone1"}, "client"),  # no localityLbSetting
    (None, {"locality": "us-east/zone1"}, "client"),  # no DestinationRule
], ids=["no-workload", "disabled", "no-locality", "no-locality-lb", "no-destination-rule"])
def test_priority_zero_and_configured_weights_when_locality_lb_does_not_apply(tmp_path, policy, client, workload):
    eps = GEO_EPS[:2] + [("west1", "127.0.0.43", "us-west/zone1", {"weight": 4})]
    snap = build_snapshot(mesh(tmp_path, eps, policy, client), workload=workload)
    assert endpoints(snap) == [("east1", 0, 1, 1), ("east2", 0, 1, 1), ("west1", 0, 4, 4)]


def test_subset_clusters_get_their_own_priorities(tmp_path):
    eps = [(n, a, loc, {"labels": {"version": "v1"}}) for n, a, loc, _ in GEO_EPS]
    subsets = [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": {
        "localityLbSetting": {"failover": [{"from": "us-east", "to": "us-west"}]}}}}]
    text = open(mesh(tmp_path, eps, None, {"locality": "us-east/zone1"}, subsets=subsets)).read()
    text += doc("VirtualService", "geo", {"hosts": ["geo"], "http": [{"route": [
        {"destination": {"host": "geo", "subset": "v1"}}]}]})
    (tmp_path / "mesh.yaml").write_text(text)
    snap = build_snapshot(str(tmp_path / "mesh.yaml"), workload="client")
    assert endpoints(snap, f"outbound|80|v1|{GEO}") == [("east1", 0, 1, 1), ("east2", 0, 1, 1), ("west1", 3, 1, 1)]


def test_inbound_and_dns_clusters_keep_configured_weights(tmp_path):
    text = open(mesh(tmp_path, GEO_EPS, FAILOVER, {"locality": "us-east/zone1", "ports": {"http": 9000}})).read()
    text += doc("ServiceEntry", "client", {"hosts": ["client.default.svc.cluster.local"], "resolution": "STATIC",
                                           "ports": [{"number": 80, "name": "http"}],
                                           "workloadSelector": {"labels": {"app": "client"}}})
    text += doc("ServiceEntry", "ext", {"hosts": ["ext.example.com"], "resolution": "DNS",
                                        "ports": [{"number": 80, "name": "http"}],
                                        "endpoints": [{"address": "a.example.com", "weight": 3, "locality": "eu/z"}]})
    text += doc("DestinationRule", "ext", {"host": "ext.example.com", "trafficPolicy": {"loadBalancer": FAILOVER}})
    (tmp_path / "mesh.yaml").write_text(text)
    snap = build_snapshot(str(tmp_path / "mesh.yaml"), workload="client")
    [inbound] = snap.cluster("inbound|9000||").endpoints
    assert (inbound.priority, inbound.weight, inbound.config_weight) == (0, 1, 1)
    ext = snap.cluster("outbound|80||ext.example.com")
    assert ext.endpoints == () and ext.dns_hosts == (("a.example.com", 80, 3),)


# --- The snapshot contract -------------------------------------------------------------------------


def test_new_endpoint_fields_round_trip_and_change_the_version(tmp_path):
    eps = GEO_EPS + [("w4", "127.0.0.44", "us-east/zone2", {"weight": 3})]
    east = build_snapshot(mesh(tmp_path, eps, FAILOVER, {"locality": "us-east/zone1"}), workload="client")
    d = json.loads(east.to_json())
    [cluster] = [c for c in d["clusters"] if c["name"] == f"outbound|80||{GEO}"]
    assert [(e["priority"], e["weight"], e["config_weight"]) for e in cluster["endpoints"]] == [
        (0, 1, 1), (0, 1, 1), (3, 1, 1), (2, 3, 3)]
    assert Snapshot.from_dict(d) == east and Snapshot.from_json(east.to_json()) == east
    # the same config for a sidecar elsewhere: other priorities, another version
    west = build_snapshot(mesh(tmp_path, eps, FAILOVER, {"locality": "us-west/zone1"}, name="w.yaml"),
                          workload="client")
    assert [p for _, p, _, _ in endpoints(west)] == [4, 4, 0, 4]
    assert west.version != east.version
    # priorities and effective weights are part of the content hash
    def version(snap):
        return content_version({"bootstrap": snap.bootstrap, "listeners": list(snap.listeners),
                                "clusters": snap.clusters, "workload": snap.workload})

    assert version(east) == east.version
    d["clusters"] = [dict(c, endpoints=[dict(e, priority=0) for e in c["endpoints"]]) for c in d["clusters"]]
    assert version(Snapshot.from_dict(d)) != east.version


def test_endpoint_config_weight_defaults_to_weight():
    assert Endpoint("10.0.0.1", 80, 80, weight=3).config_weight == 3
    assert Endpoint("10.0.0.1", 80, 80, weight=20000, config_weight=2).config_weight == 2
    # a snapshot dict written before these fields existed: priority 0, configured weight = weight
    old = {"address": "10.0.0.1", "port": 80, "target_port": 80, "weight": 4}
    e = Snapshot.from_dict({"version": "x", "bootstrap": {}, "listeners": [], "clusters": [
        {"name": "c", "direction": "outbound", "service": "s", "namespace": "default", "port": 80,
         "port_name": "http", "protocol": "HTTP", "endpoints": [old]}]}).clusters[0].endpoints[0]
    assert (e.priority, e.weight, e.config_weight) == (0, 4, 4)


# --- Locality names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,locality,match", [
    ("us-east/*", "us-east/zone1/a", True), ("us-east/zone1/*", "us-east/zone1/a", True),
    ("us-east/zone1/*", "us-east/zone2/a", False), ("us-east", "us-east", True), ("us-east", "us-east/zone1", False),
    ("us-east/zone1/a", "us-east/zone1", False), ("us-east/zone1", "us-east/zone1/a", False), ("*", "", True),
    ("us-east/*", "", False)])
def test_locality_patterns(pattern, locality, match):
    assert locality_match(pattern, locality) is match


def test_workload_locality_from_the_entry_or_the_topology_label():
    assert workload_locality(Workload("c", "default", "127.0.0.1", locality="us-east/zone1")) == "us-east/zone1"
    labelled = Workload("c", "default", "127.0.0.1", labels={"topology.istio.io/locality": "us-east.zone1.a"})
    assert workload_locality(labelled) == "us-east/zone1/a"
    assert workload_locality(Workload("c", "default", "127.0.0.1")) == ""
