"""Time per registration through the in-process sandbox, with and without a state file.

    python benchmarks/sandbox_state.py [N] [CONCURRENCY] [USERS,USERS...]   (REPS=5 by default)

Each repeat runs both variants alternately on a fresh sandbox; prints the median microseconds
per registration, the time to construct (seed or load) and to stop (compact) the sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

import aiohttp

from synap_bulk.sandbox import Sandbox, SandboxConfig


async def run(
    users: int, n: int, state: str | None, concurrency: int
) -> tuple[float, float, float]:
    cfg = SandboxConfig(seed=1, users=users, attempts_per_exam=10, state=state)
    t0 = time.perf_counter()
    sb = Sandbox(cfg)
    load = time.perf_counter() - t0
    await sb.start()
    headers = {"Authorization": f"Bearer {sb.token}", "Content-Type": "application/vnd.api+json"}
    url = sb.url + "/user-registrations"
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            for i in todo:
                attrs = {"name": f"Bench {i}", "emailAddress": f"b{i}@example.org"}
                body = json.dumps({"data": {"type": "UserRegistration", "attributes": attrs}})
                async with http.post(url, data=body.encode(), headers=headers) as r:
                    await r.read()
                    assert r.status == 201, r.status

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        total = time.perf_counter() - start
    t1 = time.perf_counter()
    await sb.stop()
    return total / n * 1e6, load, time.perf_counter() - t1


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    sizes = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "100,20000").split(",")]
    reps = int(os.environ.get("REPS", "5"))
    with tempfile.TemporaryDirectory() as tmp:
        for users in sizes:
            results: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
            for rep in range(reps):
                for with_state in (False, True):
                    state = os.path.join(tmp, f"{users}-{rep}.json") if with_state else None
                    results[with_state].append(await run(users, n, state, concurrency))
            for with_state, r in results.items():
                us = statistics.median(x[0] for x in r)
                load = statistics.median(x[1] for x in r)
                stop = statistics.median(x[2] for x in r)
                print(
                    f"users={users:6d} n={n} concurrency={concurrency} "
                    f"state={'yes' if with_state else 'no '} median {us:6.1f} us/registration "
                    f"(construct {load * 1000:.0f} ms, stop {stop * 1000:.0f} ms)",
                    flush=True,
                )


if __name__ == "__main__":
    asyncio.run(main())
