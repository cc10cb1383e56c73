"""The pure-Python twins of the compiled hot path.

Two kinds of module live behind this package:

* independently written twins (``http1``, ``balancer``, ``counters``): files in this folder, written
  apart from their Cython ``.pyx`` so that each catches the other's mistakes;
* single-source modules (``SINGLE_SOURCE``): one plain-Python file in ``meshproxy/_core/`` that
  Cython compiles with the ``.pxd`` beside it. Their uncompiled twin is that same file, imported
  under the name ``meshproxy._py.<name>`` by the finder below (the compiled extension sitting next
  to the source would otherwise win). A single-source module chooses its own dependencies by its
  ``__name__``: under ``meshproxy._core`` it imports the compiled siblings, here the twins.
"""
import importlib.util
import os
import sys

#: Modules written once in ``meshproxy/_core/<name>.py`` and compiled with ``<name>.pxd``.
SINGLE_SOURCE = ("pathnorm", "timers", "router", "cluster", "stream", "http1conn")

_CORE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_core")


class _SingleSourceFinder:
    """Imports ``meshproxy._py.<name>`` from ``meshproxy/_core/<name>.py``, uncompiled."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        pkg, _, name = fullname.rpartition(".")
        if pkg != __name__ or name not in SINGLE_SOURCE:
            return None
        return importlib.util.spec_from_file_location(fullname,
                                                      os.path.join(_CORE_DIR, name + ".py"))


if not any(f is _SingleSourceFinder for f in sys.meta_path):
    sys.meta_path.insert(0, _SingleSourceFinder)
