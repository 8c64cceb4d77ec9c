"""Benchmark the client's rate control and its CPU cost against a standalone sandbox.

Variants (each client run in its own process, each scenario against a fresh sandbox process
started with ``python -m synap_bulk sandbox``; traffic only to 127.0.0.1):

* ``ceiling``: client ``rate=100`` against sandbox ``--rate 100``: achieved rate and 429 share
  (target >= 97 % of the limit, <= 1 % 429s), for CUBIC and AIMD recovery.
* ``overshoot``: client ``rate=150`` against sandbox ``--rate 100`` (a ceiling set too high):
  here the recovery algorithm decides, CUBIC against AIMD.
* ``auto``: client ``rate="auto"`` against sandbox ``--rate 100`` (target >= 90 %, <= 3 % 429s),
  for CUBIC and AIMD, with the sandbox's X-RateLimit-* headers off (the recovery algorithm
  alone) and on (header pacing).
* ``learn``: a fixed number of GETs against sandbox ``--rate 100 --burst 10`` (Retry-After in
  seconds) with X-RateLimit-* headers, without them, and behind the blind limiter (an nginx
  ``limit_req`` mimic: HTML 429, no Retry-After, no headers): client ``rate=100`` (told the
  limit: the ideal of the same run) against ``rate="auto"`` (from no knowledge); wall time as
  a multiple of the told run, the 429 share and the sandbox process's CPU share (from /proc:
  it must not be the bottleneck).
* ``cpu``: unthrottled sandbox, 20,000 GETs: client CPU ms per request for a bare aiohttp loop,
  ``client.request`` and ``client.get`` (typed decode); target <= 2x the bare loop.
* ``pacer``: CPU per throttled acquire of the GCRA pacer, no HTTP (asyncio event loop).

``--quick`` shortens every duration for a smoke run. Prints a table and, with ``--json``, the raw
figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TOKEN = "p:sandbox"
CONCURRENCY = 16


# --- the sandbox process ------------------------------------------------------------------


def sandbox(*extra: str) -> contextlib.AbstractContextManager[str]:
    """A standalone sandbox (seed 1, 200 users) for one scenario; yields its base URL."""
    return common.sandbox("--seed", "1", "--users", "200", *extra, token=TOKEN)


def control(url: str, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
    """Call a /_sandbox control route (stats, config)."""
    root = url.rsplit("/v3", 1)[0]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{root}/_sandbox/{route}",
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/vnd.api+json",
            "Accept": "application/vnd.api+json",
        },
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def child(args: list[str]) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; it prints one JSON line."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- children -----------------------------------------------------------------------------


def cpu_now() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def user_ids(url: str) -> list[str]:
    """Ids of the seeded users (one listing page), so the runs GET real resources."""
    from synap_bulk.client import SynapClient
    from synap_bulk.jsonapi import AnyResource

    async with SynapClient(url, token=TOKEN) as client:
        page = await client.get_page("users", {"page[size]": "100"}, AnyResource)
    return [r.id for r in page.data]


async def run_rate(
    url: str, rate: str, duration: float, algorithm: str, total: int | None = None
) -> dict[str, Any]:
    """GET users/{id} with CONCURRENCY workers for ``duration`` seconds (or ``total`` GETs)."""
    from synap_bulk.client import SynapClient
    from synap_bulk.errors import SynapBulkError
    from synap_bulk.ratecontrol import RateSettings

    limit: float | str = rate if rate == "auto" else float(rate)
    ids = await user_ids(url)
    ok = 0
    failed = 0
    samples: list[tuple[float, float]] = []
    async with SynapClient(
        url,
        token=TOKEN,
        rate=limit,  # type: ignore[arg-type]
        concurrency=CONCURRENCY,
        rate_settings=RateSettings(algorithm=algorithm),  # type: ignore[arg-type]
    ) as client:
        start = time.monotonic()
        end = start + duration
        todo = iter(range(total)) if total is not None else None

        async def worker(i: int) -> None:
            nonlocal ok, failed
            n = i
            while time.monotonic() < end:
                if todo is not None and next(todo, None) is None:
                    return
                n += CONCURRENCY
                try:
                    await client.request("GET", f"users/{ids[n % len(ids)]}")
                    ok += 1
                except SynapBulkError:
                    failed += 1

        async def sampler() -> None:
            while time.monotonic() < end:
                await asyncio.sleep(1.0)
                samples.append((round(time.monotonic() - start, 1), client.rate.rate or 0.0))

        sampling = asyncio.ensure_future(sampler())
        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
        sampling.cancel()
        wall = time.monotonic() - start
        s = client.statistics()
    return {
        "ok": ok,
        "failed": failed,
        "wall_s": wall,
        "requests": s.requests,
        "by_status": {str(k): v for k, v in s.by_status.items()},
        "throttled": s.throttled,
        "pauses": s.pauses,
        "retries": s.retries,
        "p50_ms": s.latency_ms_p50,
        "p99_ms": s.latency_ms_p99,
        "rate_samples": samples,
    }


async def run_cpu(url: str, mode: str, total: int) -> dict[str, Any]:
    """``total`` GETs with CONCURRENCY workers; CPU seconds of this process during the loop."""
    import aiohttp

    from synap_bulk.client import SynapClient
    from synap_bulk.resources import User

    ids = await user_ids(url)
    counter = iter(range(total))
    done = 0
    warm = min(500, total // 10)

    if mode == "bare":
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "application/vnd.api+json",
        }
        connector = aiohttp.TCPConnector(limit=CONCURRENCY + 4)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(i: int) -> None:
                async with session.get(f"{url}/users/{ids[i % len(ids)]}", headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"status {r.status}")

            for i in range(warm):
                await one(i)
            cpu0, t0 = cpu_now(), time.perf_counter()

            async def worker() -> None:
                nonlocal done
                for i in counter:
                    await one(i)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            cpu1, t1 = cpu_now(), time.perf_counter()
    else:
        async with SynapClient(url, token=TOKEN, concurrency=CONCURRENCY) as client:

            async def one(i: int) -> None:
                if mode == "get":
                    await client.get("users", ids[i % len(ids)], User)
                else:
                    await client.request("GET", f"users/{ids[i % len(ids)]}")

            for i in range(warm):
                await one(i)
            cpu0, t0 = cpu_now(), time.perf_counter()

            async def worker() -> None:
                nonlocal done
                for i in counter:
                    await one(i)
                    done += 1

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            cpu1, t1 = cpu_now(), time.perf_counter()
    return {
        "requests": done,
        "cpu_ms_per_request": (cpu1 - cpu0) * 1000 / done,
        "wall_s": t1 - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def run_pacer(kind: str, rate: float, seconds: float) -> dict[str, Any]:
    """CPU per throttled acquire: 16 tasks pulling from a pacer at ``rate``, no HTTP."""
    from synap_bulk.clock import SystemClock
    from synap_bulk.ratecontrol import ClockPacer

    pacer = ClockPacer(SystemClock(), rate)
    acquires = int(rate * seconds)
    left = acquires

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await pacer.wait()

    cpu0, t0 = cpu_now(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu1, t1 = cpu_now(), time.perf_counter()
    return {
        "cpu_us_per_acquire": (cpu1 - cpu0) * 1e6 / acquires,
        "achieved_per_s": acquires / (t1 - t0),
    }


def child_main(ns: argparse.Namespace) -> None:
    if ns.kind == "rate":
        result = asyncio.run(run_rate(ns.url, ns.rate, ns.duration, ns.algorithm, ns.total))
    elif ns.kind == "cpu":
        result = asyncio.run(run_cpu(ns.url, ns.mode, ns.total))
    else:
        result = asyncio.run(run_pacer(ns.mode, float(ns.rate), ns.duration))
    print(json.dumps(result))


# --- the parent: scenarios and the table --------------------------------------------------


def rate_scenario(
    name: str, rate: str, duration: float, algorithm: str, headers: bool
) -> dict[str, Any]:
    flags = ["--rate", "100", "--burst", "100"]
    if not headers:
        flags.append("--no-ratelimit-headers")
    with sandbox(*flags) as url:
        before = control(url, "GET", "stats")
        got = child(
            ["--kind", "rate", "--url", url, "--rate", rate, "--duration", str(duration),
             "--algorithm", algorithm]
        )  # fmt: skip
        after = control(url, "GET", "stats")
    server = _stats(after)
    base = _stats(before)
    requests = server["requests"] - base["requests"]
    throttled = server["throttled"] - base["throttled"]
    inside = server["inside"] - base["inside"]
    achieved = got["ok"] / got["wall_s"]
    return {
        "scenario": name,
        "algorithm": algorithm,
        "headers": headers,
        "duration_s": round(got["wall_s"], 1),
        "achieved_per_s": round(achieved, 1),
        "share_of_limit": round(achieved / 100.0, 3),
        "share_429": round(throttled / requests, 4) if requests else 0.0,
        "server_requests": requests,
        "inside_retry_after": inside,
        "pauses": got["pauses"],
        "failed": got["failed"],
        "rate_samples": got["rate_samples"],
    }


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LIMITERS = ("headers", "no-headers", "blind")


def learn_scenario(total: int, limiter: str) -> list[dict[str, Any]]:
    """``total`` GETs against a 100/s bucket of 10: told, then auto.

    ``limiter``: ``headers`` (Retry-After seconds and X-RateLimit-*), ``no-headers`` (Retry-After
    only) or ``blind`` (the sandbox's nginx ``limit_req`` mimic: an HTML 429, no headers at all).
    Each variant gets a fresh sandbox; the ideal is the told run of the same scenario, and
    ``total / 100`` s is the floor (plus the bucket's 10 free requests).
    """
    headers = limiter == "headers"
    flags = ["--rate", "100", "--burst", "10", "--retry-after", "seconds"]
    if not headers:
        flags.append("--no-ratelimit-headers")
    if limiter == "blind":
        flags += ["--limiter", "blind"]
    rows = []
    for rate in ("100", "auto"):
        proc, url = common.start_sandbox("--seed", "1", "--users", "200", *flags, token=TOKEN)
        try:
            before = _stats(control(url, "GET", "stats"))
            cpu0 = proc_cpu_s(proc.pid)
            got = child(
                ["--kind", "rate", "--url", url, "--rate", rate, "--duration", "3600",
                 "--total", str(total)]
            )  # fmt: skip
            server_cpu = proc_cpu_s(proc.pid) - cpu0
            after = _stats(control(url, "GET", "stats"))
        finally:
            common.stop_sandbox(proc)
        requests = after["requests"] - before["requests"]
        throttled = after["throttled"] - before["throttled"]
        rows.append(
            {
                "client_rate": rate,
                "limiter": limiter,
                "gets": got["ok"],
                "wall_s": round(got["wall_s"], 2),
                "floor_s": round((total - 10) / 100.0, 2),
                "server_requests": requests,
                "throttled": throttled,
                "share_429": round(throttled / requests, 4) if requests else 0.0,
                "inside_retry_after": after["inside"] - before["inside"],
                "pauses": got["pauses"],
                "failed": got["failed"],
                "sandbox_cpu_s": round(server_cpu, 2),
                "sandbox_cpu_share": round(server_cpu / got["wall_s"], 3),
                "rate_samples": got["rate_samples"],
            }
        )
    told = rows[0]["wall_s"]
    for row in rows:
        row["x_ideal"] = round(row["wall_s"] / told, 3)
    return rows


def _stats(doc: Any) -> dict[str, int]:
    """Pull the counters we need out of /_sandbox/stats (plain or JSON:API-wrapped)."""
    if isinstance(doc, dict) and "data" in doc and isinstance(doc["data"], dict):
        doc = doc["data"].get("attributes", doc["data"])
    return {
        "requests": int(doc.get("requests", 0)),
        "throttled": int(doc.get("throttled", 0)),
        "inside": int(doc.get("requests_inside_retry_after", 0)),
    }


def cpu_scenario(total: int, repeats: int) -> list[dict[str, Any]]:
    rows: dict[str, list[dict[str, Any]]] = {"bare": [], "request": [], "get": []}
    with sandbox("--rate", "0") as url:
        for _ in range(repeats):
            for mode in rows:  # interleaved so drift hits every variant alike
                rows[mode].append(
                    child(["--kind", "cpu", "--url", url, "--mode", mode, "--total", str(total)])
                )
    bare = statistics.median(r["cpu_ms_per_request"] for r in rows["bare"])
    out = []
    for mode, runs in rows.items():
        cpu = statistics.median(r["cpu_ms_per_request"] for r in runs)
        out.append(
            {
                "variant": {"bare": "bare aiohttp loop", "request": "client.request",
                            "get": "client.get (typed)"}[mode],
                "requests": runs[0]["requests"],
                "cpu_ms_per_request": round(cpu, 4),
                "ratio_to_bare": round(cpu / bare, 2),
                "req_per_s": round(statistics.median(r["requests"] / r["wall_s"] for r in runs)),
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
                "runs": len(runs),
            }
        )  # fmt: skip
    return out


def pacer_scenario(seconds: float, repeats: int) -> list[dict[str, Any]]:
    out = []
    for rate in (100, 1000, 5000):
        for kind in ("clock",):
            runs = [
                child(["--kind", "pacer", "--mode", kind, "--rate", str(rate),
                       "--duration", str(seconds)])
                for _ in range(repeats)
            ]  # fmt: skip
            out.append(
                {
                    "pacer": "GCRA pacer (ClockPacer), 20 ms burst",
                    "target_per_s": rate,
                    "achieved_per_s": round(
                        statistics.median(r["achieved_per_s"] for r in runs)
                    ),
                    "cpu_us_per_acquire": round(
                        statistics.median(r["cpu_us_per_acquire"] for r in runs), 1
                    ),
                }
            )  # fmt: skip
    return out


def print_table(title: str, rows: list[dict[str, Any]], keys: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument(
        "--only",
        default="ceiling,overshoot,auto,learn,cpu,pacer",
        help="comma-separated scenarios: ceiling, overshoot, auto, learn, cpu, pacer",
    )
    parser.add_argument(
        "--learn-gets", type=int, default=6000, help="GETs per run of the learn scenario"
    )
    parser.add_argument(
        "--limiters",
        default=",".join(LIMITERS),
        help=f"learn scenario: comma-separated limiter kinds ({', '.join(LIMITERS)})",
    )
    parser.add_argument(
        "--learn-repeats", type=int, default=1, help="learn scenario: interleaved repeats"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--rate", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--algorithm", default="cubic", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        child_main(ns)
        return
    only = set(ns.only.split(","))
    ceiling_s, auto_s = (6.0, 10.0) if ns.quick else (30.0, 60.0)
    gets, repeats = (2000, 1) if ns.quick else (20000, 3)
    pacer_s = 1.0 if ns.quick else 3.0
    figures: dict[str, Any] = {"quick": ns.quick, "python": sys.version.split()[0]}
    keys = ["scenario", "algorithm", "headers", "duration_s", "achieved_per_s",
            "share_of_limit", "share_429", "server_requests", "inside_retry_after", "pauses",
            "failed"]  # fmt: skip
    if "ceiling" in only:
        rows = [
            rate_scenario("rate=100 vs limit 100", "100", ceiling_s, alg, headers)
            for alg in ("cubic", "aimd")
            for headers in (False, True)
        ]
        figures["ceiling"] = rows
        print_table(f"Known ceiling, {ceiling_s:.0f} s", rows, keys)
    if "overshoot" in only:
        rows = [
            rate_scenario("rate=150 vs limit 100", "150", ceiling_s, alg, headers)
            for alg in ("cubic", "aimd")
            for headers in (False, True)
        ]
        figures["overshoot"] = rows
        print_table(f"Ceiling set too high, {ceiling_s:.0f} s", rows, keys)
    if "auto" in only:
        rows = [
            rate_scenario('rate="auto" vs limit 100', "auto", auto_s, alg, headers)
            for alg in ("cubic", "aimd")
            for headers in (False, True)
        ]
        figures["auto"] = rows
        print_table(f"rate=auto, {auto_s:.0f} s", rows, keys)
    if "learn" in only:
        total = 1500 if ns.quick else ns.learn_gets
        kinds = ns.limiters.split(",")
        rows = [r for _ in range(ns.learn_repeats) for k in kinds for r in learn_scenario(total, k)]
        figures["learn"] = rows
        print_table(
            f"Told 100/s against auto, bucket 100/s burst 10, {total} GETs",
            rows,
            ["client_rate", "limiter", "gets", "wall_s", "floor_s", "x_ideal", "share_429",
             "throttled", "inside_retry_after", "pauses", "failed", "sandbox_cpu_share"],
        )  # fmt: skip
    if "cpu" in only:
        rows = cpu_scenario(gets, repeats)
        figures["cpu"] = rows
        print_table(
            f"CPU per request, unthrottled, {gets} GETs, median of {repeats}",
            rows,
            ["variant", "requests", "cpu_ms_per_request", "ratio_to_bare", "req_per_s",
             "peak_rss_mb", "runs"],
        )  # fmt: skip
    if "pacer" in only:
        rows = pacer_scenario(pacer_s, repeats)
        figures["pacer"] = rows
        print_table(
            f"Pacers alone: 16 tasks, asyncio loop, {pacer_s:.0f} s each, median of {repeats}",
            rows,
            ["pacer", "target_per_s", "achieved_per_s", "cpu_us_per_acquire"],
        )
    if ns.json:
        ns.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
