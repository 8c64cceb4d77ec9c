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
from pathlib import Path

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
    invoked_as,
    ledger_path,
    make_dir,
    open_client,
    out_dir,
    progress_snapshot,
)
from .spec import JobFile
from .tasks.undo_task import UndoTask

__all__ = ["runs_to_undo", "undo_job", "undo_ledger_path"]


def undo_ledger_path(job_ledger: Path, label: str) -> Path:
    """``<job>.undo-<run>.ledger.sqlite`` beside the job's ledger."""
    name = job_ledger.name
    stem = (
        name.removesuffix(".ledger.sqlite") if name.endswith(".ledger.sqlite") else job_ledger.stem
    )
    return job_ledger.with_name(f"{stem}.undo-{label}.ledger.sqlite")


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
        path = ledger_path(job)
        async with await Ledger.open_readonly(path) as ledger:
            runs = await ledger.runs()
            chosen = runs_to_undo(runs, run_id)
            portal = await ledger.get_meta("portal_id")
            images = await images_of(ledger, chosen)
        label = "-".join(str(r) for r in (chosen[0], chosen[-1]) if chosen) or "none"
        label = str(chosen[0]) if len(set(chosen)) == 1 else label
        folder = out_dir(job) / "undo" / f"run-{label}"
        make_dir(job, folder)
        _say(console, f"Undo of run {label}: {len(images):,} recorded writes")
        return await _undo(
            job, images, portal, label, folder, plan_only, yes, console, started, handle_signals
        )
    except (SynapBulkError, OSError) as exc:
        _say(console, f"error: {as_error(exc)}")
        return EXIT_INVALID


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
    try:
        return await _alongside(engine.run, progress.run, lambda: _watch_signals(stopper, console))
    finally:
        progress.final()


async def _forget_undone(path: Path, undo_keys: list[str]) -> None:
    """The job's ledger forgets the items whose writes are undone, so that a plain re-run of
    the job does them again (undoing an undo is a re-run)."""
    pairs: list[tuple[str, int]] = []
    for key in undo_keys:
        _, run, item_key = key.split(":", 2)
        pairs.append((item_key, int(run)))

    def write(db: sqlite3.Connection) -> None:
        db.executemany("DELETE FROM items WHERE key = ? AND run = ?", pairs)

    if pairs:
        async with await Ledger.open_readonly(path) as ledger:
            await ledger.transact(write)


async def _undo(
    job: JobFile,
    images: list[BeforeImage],
    portal: str | None,
    label: str,
    folder: Path,
    plan_only: bool,
    yes: bool,
    console: Console,
    started: float,
    handle_signals: bool,
) -> int:
    profile = job.profile
    async with open_client(job, profile) as (client, token_from):
        ident = await client.identity()
        _say(console, f"Acting as {ident.describe()} (token from {token_from})")
        if portal and portal != ident.portal_id:
            raise CheckpointError(
                f"the run was made on portal {portal}, but the token acts on portal "
                f"{ident.portal_id}: nothing is undone"
            )
        concurrency = job.spec.api.concurrency
        planner = UndoTask(images, profile)
        rows = await Engine(
            planner, client, None, config=EngineConfig(concurrency=concurrency)
        ).plan()
        with PlanWriter(folder / "plan.csv") as pw:
            for row in rows:
                pw.write(row)
        counted = [(a, planner.steps[a]) for a in planner.plan_actions]
        steps = ", ".join(f"{n:,} {a}" for a, n in counted if n) or "nothing"
        _say(console, f"Undo plan for {len(rows):,} items: {steps}")
        _say(console, f"Plan file: {folder / 'plan.csv'}")
        if plan_only:
            return EXIT_OK
        command = f"{invoked_as()} undo {job.path}" + (
            f" --run {label}" if "-" not in label else ""
        )
        refused = "" if yes else refusal(_destructive(planner), job.spec.guard, command=command)
        if refused:
            _say(console, f"error: {refused}")
            return EXIT_INVALID
        task = UndoTask(images, profile)
        undo_ledger = undo_ledger_path(ledger_path(job), label)
        async with await Ledger.open(
            undo_ledger,
            job_name=f"{job.spec.name}.undo-{label}",
            task_hash=f"undo:{label}:{len(images)}",
            input_hash="",
        ) as ledger:
            await ledger.set_meta("portal_id", ident.portal_id)
            run = await ledger.begin_run()
            cfg = job.spec.run
            engine = Engine(
                task,
                client,
                ledger,
                config=EngineConfig(
                    concurrency=engine_workers(concurrency, task.safety),
                    grace_seconds=cfg.grace_seconds,
                    item_retry=RetryPolicy(max_attempts=cfg.max_item_attempts, base=0.5, cap=30.0),
                ),
            )
            result = await _with_progress(
                engine, client, console, started, task.total, handle_signals
            )
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
        await _forget_undone(ledger_path(job), undone)
        summary.write(folder / "summary.json")
        console.print(summary)
        for rec in failed:
            _say(
                console,
                f"{rec.error.code or rec.status}: {rec.row.get('item')}: {rec.error.detail}",
            )
        if result.status != "completed":
            _say(console, f"Undo {result.status}: {result.reason}")
            _say(console, f"Resume with: {command}")
            return EXIT_INVALID if result.status == "aborted" else EXIT_FAILED
        return EXIT_FAILED if failed else EXIT_OK
