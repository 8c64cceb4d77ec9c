"""Our client: a ``kind: user-import`` job run by ``synap_bulk`` (the whole engine: CSV source,
ledger, engine, rate control, reconcile), exactly as ``synap-bulk run job.yaml`` runs it.

Settings: ``concurrency: 16`` (as every peer), ``rate`` as the scenario says: the number when
told, ``auto`` when not (``config["rate"] == "auto"``), omitted when the server has no limit;
``match: externalId``, ``mode: upsert``, ``lookup: listing`` (one listing of the directory
first: what ``lookup: auto`` picks above 200 rows, set so that small runs do the same). Its
report: the rows of ``success.csv`` (created) and ``failures.csv`` (failed); rows left
``in_doubt`` are in neither list (it says it does not know), and are counted apart.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from benchmarks.peers.child import config, report
from synap_bulk.runner import out_dir, run_job
from synap_bulk.spec import load_job


def write_job(cfg: dict[str, Any]) -> Path:
    folder = Path(cfg["work"])
    rate = cfg.get("rate")
    rate_line = f"  rate: {rate}\n" if rate else ""
    job = folder / "ours.yaml"
    job.write_text(
        f"""version: 1
name: bench-ours
api:
  base_url: {cfg["url"]}
  token: {cfg["token"]}
  concurrency: 16
{rate_line}task:
  kind: user-import
  source: {cfg["csv"]}
  match: externalId
  mode: upsert
  lookup: listing
  fields:
    name: "{{name}}"
    emailAddress: "{{emailAddress}}"
    externalId: "{{externalId}}"
"""
    )
    return job


def emails(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [r["emailAddress"] for r in csv.DictReader(f)]


def main() -> None:
    cfg = config()
    job = load_job(write_job(cfg))
    console = Console(file=io.StringIO())
    code = anyio.run(lambda: run_job(job, restart=True, console=console, handle_signals=False))
    folder = out_dir(job)
    summary = json.loads((folder / "summary.json").read_text())
    report(
        cfg,
        ok=emails(folder / "success.csv"),
        failed=emails(folder / "failures.csv"),
        exit_code=code,
        in_doubt=summary.get("counts", {}).get("in_doubt", 0),
    )


if __name__ == "__main__":
    main()
