"""Peer: ``httpx.AsyncClient`` driven by ``aiometer.run_all`` with ``max_per_second``.

aiometer is the tool made for "N at once, at most R a second": ``max_at_once=16`` and, when
told the limit, ``max_per_second=rate`` (aiometer spaces the task starts evenly, 1/rate apart).
Not told (``rate`` null or "auto"), only ``max_at_once``. A 429 sleeps Retry-After (1 s when
missing) and sends again; a 5xx or a transport error is retried 5 times with 0.5 s, 1 s, 2 s...
backoff. The retries happen inside the task, outside aiometer's pacing (aiometer paces starts,
not attempts). Anything else is a failed row.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiometer
import httpx

from benchmarks.peers.child import RETRYABLE, body, config, headers, report, retry_after, rows

CONCURRENCY = 16


async def run(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    failed: list[str] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    rate = cfg.get("rate")
    per_second = float(rate) if isinstance(rate, (int, float)) else None
    async with httpx.AsyncClient(
        base_url=cfg["url"], headers=headers(cfg), limits=limits, timeout=30
    ) as client:

        async def one(row: dict[str, str]) -> None:
            errors = 0
            while True:
                try:
                    resp = await client.post("/user-registrations", content=body(row))
                    status = resp.status_code
                except httpx.TransportError:
                    status = 0
                if status == 429:
                    await asyncio.sleep(retry_after(resp.headers.get("Retry-After")))
                    continue
                if (status == 0 or status in RETRYABLE) and errors < 5:
                    await asyncio.sleep(0.5 * 2**errors)
                    errors += 1
                    continue
                (ok if status == 201 else failed).append(row["emailAddress"])
                return

        await aiometer.run_all(
            [functools.partial(one, r) for r in rows(cfg)],
            max_at_once=CONCURRENCY,
            max_per_second=per_second,
        )
    return ok, failed


def main() -> None:
    cfg = config()
    ok, failed = asyncio.run(run(cfg))
    report(cfg, ok=ok, failed=failed)


if __name__ == "__main__":
    main()
