"""Benchmark: requests per second the standalone sandbox serves on one core.

Starts ``python -m synap_bulk sandbox`` in its own process (faults, latency and rate limit off,
plain asyncio loop, access log off), pinned to one CPU when the machine has two or more, then runs
a load generator (aiohttp client, ``--concurrency`` requests in flight) in a second process, on
another CPU, for each scenario and repeat:

- ``GET /v3/users/{id}`` (one user; ids cycle over the first 500 users)
- ``GET /v3/attempts?page[size]=100`` (a page of 100 attempts; pages cycle)

Two load generators: ``aiohttp`` (a real client; on a small machine it, not the server, is the
limit) and ``raw`` (minimal HTTP/1.1 keep-alive on asyncio streams, cheap enough that the server
saturates). The table gives the median requests/s over the repeats, the server's CPU time per
request and share of its core (from ``/proc/<pid>/stat``), and the implied one-core capacity
(1 s / CPU per request). Bounded in time (default about 40 s), loopback only.

    .venv/bin/python benchmarks/sandbox_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

#: The token only this benchmark's sandbox knows; passed through the environment, never printed.
TOKEN = "p:bench-" + os.urandom(6).hex()
SCENARIOS = {
    "GET /v3/users/{id}": "users",
    "GET /v3/attempts?page[size]=100": "attempts",
}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (no psutil)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_sandbox(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    return common.start_sandbox(
        "--seed", "1", "--users", str(args.users), "--exams", "5",
        "--attempts-per-exam", str(args.attempts_per_exam), "--markers", "40",
        "--rate", "0", "--latency-ms", "0", "--fault-rate", "0",
        token=TOKEN,
    )  # fmt: skip


def pin(pid: int, cpu: int) -> bool:
    """Pin a process to one CPU when the machine has more than one."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(pid, {cpu})
    return True


async def targets_for(url: str, scenario: str) -> list[str]:
    """The URLs a scenario cycles through (users of the first page, or every attempts page)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{url}/users", params={"page[size]": "500"}) as resp:
            ids = [u["id"] for u in (await resp.json(content_type=None))["data"]]
        async with session.get(f"{url}/attempts", params={"page[size]": "100"}) as resp:
            pages = int((await resp.json(content_type=None))["meta"]["total"]) // 100 or 1
    if scenario == "users":
        return [f"{url}/users/{i}" for i in ids]
    return [f"{url}/attempts?page[size]=100&page[number]={n + 1}" for n in range(pages)]


async def load_raw(url: str, scenario: str, duration: float, concurrency: int) -> dict[str, float]:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: cheap enough per request that
    the server, not the load generator, is what saturates."""
    from urllib.parse import urlsplit

    targets = await targets_for(url, scenario)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (
            f"GET {urlsplit(t).path}{'?' + urlsplit(t).query if urlsplit(t).query else ''} "
            f"HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ).encode()
        for t in targets
    ]
    done = 0
    errors = 0
    start = time.perf_counter()
    deadline = start + duration

    async def worker(offset: int) -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection(host, port)
        n = offset
        while time.perf_counter() < deadline:
            writer.write(requests[n % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                done += 1
            else:
                errors += 1
            n += concurrency
        writer.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {"requests": done, "errors": errors, "seconds": time.perf_counter() - start}


async def load(url: str, scenario: str, duration: float, concurrency: int) -> dict[str, float]:
    """The aiohttp load generator: ``concurrency`` workers looping until the deadline."""
    import aiohttp

    targets = await targets_for(url, scenario)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        done = 0
        errors = 0
        start = time.perf_counter()
        deadline = start + duration

        async def worker(offset: int) -> None:
            nonlocal done, errors
            n = offset
            while time.perf_counter() < deadline:
                async with session.get(targets[n % len(targets)]) as resp:
                    await resp.read()
                    if resp.status == 200:
                        done += 1
                    else:
                        errors += 1
                n += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"requests": done, "errors": errors, "seconds": elapsed}


def run_load(url: str, scenario: str, client: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [
        sys.executable, __file__, "--child", url, "--scenario", scenario, "--client", client,
        "--duration", str(args.duration), "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    env = {**os.environ, "SANDBOX_BENCH_TOKEN": TOKEN}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    pin(proc.pid, 1)
    out, _ = proc.communicate(timeout=args.duration + 30)
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--attempts-per-exam", type=int, default=200)
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=sorted(set(SCENARIOS.values())), default="users")
    parser.add_argument(
        "--clients",
        default="aiohttp,raw",
        help="load generators to run: aiohttp (a real client) and/or raw (minimal HTTP/1.1 on "
        "asyncio streams, so the server saturates); default both",
    )
    parser.add_argument("--client", choices=("aiohttp", "raw"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        global TOKEN
        TOKEN = os.environ["SANDBOX_BENCH_TOKEN"]
        url = args.child
        if not url.startswith("http://127.0.0.1:"):
            raise SystemExit("loopback only")
        fn = load_raw if args.client == "raw" else load
        print(json.dumps(asyncio.run(fn(url, args.scenario, args.duration, args.concurrency))))
        return
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if any(c not in ("aiohttp", "raw") for c in clients):
        raise SystemExit("--clients takes aiohttp and/or raw")
    if args.duration * args.repeats * len(SCENARIOS) * len(clients) > 50:
        raise SystemExit("keep the benchmark under a minute: lower --duration or --repeats")
    proc, url = start_sandbox(args)
    pinned = pin(proc.pid, 0)
    try:
        print(
            f"sandbox pid {proc.pid} {'pinned to CPU 0' if pinned else '(not pinned)'}; "
            f"load: {'+'.join(clients)}, {args.concurrency} in flight, {args.duration:g} s x "
            f"{args.repeats} repeats per scenario",
            flush=True,
        )
        rows = []
        for label, scenario in SCENARIOS.items():
            for client in clients:
                rates: list[float] = []
                cpu_per_req: list[float] = []
                busy: list[float] = []
                errors = 0
                for _ in range(args.repeats):
                    cpu0 = cpu_seconds(proc.pid)
                    result = run_load(url, scenario, client, args)
                    cpu1 = cpu_seconds(proc.pid)
                    rates.append(result["requests"] / result["seconds"])
                    cpu_per_req.append((cpu1 - cpu0) / max(1.0, result["requests"]) * 1e6)
                    busy.append((cpu1 - cpu0) / result["seconds"])
                    errors += int(result["errors"])
                rows.append(
                    (
                        label,
                        client,
                        statistics.median(rates),
                        statistics.median(cpu_per_req),
                        statistics.median(busy),
                        errors,
                    )
                )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print()
    print(
        f"| {'scenario':<32} | {'load':<7} | {'requests/s':>10} | {'server CPU µs/req':>17} "
        f"| {'server CPU busy':>15} | {'1-core capacity/s':>17} | errors |"
    )
    print(f"|{'-' * 34}|{'-' * 9}|{'-' * 12}|{'-' * 19}|{'-' * 17}|{'-' * 19}|--------|")
    for label, client, rate, cpu, cpu_busy, errors in rows:
        print(
            f"| {label:<32} | {client:<7} | {rate:>10,.0f} | {cpu:>17.0f} | {cpu_busy:>14.0%} "
            f"| {1e6 / cpu:>17,.0f} | {errors:>6} |"
        )


if __name__ == "__main__":
    main()
