"""meshproxy: a service-mesh sidecar with a Cython hot path over uvloop, configured with Istio YAML."""

__version__ = "0.1.0"

__all__ = ["__version__"]
