"""The extensions.istio.io API group: WasmPlugin.

Not supported yet: a WasmPlugin document is an error ("kind WasmPlugin is not supported yet"),
never silently ignored.
"""

UNSUPPORTED_KINDS = ("WasmPlugin",)
