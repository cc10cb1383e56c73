"""Istio's ``Headers`` operations (``set``, ``add``, ``remove``) on requests and responses.

The edits were compiled at apply time into ``router.HeaderEdit``s (names to drop, lines to add),
merged from the route and the chosen destination (and a ``rewrite.authority``); applying them
costs two concatenations, and the splicing serializer skips the dropped names.
"""
from meshproxy.filters import CONTINUE, HttpFilter


class HeaderEditFilter(HttpFilter):
    """``config``: ``(request_edit, response_edit)``, either may be None. Stateless: one
    instance serves every request of the route."""

    STATELESS = True

    def __init__(self, config):
        self.request_edit, self.response_edit = config

    def on_request_head(self, stream):
        e = self.request_edit
        if e is not None:
            stream.add_request_headers(e.extra, e.drop)
        return CONTINUE

    def on_response_head(self, stream):
        e = self.response_edit
        if e is not None:
            stream.add_response_headers(e.extra, e.drop)
        return CONTINUE
