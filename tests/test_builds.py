"""The build fixtures of tests/conftest.py: each build is what it claims, and a wrong one fails."""
import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from meshproxy._env import NO_EXTENSIONS
from meshproxy._py import SINGLE_SOURCE
from meshproxy._py import balancer as py_balancer
from tests import conftest as builds  # the helpers; pytest loads the same file for the fixtures

ROOT = Path(__file__).resolve().parent.parent
EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
HEAPTYPE = 1 << 9


def test_impl_holds_every_hot_path_module_of_its_build(impl):
    assert impl.name in builds.BUILDS
    assert list(impl.modules) == list(builds.HOT_PATH)
    package = "meshproxy._core" if impl.compiled else "meshproxy._py"
    for name, module in impl.modules.items():
        assert getattr(impl, name) is module
        assert module.__name__ == f"{package}.{name}"
        own = [v for v in vars(module).values()
               if isinstance(v, type) and v.__module__ == module.__name__]
        assert own, module
        if impl.compiled:
            assert module.__file__.endswith(EXTENSION_SUFFIXES), module.__file__
            assert all(not cls.__flags__ & HEAPTYPE for cls in own), own  # cdef classes
        else:
            # an independent twin in _py/, or a single-source module's _core/ source uncompiled
            where = "_core" if name in SINGLE_SOURCE else "_py"
            assert module.__file__.endswith(f"{where}/{name}.py"), module.__file__
            assert all(cls.__flags__ & HEAPTYPE for cls in own), own


def test_module_fixtures_follow_impl(impl, request):
    for name in builds.HOT_PATH:
        assert request.getfixturevalue(name) is getattr(impl, name)


def test_twins_are_both_builds(twins):
    assert (twins.py.name, twins.c.name) == ("py", "c")
    assert twins.c.compiled and not twins.py.compiled


def test_unknown_module_names_the_list(impl):
    with pytest.raises(AttributeError, match="HOT_PATH"):
        impl.engine_not_in_the_list


def test_a_pure_module_posing_as_compiled_fails():
    with pytest.raises(pytest.fail.Exception, match="not a compiled extension"):
        builds.check_build("c", {"balancer": py_balancer})


def test_a_python_class_in_an_extension_module_fails():
    fake = types.ModuleType("meshproxy._core.balancer")
    fake.__file__ = "/x/meshproxy/_core/balancer" + EXTENSION_SUFFIXES[0]
    fake.__loader__ = importlib.machinery.ExtensionFileLoader(fake.__name__, fake.__file__)

    class RoundRobinPicker:
        def pick(self):
            return 0

    RoundRobinPicker.__module__ = fake.__name__
    fake.RoundRobinPicker = RoundRobinPicker
    with pytest.raises(pytest.fail.Exception, match="RoundRobinPicker is a Python class"):
        builds.check_build("c", {"balancer": fake})


def test_a_compiled_module_posing_as_pure_fails(twins):
    with pytest.raises(pytest.fail.Exception, match="not a pure-Python source module"):
        builds.check_build("py", {"balancer": twins.c.balancer})


@pytest.mark.skipif(NO_EXTENSIONS, reason="MESHPROXY_NO_EXTENSIONS=1: the compiled build is skipped")
def test_a_partial_build_fails_and_no_build_skips(monkeypatch):
    real = builds._built_file
    monkeypatch.setattr(builds, "_built_file", lambda name: None if name == "counters" else real(name))
    with pytest.raises(pytest.fail.Exception, match="partial build: .* no compiled counters"):
        builds._load("c")
    monkeypatch.setattr(builds, "_built_file", lambda name: None)
    assert builds._load("c")[0] == "skip"


def test_no_extensions_skips_the_compiled_build(monkeypatch):
    monkeypatch.setattr(builds, "NO_EXTENSIONS", True)
    outcome, reason = builds._load("c")
    assert outcome == "skip" and "MESHPROXY_NO_EXTENSIONS=1" in reason


@pytest.mark.skipif(NO_EXTENSIONS, reason="MESHPROXY_NO_EXTENSIONS=1: the compiled build is skipped")
def test_a_compiled_build_that_is_silently_pure_fails_not_skips(twins, tmp_path):
    # End to end: a plugin makes meshproxy._core.balancer the pure twin before the tests import
    # it, while the extension file is there; the ``c`` tests must error, the ``py`` ones pass.
    (tmp_path / "shadow_core.py").write_text(
        "import sys\nimport meshproxy._py.balancer\n"
        "sys.modules['meshproxy._core.balancer'] = meshproxy._py.balancer\n")
    env = {k: v for k, v in os.environ.items() if k != "MESHPROXY_NO_EXTENSIONS"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "shadow_core", "-q", "-p", "no:randomly",
         f"{ROOT}/tests/test_builds.py::test_module_fixtures_follow_impl"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0, run.stdout
    assert "1 passed, 1 error" in run.stdout and "skipped" not in run.stdout, run.stdout
    assert "silently the pure one" in run.stdout, run.stdout
