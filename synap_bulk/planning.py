"""``plan``: what ``run`` with the same flags would do, read from the ledger and the server.

Nothing is written to the server or the ledger; the plan file goes to the job's out_dir.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from .client import SynapClient
from .engine import Engine, EngineConfig
from .errors import SynapBulkError
from .items import SUPERSEDED, Safety
from .ledger import Ledger
from .report import PlanWriter
from .runner import (
    EXIT_INVALID,
    EXIT_OK,
    as_error,
    forgets_between_runs,
    ledger_path,
    make_dir,
    open_client,
    out_dir,
)
from .spec import JobFile
from .tasks import build_task
from .tasks.base import ItemTask

__all__ = ["PLAN_DONE", "PLAN_FAILED", "PLAN_IN_DOUBT", "PLAN_SUPERSEDED", "plan_job"]


async def plan_job(
    job: JobFile,
    *,
    retry_failed: bool = False,
    source: Path | None = None,
    console: Console | None = None,
) -> int:
    """Read everything, write nothing to the server; print what ``run`` (with the same flags)
    would do. The ledger decides as it would for the run: done items are skips, items in
    doubt are not re-sent, failed ones only with ``retry_failed`` or a fed-back ``source``."""
    console = console or Console(stderr=True)
    try:
        task = build_task(job, job.profile, source=source)
        async with open_client(job, job.profile) as (client, token_from):
            ident = await client.identity()
            console.print(
                f"Acting as {ident.describe()} (token from {token_from})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            path = ledger_path(job)
            ledger = None
            if path.exists() and not forgets_between_runs(job):
                ledger = await Ledger.open_readonly(path)
            try:
                if ledger is not None:
                    known = await ledger.get_meta("portal_id")
                    if known and known != ident.portal_id:
                        console.print(
                            f"note: the ledger belongs to portal {known}; a run would refuse "
                            "it without --restart",
                            markup=False,
                        )
                if task.shape == "stream":
                    for line in await task.plan(client, ledger):
                        console.print(line, markup=False, highlight=False, soft_wrap=True)
                else:
                    await _plan_items(
                        job, task, client, ledger, retry_failed or source is not None, console
                    )
            finally:
                if ledger is not None:
                    await ledger.close()
    except (SynapBulkError, OSError) as exc:
        console.print(f"error: {as_error(exc)}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_INVALID
    return EXIT_OK


#: How plan shows the items a run would not send.
PLAN_DONE = "done before"
PLAN_IN_DOUBT = "in doubt (not re-sent)"
PLAN_FAILED = "failed before (re-sent with --retry-failed)"
PLAN_SUPERSEDED = "replaced by a fixed row"


async def _skips(task: ItemTask, ledger: Ledger | None, retry_failed: bool) -> dict[str, str]:
    """The keys a run would not send, with the plan's label for each (as the engine decides)."""
    if ledger is None:
        return {}
    out: dict[str, str] = {}
    for key, state in (await ledger.load_states()).items():
        if state.status == "done":
            out[key] = PLAN_DONE
        elif state.status == SUPERSEDED:
            out[key] = PLAN_SUPERSEDED
        elif state.status == "in_doubt" or (
            state.status == "in_flight" and task.safety is Safety.UNSAFE
        ):
            out[key] = PLAN_IN_DOUBT
        elif state.status in ("failed", "invalid") and not retry_failed:
            out[key] = PLAN_FAILED
    return out


async def _plan_items(
    job: JobFile,
    task: ItemTask,
    client: SynapClient,
    ledger: Ledger | None,
    retry_failed: bool,
    console: Console,
) -> None:
    config = EngineConfig(concurrency=job.spec.api.concurrency)
    # The ledger (read-only) is the task's memory too: plan shows what a resume would reuse.
    engine = Engine(task, client, None, memory=ledger, config=config)
    rows = await engine.plan(await _skips(task, ledger, retry_failed))
    out = out_dir(job)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    plans = out / "plans"
    make_dir(job, plans)
    plan_path = _free_name(plans / f"plan-{stamp}.csv")
    counts = dict.fromkeys(task.plan_actions, 0)
    with PlanWriter(plan_path) as pw:
        for row in rows:
            counts[row.action] = counts.get(row.action, 0) + 1
            pw.write(row)
    shutil.copyfile(plan_path, out / "plan.csv")
    rendered = task.render_plan()
    if rendered is not None:
        console.print(rendered)
    shown = ", ".join(f"{n:,} {a}" for a, n in counts.items())
    console.print(f"Plan for {len(rows):,} rows: {shown}", markup=False, soft_wrap=True)
    console.print(f"Plan file: {plan_path} (latest also in {out / 'plan.csv'})", markup=False)


def _free_name(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``... whichever does not exist yet."""
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
