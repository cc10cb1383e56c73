"""Micro-benchmarks of the load-balancer pickers (pytest-benchmark), compiled vs pure twin.

    .venv/bin/pytest bench/test_balancer_micro.py --benchmark-only --benchmark-group-by=param:algo,param:n

One benchmarked call is ``LOOP`` (1000) picks, so call overhead of the benchmark harness does not
dominate; divide by 1000 for one pick. Two ways to loop (``mode``):

* ``engine``: ``balancer._pick_loop`` - for the compiled twin a C loop making direct C calls of the
  typed ``pick``, which is how the compiled engine (meshproxy/_core/conn.py) calls it; for the pure
  twin the same loop in Python. This is the hot-path comparison.
* ``python``: a Python ``for`` loop calling ``picker.pick`` - adds a Python method call (~25 ns)
  to every compiled pick, as when the pure-Python engine drives a compiled picker.
 Every algorithm runs at 3, 100 and 10,000 endpoints with
uneven weights (RANDOM and LEAST_REQUEST also with equal weights: the alias/P2C paths differ from
the weighted ones). Hash-based pickers take precomputed key hashes, so only the pick is measured.
Judge by the compiled/pure ratio within one run (``python bench/test_balancer_micro.py`` prints
the table), not by absolute times on a shared machine. The builds (``impl``: ``py`` and ``c``)
come from tests/conftest.py through bench/conftest.py.
"""
from __future__ import annotations

import array
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import meshproxy  # noqa: F401
except ImportError:  # not installed: benchmark the source tree (extensions built in place)
    sys.path.insert(0, ROOT)

LOOP = 1000
SIZES = [3, 100, 10_000]
ALGOS = ["ROUND_ROBIN", "RANDOM", "RANDOM_EQUAL", "LEAST_REQUEST", "LEAST_REQUEST_EQUAL",
         "RING_HASH", "MAGLEV"]
KEYS = array.array("Q", [random.Random(1).getrandbits(64) for _ in range(LOOP)])
MODES = ["engine", "python"]


_PICKERS = {}


def _picker(mod, algo, n):
    key = (mod.__name__, algo, n)
    if key not in _PICKERS:
        weights = [1] * n if algo.endswith("_EQUAL") else [1 + (i * 7) % 10 for i in range(n)]
        policy = algo.replace("_EQUAL", "")
        names = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:8080" for i in range(n)]
        options = {"names": names}
        if policy in ("RANDOM", "LEAST_REQUEST"):
            options["seed"] = 1
        if policy == "LEAST_REQUEST":
            options["active"] = [(i * 3) % 5 for i in range(n)]
        _PICKERS[key] = mod.make_picker(policy, weights, **options)
    return _PICKERS[key]


def _loop(mod, picker, algo, mode="python"):
    if mode == "engine":
        pick_loop = mod._pick_loop
        keys = KEYS if algo in ("RING_HASH", "MAGLEV") else None

        def run_engine():
            pick_loop(picker, LOOP, keys)
        return run_engine
    pick = picker.pick
    if algo in ("RING_HASH", "MAGLEV"):
        keys = KEYS

        def run():
            for k in keys:
                pick(k)
    else:
        rng = range(LOOP)

        def run():
            for _ in rng:
                pick()
    return run


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("algo", ALGOS)
def test_pick_1000(benchmark, algo, n, mode, impl):
    mod = impl.balancer
    picker = _picker(mod, algo, n)
    benchmark.group = f"{algo} n={n} {mode} loop"
    benchmark.extra_info.update(algo=algo, n=n, kind=impl.name, mode=mode, picks_per_round=LOOP)
    benchmark(_loop(mod, picker, algo, mode))


def main():  # pragma: no cover - manual table
    import timeit

    sys.path.insert(0, ROOT)
    from tests.conftest import load_build

    pure, comp = load_build("py").balancer, load_build("c").balancer
    print("ns per pick (best of 7 x 20 rounds of 1000 picks); ratio = pure / compiled")
    print(f"{'algorithm':<21}{'n':>6} | {'engine loop: C':>14}{'pure':>9}{'ratio':>8} |"
          f" {'python loop: C':>14}{'pure':>9}{'ratio':>8}")
    for algo in ALGOS:
        for n in SIZES:
            row = []
            for mode in MODES:
                for mod in (comp, pure):
                    run = _loop(mod, _picker(mod, algo, n), algo, mode)
                    row.append(min(timeit.repeat(run, number=20, repeat=7)) / 20 / LOOP * 1e9)
            print(f"{algo:<21}{n:>6} | {row[0]:>14.1f}{row[1]:>9.1f}{row[1] / row[0]:>7.1f}x |"
                  f" {row[2]:>14.1f}{row[3]:>9.1f}{row[3] / row[2]:>7.1f}x")


if __name__ == "__main__":
    main()
