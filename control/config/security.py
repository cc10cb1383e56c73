"""The security.istio.io API group: PeerAuthentication, AuthorizationPolicy, RequestAuthentication.

None is supported yet. They change who may talk to whom, so a document of one of them is an error
("kind ... is not supported yet"), never silently ignored. ``TLS_MODE_LABEL`` is this group's
endpoint label: ``security.istio.io/tlsMode: istio`` marks an endpoint that has its own sidecar.
"""

SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")

UNSUPPORTED_KINDS = ("PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication")

TLS_MODE_LABEL = "security.istio.io/tlsMode"
