"""A reverse proxy in ~60 lines of aiohttp: the "ordinary Python proxy" contender (``aiohttp``).

    python bench/aiohttp_proxy.py LISTEN_PORT ORIGIN_PORT [ORIGIN_HOST]

One ``aiohttp.ClientSession`` shared by every request (keep-alive pool, no limit per host), the
request body streamed up and the response body streamed down in 64 KiB chunks, hop-by-hop headers
dropped as RFC 9110 says. On uvloop. This is what most Python teams would write first; the target
is meshproxy >= 5x its requests/s.
"""
from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
       "upgrade", "content-length", "host"}


def make_app(origin: str) -> web.Application:
    app = web.Application()

    async def on_startup(app):
        conn = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=120,
                                    ttl_dns_cache=None, use_dns_cache=False)
        app["session"] = aiohttp.ClientSession(connector=conn, auto_decompress=False,
                                               skip_auto_headers=("User-Agent", "Accept",
                                                                  "Accept-Encoding"))

    async def on_cleanup(app):
        await app["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        data = request.content if request.body_exists else None
        async with app["session"].request(request.method, origin + request.path_qs,
                                          headers=headers, data=data,
                                          allow_redirects=False) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    resp.headers.add(k, v)
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            async for chunk in up.content.iter_chunked(65536):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.router.add_route("*", "/{tail:.*}", proxy)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main() -> None:
    port, origin_port = int(sys.argv[1]), int(sys.argv[2])
    origin_host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    uvloop.install()
    web.run_app(make_app(f"http://{origin_host}:{origin_port}"), host="127.0.0.1", port=port,
                access_log=None, print=None, backlog=4096, handle_signals=True)


if __name__ == "__main__":
    main()
