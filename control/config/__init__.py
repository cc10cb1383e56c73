"""Config: load (YAML files/directories), schema (field tables per kind), validate."""
from control.config.load import LoadedConfig, Resource, load_config
from control.config.schema import KINDS, UNSUPPORTED_KINDS

__all__ = ["LoadedConfig", "Resource", "load_config", "KINDS", "UNSUPPORTED_KINDS"]
