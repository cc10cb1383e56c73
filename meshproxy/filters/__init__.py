"""HTTP filters: per-route request/response hooks run by the engine's streams.

A filter sees one request (a ``Stream``) at four points and answers each with ``CONTINUE`` or
``STOP``::

    on_request_head(stream)             before the router picks an endpoint; STOP pauses the
                                        stream until the filter calls ``stream.resume()``
    on_request_body(stream, data, end)  each piece of the request body (requests with a body only;
                                        ``end`` True once, with ``data == b""``, when it is complete)
    on_response_head(stream)            the upstream's response head, before it is sent on
    on_response_body(stream, data, end) each piece of the response body, then ``end`` True
    on_complete(stream)                 the stream is over (always called, for cleanup)

Any hook before the response has started may answer the request itself with
``stream.local_reply(status, body, flags, extra_header_lines)``; the chain stops there. Request
head edits go through ``stream.add_request_headers(lines, drop)``, response head edits through
``stream.add_response_headers(lines, drop)``; ``stream.header(name)`` reads a request header;
``stream.state_dict()`` keeps per-request state; ``stream.conn.loop`` is the event loop. Body
hooks observe the bytes in HTTP/1 wire framing and must not change them.

Chains are built at apply time, per route and destination (``build_chain``), from factories: a
``FilterFactory`` holds the filter's configuration and ``create()`` makes the per-request
instance. A route without filters has no chain at all (``None``): nothing runs per request.
The built-in filters are ``rbac`` (Istio's AuthorizationPolicy, inbound listener only), ``fault``
(Istio's HTTPFaultInjection), ``headers`` (Istio's Headers operations) and ``mirror`` (Istio's
mirror / mirrors). See docs/filters.md for writing one.
"""
from meshproxy.core import stream as _stream

CONTINUE = _stream.CONTINUE
STOP = _stream.STOP


class HttpFilter:
    """Base class of a filter instance (one per request); override the hooks you need.

    A filter that keeps no per-request state sets ``STATELESS = True``: one instance then serves
    every request of the route (made at apply time), and nothing is allocated per request.
    """

    STATELESS = False

    def on_request_head(self, stream):
        return CONTINUE

    def on_request_body(self, stream, data, end):
        return CONTINUE

    def on_response_head(self, stream):
        return CONTINUE

    def on_response_body(self, stream, data, end):
        return CONTINUE

    def on_complete(self, stream):
        return None


class FilterFactory:
    """Makes the per-request instances of one configured filter.

    Args:
        cls: the ``HttpFilter`` subclass.
        config: what every instance gets as its ``config`` argument.

    ``body`` is True when the class overrides a body hook, so streams of routes without body
    filters never call into Python per body chunk.
    """

    def __init__(self, cls, config=None):
        self.cls = cls
        self.config = config
        self.body = (cls.on_request_body is not HttpFilter.on_request_body
                     or cls.on_response_body is not HttpFilter.on_response_body)
        self.shared = cls(config) if cls.STATELESS else None

    def create(self):
        if self.shared is not None:
            return self.shared
        return self.cls(self.config)

    def __repr__(self):
        return "FilterFactory(%s)" % self.cls.__name__


def build_chain(route, request_edit, response_edit, clusters, extra=(), first=()):
    """The filter chain of one route destination (a tuple of factories), or None when empty.

    ``route`` is the snapshot's route (None for the listener's default route), the edits are the
    destination's merged ``router.HeaderEdit``s (or None), ``clusters`` maps cluster names to the
    data plane's clusters (mirror targets). Order as Envoy runs Istio's filters: ``first`` (the
    listener's authorization: Istio puts RBAC before fault injection), fault injection, then
    header edits, then mirroring (the mirror copies the head as edited), then ``extra``
    (user-written factories).
    """
    from meshproxy.filters import fault, headers, mirror
    chain = list(first)
    if route is not None and route.fault is not None:
        chain.append(FilterFactory(fault.FaultFilter, route.fault))
    if request_edit is not None or response_edit is not None:
        chain.append(FilterFactory(headers.HeaderEditFilter, (request_edit, response_edit)))
    if route is not None and route.mirrors:
        targets = tuple((clusters[m.cluster], m.percent) for m in route.mirrors
                        if m.cluster in clusters)
        if targets:
            chain.append(FilterFactory(mirror.MirrorFilter, targets))
    chain.extend(extra)
    return tuple(chain) or None
