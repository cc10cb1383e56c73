"""meshproxy's control side: config loading, validation and compilation to a Snapshot.

Pure Python; never imports ``meshproxy``::

    from control import build_snapshot, load_config, ConfigError
    snap = build_snapshot("mesh.yaml", workload="default/client", overrides={"concurrency": 2})

Names are resolved lazily (PEP 562), so a process that only needs ``control.snapshot`` or
``control.errors`` (a running sidecar) does not import the YAML loader and the schema.
"""
import importlib

_LAZY = {
    "build_snapshot": "control.compile",
    "compile_snapshot": "control.compile",
    "load_config": "control.config",
    "LoadedConfig": "control.config",
    "Resource": "control.config",
    "ConfigError": "control.errors",
    "ConfigIssue": "control.errors",
    "Snapshot": "control.snapshot",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'control' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
