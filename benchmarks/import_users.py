"""User import end to end against a standalone sandbox process.

Three scenarios (issue 4), each run in a fresh interpreter against its own sandbox process:

a. ``--rate 100`` on the sandbox and ``rate: 100`` in the job: achieved request rate against the
   limit (target >= 95%).
b. no limit, 50 ms latency, concurrency 16: items/s against concurrency / latency = 320/s
   (target >= 90%).
c. no limit, no latency: CPU ms per create of the whole run (CSV, ledger, engine, client), beside
   a bare aiohttp loop doing the same POSTs in the same kind of process, and the same loop paced
   by aiolimiter (set far above what the loop reaches, so it costs its acquire but never waits;
   target <= 1.2x that, issue 12), interleaved repeats, medians; with each child's peak RSS and
   the sandbox process's CPU during it (from /proc).
m. memory: peak RSS of one import of ``--mem-rows`` rows (200,000; target <= 100 MB).
d. the exam-season shape: every candidate into a cohort *and* the Students group (the second
   group goes through batched relationship calls, and group joins are slow), 20 +- 10 ms
   latency, 3% faults, a server limit of 200/s and ``rate: auto``: achieved request rate
   against the limit the client had to find by itself.

    python benchmarks/import_users.py               # 10,000 rows, all three scenarios
    python benchmarks/import_users.py --quick       # 1,000 rows, a smoke run
    python benchmarks/import_users.py --only c --only m --repeats 5   # CPU and memory only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TOKEN, child, median, peak_rss_mb, sandbox, start_sandbox, stop_sandbox

HERE = Path(__file__).resolve()
COHORTS = ["Cohort 01", "Cohort 02", "Cohort 03"]


def write_job(
    folder: Path,
    url: str,
    rows: int,
    rate: float | str | None,
    name: str,
    groups: str = '["{cohort}"]',
) -> Path:
    from synap_bulk.sampledata import write_candidates

    csv_path = folder / "candidates.csv"
    if not csv_path.exists():
        write_candidates(csv_path, rows, cohorts=COHORTS, seed=1)
    rate_line = f"  rate: {rate}\n" if rate else ""
    job = folder / f"{name}.yaml"
    job.write_text(
        f"""version: 1
name: {name}
api:
  base_url: {url}
  token: {TOKEN}
  concurrency: 16
{rate_line}task:
  kind: user-import
  source: candidates.csv
  match: externalId
  mode: upsert
  fields:
    name: "{{first_name}} {{last_name}}"
    emailAddress: "{{email}}"
    externalId: "{{candidate_no}}"
  groups: {groups}
