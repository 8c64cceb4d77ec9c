"""One door for every job: client, ledger, task, engine or stream, progress, signals, reports.

The CLI is a thin shell over :func:`run_job` here, ``planning.plan_job`` and
``status.status_job``; tests call them directly. A task is built through the registry
(``tasks/__init__.py``) and driven by its shape: an item task through the engine, a stream task
by itself. Everything around it (opening
the client and the ledger, the progress bar, Ctrl-C, ``summary.json``, the one-line error of a
run that cannot go on, exit codes) exists once, here, for every kind. Nothing here knows HTTP or
SQL: it only connects the pieces in the order of the data flow (README, "Design").
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec
from rich.console import Console

from .client import ClientStatistics, Identity, SynapClient
from .doctor import check_reconcile_filters
from .engine import Engine, EngineConfig, RunResult
from .errors import CheckpointError, SynapBulkError
from .guards import check_guard, first_write_refused
from .items import InvalidRow, Item, RunContext, Safety, StreamProgress, StreamResult
from .ledger import Ledger
from .profile import ApiProfile
from .progress import Progress, Snapshot
from .report import FailuresWriter, SuccessWriter, Summary
from .report_html import job_secrets, publish_report
from .retry import RetryPolicy
from .sources import ORIGIN_COLUMN
from .spec import JobFile
from .tasks import build_task, input_files
from .tasks.base import ItemTask, RowsByLine, StreamTask
from .timeline import Timeline
from .transport import Timeouts
from .urls import is_local

__all__ = [
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_OK",
    "LEDGER_NAME",
    "as_error",
    "engine_workers",
    "forgets_between_runs",
    "invoked_as",
    "ledger_path",
    "legacy_ledger_path",
    "make_dir",
    "open_client",
    "out_dir",
    "run_job",
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


#: The default ledger's name inside the job's out_dir (its lock sits beside it).
LEDGER_NAME = "ledger.sqlite"

#: The ledgers already announced as found at the old default place (one note per process).
_LEGACY_NOTED: set[Path] = set()


def legacy_ledger_path(job: JobFile) -> Path:
    """Where the ledger lived by default before it moved under out_dir: beside the job file."""
    return job.path.with_name(f"{job.path.stem}.ledger.sqlite")


def ledger_path(job: JobFile) -> Path:
    """The job's ledger: ``run.ledger`` when given, else ``ledger.sqlite`` in the out_dir.

    A ledger at the old default place (``<job>.ledger.sqlite`` beside the job file) is kept in
    use while none exists under out_dir, so a job started before the move resumes; a one-line
    note (once per process) says how to move it. It is not moved for the user: a run of the
    job may hold it open, and its -wal file may hold committed rows a half-done move would
    lose.
    """
    run = job.spec.run
    if run.ledger:
        return job.resolve(run.ledger)
    new = out_dir(job) / LEDGER_NAME
    old = legacy_ledger_path(job)
    if not new.exists() and old.exists():
        if old not in _LEGACY_NOTED:
            _LEGACY_NOTED.add(old)
            print(
                f"note: using the ledger at its old place, {old}; to keep it with the results, "
                f"move it (and its -wal, -shm and .lock files, with no run in progress) to "
                f"{new}, or set run.ledger",
                file=sys.stderr,
            )
        return old
    return new


def out_dir(job: JobFile) -> Path:
    run = job.spec.run
    if run.out_dir:
        return job.resolve(run.out_dir)
    return job.dir / "out" / job.spec.name


@contextlib.asynccontextmanager
async def open_client(job: JobFile, profile: ApiProfile) -> AsyncIterator[tuple[SynapClient, str]]:
    """A client for the job's target and where its token came from; ``base_url: sandbox``
    starts a seeded sandbox first (with its state file, when the job names one)."""
    api = job.spec.api
    rate = client_rate(api.rate, api.base_url)
    async with contextlib.AsyncExitStack() as stack:
        base_url = api.base_url
        token = api.token
        token_file = job.resolve(api.token_file) if api.token_file else None
        sandbox_token: str | None = None
        if base_url == "sandbox":
            from .sandbox import Sandbox, SandboxConfig

            settings: dict[str, Any] = dict(job.spec.sandbox or {})
            if settings.get("state"):
                settings["state"] = str(job.resolve(str(settings["state"])))
            # The sandbox follows the job's profile, so a profile is rehearsed as written.
            settings.setdefault("profile", dict(api.profile))
            config = SandboxConfig(**settings)
            sb = await stack.enter_async_context(Sandbox(config))
            base_url = sb.url
            if token is None and token_file is None:
                token = sandbox_token = sb.token
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
        embedded = sandbox_token is not None and token == sandbox_token
        source = "embedded sandbox" if embedded else client.token_source
        yield await stack.enter_async_context(client), source


def client_rate(rate: float | str | None, base_url: str) -> float | str | None:
    """The client's rate for the job's ``api.rate``: omitted means ``auto`` against a remote
    server (find its limit: its users share it with us) and no ceiling against the sandbox or
    a server on this machine; ``none`` means no ceiling anywhere."""
    if rate == "none":
        return None
    if rate is None:
        return None if is_local(base_url) else "auto"
    return rate


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
    source: Path | None = None,
    force: bool = False,
    console: Console | None = None,
    handle_signals: bool = True,
    yes: bool = False,
) -> int:
    """Run (or resume) a job of any kind; returns the process exit code.

    A task that would destroy more than the job's ``guard:`` allows stops before its first
    destructive write unless ``yes`` (``guards.py``).

    Before the first write the run reads who its token acts as, says so and records it; a
    ledger belongs to the portal it was started on. ``source`` feeds back a CSV of fixed rows
    (the failures file, mended): items are matched by key, so done ones stay done, the fixed
    ones are tried again and new ones are new. Each run writes its result files into
    ``runs/<run>/`` under the job's out_dir, and copies them to the out_dir itself; no run
    replaces an earlier run's files or the job's input.

    Any error outside the per-item loop (the server refuses the first read, a page is missing,
    the disk is full, the ledger belongs to another portal) ends the run with one ``error:``
    line, a ``summary.json`` giving the reason, and exit code 2.
    """
    console = console or Console(stderr=True)
    started = time.monotonic()
    out = out_dir(job)
    state = _RunState()
    for warning in job.secret_warnings():
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    try:
        task = build_task(job, job.profile, source=source)
        make_dir(job, out)
        if forgets_between_runs(job):
            # The embedded sandbox without a state file keeps its data only as long as this
            # process: a ledger from an earlier run describes a server that no longer exists.
            restart = True
        elif restart:
            await _check_restart(job, task, force)
        async with open_client(job, job.profile) as (client, token_from):
            state.client = client
            ident = await client.identity()  # preflight: nothing is written before this
            state.who = (ident, token_from)
            # A reconcilable job's safety rests on its lookup filter: one GET proves it holds.
            await check_reconcile_filters(job, client)
            console.print(
                f"Acting as {ident.describe()} (token from {token_from})",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            async with await Ledger.open(
                ledger_path(job),
                job_name=job.spec.name,
                task_hash=job.task_hash(),
                input_hash=task.input_hash(),
                restart=restart,
                check_input=source is None,
            ) as ledger:
                if ledger.set_aside is not None:
                    console.print(
                        f"note: the ledger was not usable; kept as {ledger.set_aside}, and the "
                        "job starts afresh",
                        markup=False,
                        soft_wrap=True,
                    )
                refused = await first_write_refused(
                    task,
                    client,
                    ident,
                    base_url=job.spec.api.base_url,
                    known_portal=await ledger.get_meta("portal_id"),
                    concurrency=job.spec.api.concurrency,
                    yes=yes,
                )
                if refused:
                    raise CheckpointError(refused)
                await _bind_portal(job, ledger, ident.portal_id, restart)
                run_id = await ledger.begin_run()
                state.run_dir = out / "runs" / str(run_id)
                try:
                    make_dir(job, state.run_dir)
                    common = (job, client, ledger, state.run_dir, started, console)
                    if task.shape == "stream":
                        ended = await _run_stream(task, *common, handle_signals)
                    else:
                        retry = retry_failed or source is not None
                        ended = await _run_items(task, *common, handle_signals, retry, yes)
                except (SynapBulkError, OSError) as exc:
                    ended = _aborted(job, client, started, as_error(exc))
                ended.summary = _with_run(ended.summary, state, run_id)
                await ledger.end_run(run_id, ended.summary.status, ended.summary.to_builtins())
    except (SynapBulkError, OSError) as exc:
        ended = _aborted(job, state.client, started, as_error(exc))
        if state.who is not None:
            ended.summary = _with_run(ended.summary, state, 0)
    _publish(ended, state.run_dir, out, input_files(job, source), console, job_secrets(job))
    console.print(ended.summary)
    for line in ended.lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return ended.code


class _RunState:
    """What the run has learnt so far, for a summary written however it ends."""

    def __init__(self) -> None:
        self.client: SynapClient | None = None
        self.who: tuple[Identity, str] | None = None
        self.run_dir: Path | None = None


def _with_run(summary: Summary, state: _RunState, run_id: int) -> Summary:
    extra: dict[str, Any] = {"run_id": run_id, "run_dir": str(state.run_dir or "")}
    if state.who is not None:
        ident, token_from = state.who
        extra.update(acting_as=ident.describe(), portal_id=ident.portal_id, token_from=token_from)
    return msgspec.structs.replace(summary, **extra)


def as_error(exc: SynapBulkError | OSError) -> SynapBulkError:
    """An OSError (disk full, folder not writable) as the one-line error it deserves."""
    if isinstance(exc, SynapBulkError):
        return exc
    where = f"{exc.filename}: " if exc.filename else ""
    return SynapBulkError(f"{where}{exc.strerror or exc}")


def make_dir(job: JobFile, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        at = "run.out_dir" if job.spec.run.out_dir else "name"
        raise job.error(
            at, f"cannot create the output folder {path}: {exc.strerror or exc}"
        ) from None


def forgets_between_runs(job: JobFile) -> bool:
    """Whether the job's server forgets between runs: the embedded sandbox without a state."""
    return _embedded(job) and not (job.spec.sandbox or {}).get("state")


