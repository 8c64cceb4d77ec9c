"""``status``: what a job's ledger says, for every kind; no server is contacted."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

from .ledger import Ledger, RunInfo
from .runner import EXIT_OK, ledger_path
from .spec import JobFile

__all__ = ["status_job"]


async def status_job(job: JobFile, *, as_json: bool = False, console: Console | None = None) -> int:
    """What the ledger says, for every kind: item counts, the portal, the last runs. A run
    recorded as running whose process is gone shows as ``interrupted``. Touches no server."""
    console = console or Console(soft_wrap=True)  # one line per run, whatever the width
    path = ledger_path(job)
    if not path.exists():
        if as_json:
            console.print_json(data={"job": str(job.path), "ledger": None, "runs": []})
        else:
            console.print(f"{job.path}: not started (no ledger at {path})", markup=False)
        return EXIT_OK
    async with await Ledger.open_readonly(path) as ledger:
        counts = await ledger.counts()
        actions = await ledger.action_counts()
        runs = await ledger.runs()
        portal = await ledger.get_meta("portal_id")
    shown = [(run, _run_status(run)) for run in runs]
    if as_json:
        data = {
            "job": str(job.path),
            "ledger": str(path),
            "portal_id": portal,
            "items": counts,
            "actions": actions,
            "runs": [
                {
                    "id": run.id,
                    "started_at": run.started_at,
                    "ended_at": run.ended_at,
                    "status": status,
                    "summary": run.summary,
                }
                for run, status in shown
            ],
        }
        console.print_json(data=data)
        return EXIT_OK
    console.print(
        f"{job.path}: ledger {path}" + (f" (portal {portal})" if portal else ""), markup=False
    )
    if counts:
        items = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        if actions:
            items += " (" + ", ".join(f"{v:,} {k}" for k, v in actions.items()) + ")"
        console.print("items: " + items, markup=False)
    for run, status in shown[-5:]:
        line = f"run {run.id}: {run.started_at} -> {run.ended_at or '…'} {status}"
        figures = _run_figures(run.summary)
        console.print(line + (f" ({figures})" if figures else ""), markup=False, highlight=False)
    return EXIT_OK


def _run_status(run: RunInfo) -> str:
    """``running`` only while its process lives; a killed run is ``interrupted``."""
    if run.status != "running":
        return run.status
    if run.pid is None or not _alive(run.pid):
        return "interrupted"
    return "running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _run_figures(summary: dict[str, Any] | None) -> str:
    """What a run did, from its recorded summary, e.g. "6,000 exported"."""
    if not summary:
        return ""
    counts = summary.get("this_run") or summary.get("counts")
    if not isinstance(counts, dict):
        return ""
    shown = [
        f"{v:,} {'already done' if k == 'skipped' else k.replace('_', ' ')}"
        for k, v in counts.items()
        if isinstance(v, int) and v
    ]
    reason = summary.get("reason")
    if summary.get("status") == "aborted" and isinstance(reason, str) and reason:
        shown.append(reason)
    return ", ".join(shown)
