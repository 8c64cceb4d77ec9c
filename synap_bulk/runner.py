"""Wires one job together: sandbox (if asked), client, ledger, task, engine, progress, reports.

The CLI is a thin shell over :func:`run_job`, :func:`plan_job` and :func:`status_job`; tests call
them directly. Nothing here knows HTTP or SQL: it only connects the pieces in the order of the
data flow (DESIGN.md).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from .client import ClientStatistics, SynapClient
from .engine import Engine, EngineConfig, RunResult
from .errors import CheckpointError, SourceError, SpecError, SynapBulkError, Unauthorized
from .items import Safety
from .ledger import Ledger
from .profile import ApiProfile, load_profile
from .progress import Progress, Snapshot
from .report import FailuresWriter, PlanWriter, SuccessWriter, Summary
from .spec import JobFile
from .tasks.base import Task
from .transport import Timeouts

__all__ = ["EXIT_FAILED", "EXIT_INVALID", "EXIT_OK", "plan_job", "run_job", "status_job"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

_IMPORT_ACTIONS = ("create", "update", "unchanged", "invalid", "conflict")


def _profile(job: JobFile) -> ApiProfile:
    return load_profile(job.spec.api.profile or None)


def progress_snapshot(
    c: ClientStatistics,
    started: float,
    *,
    total: int | None,
    done: int,
    failed: int = 0,
    skipped: int = 0,
    item_retries: int = 0,
) -> Snapshot:
    """A progress snapshot: the run's own counts plus the client's request figures.

    Retries are the client's re-sent requests plus the items the engine tried again.
    """
    return Snapshot(
        total=total,
        done=done,
        failed=failed,
        skipped=skipped,
        in_flight=c.in_flight,
        requests=c.requests,
        rate=c.current_rate,
        throttled=c.throttled,
        retries=c.retries + item_retries,
        elapsed_s=time.monotonic() - started,
    )


def engine_workers(concurrency: int, safety: Safety) -> int:
    """Workers (items in process at once) for a client capped at ``concurrency`` requests.

    An item holds its worker while it waits for its durable in-flight mark, a rate-limit
    permit, a backoff before trying again or a user-group batch to fill and come back, so more
    workers than request slots keep every slot busy; the client's cap still bounds what
    reaches the server. How many more depends on what a crash would cost: an item marked in
    flight that never left is one lookup on resume when the task is reconcilable (or nothing
    when idempotent), so those run four workers a slot; an unsafe one is reported in doubt for a
    person to check, so an unsafe task keeps the margin small.
    """
    if safety is Safety.UNSAFE:
        return concurrency + max(2, concurrency // 4)
    return 4 * concurrency


def ledger_path(job: JobFile) -> Path:
    run = job.spec.run
    if run.ledger:
        return job.resolve(run.ledger)
    return job.path.with_name(f"{job.path.stem}.ledger.sqlite")


def out_dir(job: JobFile) -> Path:
    run = job.spec.run
    if run.out_dir:
        return job.resolve(run.out_dir)
    return job.dir / "out" / job.spec.name


def build_task(job: JobFile, profile: ApiProfile) -> Task:
    """The task object for the job's ``task.kind``."""
    kind = job.spec.task.kind
    if kind == "user-import":
        from .tasks.user_import import UserImportTask

        return UserImportTask(job.spec.task, job, profile)  # type: ignore[arg-type]
    if kind == "assign-markers":
        from .tasks.assign_markers import AssignMarkersTask

        return AssignMarkersTask(job.spec.task, job, profile)  # type: ignore[arg-type]
    if kind == "request":
        from .tasks.request import RequestTask

        return RequestTask(job.spec.task, job, profile)  # type: ignore[arg-type]
    raise SpecError(f"unknown task kind {kind!r}", file=str(job.path), path="task.kind")


