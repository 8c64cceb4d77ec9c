"""Benchmark: export attempts from a standalone sandbox to NDJSON and CSV at flat memory.

Starts ``python -m synap_bulk sandbox`` in its own process (seeded, no rate limit, loopback
only), then runs each variant in a fresh child process and reads the child's own
``resource.getrusage``: wall time, CPU time (user + system) and peak RSS; and the sandbox
process's CPU during that child (from ``/proc/<pid>/stat``). Every variant exports the same
attempts; each is repeated and the median reported (repeats interleaved: every variant, then
every variant again). The variants, for each format:

- ``bare``: a bare aiohttp loop, ``--parallel`` pages in flight, written in order to the file
  (NDJSON: the resources' bytes; CSV: the default columns through ``csv.writer``), no
  durability at all: the floor;
- ``per-page``: our export committing (fsync + ledger cursor) after every page (the old way);
- ``windowed``: our export as it ships, committing every ``--commit-ms`` / ``--commit-pages``.

    python benchmarks/export_attempts.py                 # 200,000 attempts; then 1,000,000
    python benchmarks/export_attempts.py --quick         # 200,000 only, one repeat
    python benchmarks/export_attempts.py --attempts 20000 --repeats 1 --formats csv

The 1,000,000-attempt run checks the flat-memory promise: peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TOKEN = "p:bench-export"
RSS_TARGET_MB = 150.0
VARIANTS = ("bare", "per-page", "windowed")


def start_sandbox(exams: int, per_exam: int, users: int) -> tuple[subprocess.Popen[str], str]:
    """A standalone sandbox with ``exams * per_exam`` attempts; returns (process, base URL)."""
    return common.start_sandbox(
        "--seed", "1", "--users", str(users), "--exams", str(exams),
        "--attempts-per-exam", str(per_exam), "--markers", "10", "--rate", "0",
        token=TOKEN,
    )  # fmt: skip


def bare_child(args: argparse.Namespace) -> dict[str, Any]:
    """The floor: aiohttp, ``parallel`` pages in flight, written in order, nothing durable."""
    import asyncio
    import csv
    import io
    from collections import deque

    import aiohttp
    import msgspec
    import orjson

    from synap_bulk.sinks import DEFAULT_COLUMNS

    # defstruct: this module's annotations are strings, and msgspec is imported here only.
    Page = msgspec.defstruct("Page", [("data", list[msgspec.Raw])])

    base = args.url.rstrip("/")
    out = Path(args.out)
    size = args.page_size
    cols = [c.split(".") for c in DEFAULT_COLUMNS]

    def cell(row: dict[str, Any], path: list[str]) -> Any:
        v: Any = row
        if path[0] == "relationships":  # relationships.<name>.id: the linked id
            v = (row.get("relationships") or {}).get(path[1]) or {}
            return (v.get("data") or {}).get("id")
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        return v

    async def go() -> dict[str, Any]:
        rows = pages = 0
        headers = {"Authorization": f"Bearer {TOKEN}"}
        conn = aiohttp.TCPConnector(limit=args.parallel)
        async with aiohttp.ClientSession(headers=headers, connector=conn) as http:

            async def get(path: str, params: dict[str, str]) -> bytes:
                async with http.get(f"{base}/{path}", params=params) as resp:
                    resp.raise_for_status()
                    return await resp.read()

            exams: list[str] = []
            number = 1
            while True:  # every exam, 500 a page
                q = {"page[size]": "500", "page[number]": str(number)}
                listing = msgspec.json.decode(await get("exam-v-2s", q), type=Page)
                exams += [msgspec.json.decode(r)["id"] for r in listing.data]
                if len(listing.data) < 500:
                    break
                number += 1
            with out.open("wb") as f:  # noqa: ASYNC230 (written inline, as our sinks do)
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\r\n")
                if args.format == "csv":
                    writer.writerow(DEFAULT_COLUMNS)

                def write(body: bytes) -> int:
                    if args.format == "ndjson":
                        page = msgspec.json.decode(body, type=Page)
                        f.write(b"\n".join(page.data) + b"\n")
                        return len(page.data)
                    data = orjson.loads(body)["data"]
                    writer.writerows([[cell(r, c) for c in cols] for r in data])
                    f.write(buf.getvalue().encode())
                    buf.seek(0)
                    buf.truncate()
                    return len(data)

                for exam in exams:
                    params = {"sort": "id", "page[size]": str(size), "filter[examV2]": exam}
                    first = await get("attempts", {**params, "page[number]": "1"})
                    total = orjson.loads(first)["meta"]["total"]
                    rows += write(first)
                    pages += 1
                    todo = iter(range(2, -(-total // size) + 1))
                    flight: deque[asyncio.Task[bytes]] = deque()
                    for n in todo:
                        flight.append(
                            asyncio.ensure_future(
                                get("attempts", {**params, "page[number]": str(n)})
                            )
                        )
                        if len(flight) >= args.parallel:
                            break
                    while flight:
                        body = await flight.popleft()
                        n = next(todo, None)
                        if n is not None:
                            flight.append(
                                asyncio.ensure_future(
                                    get("attempts", {**params, "page[number]": str(n)})
                                )
                            )
                        rows += write(body)
                        pages += 1
                size_out = f.tell()
        return {"rows": rows, "bytes": size_out, "requests": pages + 1, "commits": 0}

    return asyncio.run(go())


def child(args: argparse.Namespace) -> None:
    """One export in this process; prints its figures as JSON."""
    import resource

    t0 = time.perf_counter()
    figures = bare_child(args) if args.variant == "bare" else our_child(args)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    figures.update(
        wall_s=wall,
        cpu_s=ru.ru_utime + ru.ru_stime,
        peak_rss_mb=common.peak_rss_mb(),  # its own, not the parent's (see common.py)
    )
    figures["own_peak_rss_mb"] = figures["peak_rss_mb"]  # what the harness reads
    print(json.dumps(figures))


def our_child(args: argparse.Namespace) -> dict[str, Any]:
    """Our export (``run_export``), per-page or windowed commits."""
    import anyio

    from synap_bulk.client import SynapClient
    from synap_bulk.ledger import Ledger
    from synap_bulk.resources import Exam
    from synap_bulk.tasks.export_attempts import ExportSettings, run_export

    out = Path(args.out)
    window: dict[str, int] = {}
    if "commit_pages" in ExportSettings.__struct_fields__:  # else an older tree: per page
        window["commit_pages"] = 1 if args.variant == "per-page" else args.commit_pages
        window["commit_interval_ms"] = 0 if args.variant == "per-page" else args.commit_ms

    async def go() -> dict[str, Any]:
        async with (
            SynapClient(args.url, token=TOKEN, concurrency=args.parallel) as client,
            await Ledger.open(
                out.with_suffix(".ledger.sqlite"),
                job_name="bench-export",
                task_hash="bench",
                input_hash="",
                restart=True,
            ) as ledger,
        ):
            # Exam by exam, as a real export would: the sandbox then sorts one exam's attempts
            # per page instead of all of them.
            exams = [e.id async for e in client.paginate("exam-v-2s", None, Exam)]
            settings = ExportSettings(
                exams=tuple(exams),
                statuses=(),
                format=args.format,
                output=out,
                columns=None,
                since=None,
                mode="pages",
                page_size=args.page_size,
                parallel=args.parallel,
                **window,
            )
            set_calls = 0
            real_set = ledger.set_cursor

            async def counted(name: str, value: str) -> None:
                nonlocal set_calls
                set_calls += 1
                await real_set(name, value)

            ledger.set_cursor = counted  # type: ignore[method-assign]
            result = await run_export(settings, None, client, ledger)
            requests = client.statistics().requests
        return {
            "rows": result.rows,
            "bytes": result.bytes,
            "requests": requests,
            "commits": set_calls,
        }

    figures: dict[str, Any] = anyio.run(go)
    return figures


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_variant(
    url: str, fmt: str, variant: str, attempts: int, server_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"attempts.{fmt}"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--url",
            url,
            "--format",
            fmt,
            "--out",
            str(out),
            "--page-size",
            str(args.page_size),
            "--parallel",
            str(args.parallel),
            "--variant",
            variant,
            "--commit-ms",
            str(args.commit_ms),
            "--commit-pages",
            str(args.commit_pages),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        server_cpu = _proc_cpu_s(server_pid)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        server_cpu = _proc_cpu_s(server_pid) - server_cpu
        if done.returncode != 0:
            raise SystemExit(f"export child failed:\n{done.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["rows"] != attempts:
        raise SystemExit(f"{fmt}/{variant}: exported {figures['rows']} rows, expected {attempts}")
    figures["server_cpu_s"] = server_cpu
    return figures


def bench(attempts: int, exams: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    per_exam = attempts // exams
    print(f"starting a sandbox with {exams} exams x {per_exam} attempts ...", flush=True)
    t0 = time.perf_counter()
    proc, url = start_sandbox(exams, per_exam, users=min(per_exam, 50_000))
    print(f"  ready in {time.perf_counter() - t0:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    keys = ("wall_s", "cpu_s", "peak_rss_mb", "bytes", "requests", "commits", "server_cpu_s")
    try:
        # One unmeasured pass first: the sandbox's first listing of each exam costs it more.
        run_variant(url, "ndjson", "bare", exams * per_exam, proc.pid, args)
        combos = [(f, v) for f in args.formats.split(",") for v in args.variants.split(",")]
        runs_of: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in combos}
        for _ in range(args.repeats):  # interleaved: each variant sees the same machine
            for fmt, variant in combos:
                runs_of[fmt, variant].append(
                    run_variant(url, fmt, variant, exams * per_exam, proc.pid, args)
                )
        for (fmt, variant), runs in runs_of.items():
            med = {k: statistics.median(r[k] for r in runs) for k in keys}
            walls = [r["wall_s"] for r in runs]
            med.update(format=fmt, variant=variant, attempts=exams * per_exam)
            rows.append(med)
            print(
                f"  {fmt} {variant}: {med['wall_s']:.2f} s wall (min-max {min(walls):.2f}-"
                f"{max(walls):.2f}), {med['cpu_s']:.2f} s CPU, {med['peak_rss_mb']:.0f} MB peak "
                f"RSS, server {med['server_cpu_s']:.2f} s CPU, {med['commits']:.0f} ledger writes",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Each variant beside the bare loop of its format and size: wall, CPU and RSS ratios."""
    head = (
        "| attempts | format | variant | wall s | x bare | CPU s | x bare | peak RSS MB | x bare "
        "| server CPU s | ledger writes | file MB | requests |"
    )
    lines = [head, "|" + "---|" * 13]
    bare = {(r["attempts"], r["format"]): r for r in rows if r["variant"] == "bare"}
    for r in rows:
        n = r["attempts"]
        b = bare.get((n, r["format"]))

        def x(key: str, r: dict[str, Any] = r, b: dict[str, Any] | None = b) -> str:
            return f"{r[key] / b[key]:.2f}" if b else "-"

        lines.append(
            f"| {n:,} | {r['format']} | {r['variant']} | {r['wall_s']:.2f} | {x('wall_s')} "
            f"| {r['cpu_s']:.2f} | {x('cpu_s')} | {r['peak_rss_mb']:.0f} | {x('peak_rss_mb')} "
            f"| {r['server_cpu_s']:.2f} | {r['commits']:.0f} | {r['bytes'] / 1e6:.0f} "
            f"| {r['requests']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 attempts only, 1 repeat")
    parser.add_argument("--attempts", type=int, default=200_000, help="the main run's size")
    parser.add_argument("--big", type=int, default=1_000_000, help="the flat-memory run's size")
    parser.add_argument(
        "--per-exam", type=int, default=20_000, help="attempts per exam (exams = attempts / this)"
    )
    parser.add_argument("--formats", default="ndjson,csv")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=4, help="pages in flight")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="bare,per-page,windowed")
    parser.add_argument("--commit-ms", type=int, default=500, help="windowed: commit interval")
    parser.add_argument("--commit-pages", type=int, default=50, help="windowed: pages/commit")
    parser.add_argument("--variant", default="windowed", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=1800, help="per child, seconds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.repeats = 1
    rows = bench(args.attempts, max(1, args.attempts // args.per_exam), args)
    if not args.quick and args.big:
        big_args = argparse.Namespace(**{**vars(args), "repeats": 1})
        big = bench(args.big, max(1, args.big // args.per_exam), big_args)
        rows += big
        worst = max(r["peak_rss_mb"] for r in big)
        verdict = "OK" if worst <= RSS_TARGET_MB else "OVER TARGET"
        print(f"\n1M peak RSS {worst:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB): {verdict}")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