async def _check_restart(job: JobFile, task: ItemTask | StreamTask, force: bool) -> None:
    """``--restart`` of an unsafe job that has done items would send them again: needs --force."""
    path = ledger_path(job)
    if force or task.shape != "items" or task.safety is not Safety.UNSAFE or not path.exists():
        return
    async with await Ledger.open_readonly(path) as ledger:
        done = (await ledger.counts()).get("done", 0)
    if done:
        raise CheckpointError(
            f"{path}: --restart forgets {done:,} done items of an unsafe task, and the run "
            "would send them again (their requests cannot be looked up); add --force if that "
            "is what you want"
        )


async def _bind_portal(job: JobFile, ledger: Ledger, portal_id: str, restart: bool) -> None:
    """A ledger belongs to the portal its job was started on."""
    known = await ledger.get_meta("portal_id")
    if known and known != portal_id and not restart:
        raise CheckpointError(
            f"{ledger.path}: this ledger belongs to portal {known}, but the token acts on "
            f"portal {portal_id}; check api.base_url and the token, or run with --restart to "
            "start the job afresh on this portal"
        )
    if known != portal_id:
        await ledger.set_meta("portal_id", portal_id)


async def _supersede(task: ItemTask, ledger: Ledger) -> None:
    """Rows fed back fixed replace the records of their original lines (see Ledger.supersede)."""
    fixed: list[tuple[int, str]] = []
    async for it in task.items():
        if it.row.get(ORIGIN_COLUMN, "").strip() == str(it.line):
            fixed.append((it.line, it.key))
    if fixed:
        await ledger.supersede(fixed)