@contextlib.asynccontextmanager
async def open_client(job: JobFile, profile: ApiProfile) -> AsyncIterator[SynapClient]:
    """A client for the job's target; ``base_url: sandbox`` starts a seeded sandbox first."""
    api = job.spec.api
    rate: float | str | None = api.rate
    async with contextlib.AsyncExitStack() as stack:
        base_url = api.base_url
        token = api.token
        token_file = job.resolve(api.token_file) if api.token_file else None
        if base_url == "sandbox":
            from .sandbox import Sandbox, SandboxConfig

            settings: dict[str, Any] = dict(job.spec.sandbox or {})
            config = SandboxConfig(**settings)
            sb = await stack.enter_async_context(Sandbox(config))
            base_url = sb.url
            if token is None and token_file is None:
                token = sb.token
        client = SynapClient(
            base_url,
            token=token,
            token_file=token_file,
            rate=rate,  # type: ignore[arg-type]
            concurrency=api.concurrency,
            profile=profile,
            subject_user=api.subject_user,
            timeouts=Timeouts(connect=min(10.0, api.timeout), read=api.timeout, total=api.timeout),
        )
        yield await stack.enter_async_context(client)


def _input_hash(task: Task) -> str:
    fn = getattr(task, "input_hash", None)
    return str(fn()) if callable(fn) else ""


def _csv_style(task: Task) -> dict[str, Any]:
    """Write output CSVs as the input was written (delimiter, BOM) so they feed straight back."""
    source = getattr(task, "source", None)
    if source is None:
        return {}
    return {"delimiter": source.delimiter, "bom": source.has_bom}


def _columns(task: Task) -> list[str]:
    cols = getattr(task, "input_columns", None)
    return list(cols) if cols else []


async def _watch_signals(engine: Engine, console: Console, resume_cmd: str) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for _ in signals:
            count += 1
            if count == 1:
                console.print(
                    "[yellow]Stopping: no new items; in-flight requests may finish "
                    "(press Ctrl-C again to abort now).[/]"
                )
                engine.stop(graceful=True)
            else:
                console.print("[red]Aborting now; in-flight items are reconciled on resume.[/]")
                engine.stop(graceful=False)
                return


async def run_job(
    job: JobFile,
    *,
    restart: bool = False,
    retry_failed: bool = False,
    console: Console | None = None,
    handle_signals: bool = True,
) -> int:
    """Run (or resume) a job; returns the process exit code."""
    console = console or Console(stderr=True)
    kind = job.spec.task.kind
    if kind == "export-attempts":
        from .tasks.export_attempts import run_export_job

        return await run_export_job(job, restart=restart, console=console)
    profile = _profile(job)
    task = build_task(job, profile)
    out = out_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    resume_cmd = f"python -m synap_bulk run {job.path}"
    if job.spec.api.base_url == "sandbox" and not restart:
        # The embedded sandbox's data lives only as long as this process: a ledger from an
        # earlier run describes a server that no longer exists, so every run starts afresh.
        restart = True
    started = time.monotonic()
    async with (
        open_client(job, profile) as client,
        await Ledger.open(
            ledger_path(job),
            job_name=job.spec.name,
            task_hash=job.task_hash(),
            input_hash=_input_hash(task),
            restart=restart,
        ) as ledger,
    ):
        run_cfg = job.spec.run
        engine = Engine(
            task,
            client,
            ledger,
            config=EngineConfig(
                concurrency=engine_workers(job.spec.api.concurrency, task.safety),
                grace_seconds=run_cfg.grace_seconds,
                max_item_attempts=run_cfg.max_item_attempts,
                retry_failed=retry_failed,
                breaker_window=run_cfg.breaker.window,
                breaker_min_requests=run_cfg.breaker.min_requests,
                breaker_threshold=run_cfg.breaker.threshold,
            ),
        )
        run_id = await ledger.begin_run()

        def snapshot() -> Snapshot:
            e = engine.statistics()
            return progress_snapshot(
                client.statistics(),
                started,
                total=getattr(task, "total", None) or e.total_seen or None,
                done=e.done,
                failed=e.failed + e.invalid + e.in_doubt,
                skipped=e.skipped_done + e.skipped_failed,
                item_retries=e.retried,
            )

        progress = Progress(snapshot, console=console)
        result: RunResult
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress.run)
            if handle_signals:
                tg.start_soon(_watch_signals, engine, console, resume_cmd)
            try:
                result = await engine.run()
            finally:
                tg.cancel_scope.cancel()
        progress.final()
        await ledger.flush()
        summary = await _write_reports(job, task, engine, client, ledger, result, out, started)
        await ledger.end_run(run_id, result.status, summary.to_builtins())
    console.print(summary)
    if result.status != "completed":
        console.print(f"Run {result.status}: {result.reason}")
        if result.status == "stopped" and job.spec.api.base_url == "sandbox":
            console.print(
                f"Run again with: {resume_cmd} (it starts afresh: the embedded sandbox keeps "
                "its data only for one run)"
            )
        elif result.status == "stopped":
            console.print(f"Resume with: {resume_cmd}")
        breaker = result.reason.startswith("circuit breaker")
        return EXIT_INVALID if result.status == "aborted" or breaker else EXIT_FAILED
    c = summary.counts
    bad = c.get("failed", 0) + c.get("invalid", 0) + c.get("in_doubt", 0)
    return EXIT_FAILED if bad else EXIT_OK


