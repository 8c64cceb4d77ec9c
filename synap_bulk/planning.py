"""``plan``: what ``run`` with the same flags would do, read from the ledger and the server.

Nothing is written to the server or the ledger; the plan file goes to the job's out_dir.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from rich.console import Console

from .client import SynapClient
from .engine import Engine, EngineConfig
from .errors import SynapBulkError
from .guards import check_guard
from .items import SUPERSEDED, InvalidRow, PlanRow, Safety
from .ledger import Ledger
from .report import PlanWriter
from .runner import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    as_error,
    forgets_between_runs,
    invoked_as,
    ledger_path,
    make_dir,
    open_client,
    out_dir,
)
from .spec import JobFile
from .tasks import build_task
from .tasks.base import ItemTask

__all__ = [
    "PLAN_DONE",
    "PLAN_FAILED",
    "PLAN_IN_DOUBT",
    "PLAN_SUPERSEDED",
    "plan_job",
    "validate_job",
]

#: How many invalid rows ``validate`` shows with their reasons (plan.csv lists them all).
VALIDATE_SHOWN = 10


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
    units = task.unit if len(rows) == 1 else f"{task.unit}s"
    console.print(f"Plan for {len(rows):,} {units}: {shown}", markup=False, soft_wrap=True)
    for line in plan_examples(rows, list(counts)):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"Plan file: {plan_path} (latest also in {out / 'plan.csv'})", markup=False)
    command = f"{invoked_as()} run {job.path}"
    refused = await check_guard(task, client, job.spec.guard, yes=False, command=command)
    if refused:  # what the run would do at this point: stop, before its first write
        console.print(f"note: {refused}", markup=False, highlight=False, soft_wrap=True)


#: Actions the printed plan gives no examples of: nothing would change.
_QUIET_ACTIONS = frozenset({"unchanged", PLAN_DONE, PLAN_SUPERSEDED})
#: Examples the printed plan gives of each action (plan.csv has every row).
PLAN_EXAMPLES = 3


def plan_examples(
    rows: Sequence[PlanRow], order: Sequence[str] = (), per_action: int = PLAN_EXAMPLES
) -> list[str]:
    """The first rows of each action that changes something (actions in ``order`` first), as
    a person reads them:
    ``  update  line 7  Ada Lovelace <ada@x.edu> (id u1): name: "Ada" -> "Ada Lovelace"``."""
    by_action: dict[str, list[PlanRow]] = {a: [] for a in order if a not in _QUIET_ACTIONS}
    for row in rows:
        if row.action not in _QUIET_ACTIONS:
            by_action.setdefault(row.action, []).append(row)
    by_action = {a: these for a, these in by_action.items() if these}
    width = max((len(a) for a in by_action), default=0)
    out: list[str] = []
    for action, these in by_action.items():
        for row in these[:per_action]:
            where = f"line {row.line}  " if row.line else ""
            who = row.label or ("" if row.key == f"line:{row.line}" else row.key)
            if row.remote_id and row.remote_id not in who:
                who = f"{who} (id {row.remote_id})"
            detail = (f": {row.detail}" if who else row.detail) if row.detail else ""
            out.append(f"  {action:<{width}}  {where}{who}{detail}")
        if len(these) > per_action:
            out.append(f"  {'':<{width}}  ... and {len(these) - per_action:,} more {action}")
    return out


def _free_name(path: Path) -> Path:
    """``path``, or ``stem-2.suffix``, ``stem-3.suffix``... whichever does not exist yet."""
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


async def validate_job(job: JobFile, *, out: TextIO | None = None) -> int:
    """Check the job file and read its whole input with no server and no token: 0 when every
    row is valid, 1 when some are not (the first reasons are printed, with their lines), 2 (a
    SpecError or SourceError raised) when the job itself is wrong.

    What needs the server (a group's name, a marker's email, the attempts of an exam) is left to
    ``plan``: the same task checks, where the server's answers are known."""
    out = out or sys.stdout
    token_file = job.spec.api.token_file
    if token_file and not job.resolve(token_file).is_file():
        # validate needs no token (the file may be written later, e.g. by CI from a secret),
        # but says that `run` would refuse the job as it stands; never the path itself.
        where = job.error(
            "api.token_file",
            "no such file yet (a relative path is taken from the job's folder); run needs it",
        )
        print(f"warning: {where}", file=sys.stderr)
    task = build_task(job, job.profile)  # every task's own checks, at their job-file line
    head = f"{job.path}: job file ok ({job.spec.task.kind})"
    if task.shape == "stream":
        print(f"{head}; no input rows to check", file=out)
        return EXIT_OK
    total = 0
    invalid: list[InvalidRow] = []
    async for entry in task.check_rows():
        total += 1
        if isinstance(entry, InvalidRow):
            invalid.append(entry)
    if not total:
        print(f"{head}; its items come from the server: `plan` checks them", file=out)
        return EXIT_OK
    valid = total - len(invalid)
    rows = "row" if total == 1 else "rows"
    counts = f"{total:,} {rows}, {valid:,} valid, {len(invalid):,} invalid"
    print(f"{head}; input: {counts}", file=out)
    for bad in invalid[:VALIDATE_SHOWN]:
        named = bad.error.field and not bad.error.detail.startswith(f"{bad.error.field}:")
        field = f"{bad.error.field}: " if named else ""
        print(f"  line {bad.line}: {field}{bad.error.detail}", file=out)
    if len(invalid) > VALIDATE_SHOWN:
        print(
            f"  ... and {len(invalid) - VALIDATE_SHOWN:,} more (plan.csv from `plan` lists "
            "every row with its reason)",
            file=out,
        )
    return EXIT_FAILED if invalid else EXIT_OK
