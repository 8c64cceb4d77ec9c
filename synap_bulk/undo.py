"""``undo JOB [--run RUN_ID] [--plan] [--yes]``: put the server back as it was before a run.

The job's ledger holds a before-image of every write its runs made (``images.py``). An undo
reads those of the chosen run (default: the last run, with the interrupted runs it resumed),
shows the plan (delete N users, restore M attribute values, remove K memberships, unassign L
markers; a plan file with one line per item), checks it against the job's guard, then applies
it through the same engine as a run: rate control, retries, a ledger of its own (so a killed
undo resumes where it stopped), newest write first. What someone changed since the run is a
conflict, reported with both values and left as it is.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from .client import SynapClient
from .engine import Engine, EngineConfig, RunResult
from .errors import CheckpointError, SynapBulkError
from .guards import Destructive, refusal
from .images import BeforeImage, images_of
from .ledger import Ledger, RunInfo
from .progress import Progress, Snapshot
from .report import FailuresWriter, PlanWriter, Summary
from .retry import RetryPolicy
from .runner import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    _alongside,
    _Stopper,
    _watch_signals,
    as_error,
    engine_workers,
    forgets_between_runs,
    invoked_as,
    ledger_path,
    make_dir,
    open_client,
    out_dir,
    progress_snapshot,
)
from .spec import JobFile
from .tasks.undo_task import UndoTask

__all__ = ["runs_to_undo", "undo_job"]


def runs_to_undo(runs: list[RunInfo], run_id: int | None) -> list[int]:
    """The runs an undo reverses: ``run_id``; by default the last run and the runs before it
    that it resumed (back to the last run that completed)."""
    if run_id is not None:
        if not any(r.id == run_id for r in runs):
            known = ", ".join(str(r.id) for r in runs) or "none"
            raise CheckpointError(f"no run {run_id} in the job's ledger (runs: {known})")
        return [run_id]
    chosen: list[int] = []
    for r in reversed(runs):
        if chosen and r.status == "completed":
            break
        chosen.append(r.id)
    return sorted(chosen)


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _destructive(task: UndoTask) -> Destructive:
    return Destructive(
        deletes=task.steps["delete"] + task.request_deletes,
        removals={g: n for g, n in task.removals.items() if not g.startswith("attempts")},
        sizes=dict(task.sizes),
        unassignments=task.steps["unassign"],
    )


async def undo_job(
    job: JobFile,
    *,
    run_id: int | None = None,
    plan_only: bool = False,
    yes: bool = False,
    console: Console | None = None,
    handle_signals: bool = True,
) -> int:
    """Plan, guard and apply the undo of a run of ``job``; returns the exit code."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    try:
        if forgets_between_runs(job):
            raise CheckpointError(
                "the embedded sandbox without a state file forgets its data when a run ends: "
                "there is nothing to undo (give it sandbox.state to keep it)"
            )
        async with await _open_job_ledger(ledger_path(job), job) as ledger:
            chosen = runs_to_undo(await ledger.runs(), run_id)
            if not chosen:
                raise CheckpointError(f"{ledger.path}: the job has no run to undo")
            portal = await ledger.get_meta("portal_id")
            images = await images_of(ledger, chosen)
            label = str(chosen[0]) if len(chosen) == 1 else f"{chosen[0]}-{chosen[-1]}"
            folder = out_dir(job) / "undo" / f"run-{label}"
            make_dir(job, folder)
            _say(console, f"Undo of run {label}: {len(images):,} recorded writes")
            undo = _Undo(job, ledger, images, label, folder, console, started)
            return await undo.go(portal, plan_only, yes, handle_signals)
    except (SynapBulkError, OSError) as exc:
        _say(console, f"error: {as_error(exc)}")
        return EXIT_INVALID


async def _open_job_ledger(path: Path, job: JobFile) -> Ledger:
    """The job's ledger, held (its run lock) for the whole undo: no run of the job meanwhile.
    Its images stand alone, so a job file edited since the run does not stop the undo."""
    async with await Ledger.open_readonly(path) as reader:
        task_hash = await reader.get_meta("task_hash") or ""
        input_hash = await reader.get_meta("input_hash") or ""
    return await Ledger.open(
        path,
        job_name=job.spec.name,
        task_hash=task_hash,
        input_hash=input_hash,
        check_input=False,
    )


async def _with_progress(
    engine: Engine,
    client: SynapClient,
    console: Console,
    started: float,
    total: int,
    handle_signals: bool,
) -> RunResult:
    """The engine's run with the progress bar, and Ctrl-C as for a run (stop, then abort)."""

    def snapshot() -> Snapshot:
        e = engine.statistics()
        return progress_snapshot(
            client.statistics(),
            started,
            total=total,
            done=e.done,
            failed=e.failed,
            skipped=e.skipped_done,
            item_retries=e.retried,
        )

    progress = Progress(snapshot, console=console)
    stopper = _Stopper(lambda: engine.stop(graceful=True), lambda: engine.stop(graceful=False))
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [progress.run]
    if handle_signals:
        background.append(lambda: _watch_signals(stopper, console))
    try:
        return await _alongside(engine.run, *background)
    finally:
        progress.final()