"""
    )
    return job


# -- children -------------------------------------------------------------------------------


def child_import(job_path: str) -> dict[str, Any]:
    import io

    import anyio
    from rich.console import Console

    from synap_bulk.ledger import Ledger
    from synap_bulk.runner import out_dir, run_job
    from synap_bulk.spec import load_job

    # The ledger's writer thread's own CPU (the thread's clock as it ends), to show where the
    # whole-process CPU goes.
    writer, ledger_cpu = Ledger._writer, []

    def timed_writer(self: Ledger) -> None:
        try:
            writer(self)
        finally:
            ledger_cpu.append(time.thread_time())

    Ledger._writer = timed_writer  # type: ignore[method-assign]
    job = load_job(job_path)
    console = Console(file=io.StringIO())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    code = anyio.run(lambda: run_job(job, restart=True, console=console, handle_signals=False))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    summary = json.loads((out_dir(job) / "summary.json").read_text())
    return {
        "code": code,
        "cpu_s": cpu,
        "ledger_cpu_s": sum(ledger_cpu),
        "wall_s": wall,
        "summary": summary,
        "rss_mb": _rss_mb(),
    }


def _rss_mb() -> float:
    """This process's own peak RSS so far (MB), not its parent's (see ``common.peak_rss_mb``)."""
    return peak_rss_mb()


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_bare(url: str, rows: int, limiter: bool = False) -> dict[str, Any]:
    """The floor: aiohttp POSTs of the same registrations, 16 at a time, nothing else; with
    ``limiter``, each POST first acquires an aiolimiter ``AsyncLimiter`` (1,000,000/s: never
    waits, so the difference is its cost alone)."""
    import contextlib

    import aiohttp

    pace: Any = contextlib.nullcontext()
    if limiter:
        from aiolimiter import AsyncLimiter

        pace = AsyncLimiter(1_000_000, 1.0)

    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/vnd.api+json",
        "Accept": "application/vnd.api+json",
    }

    async def go() -> tuple[float, float, int]:
        ok = 0
        queue = iter(range(rows))
        async with aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(limit=16)
        ) as session:

            async def worker() -> None:
                nonlocal ok
                for i in queue:
                    body = {
                        "data": {
                            "type": "UserRegistration",
                            "attributes": {
                                "name": f"Bare User {i}",
                                "emailAddress": f"bare.{i}@example.edu",
                                "externalId": f"B{i:06d}",
                            },
                        }
                    }
                    async with (
                        pace,
                        session.post(f"{url}/user-registrations", data=json.dumps(body)) as resp,
                    ):
                        await resp.read()
                        ok += resp.status == 201

            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(16)))
            return time.process_time() - cpu0, time.perf_counter() - wall0, ok

    cpu, wall, ok = asyncio.run(go())
    return {"cpu_s": cpu, "wall_s": wall, "ok": ok, "rss_mb": _rss_mb()}


# -- scenarios ------------------------------------------------------------------------------


def scenario_rate(rows: int, folder: Path) -> dict[str, Any]:
    with sandbox("--users", "0", "--groups", "3", "--rate", "100", "--burst", "100") as url:
        job = write_job(folder, url, rows, 100, "rate")
        r = child(HERE, ["import", str(job)])
    return limited_row("a. --rate 100, job rate 100", rows, r, 100)


def limited_row(scenario: str, rows: int, r: dict[str, Any], limit: float) -> dict[str, Any]:
    """A result row for a run against a rate-limited sandbox: achieved rate against the limit."""
    s = r["summary"]
    achieved = s["requests"] / r["wall_s"]
    return {
        "scenario": scenario,
        "rows": rows,
        "wall_s": round(r["wall_s"], 1),
        "requests": s["requests"],
        "req_per_s": round(achieved, 1),
        "of_limit": f"{achieved / limit:.1%}",
        "429s": s["throttled"],
        "done": s["counts"]["done"],
    }


def scenario_latency(rows: int, folder: Path) -> list[dict[str, Any]]:
    ceiling = 16 / 0.050
    with sandbox("--users", "0", "--groups", "3", "--latency-ms", "50") as url:
        job = write_job(folder, url, rows, None, "latency")
        r = child(HERE, ["import", str(job)])
    # The same POSTs from a bare aiohttp loop against a fresh sandbox with the same latency:
    # what the server allows at all, beside the ideal concurrency / latency.
    with sandbox("--users", "0", "--groups", "3", "--latency-ms", "50") as url:
        b = child(HERE, ["bare", url, str(rows)])
    s = r["summary"]
    achieved = s["requests"] / r["wall_s"]
    bare = b["ok"] / b["wall_s"]
    return [
        {
            "scenario": "b. no limit, 50 ms latency, concurrency 16",
            "rows": rows,
            "wall_s": round(r["wall_s"], 1),
            "requests": s["requests"],
            "req_per_s": round(achieved, 1),
            "of_ceiling": f"{achieved / ceiling:.1%} of {ceiling:.0f}/s",
            "p50_ms": s["latency_ms_p50"],
            "done": s["counts"]["done"],
        },
        {
            "scenario": "b'. bare aiohttp POST loop, same sandbox settings",
            "rows": rows,
            "wall_s": round(b["wall_s"], 1),
            "requests": rows,
            "req_per_s": round(bare, 1),
            "of_ceiling": f"{bare / ceiling:.1%} of {ceiling:.0f}/s",
            "done": b["ok"],
        },
    ]


def scenario_groups(rows: int, folder: Path) -> dict[str, Any]:
    args = ["--users", "0", "--groups", "3", "--rate", "200", "--latency-ms", "20"]
    args += ["--jitter-ms", "20", "--fault-rate", "0.03"]
    with sandbox(*args) as url:
        groups = '["{cohort}", "Students"]'
        job = write_job(folder, url, rows, "auto", "groups", groups=groups)
        r = child(HERE, ["import", str(job)])
    return limited_row("d. two groups, 20+-10 ms, 3% faults, limit 200, rate auto", rows, r, 200)


def _cpu_run(kind: str, folder: Path, rows: int, name: str) -> dict[str, Any]:
    """One variant against a fresh sandbox process: client CPU, peak RSS, the sandbox's CPU."""
    proc, url = start_sandbox("--users", "0", "--groups", "3")
    try:
        cpu0 = proc_cpu_s(proc.pid)
        if kind == "engine":
            job = write_job(folder, url, rows, None, name)
            r = child(HERE, ["import", str(job)])
            r["creates"] = r["summary"]["counts"]["done"]
            r["requests"] = r["summary"]["requests"]
        else:
            r = child(
                HERE, ["bare", url, str(rows), *(["aiolimiter"] if kind == "limiter" else [])]
            )
            r["creates"] = r["requests"] = r["ok"]
        r["server_cpu_s"] = proc_cpu_s(proc.pid) - cpu0
    finally:
        stop_sandbox(proc)
    return r