#: The result files a run writes into its folder; the latest are copied to the out_dir.
_RESULT_FILES = ("summary.json", "failures.csv", "success.csv", "report.html")


def _publish(
    ended: _Ended,
    run_dir: Path | None,
    out: Path,
    inputs: list[Path],
    console: Console,
    secrets: Sequence[str] = (),
) -> None:
    """Write the summary and copy the run's result files to the out_dir (the latest run's
    files are where README says), never over an input of the job."""
    targets = [run_dir] if run_dir is not None else []
    targets.append(out)
    for folder in targets:
        with contextlib.suppress(OSError):
            ended.summary.write(folder / "summary.json")
    if run_dir is None:
        return
    if publish_report(run_dir, console, secrets=secrets):  # from the files above: copied below
        ended.lines.insert(0, f"Report: {out / 'report.html'} (open it in a browser)")
    for name in _RESULT_FILES[1:]:
        latest, made = out / name, run_dir / name
        if any(_same_file(latest, i) for i in inputs):
            ended.lines.append(f"Kept {latest}: it is this run's input; this run's copy is {made}")
            continue
        try:
            if made.exists():
                shutil.copyfile(made, latest)
            else:
                latest.unlink(missing_ok=True)  # no failures this run: no stale failures file
        except OSError as exc:
            console.print(f"warning: cannot update {latest}: {exc.strerror}", markup=False)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _aborted(
    job: JobFile, client: SynapClient | None, started: float, exc: SynapBulkError
) -> _Ended:
    summary = Summary.build(
        job_name=job.spec.name,
        kind=job.spec.task.kind,
        status="aborted",
        reason=str(exc),
        elapsed_s=time.monotonic() - started,
        client=client.statistics() if client is not None else None,
    )
    return _Ended(summary, EXIT_INVALID, [f"error: {exc}"])


