"""The floor: a bare ``aiohttp`` loop, 16 workers POSTing the rows, nothing else.

No limiter, no retries, no bookkeeping beyond "201 or not": the least CPU and the most
throughput an aiohttp client can have; it is correct only when nothing goes wrong, so it runs
in the scenarios without a rate limit or faults.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from benchmarks.peers.child import body, config, headers, report, rows

CONCURRENCY = 16


async def run(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    failed: list[str] = []
    todo = iter(rows(cfg))
    url = f"{cfg['url']}/user-registrations"
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(headers=headers(cfg), connector=connector) as session:

        async def worker() -> None:
            for row in todo:
                try:
                    async with session.post(url, data=body(row)) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    status = 0
                (ok if status == 201 else failed).append(row["emailAddress"])

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok, failed


def main() -> None:
    cfg = config()
    ok, failed = asyncio.run(run(cfg))
    report(cfg, ok=ok, failed=failed)


if __name__ == "__main__":
    main()
