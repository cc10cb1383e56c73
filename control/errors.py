"""Errors raised by control (config loading, validation, compilation)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in the user's config, located as precisely as we can.

    ``str()`` gives the form users see, e.g.
    ``mesh.yaml: ServiceEntry default/echo: spec.endpoints[1].ports.http: 99999 is not a port (1-65535)``.
    """

    file: str  # file name as given (basename when loaded from a directory is fine: keep it short)
    kind: str  # "" when the document has no usable kind
    namespace: str
    name: str
    path: str  # field path, e.g. "spec.endpoints[1].ports.http"; "" for whole-document problems
    message: str

    def __str__(self) -> str:
        parts = [self.file or "<config>"]
        if self.kind:
            parts.append(f"{self.kind} {self.namespace}/{self.name}" if self.name else self.kind)
        if self.path:
            parts.append(self.path)
        return ": ".join(parts + [self.message])


class ConfigError(Exception):
    """A configuration could not be loaded or compiled; ``issues`` lists every problem."""

    def __init__(self, issues):
        self.issues = list(issues)
        super().__init__("\n".join(str(e) for e in self.issues))