def invoked_as() -> str:
    """The command as the user typed it, for the commands we print: ``synap-bulk`` when that
    is what ran (and is on PATH), else ``<python> -m synap_bulk`` with the interpreter that
    runs now (``python`` when that name finds it), so a printed command works outside an
    activated venv too."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "synap-bulk":
        found = shutil.which("synap-bulk")
        return "synap-bulk" if found and Path(found).resolve() == argv0.resolve() else str(argv0)
    python = sys.executable or "python"
    found = shutil.which("python")
    if found and Path(found).resolve() == Path(python).resolve():
        python = "python"
    return f"{python} -m synap_bulk"


def _run_cmd(job: JobFile) -> str:
    return f"{invoked_as()} run {job.path}"


def _stopped_lines(job: JobFile) -> list[str]:
    resume_cmd = _run_cmd(job)
    if forgets_between_runs(job):
        return [
            f"Run again with: {resume_cmd} (it starts afresh: the embedded sandbox keeps "
            "its data only for one run unless it has a state file)"
        ]
    return [f"Resume with: {resume_cmd}"]


async def _run_items(
    task: ItemTask,
    job: JobFile,
    client: SynapClient,
    ledger: Ledger,
    out: Path,
    started: float,
    console: Console,
    handle_signals: bool,
    retry_failed: bool,
    yes: bool = False,
) -> _Ended:
    run_cfg = job.spec.run

    async def guard() -> str:
        return await check_guard(task, client, job.spec.guard, yes=yes, command=_run_cmd(job))

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
        before_items=guard,
    )

    def snapshot() -> Snapshot:
        e = engine.statistics()
        return progress_snapshot(
            client.statistics(),
            started,
            total=task.total or e.total_seen or None,
            done=e.done,
            # Still to fix: this run's failures and those of earlier runs it did not retry,
            # as the summary's "to fix" counts them.
            failed=e.failed + e.invalid + e.in_doubt + e.skipped_failed,
            skipped=e.skipped_done,
            item_retries=e.retried,
        )

    progress = Progress(snapshot, console=console)
    timeline = Timeline(snapshot)
    stopper = _Stopper(lambda: engine.stop(graceful=True), lambda: engine.stop(graceful=False))
    background: list[Callable[[], Coroutine[Any, Any, None]]] = [progress.run, timeline.run]
    if handle_signals:
        background.append(lambda: _watch_signals(stopper, console))
    try:
        result = await _alongside(engine.run, *background)
    finally:
        progress.final()
        timeline.save(out, client.latency_buckets(), console)
    await ledger.flush()
    if retry_failed:
        # After the run, when the task has read the server (an input row's validity can depend
        # on it): rows fed back fixed replace the records of their original lines.
        await _supersede(task, ledger)
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
    run_dir: Path,
    started: float,
) -> Summary:
    """The run's failures file (every row to fix now), success file (what this run did) and
    summary (this run, and the whole job)."""
    columns = list(task.input_columns)
    style = task.csv_style
    failures_path = run_dir / "failures.csv"
    success_path = run_dir / "success.csv"
    run_id = ledger.run_id
    failed = await ledger.failed_items()
    if failed:
        with FailuresWriter(failures_path, columns, delimiter=style.delimiter, bom=style.bom) as fw:
            for rec in failed:
                fw.write(rec.line, rec.row, rec.error)
    with SuccessWriter(success_path, columns, delimiter=style.delimiter, bom=style.bom) as sw:
        if isinstance(task, RowsByLine):
            # Items are the input's records: join the done records with the input by line.
            await ledger.join_done_in_run(run_id, task.source_rows(), sw.write)
        else:
            await _success_from_items(task, ledger, run_id, sw)

    e = engine.statistics()
    job_total = await ledger.counts()
    total = task.total
    if total is not None and total > sum(job_total.values()):
        job_total["not_started"] = total - sum(job_total.values())
    job_total.update(await ledger.action_counts())
    this_run = await ledger.counts(run=run_id)
    this_run.update(await ledger.action_counts(run=run_id))
    this_run["skipped"] = e.skipped_done
    summary = Summary.build(
        job_name=job.spec.name,
        kind=task.kind,
        status=result.status,
        reason=result.reason,
        counts=job_total,
        skipped=e.skipped_done,
        elapsed_s=time.monotonic() - started,
        client=client.statistics(),
        item_retries=e.retried,
        reconciled=e.reconciled,
        task=task.summary(),
        failures_file=str(failures_path) if failed else "",
        success_file=str(success_path),
    )
    return msgspec.structs.replace(
        summary, this_run=_counted(this_run), job_total=_counted(job_total)
    )


async def _success_from_items(
    task: ItemTask, ledger: Ledger, run_id: int, sw: SuccessWriter
) -> None:
    """The success file in input order from the task's items, a batch at a time (memory stays
    flat however many rows): for tasks whose items are not simply the input's records."""
    batch: list[Item | InvalidRow] = []

    async def write(batch: list[Item | InvalidRow]) -> None:
        done = await ledger.done_in_run(run_id, [item.key for item in batch])
        for item in batch:
            if item.key in done:
                sw.write(item.line, item.row, *done[item.key])
        batch.clear()

    async for item in task.items():
        batch.append(item)
        if len(batch) >= _SUCCESS_BATCH:
            await write(batch)
    await write(batch)


#: Items whose ledger records the success file reads at once.
_SUCCESS_BATCH = 500


def _counted(counts: dict[str, int]) -> dict[str, int]:
    """Every status count (zeros included), then the actions."""
    base = dict.fromkeys(("done", "failed", "invalid", "in_doubt", "skipped"), 0)
    return base | counts


async def _run_stream(
    task: StreamTask,
    job: JobFile,
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
    timeline = Timeline(snapshot, shape=task.shape)
    stopper = _Stopper(stop.set, scope.cancel)

    async def work() -> StreamResult | None:
        with scope:
            return await task.run(client, ledger, stop=stop, progress=on_progress, run=run)
        return None  # cancelled by a second Ctrl-C: the page in progress is redone on resume

    background: list[Callable[[], Coroutine[Any, Any, None]]] = [progress.run, timeline.run]
    if handle_signals:
        background.append(lambda: _watch_signals(stopper, console))
    try:
        result = await _alongside(work, *background)
    finally:
        progress.final()
        timeline.save(out, client.latency_buckets(), console)
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
