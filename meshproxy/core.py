"""Selects the compiled hot path (meshproxy._core) or its pure-Python twins (meshproxy._py).

Import hot-path modules from here, never directly::

    from meshproxy.core import http1, balancer, counters, conn

``MESHPROXY_NO_EXTENSIONS=1`` selects the twins; so does a build without the extensions.
``COMPILED`` tells which one is in use.
"""
from meshproxy._env import NO_EXTENSIONS

COMPILED = False
if not NO_EXTENSIONS:
    try:
        from meshproxy._core import balancer, conn, counters, http1, router  # noqa: F401
        COMPILED = conn.__file__.endswith((".so", ".pyd")) and http1.__file__.endswith((".so", ".pyd"))
    except ImportError:
        COMPILED = False
if not COMPILED:
    from meshproxy._py import balancer, conn, counters, http1, router  # noqa: F401,F811

__all__ = ["COMPILED", "balancer", "conn", "counters", "http1", "router"]
