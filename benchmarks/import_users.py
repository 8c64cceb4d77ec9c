"""User import end to end against a standalone sandbox process.

Three scenarios (issue 4), each run in a fresh interpreter against its own sandbox process:

a. ``--rate 100`` on the sandbox and ``rate: 100`` in the job: achieved request rate against the
   limit (target >= 95%).
b. no limit, 50 ms latency, concurrency 16: items/s against concurrency / latency = 320/s
   (target >= 90%).
c. no limit, no latency: CPU ms per row of the whole run (CSV, ledger, engine, client), beside a
   bare aiohttp loop doing the same POSTs in the same kind of process (target <= 3x).
d. the exam-season shape: every candidate into a cohort *and* the Students group (the second
   group goes through batched relationship calls, and group joins are slow), 20 +- 10 ms
   latency, 3% faults, a server limit of 200/s and ``rate: auto``: achieved request rate
   against the limit the client had to find by itself.

    python benchmarks/import_users.py               # 10,000 rows, all three scenarios
    python benchmarks/import_users.py --quick       # 1,000 rows, a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TOKEN, child, median, sandbox

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

    from synap_bulk.runner import out_dir, run_job
    from synap_bulk.spec import load_job

    job = load_job(job_path)
    console = Console(file=io.StringIO())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    code = anyio.run(lambda: run_job(job, restart=True, console=console, handle_signals=False))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    summary = json.loads((out_dir(job) / "summary.json").read_text())
    return {"code": code, "cpu_s": cpu, "wall_s": wall, "summary": summary}


def child_bare(url: str, rows: int) -> dict[str, Any]:
    """The floor: aiohttp POSTs of the same registrations, 16 at a time, nothing else."""
    import aiohttp

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
                    async with session.post(
                        f"{url}/user-registrations", data=json.dumps(body)
                    ) as resp:
                        await resp.read()
                        ok += resp.status == 201

            cpu0, wall0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(16)))
            return time.process_time() - cpu0, time.perf_counter() - wall0, ok

    cpu, wall, ok = asyncio.run(go())
    return {"cpu_s": cpu, "wall_s": wall, "ok": ok}


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


def scenario_cpu(rows: int, folder: Path, repeats: int) -> list[dict[str, Any]]:
    engine: list[float] = []
    bare: list[float] = []
    for i in range(repeats):
        # Fresh sandbox per variant and repeat, so each sees the same empty directory.
        with sandbox("--users", "0", "--groups", "3") as url:
            job = write_job(folder, url, rows, None, f"cpu{i}")
            r = child(HERE, ["import", str(job)])
            engine.append(r["cpu_s"] * 1000 / rows)
        with sandbox("--users", "0", "--groups", "3") as url:
            b = child(HERE, ["bare", url, str(rows)])
            bare.append(b["cpu_s"] * 1000 / rows)
    e, b_ = median(engine), median(bare)
    return [
        {"variant": "synap_bulk run (whole engine)", "cpu_ms_per_row": round(e, 3)},
        {"variant": "bare aiohttp POST loop", "cpu_ms_per_row": round(b_, 3)},
        {"variant": "ratio", "cpu_ms_per_row": f"{e / b_:.2f}x"},
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
            else child_bare(sys.argv[3], int(sys.argv[4]))
        )
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of scenario c")
    parser.add_argument("--quick", action="store_true", help="1,000 rows, one repeat")
    parser.add_argument("--only", choices=["a", "b", "c", "d"], action="append")
    ns = parser.parse_args()
    rows = 1_000 if ns.quick else ns.rows
    repeats = 1 if ns.quick else ns.repeats
    only = set(ns.only or ["a", "b", "c", "d"])
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


if __name__ == "__main__":
    main()
