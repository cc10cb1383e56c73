"""Both builds of the hot path for every test: the compiled one and the pure-Python twins.

Fixtures (all session-scoped, so Hypothesis tests may take them too):

    impl      one build per test, parametrised ``py`` (meshproxy/_py) and ``c`` (meshproxy/_core):
              a ``Build`` with ``.name``, ``.compiled``, ``.modules`` and every hot-path module as
              an attribute (``impl.balancer.RoundRobinPicker``)
    http1, balancer, counters
              that build's module alone (a test taking ``balancer`` runs once per build)
    twins     both builds at once, ``twins.py`` and ``twins.c``, for differential tests (skipped
              like ``c``)

``c`` is skipped when the extensions are genuinely not built (no compiled file for any hot-path
module in meshproxy/_core) and under ``MESHPROXY_NO_EXTENSIONS=1`` (``make test-py``). It is never
skipped for a build that is wrong: a test fails (errors at set-up) when a ``c`` module is not a
loaded extension (``__file__`` a ``.so``, defined classes extension types, no Python bytecode in
its functions or methods), when only some modules are built, or when a ``py`` module is not a
plain Python source module.

To add a module: append its name to ``HOT_PATH``. It must import as meshproxy._py.NAME (a twin in
meshproxy/_py/ or a single-source module listed in meshproxy/_py/__init__.py) and as a compiled
meshproxy._core.NAME; ``impl.NAME`` and a fixture ``NAME`` follow.

tests/integration/conftest.py has an ``impl`` of its own (the same ids, naming the build a
``meshproxy run`` process uses); it takes precedence inside tests/integration. bench/conftest.py
re-exports these fixtures for the micro-benchmarks.
"""
import importlib
import importlib.machinery
import types
from collections import namedtuple
from pathlib import Path

import pytest

from meshproxy._env import NO_EXTENSIONS

#: The hot-path modules: each is meshproxy._py.NAME (Python source: an independent twin in
#: meshproxy/_py/, or the single-source module meshproxy/_core/NAME.py uncompiled) and compiled
#: meshproxy._core.NAME.
HOT_PATH = ("http1", "balancer", "counters", "router", "cluster", "stream", "http1conn")

#: Build ids, in the order tests run them.
BUILDS = ("py", "c")

_PACKAGES = {"py": "meshproxy._py", "c": "meshproxy._core"}
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes made by a class statement, not on cdef classes


class Build:
    """One build of the hot path: ``name`` ("py" or "c"), ``compiled`` (bool), ``modules`` (name ->
    module, in ``HOT_PATH`` order) and each module as an attribute."""

    def __init__(self, name, modules):
        self.name = name
        self.compiled = name == "c"
        self.modules = dict(modules)

    def __getattr__(self, attr):
        try:
            return self.__dict__["modules"][attr]
        except KeyError:
            raise AttributeError(f"the {self.__dict__.get('name')} build has no hot-path module "
                                 f"{attr!r} (HOT_PATH in tests/conftest.py: {', '.join(HOT_PATH)})") from None

    def __repr__(self):
        return f"<Build {self.name}: {', '.join(self.modules)}>"


Twins = namedtuple("Twins", "py c")


def _built_file(name):
    """The compiled extension file of meshproxy._core.NAME, or None when it is not built."""
    core = importlib.import_module(_PACKAGES["c"])
    for folder in core.__path__:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


def _own_members(module):
    """The classes and functions that ``module`` itself defines (not the ones it imports)."""
    for value in vars(module).values():
        if getattr(value, "__module__", None) == module.__name__ and callable(value):
            yield value


def _bytecode_functions(cls):
    """Names of ``cls``'s own methods that are Python functions (bytecode, not compiled)."""
    out = []
    for attr, value in vars(cls).items():
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if isinstance(value, types.FunctionType):
            out.append(attr)
    return out


