"""The telemetry.istio.io API group: Telemetry.

Not supported yet (meshproxy's metrics and access log are configured by the Bootstrap): a Telemetry
document is an error ("kind Telemetry is not supported yet"), never silently ignored.
"""

UNSUPPORTED_KINDS = ("Telemetry",)
