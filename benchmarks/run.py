"""Running the scenarios: every variant in its own process, repeats interleaved (A B C A B C)."""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.scenarios import Scenario, Variant, export_ids, judge_write, sandbox_args
from benchmarks.scenarios import write_rows as write_input

EXPORT_SCRIPT = Path(__file__).resolve().parent / "export_attempts.py"
#: ``export_attempts.py``'s TOKEN: its children send that one.
EXPORT_TOKEN = "p:bench-export"
PARALLEL = 8  # pages in flight of our export and of the bare loop


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def available(scn: Scenario) -> tuple[list[Variant], list[str]]:
    """The variants whose packages are installed, and a line for each skipped one."""
    keep, skipped = [], []
    for v in scn.variants:
        if v.needs and not harness.have(v.needs):
            skipped.append(f"{scn.name}: skipped {v.label!r} ({v.needs} is not installed)")
        else:
            keep.append(v)
    return keep, skipped


def run_scenario(scn: Scenario, n: int, repeats: int, timeout: float) -> dict[str, Any]:
    variants, skipped = available(scn)
    for line in skipped:
        say(line)
    runs: dict[str, list[dict[str, Any]]] = {v.label: [] for v in variants}
    limiter = ""
    with tempfile.TemporaryDirectory(prefix=f"bench-{scn.name}-") as tmp:
        work = Path(tmp)
        if scn.kind == "write":
            emails = write_input(work / "rows.csv", n)
            with harness.server(sandbox_args(scn, n), blind=scn.blind) as srv:
                limiter = srv.limiter
                for rep in range(repeats):
                    for i, v in enumerate(variants):
                        say(f"  {scn.name} [{rep + 1}/{repeats}] {v.label} ...")
                        r = write_run(srv, scn, v, n, emails, work / f"{rep}-{i}", timeout)
                        runs[v.label].append(r)
            _cpu_to_bare(variants, runs, lambda v: v.module == "bare_aiohttp")
        else:
            token = EXPORT_TOKEN
            with harness.server(sandbox_args(scn, n), token=token) as srv:
                # One unmeasured pass first: the sandbox's first listing of each exam costs more.
                warm = Variant("warm-up", "export:bare", format="ndjson")
                export_run(srv, warm, n, work / "warm-up", timeout)
                for rep in range(repeats):
                    for i, v in enumerate(variants):
                        say(f"  {scn.name} [{rep + 1}/{repeats}] {v.label} ...")
                        r = export_run(srv, v, n, work / f"{rep}-{i}", timeout)
                        runs[v.label].append(r)
            _ratio_to_bare(variants, runs)
            for fmt in ("ndjson", "csv"):
                _cpu_to_bare(
                    [v for v in variants if v.format == fmt],
                    runs,
                    lambda v: v.module == "export:bare",
                )
    ideal = scn.ideal_s(n)
    return {
        "name": scn.name,
        "title": scn.title,
        "kind": scn.kind,
        "size": n,
        "repeats": repeats,
        "ideal": scn.ideal,
        "ideal_s": ideal,
        "notes": [*scn.notes, *([f"Blind limiter used: {limiter}."] if limiter else [])],
        "skipped": skipped,
        "variants": [
            {
                "label": v.label,
                "module": v.module,
                "rate": v.rate,
                **harness.summarise(runs[v.label]),
            }
            for v in variants
        ],
        "runs": runs,
    }


def write_run(
    srv: harness.Server,
    scn: Scenario,
    v: Variant,
    n: int,
    emails: list[str],
    work: Path,
    timeout: float,
) -> dict[str, Any]:
    """One write run on a freshly reset server: the same seed, zero counters, full buckets."""
    work.mkdir(parents=True)
    srv.reset()
    cfg = {
        "url": srv.url,
        "token": srv.token,
        "csv": str(work.parent / "rows.csv"),
        "rate": v.rate,
        "work": str(work),
    }
    cpu0 = srv.cpu_s()
    res = harness.run_child(harness.peer_cmd(v.module, cfg), timeout)
    server_cpu = srv.cpu_s() - cpu0
    stats = srv.stats()
    if "error" in res:
        say(f"    error: {res['error']}")
        return res
    out = judge_write(res, stats, emails)
    wall = res["wall_s"]
    cpu = res["rusage_cpu_s"] - res["startup_cpu_s"]
    ideal = scn.ideal_s(n)
    out.update(
        wall_s=wall,
        x_ideal=wall / ideal if ideal else None,
        cpu_s=cpu,
        cpu_ms_per_op=cpu * 1000 / n,
        peak_rss_mb=res["peak_rss_mb"],
        ops_per_s=n / wall,
        server_cpu_s=server_cpu,
        server_cpu_share=server_cpu / res["process_wall_s"],
        process_wall_s=res["process_wall_s"],
    )
    say(
        f"    {wall:.2f} s, CPU {cpu:.2f} s, {out['requests']} requests, {out['429s']} 429s, "
        f"dup {out['duplicates']}, missing {out['missing']}, misreported {out['misreported']}"
    )
    return out