def _forget(job_ledger: Ledger, undo_keys: list[str]) -> Callable[[sqlite3.Connection], None]:
    """The job's ledger forgets the items whose writes are undone, so that a plain re-run of
    the job does them again (undoing an undo is a re-run)."""
    pairs: list[tuple[str, int]] = []
    for key in undo_keys:
        _, run, item_key = key.split(":", 2)
        pairs.append((item_key, int(run)))

    def write(db: sqlite3.Connection) -> None:
        db.executemany("DELETE FROM items WHERE key = ? AND run = ?", pairs)

    return write


class _Undo:
    """One undo: plan, guard, apply, report (the job's ledger held throughout)."""

    def __init__(
        self,
        job: JobFile,
        job_ledger: Ledger,
        images: list[BeforeImage],
        label: str,
        folder: Path,
        console: Console,
        started: float,
    ) -> None:
        self.job = job
        self.job_ledger = job_ledger
        self.images = images
        self.label = label
        self.folder = folder
        self.console = console
        self.started = started
        self.command = f"{invoked_as()} undo {job.path}" + (
            f" --run {label}" if "-" not in label else ""
        )

    async def go(self, portal: str | None, plan_only: bool, yes: bool, signals: bool) -> int:
        job, console = self.job, self.console
        async with open_client(job, job.profile) as (client, token_from):
            ident = await client.identity()
            _say(console, f"Acting as {ident.describe()} (token from {token_from})")
            if portal and portal != ident.portal_id:
                raise CheckpointError(
                    f"the run was made on portal {portal}, but the token acts on portal "
                    f"{ident.portal_id}: nothing is undone"
                )
            planner = UndoTask(self.images, job.profile)
            config = EngineConfig(concurrency=job.spec.api.concurrency)
            rows = await Engine(planner, client, None, config=config).plan(await self._done())
            with PlanWriter(self.folder / "plan.csv") as pw:
                for row in rows:
                    pw.write(row)
            planner.steps["undone before"] = sum(1 for r in rows if r.action == "undone before")
            counted = [(a, planner.steps[a]) for a in planner.plan_actions]
            steps = ", ".join(f"{n:,} {a}" for a, n in counted if n) or "nothing"
            _say(console, f"Undo plan for {len(rows):,} items: {steps}")
            _say(console, f"Plan file: {self.folder / 'plan.csv'}")
            if plan_only:
                return EXIT_OK
            guard = job.spec.guard
            refused = "" if yes else refusal(_destructive(planner), guard, command=self.command)
            if refused:
                _say(console, f"error: {refused}")
                return EXIT_INVALID
            return await self._apply(client, ident.portal_id, signals)

    async def _done(self) -> dict[str, str]:
        """The items an earlier attempt of this undo finished: the plan does not read them."""
        path = self.folder / "ledger.sqlite"
        if not path.exists():
            return {}
        async with await Ledger.open_readonly(path) as ledger:
            states = await ledger.load_states()
        return {k: "undone before" for k, st in states.items() if st.status == "done"}

    async def _apply(self, client: SynapClient, portal_id: str, signals: bool) -> int:
        job, console, folder = self.job, self.console, self.folder
        task = UndoTask(self.images, job.profile)
        async with await Ledger.open(
            self.folder / "ledger.sqlite",
            job_name=f"{job.spec.name}.undo-{self.label}",
            task_hash=f"undo:{self.label}:{len(self.images)}",
            input_hash="",
        ) as ledger:
            await ledger.set_meta("portal_id", portal_id)
            run = await ledger.begin_run()
            cfg = job.spec.run
            engine = Engine(
                task,
                client,
                ledger,
                config=EngineConfig(
                    concurrency=engine_workers(job.spec.api.concurrency, task.safety),
                    grace_seconds=cfg.grace_seconds,
                    item_retry=RetryPolicy(max_attempts=cfg.max_item_attempts, base=0.5, cap=30.0),
                ),
            )
            started = self.started
            result = await _with_progress(engine, client, console, started, task.total, signals)
            await ledger.flush()
            failed = await ledger.failed_items()
            if failed:
                with FailuresWriter(folder / "failures.csv", list(task.input_columns)) as fw:
                    for rec in failed:
                        fw.write(rec.line, rec.row, rec.error)
            else:
                (folder / "failures.csv").unlink(missing_ok=True)
            counts = await ledger.counts()
            counts.update(await ledger.action_counts())
            stats = engine.statistics()
            summary = Summary.build(
                job_name=job.spec.name,
                kind="undo",
                status=result.status,
                reason=result.reason,
                counts=counts,
                skipped=stats.skipped_done,
                elapsed_s=time.monotonic() - started,
                client=client.statistics(),
                item_retries=stats.retried,
                task=task.summary(),
                failures_file=str(folder / "failures.csv") if failed else "",
            )
            await ledger.end_run(run, result.status, summary.to_builtins())
            undone = [k for k, st in (await ledger.load_states()).items() if st.status == "done"]
        await self.job_ledger.transact(_forget(self.job_ledger, undone))
        summary.write(folder / "summary.json")
        console.print(summary)
        for rec in failed:
            _say(
                console,
                f"{rec.error.code or rec.status}: {rec.row.get('item')}: {rec.error.detail}",
            )
        if result.status != "completed":
            _say(console, f"Undo {result.status}: {result.reason}")
            _say(console, f"Resume with: {self.command}")
            return EXIT_INVALID if result.status == "aborted" else EXIT_FAILED
        return EXIT_FAILED if failed else EXIT_OK