def scenario_cpu(rows: int, folder: Path, repeats: int) -> list[dict[str, Any]]:
    labels = {
        "engine": "synap_bulk run (whole engine)",
        "limiter": "aiohttp + aiolimiter POST loop",
        "bare": "bare aiohttp POST loop",
    }
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in labels}
    for i in range(repeats):  # interleaved: every variant sees the same moment of the machine
        for kind in labels:
            runs[kind].append(_cpu_run(kind, folder, rows, f"cpu{i}"))
    per = {k: median([r["cpu_s"] * 1000 / r["creates"] for r in v]) for k, v in runs.items()}
    out = []
    for kind, label in labels.items():
        v = runs[kind]
        out.append(
            {
                "variant": label,
                "creates": v[0]["creates"],
                "requests": v[0]["requests"],
                "cpu_ms_per_create": round(per[kind], 3),
                "min_max": "{:.3f}-{:.3f}".format(
                    *(f(r["cpu_s"] * 1000 / r["creates"] for r in v) for f in (min, max))
                ),
                "x_aiolimiter": f"{per[kind] / per['limiter']:.2f}x",
                "ledger_thread_ms_per_create": (
                    round(median([r["ledger_cpu_s"] * 1000 / r["creates"] for r in v]), 3)
                    if kind == "engine"
                    else "-"
                ),
                "wall_s": round(median([r["wall_s"] for r in v]), 2),
                "peak_rss_mb": round(median([r["rss_mb"] for r in v]), 1),
                "server_cpu_ms_per_create": round(
                    median([r["server_cpu_s"] * 1000 / r["creates"] for r in v]), 3
                ),
                "repeats": len(v),
            }
        )
    return out


def scenario_memory(rows: int, folder: Path) -> list[dict[str, Any]]:
    """One import of ``rows`` rows: peak RSS (target <= 100 MB) and CPU per create."""
    r = _cpu_run("engine", folder / "mem", rows, "mem")
    return [
        {
            "variant": f"m. synap_bulk import of {rows:,} rows",
            "creates": r["creates"],
            "peak_rss_mb": round(r["rss_mb"], 1),
            "cpu_ms_per_create": round(r["cpu_s"] * 1000 / r["creates"], 3),
            "wall_s": round(r["wall_s"], 1),
            "server_cpu_s": round(r["server_cpu_s"], 1),
        }
    ]


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = [" | ".join(k.ljust(widths[k]) for k in keys)]
    lines.append("-+-".join("-" * widths[k] for k in keys))
    lines += [" | ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind = sys.argv[2]
        result = (
            child_import(sys.argv[3])
            if kind == "import"
            else child_bare(sys.argv[3], int(sys.argv[4]), sys.argv[5:] == ["aiolimiter"])
        )
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of scenario c")
    parser.add_argument("--quick", action="store_true", help="1,000 rows, one repeat")
    parser.add_argument("--only", choices=["a", "b", "c", "d", "m"], action="append")
    parser.add_argument("--mem-rows", type=int, default=200_000, help="rows of scenario m")
    ns = parser.parse_args()
    rows = 1_000 if ns.quick else ns.rows
    repeats = 1 if ns.quick else ns.repeats
    only = set(ns.only or ["a", "b", "c", "d", "m"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if only & {"a", "b", "d"}:
            results = []
            if "a" in only:
                results.append(scenario_rate(rows, folder))
            if "b" in only:
                results.extend(scenario_latency(rows, folder))
            if "d" in only:
                results.append(scenario_groups(rows, folder))
            print(table(results))
            print()
        if "c" in only:
            print(table(scenario_cpu(rows, folder, repeats)))
            print()
        if "m" in only:
            (folder / "mem").mkdir()
            print(table(scenario_memory(1_000 if ns.quick else ns.mem_rows, folder)))


if __name__ == "__main__":
    main()
