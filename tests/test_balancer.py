"""RoundRobinPicker, both twins: rotation, weighted shares, smoothness, bad input."""
import collections
import importlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy._py import balancer as py_balancer

IMPLS = [pytest.param(py_balancer, id="py")]
try:
    IMPLS.append(pytest.param(importlib.import_module("meshproxy._core.balancer"), id="c"))
except ImportError:  # pragma: no cover - compiled module not built
    IMPLS.append(pytest.param(None, id="c", marks=pytest.mark.skip("compiled balancer not built")))


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def test_equal_weights_rotate(impl):
    p = impl.RoundRobinPicker([1, 1, 1])
    assert [p.pick() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert p.size == 3


def test_single_endpoint(impl):
    p = impl.RoundRobinPicker([5])
    assert {p.pick() for _ in range(10)} == {0}


def test_weighted_shares_exact_per_cycle(impl):
    p = impl.RoundRobinPicker([5, 1, 1])
    picks = [p.pick() for _ in range(700)]
    assert collections.Counter(picks) == {0: 500, 1: 100, 2: 100}
    # smooth: the heavy endpoint never takes more than its share in a row (nginx's property)
    first = picks[:7]
    assert first.count(0) == 5 and first != [0, 0, 0, 0, 0, 1, 2]


@pytest.mark.parametrize("weights", [[], [0], [1, -1]])
def test_bad_weights_rejected(impl, weights):
    with pytest.raises(ValueError):
        impl.RoundRobinPicker(weights)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=12))
def test_twins_agree_and_shares_match_weights(weights):
    c = IMPLS[1].values[0]
    py = py_balancer.RoundRobinPicker(weights)
    total = sum(weights)
    picks = [py.pick() for _ in range(total * 3)]
    counts = collections.Counter(picks)
    assert all(counts[i] == 3 * w for i, w in enumerate(weights))
    if c is not None:
        cp = c.RoundRobinPicker(weights)
        assert [cp.pick() for _ in range(total * 3)] == picks
