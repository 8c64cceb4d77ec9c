"""Peer: ``aiohttp`` + ``aiolimiter.AsyncLimiter``, 16 workers.

The hand-rolled async client done well: one ``aiohttp.ClientSession`` (connector limit 16),
16 worker tasks pulling rows from one iterator, every send (retries included) through
``AsyncLimiter(rate / 10, 0.1)`` when told the rate: the same rate as ``AsyncLimiter(rate, 1)``
with a tenth of its burst, so a server bucket smaller than a second's worth is not overrun at
the start. Not told, no limiter. A 429 sleeps Retry-After (1 s when missing) and sends again; a
5xx or a connection error is retried 5 times with 0.5 s, 1 s, 2 s ... backoff. Anything else
is a failed row.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter

from benchmarks.peers.child import RETRYABLE, body, config, headers, report, retry_after, rows

CONCURRENCY = 16


async def run(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    failed: list[str] = []
    rate = cfg.get("rate")
    limiter = AsyncLimiter(float(rate) / 10, 0.1) if isinstance(rate, (int, float)) else None
    todo = iter(rows(cfg))
    url = f"{cfg['url']}/user-registrations"
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(headers=headers(cfg), connector=connector) as session:

        async def send(data: bytes) -> tuple[int, str | None]:
            if limiter is not None:
                await limiter.acquire()
            try:
                async with session.post(url, data=data) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError):
                return 0, None

        async def worker() -> None:
            for row in todo:
                data = body(row)
                errors = 0
                while True:
                    status, wait = await send(data)
                    if status == 429:
                        await asyncio.sleep(retry_after(wait))
                        continue
                    if (status == 0 or status in RETRYABLE) and errors < 5:
                        await asyncio.sleep(0.5 * 2**errors)
                        errors += 1
                        continue
                    (ok if status == 201 else failed).append(row["emailAddress"])
                    break

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok, failed


def main() -> None:
    cfg = config()
    ok, failed = asyncio.run(run(cfg))
    report(cfg, ok=ok, failed=failed)


if __name__ == "__main__":
    main()
