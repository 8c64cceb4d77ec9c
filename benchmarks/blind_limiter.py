"""A blind rate limiter in front of the sandbox, the way nginx ``limit_req`` throttles.

    python -m benchmarks.blind_limiter --upstream http://127.0.0.1:PORT --rate 100 --burst 10

What nginx does with ``limit_req zone=z burst=10 nodelay; limit_req_status 429;``: a leaky
bucket per zone (here: one, every client alike) draining ``rate`` requests a second, holding up
to ``burst`` excess requests; a request that would overflow it is answered at once with a 429
and nginx's HTML error page, no ``Retry-After`` and no rate-limit headers. Everything else is
forwarded unchanged to ``--upstream`` (a sandbox without a limit). ``GET /_limiter/stats``
gives what the limiter saw (``requests``, ``throttled``); ``POST /_limiter/reset``
zeroes them and empties the bucket. The harness uses it where nginx is not
installed; it prints ``blind limiter listening on http://127.0.0.1:PORT/v3`` once ready.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

PAGE = (
    b"<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    b"<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "server", "date"}


class LeakyBucket:
    """nginx's ``limit_req`` arithmetic: ``excess`` drains at ``rate``/s; over ``burst``: no."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.excess = 0.0
        self.last = -math.inf  # a fresh zone: the first request finds it empty (excess 0)

    def admit(self) -> bool:
        now = self.clock()
        excess = max(0.0, self.excess - self.rate * (now - self.last) + 1.0)
        if excess > self.burst:
            return False
        self.excess, self.last = excess, now
        return True


def app(upstream: str, rate: float, burst: float) -> web.Application:
    bucket = LeakyBucket(rate, burst)
    counts = {"requests": 0, "throttled": 0}
    application = web.Application()

    async def session_ctx(application: web.Application):  # type: ignore[no-untyped-def]
        application["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), auto_decompress=False
        )
        yield
        await application["session"].close()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts)

    async def reset(request: web.Request) -> web.Response:
        counts.update(requests=0, throttled=0)
        bucket.excess, bucket.last = 0.0, -math.inf
        return web.json_response(counts)

    async def forward(request: web.Request) -> web.StreamResponse:
        counts["requests"] += 1
        if not bucket.admit():
            counts["throttled"] += 1
            return web.Response(status=429, body=PAGE, content_type="text/html")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        body = await request.read()
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body or None
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
            return web.Response(status=resp.status, body=data, headers=out)

    application.cleanup_ctx.append(session_ctx)
    application.router.add_get("/_limiter/stats", stats)
    application.router.add_post("/_limiter/reset", reset)
    application.router.add_route("*", "/{tail:.*}", forward)
    return application


async def serve(ns: argparse.Namespace) -> None:
    runner = web.AppRunner(app(ns.upstream.rstrip("/"), ns.rate, ns.burst), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", ns.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"blind limiter listening on http://127.0.0.1:{port}/v3", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the sandbox's root URL (no /v3)")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--burst", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args()
    try:
        asyncio.run(serve(ns))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
