"""Errors shared by the compiled hot path and its pure-Python twins.

Errors carry data: ``ProtocolError.status_hint`` is the HTTP status the sidecar answers with when the
error is about a downstream request (400, 413, 414, 431, 501, 505).
"""


class ProtocolError(Exception):
    """A message violates HTTP/1.1 framing or syntax (RFC 9110/9112), or a configured limit.

    Args:
        message: what was wrong, for logs and the response body.
        status_hint: the status a server should answer with (default 400).
    """

    def __init__(self, message: str, status_hint: int = 400):
        super().__init__(message)
        self.status_hint = status_hint
