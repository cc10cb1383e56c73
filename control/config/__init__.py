"""Config: load (YAML files/directories), schema (the field-table framework) and one module of tables
per API group (networking, security, telemetry, extensions, meshproxy; gathered in kinds), validate."""
from control.config.load import LoadedConfig, Resource, load_config
from control.config.kinds import KINDS, UNSUPPORTED_KINDS

__all__ = ["LoadedConfig", "Resource", "load_config", "KINDS", "UNSUPPORTED_KINDS"]