def check_build(name, modules):
    """Fail the test unless every module of ``modules`` (name -> module) is what build ``name``
    claims: for "c", a loaded extension module whose classes are compiled (extension types, or
    classes with no Python bytecode); for "py", a Python source module with Python classes."""
    for mod_name, module in modules.items():
        where = f"{name} build: {module.__name__} ({getattr(module, '__file__', None)})"
        loader = getattr(module, "__loader__", None)
        members = list(_own_members(module))
        if name == "c":
            if not (isinstance(loader, importlib.machinery.ExtensionFileLoader)
                    and str(module.__file__).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))):
                pytest.fail(f"{where} is not a compiled extension module: the compiled build is "
                            f"silently the pure one")
            for member in members:
                if isinstance(member, types.FunctionType):
                    pytest.fail(f"{where}: {member.__name__} is a Python function, not compiled")
                if isinstance(member, type) and member.__flags__ & _HEAPTYPE and _bytecode_functions(member):
                    pytest.fail(f"{where}: {member.__name__} is a Python class, not an extension type "
                                f"(Python methods {', '.join(_bytecode_functions(member))})")
        else:
            if not (isinstance(loader, importlib.machinery.SourceFileLoader)
                    and str(module.__file__).endswith(".py")):
                pytest.fail(f"{where} is not a pure-Python source module")
            for member in members:
                if isinstance(member, type) and not member.__flags__ & _HEAPTYPE:
                    pytest.fail(f"{where}: {member.__name__} is an extension type in the pure build")
        if module.__name__ != f"{_PACKAGES[name]}.{mod_name}":
            pytest.fail(f"{where} is not {_PACKAGES[name]}.{mod_name}")


_LOADED = {}


def load_build(name):
    """The ``Build`` ``name`` ("py" or "c"), checked by ``check_build``; skips "c" when it is not
    built or ``MESHPROXY_NO_EXTENSIONS`` is set. Loaded once per session."""
    if name not in _LOADED:
        _LOADED[name] = _load(name)
    outcome, value = _LOADED[name]
    if outcome == "skip":
        pytest.skip(value)
    return value


def _load(name):
    if name not in _PACKAGES:
        raise ValueError(f"unknown build {name!r} (one of {', '.join(BUILDS)})")
    if name == "c":
        if NO_EXTENSIONS:
            return "skip", ("MESHPROXY_NO_EXTENSIONS=1 (make test-py): only the pure-Python twins "
                            "are tested; the compiled build runs without that variable")
        built = {m: _built_file(m) for m in HOT_PATH}
        if not any(built.values()):
            return "skip", (f"the compiled hot path is not built (no compiled {', '.join(HOT_PATH)} "
                            f"in meshproxy/_core): run `make build`")
        missing = [m for m, path in built.items() if path is None]
        if missing:
            pytest.fail(f"partial build: meshproxy/_core has no compiled {', '.join(missing)} "
                        f"(the others are built): run `make build`")
    modules = {}
    for m in HOT_PATH:
        # Checked one by one, in dependency order: a wrong module fails with its own message
        # before a compiled module that cimports it fails to load against it.
        modules[m] = importlib.import_module(f"{_PACKAGES[name]}.{m}")
        check_build(name, {m: modules[m]})
    return "ok", Build(name, modules)


@pytest.fixture(scope="session", params=BUILDS)
def impl(request):
    """One build of the hot path (``py`` or ``c``), a ``Build``."""
    return load_build(request.param)


@pytest.fixture(scope="session")
def twins():
    """Both builds at once, ``Twins(py, c)``; skipped when ``c`` is."""
    return Twins(load_build("py"), load_build("c"))


def _module_fixture(mod_name):
    def fixture(impl):
        return getattr(impl, mod_name)
    fixture.__name__ = mod_name
    fixture.__doc__ = f"meshproxy/_py/{mod_name}.py or compiled meshproxy/_core/{mod_name}, once per build."
    return pytest.fixture(scope="session", name=mod_name)(fixture)


for _mod_name in HOT_PATH:
    globals()[f"_fixture_{_mod_name}"] = _module_fixture(_mod_name)

__all__ = ["BUILDS", "HOT_PATH", "Build", "Twins", "check_build", "load_build", "impl", "twins"] + [
    f"_fixture_{m}" for m in HOT_PATH]
