"""Peer: ``httpx.AsyncClient`` + ``asyncio.gather`` + ``tenacity`` retries.

The usual async recipe: one task per row, gathered, with a semaphore of 16 in flight (the
client's connection pool is sized to match); each POST wrapped in a tenacity ``AsyncRetrying``
that retries 429s, 5xx and transport errors with ``wait_random_exponential(multiplier=0.5,
max=10)`` for up to 8 attempts (tenacity does not read Retry-After; the jittered exponential is
its recommended way to spread retries). Told a rate, nothing changes: tenacity has no pacing.
After the retries a row is failed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from benchmarks.peers.child import RETRYABLE, body, config, headers, report, rows

CONCURRENCY = 16


class Retryable(Exception):
    pass


async def run(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    failed: list[str] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=str(cfg["url"]), headers=headers(cfg), limits=limits, timeout=30
    ) as client:

        async def one(row: dict[str, str]) -> None:
            async with gate:
                try:
                    async for attempt in AsyncRetrying(
                        retry=retry_if_exception_type((Retryable, httpx.TransportError)),
                        wait=wait_random_exponential(multiplier=0.5, max=10),
                        stop=stop_after_attempt(8),
                    ):
                        with attempt:
                            resp = await client.post("/user-registrations", content=body(row))
                            if resp.status_code == 429 or resp.status_code in RETRYABLE:
                                raise Retryable(resp.status_code)
                except RetryError:
                    failed.append(row["emailAddress"])
                    return
                (ok if resp.status_code == 201 else failed).append(row["emailAddress"])

        await asyncio.gather(*(one(r) for r in rows(cfg)))
    return ok, failed


def main() -> None:
    cfg = config()
    ok, failed = asyncio.run(run(cfg))
    report(cfg, ok=ok, failed=failed)


if __name__ == "__main__":
    main()