def export_cmd(v: Variant, srv: harness.Server, out: Path, work: Path) -> list[str]:
    if v.module.startswith("export:"):
        return [
            sys.executable, str(EXPORT_SCRIPT), "--child", "--url", srv.url,
            "--format", str(v.format), "--out", str(out), "--page-size", "500",
            "--parallel", str(PARALLEL), "--variant", v.module.split(":", 1)[1],
            "--commit-ms", "500", "--commit-pages", "50",
        ]  # fmt: skip
    cfg = {"url": srv.url, "token": srv.token, "format": v.format, "work": str(work)}
    return harness.peer_cmd(v.module, cfg)


def export_run(
    srv: harness.Server, v: Variant, n: int, work: Path, timeout: float
) -> dict[str, Any]:
    work.mkdir(parents=True)
    out = work / f"attempts.{v.format}"
    before = srv.stats()
    cpu0 = srv.cpu_s()
    res = harness.run_child(export_cmd(v, srv, out, work), timeout)
    server_cpu = srv.cpu_s() - cpu0
    after = srv.stats()
    if "error" in res:
        say(f"    error: {res['error']}")
        return res
    files = [Path(f) for f in res.get("files", [str(out)])]
    ids = export_ids(files, str(v.format))
    unique = len(set(ids))
    reported = res.get("rows", len(ids))
    wall = res["wall_s"]
    cpu = res["rusage_cpu_s"]  # the whole process: imports are part of an export's cost
    r = {
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_ms_per_op": cpu * 1000 / n,
        "peak_rss_mb": res["peak_rss_mb"],
        "requests": after["requests"] - before["requests"],
        "429s": after["throttled"] - before["throttled"],
        "duplicates": len(ids) - unique,
        "missing": n - unique,
        "misreported": abs(reported - len(ids)),
        "ops_per_s": n / wall,
        "server_cpu_s": server_cpu,
        "server_cpu_share": server_cpu / res["process_wall_s"],
        "process_wall_s": res["process_wall_s"],
        "file_mb": sum(f.stat().st_size for f in files) / 1e6,
        "format": v.format,
    }
    for f in files:
        f.unlink()
    say(f"    {wall:.2f} s, CPU {cpu:.2f} s, {r['peak_rss_mb']:.0f} MB, rows {unique}")
    return r


def _cpu_to_bare(
    variants: list[Variant],
    runs: dict[str, list[dict[str, Any]]],
    is_bare: Callable[[Variant], bool],
) -> None:
    """cpu_x_bare of each run: its CPU per operation over the bare loop's median."""
    bare = next((v for v in variants if is_bare(v)), None)
    values = [r["cpu_ms_per_op"] for r in runs[bare.label] if "error" not in r] if bare else []
    if not values:
        return
    floor = statistics.median(values)
    for v in variants:
        for r in runs[v.label]:
            if "error" not in r:
                r["cpu_x_bare"] = r["cpu_ms_per_op"] / floor


def _ratio_to_bare(variants: list[Variant], runs: dict[str, list[dict[str, Any]]]) -> None:
    """x_ideal of an export run: its wall over the median wall of the bare loop, same format."""
    for v in variants:
        bare = next(
            (b for b in variants if b.module == "export:bare" and b.format == v.format), None
        )
        walls = [r["wall_s"] for r in runs[bare.label] if "error" not in r] if bare else []
        if not walls:
            continue
        floor = statistics.median(walls)
        for r in runs[v.label]:
            if "error" not in r:
                r["x_ideal"] = r["wall_s"] / floor
