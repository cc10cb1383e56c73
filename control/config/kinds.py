"""Every kind meshproxy knows, gathered from the API group modules.

``KINDS`` maps a kind to its ``KindSchema`` (apiVersions and spec table); ``UNSUPPORTED_KINDS`` are
Istio kinds that change routing or security: a document of one of them is an error until it is
implemented, never silently ignored.
"""
from control.config import extensions, meshproxy, networking, security, telemetry

KINDS = {**networking.KINDS, **meshproxy.KINDS, **security.KINDS}

UNSUPPORTED_KINDS = (networking.UNSUPPORTED_KINDS + security.UNSUPPORTED_KINDS + telemetry.UNSUPPORTED_KINDS
                     + extensions.UNSUPPORTED_KINDS)
