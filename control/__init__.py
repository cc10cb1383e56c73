"""meshproxy's control side: config loading, validation and compilation to a Snapshot.

Pure Python; never imports ``meshproxy``::

    from control import build_snapshot, load_config, ConfigError
    snap = build_snapshot("mesh.yaml", workload="default/client", overrides={"concurrency": 2})
"""
from control.compile import build_snapshot, compile_snapshot
from control.config import LoadedConfig, Resource, load_config
from control.errors import ConfigError, ConfigIssue
from control.snapshot import Snapshot

__all__ = [
    "build_snapshot", "compile_snapshot", "load_config", "LoadedConfig", "Resource",
    "ConfigError", "ConfigIssue", "Snapshot",
]
