"""Selects the compiled hot path (meshproxy._core) or its pure-Python twins (meshproxy._py).

Import hot-path modules from here, never directly::

    from meshproxy.core import http1, balancer, counters, router, cluster, stream, http1conn

``MESHPROXY_NO_EXTENSIONS=1`` selects the twins; so does a build without the extensions.
``COMPILED`` tells which one is in use.
"""
import importlib

from meshproxy._env import NO_EXTENSIONS

#: Every hot-path module, in dependency order.
MODULES = ("http1", "balancer", "counters", "pathnorm", "timers", "router", "cluster", "stream",
           "http1conn")


def _load(package):
    return [importlib.import_module(f"{package}.{m}") for m in MODULES]


def is_compiled(module) -> bool:
    """True when ``module`` is a compiled extension module (not Python source)."""
    return getattr(module, "__file__", "").endswith((".so", ".pyd"))


COMPILED = False
if not NO_EXTENSIONS:
    try:
        _mods = _load("meshproxy._core")
        COMPILED = all(is_compiled(m) for m in _mods)
    except ImportError:
        COMPILED = False
if not COMPILED:
    _mods = _load("meshproxy._py")

http1, balancer, counters, pathnorm, timers, router, cluster, stream, http1conn = _mods

__all__ = ["COMPILED", "MODULES", "is_compiled"] + list(MODULES)
