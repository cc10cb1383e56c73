"""Which hot path runs: the compiled one in a normal install, the twins when asked."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("http1", "balancer", "counters", "pathnorm", "timers", "router", "cluster", "stream",
           "http1conn")
SINGLE_SOURCE = ("pathnorm", "timers", "router", "cluster", "stream", "http1conn")


def _probe(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "MESHPROXY_NO_EXTENSIONS"}
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT)
    code = ("from meshproxy import core; print(core.COMPILED); "
            + "; ".join(f"print(core.{m}.__file__)" for m in MODULES))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=str(ROOT)).stdout.split()
    return out[0] == "True", out[1:]


def test_normal_install_uses_compiled_core():
    compiled, files = _probe({})
    assert compiled, "the Cython extensions are not built (run `make build`)"
    for m, f in zip(MODULES, files):
        assert f.endswith(".so"), f"{m} comes from {f}, not from the compiled extension"
        assert "/_core/" in f


def test_no_extensions_selects_pure_twins():
    compiled, files = _probe({"MESHPROXY_NO_EXTENSIONS": "1"})
    assert not compiled
    for m, f in zip(MODULES, files):
        # independent twins live in _py/; single-source modules are their _core/ source, uncompiled
        where = "_core" if m in SINGLE_SOURCE else "_py"
        assert f.endswith(f"{where}/{m}.py"), f"{m} comes from {f}"


def test_cli_version_reports_core():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MESHPROXY_NO_EXTENSIONS", None)
    out = subprocess.run([sys.executable, "-m", "meshproxy", "version"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "compiled core" in out
    env["MESHPROXY_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-m", "meshproxy", "version"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "pure-Python core" in out


@pytest.mark.parametrize("m", MODULES)
def test_twins_export_the_same_names(m):
    import importlib
    py = importlib.import_module(f"meshproxy._py.{m}")
    try:
        c = importlib.import_module(f"meshproxy._core.{m}")
    except ImportError:
        pytest.skip("compiled module not built")
    # classes, functions and DEFAULT_* limits; the engine's state constants are C-level when
    # compiled (cdef ints), so they are not part of the shared API.
    public = {n for n in dir(py) if not n.startswith("_") and (
        isinstance(getattr(py, n), type) and getattr(py, n).__module__ == py.__name__
        or n.startswith("DEFAULT_") or n in ("request_id", "merge", "merge_all", "local_reply",
                                             "normalize", "needs_normalizing", "MODES", "NAMES",
                                             "set_date"))}
    missing = {n for n in public if not hasattr(c, n)}
    assert not missing, f"compiled {m} lacks {sorted(missing)}"
