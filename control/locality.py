"""Locality load balancing: each endpoint's priority and effective weight, for one sidecar.

Envoy receives EDS endpoints already grouped by priority, computed by istiod for the proxy that
asks; meshproxy's snapshot is per sidecar too, so control computes them here and the data plane
only reads ``Endpoint.priority`` and ``Endpoint.weight``: it balances over the lowest priority that
has a healthy endpoint, by weight.

Istio's rules, applied when the cluster's DestinationRule has ``localityLbSetting`` (``enabled``, the
default) and the sidecar has a locality (its WorkloadEntry ``locality``, else the
``topology.istio.io/locality`` label, dots for slashes):

- ``distribute``: the first entry whose ``from`` matches the sidecar's locality sends each ``to``
  locality its share (percent), split over the endpoints of that locality by their configured
  weights (effective weight ``1000 * share * weight / sum of weights``, at least 1); those endpoints
  have priority 0, every other endpoint priority 1 with weight 1.
- ``failoverPriority``: priority is how many of the listed labels do *not* match the sidecar's,
  counting from the first mismatch (all match: 0). This one applies even without a locality.
- otherwise, by locality: same region/zone/subzone 0, same region/zone 1, same region 2, the region
  that ``failover`` names for the sidecar's region 3, anywhere else 4.

Without a workload, a locality (or ``failoverPriority``) or an enabled ``localityLbSetting``, every
endpoint keeps priority 0 and its configured weight.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from control.snapshot import LocalityLb, Workload

LOCALITY_LABEL = "topology.istio.io/locality"


def workload_locality(workload: Workload) -> str:
    """``region/zone/subzone`` of the sidecar: its WorkloadEntry's locality, else Istio's label."""
    return workload.locality or (workload.labels.get(LOCALITY_LABEL) or "").replace(".", "/")


def prioritise(endpoints: tuple, lb: Optional[LocalityLb], workload: Optional[Workload]) -> tuple:
    """``endpoints`` (in order) with ``priority`` and effective ``weight`` set for ``workload``.

    ``config_weight`` keeps the weight as configured.
    """
    weights, prios = locality_weights(endpoints, lb, workload)
    return tuple(dataclasses.replace(e, weight=w, priority=p) for e, w, p in zip(endpoints, weights, prios))


def locality_weights(endpoints: tuple, lb: Optional[LocalityLb], workload: Optional[Workload]):
    """(effective weights, priorities), one each per endpoint, by the rules in the module docstring."""
    weights = [max(1, e.config_weight) for e in endpoints]
    prios = [0] * len(endpoints)
    if workload is None or lb is None or not lb.enabled:
        return weights, prios
    mine = workload_locality(workload)
    if not mine and not lb.failover_priority:
        return weights, prios
    for frm, targets in lb.distribute:
        if not locality_match(frm, mine):
            continue
        shares = []
        for e in endpoints:
            share = 0
            for to, w in targets:
                if locality_match(to, e.locality):
                    share = w
                    break
            shares.append(share)
        # each target locality's share is split over its endpoints by their weights
        per: dict = {}
        for i, e in enumerate(endpoints):
            per[(shares[i], e.locality)] = per.get((shares[i], e.locality), 0) + weights[i]
        weights = [max(1, int(1000 * shares[i] * weights[i] / per[(shares[i], e.locality)]))
                   if shares[i] else 1 for i, e in enumerate(endpoints)]
        prios = [0 if shares[i] else 1 for i in range(len(endpoints))]
        return weights, prios
    if lb.failover_priority:
        labels = dict(workload.labels)
        for i, e in enumerate(endpoints):
            n = 0
            for key in lb.failover_priority:
                if key in labels and e.labels.get(key) == labels.get(key):
                    n += 1
                else:
                    break
            prios[i] = len(lb.failover_priority) - n
        return weights, prios
    region, zone, sub = (mine.split("/") + ["", "", ""])[:3]
    failover = dict(lb.failover)
    for i, e in enumerate(endpoints):
        r, z, sz = (e.locality.split("/") + ["", "", ""])[:3]
        if r == region and z == zone and sz == sub:
            prios[i] = 0
        elif r == region and z == zone:
            prios[i] = 1
        elif r == region:
            prios[i] = 2
        elif failover.get(region) == r:
            prios[i] = 3
        else:
            prios[i] = 4
    return weights, prios


def locality_match(pattern: str, locality: str) -> bool:
    """Istio locality patterns: ``region/zone/*`` or ``region/*`` (or a whole locality)."""
    p = pattern.split("/")
    l_ = locality.split("/") if locality else []
    for i, part in enumerate(p):
        if part == "*":
            return True
        if i >= len(l_) or l_[i] != part:
            return False
    return len(p) >= len(l_)
