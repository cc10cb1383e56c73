"""Istio's ``HTTPFaultInjection``: abort with a status, or delay, a percentage of requests."""
from random import random as _random

from meshproxy.filters import CONTINUE, STOP, HttpFilter

#: The body of a fault abort, as Envoy's fault filter answers.
ABORT_BODY = b"fault filter abort"


class FaultFilter(HttpFilter):
    """``config``: the snapshot's ``Fault`` (abort_status, abort_percent, delay, delay_percent).

    An abort answers locally with flag ``FI`` (counted on the route's destination, as Envoy's
    ``istio_requests_total`` reports fault aborts); a delay holds the request (and its body) for
    the fixed delay, flag ``DI``, then lets it go on.
    """

    def __init__(self, config):
        self.config = config
        self.timer = None

    def on_request_head(self, stream):
        f = self.config
        if f.abort_status and _random() * 100.0 < f.abort_percent:
            stream.local_reply(f.abort_status, ABORT_BODY, "FI", b"")
            return STOP
        if f.delay > 0 and _random() * 100.0 < f.delay_percent:
            stream.flags = "DI"
            self.timer = stream.conn.loop.call_later(f.delay, self._resume, stream)
            return STOP
        return CONTINUE

    def _resume(self, stream):
        self.timer = None
        stream.resume()

    def on_complete(self, stream):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