async def _write_reports(
    job: JobFile,
    task: Task,
    engine: Engine,
    client: SynapClient,
    ledger: Ledger,
    result: RunResult,
    out: Path,
    started: float,
) -> Summary:
    columns = _columns(task)
    failures_path = out / "failures.csv"
    success_path = out / "success.csv"
    failed = await ledger.failed_items()
    if failed:
        with FailuresWriter(failures_path, columns, **_csv_style(task)) as fw:
            for rec in failed:
                fw.write(rec.line, rec.row, rec.error)
    else:
        failures_path.unlink(missing_ok=True)
    states = await ledger.load_states()
    with SuccessWriter(success_path, columns, **_csv_style(task)) as sw:
        async for item in task.items():
            state = states.get(item.key)
            if state is not None and state.status == "done":
                sw.write(item.line, item.row, state.action, state.remote_id)
    counts = await ledger.counts()
    total = getattr(task, "total", None)
    if isinstance(total, int) and total > sum(counts.values()):
        counts["not_started"] = total - sum(counts.values())
    counts.update(sw.actions)
    e = engine.statistics()
    c = client.statistics()
    summary = Summary.build(
        job_name=job.spec.name,
        kind=job.spec.task.kind,
        status=result.status,
        reason=result.reason,
        counts=counts,
        skipped=e.skipped_done,
        elapsed_s=time.monotonic() - started,
        client=c,
        item_retries=e.retried,
        reconciled=e.reconciled,
        task=task.summary(),
        failures_file=str(failures_path) if failed else "",
        success_file=str(success_path),
    )
    summary.write(out / "summary.json")
    return summary


async def plan_job(job: JobFile, *, console: Console | None = None) -> int:
    """Read everything, write nothing to the server; print counts and write the plan file."""
    console = console or Console(stderr=True)
    if job.spec.task.kind == "export-attempts":
        from .tasks.export_attempts import plan_export_job

        return await plan_export_job(job, console=console)
    profile = _profile(job)
    task = build_task(job, profile)
    out = out_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    async with open_client(job, profile) as client:
        engine = Engine(
            task, client, None, config=EngineConfig(concurrency=job.spec.api.concurrency)
        )
        rows = await engine.plan()
    counts: dict[str, int] = {}
    plan_path = out / "plan.csv"
    with PlanWriter(plan_path) as pw:
        for row in rows:
            counts[row.action] = counts.get(row.action, 0) + 1
            pw.write(row)
    render = getattr(task, "render_plan", None)
    if callable(render):
        console.print(render())
    if job.spec.task.kind == "user-import":
        counts = {a: counts.get(a, 0) for a in _IMPORT_ACTIONS} | counts
    shown = ", ".join(f"{n:,} {a}" for a, n in counts.items())
    console.print(f"Plan for {len(rows):,} rows: {shown}")
    console.print(f"Plan file: {plan_path}")
    return EXIT_OK


async def status_job(job: JobFile, *, console: Console | None = None) -> int:
    """What the ledger says: item counts and the last runs."""
    console = console or Console()
    path = ledger_path(job)
    if not path.exists():
        console.print(f"{job.path}: not started (no ledger at {path})")
        return EXIT_OK
    ledger = await Ledger.open_readonly(path)
    async with ledger:
        counts = await ledger.counts()
        runs = await ledger.runs()
    console.print(f"{job.path}: ledger {path}")
    console.print("items: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for run in runs[-5:]:
        console.print(f"run {run.id}: {run.started_at} -> {run.ended_at or '…'} {run.status}")
    return EXIT_OK


def main_errors(exc: BaseException) -> int | None:
    """Exit code for errors that end a command with a message rather than a traceback."""
    if isinstance(exc, (SpecError, SourceError, CheckpointError, Unauthorized)):
        return EXIT_INVALID
    if isinstance(exc, SynapBulkError):
        return EXIT_INVALID
    return None
