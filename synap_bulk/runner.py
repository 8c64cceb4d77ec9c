"""One door for every job: client, ledger, task, engine or stream, progress, signals, reports.

The CLI is a thin shell over :func:`run_job`, :func:`plan_job` and :func:`status_job`; tests call
them directly. A task is built through the registry (``tasks/__init__.py``) and driven by its
shape: an item task through the engine, a stream task by itself. Everything around it (opening
the client and the ledger, the progress bar, Ctrl-C, ``summary.json``, the one-line error of a
run that cannot go on, exit codes) exists once, here, for every kind. Nothing here knows HTTP or
SQL: it only connects the pieces in the order of the data flow (README, "Design").
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
from rich.console import Console

from .client import ClientStatistics, SynapClient
from .engine import Engine, EngineConfig, RunResult
from .errors import SynapBulkError
from .items import RunContext, Safety, StreamProgress, StreamResult
from .ledger import Ledger
from .profile import ApiProfile
from .progress import Progress, Snapshot
from .report import FailuresWriter, PlanWriter, SuccessWriter, Summary
from .retry import RetryPolicy
from .spec import JobFile
from .tasks import build_task
from .tasks.base import ItemTask, StreamTask
from .transport import Timeouts

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "engine_workers",
    "ledger_path",
    "out_dir",
    "plan_job",
    "run_job",
    "status_job",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

T = TypeVar("T")


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


def _embedded(job: JobFile) -> bool:
    return job.spec.api.base_url == "sandbox"


# --- running ------------------------------------------------------------------------------


class _Stopper:
    """What Ctrl-C does to the run in progress: the first asks it to stop at a safe point, the
    second stops it now (in-flight work is reconciled or redone on resume)."""

    def __init__(self, graceful: Callable[[], None], hard: Callable[[], None]) -> None:
        self.graceful = graceful
        self.hard = hard


async def _watch_signals(stopper: _Stopper, console: Console) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for _ in signals:
            count += 1
            if count == 1:
                console.print(
                    "[yellow]Stopping: nothing new is started; work in flight may finish "
                    "(press Ctrl-C again to abort now).[/]"
                )
                stopper.graceful()
            else:
                console.print("[red]Aborting now; work in flight is reconciled on resume.[/]")
                stopper.hard()
                return


async def _alongside(
    work: Callable[[], Awaitable[T]], *background: Callable[[], Coroutine[Any, Any, None]]
) -> T:
    """Run ``work`` with ``background`` tasks beside it (progress, signals) until it ends.

    An error of ``work`` comes out as itself, not wrapped in an ExceptionGroup, so that the
    caller can turn it into one line.
    """
    result: list[T] = []
    error: list[Exception] = []
    async with anyio.create_task_group() as tg:
        for fn in background:
            tg.start_soon(fn)
        try:
            result.append(await work())
        except Exception as exc:
            error.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if error:
        raise error[0]
    return result[0]


class _Ended:
    """How a run ended, whatever its shape: the summary to write and the exit code."""

    def __init__(self, summary: Summary, code: int, lines: list[str]) -> None:
        self.summary = summary
        self.code = code
        self.lines = lines


async def run_job(
    job: JobFile,
    *,
    restart: bool = False,
    retry_failed: bool = False,
    console: Console | None = None,
    handle_signals: bool = True,
) -> int:
    """Run (or resume) a job of any kind; returns the process exit code.

    An error outside the per-item loop (the server refuses the first read, a page is missing,
    the disk is full) ends the run with one ``error:`` line, a ``summary.json`` giving the
    reason, and exit code 2.
    """
    console = console or Console(stderr=True)
    profile = job.profile
    task = build_task(job, profile)
    out = out_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    if _embedded(job) and not restart:
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
            input_hash=task.input_hash(),
            restart=restart,
        ) as ledger,
    ):
        run_id = await ledger.begin_run()
        try:
            if task.shape == "stream":
                ended = await _run_stream(
                    job, task, client, ledger, out, started, console, handle_signals
                )
            else:
                ended = await _run_items(
                    job, task, client, ledger, out, started, console, handle_signals, retry_failed
                )
        except SynapBulkError as exc:
            ended = _aborted(job, client, started, exc)
        await ledger.end_run(run_id, ended.summary.status, ended.summary.to_builtins())
    with contextlib.suppress(OSError):
        ended.summary.write(out / "summary.json")
    console.print(ended.summary)
    for line in ended.lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return ended.code


def _aborted(job: JobFile, client: SynapClient, started: float, exc: SynapBulkError) -> _Ended:
    summary = Summary.build(
        job_name=job.spec.name,
        kind=job.spec.task.kind,
        status="aborted",
        reason=str(exc),
        elapsed_s=time.monotonic() - started,
        client=client.statistics(),
    )
    return _Ended(summary, EXIT_INVALID, [f"error: {exc}"])


def _stopped_lines(job: JobFile) -> list[str]:
    resume_cmd = f"python -m synap_bulk run {job.path}"
    if _embedded(job):
        return [
            f"Run again with: {resume_cmd} (it starts afresh: the embedded sandbox keeps "
            "its data only for one run)"
        ]
    return [f"Resume with: {resume_cmd}"]


async def _run_items(
    job: JobFile,
    task: ItemTask,
    client: SynapClient,
    ledger: Ledger,
    out: Path,
    started: float,
    console: Console,
    handle_signals: bool,
    retry_failed: bool,
) -> _Ended:
    run_cfg = job.spec.run
    engine = Engine(
        task,
        client,
        ledger,
        config=EngineConfig(
            concurrency=engine_workers(job.spec.api.concurrency, task.safety),
            grace_seconds=run_cfg.grace_seconds,
            item_retry=RetryPolicy(max_attempts=run_cfg.max_item_attempts, base=0.5, cap=30.0),
            retry_failed=retry_failed,
            breaker_window=run_cfg.breaker.window,
            breaker_min_requests=run_cfg.breaker.min_requests,
            breaker_threshold=run_cfg.breaker.threshold,
        ),
    )

    def snapshot() -> Snapshot:
        e = engine.statistics()
        return progress_snapshot(
            client.statistics(),
            started,
            total=task.total or e.total_seen or None,
            done=e.done,
            failed=e.failed + e.invalid + e.in_doubt,
            skipped=e.skipped_done + e.skipped_failed,
            item_retries=e.retried,
        )

    progress = Progress(snapshot, console=console)
    stopper = _Stopper(lambda: engine.stop(graceful=True), lambda: engine.stop(graceful=False))
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [progress.run]
    if handle_signals:
        background.append(lambda: _watch_signals(stopper, console))
    try:
        result = await _alongside(engine.run, *background)
    finally:
        progress.final()
    await ledger.flush()
    summary = await _item_reports(job, task, engine, client, ledger, result, out, started)
    lines: list[str] = []
    if result.status != "completed":
        lines.append(f"Run {result.status}: {result.reason}")
        if result.status == "stopped":
            lines += _stopped_lines(job)
        breaker = result.reason.startswith("circuit breaker")
        return _Ended(
            summary, EXIT_INVALID if result.status == "aborted" or breaker else EXIT_FAILED, lines
        )
    c = summary.counts
    bad = c.get("failed", 0) + c.get("invalid", 0) + c.get("in_doubt", 0)
    return _Ended(summary, EXIT_FAILED if bad else EXIT_OK, lines)


async def _item_reports(
    job: JobFile,
    task: ItemTask,
    engine: Engine,
    client: SynapClient,
    ledger: Ledger,
    result: RunResult,
    out: Path,
    started: float,
) -> Summary:
    columns = list(task.input_columns)
    style = task.csv_style
    failures_path = out / "failures.csv"
    success_path = out / "success.csv"
    failed = await ledger.failed_items()
    if failed:
        with FailuresWriter(failures_path, columns, delimiter=style.delimiter, bom=style.bom) as fw:
            for rec in failed:
                fw.write(rec.line, rec.row, rec.error)
    else:
        failures_path.unlink(missing_ok=True)
    states = await ledger.load_states()
    with SuccessWriter(success_path, columns, delimiter=style.delimiter, bom=style.bom) as sw:
        async for item in task.items():
            state = states.get(item.key)
            if state is not None and state.status == "done":
                sw.write(item.line, item.row, state.action, state.remote_id)
    counts = await ledger.counts()
    total = task.total
    if total is not None and total > sum(counts.values()):
        counts["not_started"] = total - sum(counts.values())
    counts.update(sw.actions)
    e = engine.statistics()
    return Summary.build(
        job_name=job.spec.name,
        kind=task.kind,
        status=result.status,
        reason=result.reason,
        counts=counts,
        skipped=e.skipped_done,
        elapsed_s=time.monotonic() - started,
        client=client.statistics(),
        item_retries=e.retried,
        reconciled=e.reconciled,
        task=task.summary(),
        failures_file=str(failures_path) if failed else "",
        success_file=str(success_path),
    )


async def _run_stream(
    job: JobFile,
    task: StreamTask,
    client: SynapClient,
    ledger: Ledger,
    out: Path,
    started: float,
    console: Console,
    handle_signals: bool,
) -> _Ended:
    last = StreamProgress()
    run = RunContext(run_id=ledger.run_id, started_at=datetime.now(UTC))

    def on_progress(p: StreamProgress) -> None:
        nonlocal last
        last = p
        if p.note:
            console.print(p.note, markup=False, highlight=False)

    def snapshot() -> Snapshot:
        return progress_snapshot(client.statistics(), started, total=last.total, done=last.done)

    stop = anyio.Event()
    scope = anyio.CancelScope()
    progress = Progress(snapshot, console=console)
    stopper = _Stopper(stop.set, scope.cancel)

    async def work() -> StreamResult | None:
        with scope:
            return await task.run(client, ledger, stop=stop, progress=on_progress, run=run)
        return None  # cancelled by a second Ctrl-C: the page in progress is redone on resume

    background: list[Callable[[], Coroutine[Any, Any, None]]] = [progress.run]
    if handle_signals:
        background.append(lambda: _watch_signals(stopper, console))
    try:
        result = await _alongside(work, *background)
    finally:
        progress.final()
    if result is None:
        result = StreamResult(status="stopped", message="Stopped mid-page on request")
    exported = sum(result.counts.values())
    summary = Summary.build(
        job_name=job.spec.name,
        kind=task.kind,
        status=result.status,
        reason="" if result.status == "completed" else "stopped on request",
        counts={"done": exported, **result.counts},
        elapsed_s=time.monotonic() - started,
        client=client.statistics(),
        task=result.details,
    )
    lines = [result.message] if result.message else []
    if result.status != "completed":
        return _Ended(summary, EXIT_FAILED, lines + _stopped_lines(job))
    return _Ended(summary, EXIT_OK, lines)


# --- planning and status ------------------------------------------------------------------


async def plan_job(job: JobFile, *, console: Console | None = None) -> int:
    """Read everything, write nothing to the server; print what a run would do."""
    console = console or Console(stderr=True)
    profile = job.profile
    task = build_task(job, profile)
    try:
        async with open_client(job, profile) as client:
            if task.shape == "stream":
                await _plan_stream(job, task, client, console)
            else:
                await _plan_items(job, task, client, console)
    except SynapBulkError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_INVALID
    return EXIT_OK


async def _plan_stream(
    job: JobFile, task: StreamTask, client: SynapClient, console: Console
) -> None:
    path = ledger_path(job)
    if path.exists() and not _embedded(job):
        async with await Ledger.open_readonly(path) as ledger:
            lines = await task.plan(client, ledger)
    else:
        lines = await task.plan(client, None)
    for line in lines:
        console.print(line, markup=False, highlight=False)


async def _plan_items(job: JobFile, task: ItemTask, client: SynapClient, console: Console) -> None:
    engine = Engine(task, client, None, config=EngineConfig(concurrency=job.spec.api.concurrency))
    rows = await engine.plan()
    out = out_dir(job)
    out.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(task.plan_actions, 0)
    plan_path = out / "plan.csv"
    with PlanWriter(plan_path) as pw:
        for row in rows:
            counts[row.action] = counts.get(row.action, 0) + 1
            pw.write(row)
    rendered = task.render_plan()
    if rendered is not None:
        console.print(rendered)
    shown = ", ".join(f"{n:,} {a}" for a, n in counts.items())
    console.print(f"Plan for {len(rows):,} rows: {shown}")
    console.print(f"Plan file: {plan_path}")


async def status_job(job: JobFile, *, console: Console | None = None) -> int:
    """What the ledger says: item counts and the last runs, for every kind."""
    console = console or Console(soft_wrap=True)  # one line per run, whatever the width
    path = ledger_path(job)
    if not path.exists():
        console.print(f"{job.path}: not started (no ledger at {path})")
        return EXIT_OK
    ledger = await Ledger.open_readonly(path)
    async with ledger:
        counts = await ledger.counts()
        runs = await ledger.runs()
    console.print(f"{job.path}: ledger {path}")
    if counts:
        console.print("items: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for run in runs[-5:]:
        line = f"run {run.id}: {run.started_at} -> {run.ended_at or '…'} {run.status}"
        figures = _run_figures(run.summary)
        console.print(line + (f" ({figures})" if figures else ""), markup=False, highlight=False)
    return EXIT_OK


def _run_figures(summary: dict[str, Any] | None) -> str:
    """A run's action counts from its recorded summary, e.g. "6,000 exported"."""
    if not summary:
        return ""
    counts = summary.get("counts")
    if not isinstance(counts, dict):
        return ""
    shown = [
        f"{v:,} {k.replace('_', ' ')}"
        for k, v in counts.items()
        if isinstance(v, int) and v and k not in ("skipped",)
    ]
    reason = summary.get("reason")
    if summary.get("status") == "aborted" and isinstance(reason, str) and reason:
        shown.append(reason)
    return ", ".join(shown)
