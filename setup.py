"""Build meshproxy's compiled hot path (meshproxy/_core).

``MESHPROXY_NO_EXTENSIONS=1`` at build time skips compilation (a pure-Python install); at run time
it selects the pure-Python twins even when the extensions are built.
"""
import os

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("MESHPROXY_NO_EXTENSIONS"))
DEBUG = bool(os.environ.get("MESHPROXY_DEBUG"))

# Modules written in Cython (.pyx, with a hand-written pure-Python twin in meshproxy/_py/) and
# modules written once in Python (meshproxy/_core/<name>.py) and compiled with the augmenting .pxd
# beside them; their twin is the same source, imported uncompiled as meshproxy._py.<name>
# (see meshproxy/_py/__init__.py).
PYX_MODULES = ["http1", "balancer", "counters"]
PURE_MODE_MODULES = ["pathnorm", "timers", "router", "cluster", "stream", "http1conn"]


def extensions():
    if NO_EXTENSIONS:
        return []
    from Cython.Build import cythonize

    exts = [Extension(f"meshproxy._core.{m}", [f"meshproxy/_core/{m}.pyx"]) for m in PYX_MODULES]
    exts += [Extension(f"meshproxy._core.{m}", [f"meshproxy/_core/{m}.py"]) for m in PURE_MODE_MODULES]
    for ext in exts:
        ext.extra_compile_args = ["-O2"] if not DEBUG else ["-O0", "-g"]
        if DEBUG:
            ext.define_macros = [("CYTHON_TRACE", "1")]
    return cythonize(
        exts,
        language_level=3,
        annotate=DEBUG,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
            "linetrace": DEBUG,
        },
        compile_time_env={"MESHPROXY_DEBUG": DEBUG},
    )


setup(ext_modules=extensions())
