"""``kind: export-attempts``: every attempt of some exams, streamed to NDJSON, CSV or Parquet.

An export is a stream, not a set of items: :class:`ExportAttemptsTask` is a stream task, which
the runner drives instead of the engine. The file is written page by page, through the file's
small buffer to the OS (memory stays flat: a few pages at most, whatever the size). Durability
goes by time, not by page: at most every ``commit_interval_ms`` or ``commit_pages`` pages,
whichever comes first, the sink is committed (flush + fsync) and the ledger records, durably
and in the same step, the next page's cursor and the file's committed length. The export's
last page and a stop commit at once; an exam's last page is recorded with the next commit. A
kill loses at most that window: a resumed export cuts the file back to the committed length
(the pages written since, in the OS but covered by no cursor, go) and continues from the
committed cursor, so every attempt of the server appears exactly once.

Two modes:

- ``pages`` (default): ``GET attempts`` filtered by exam, status and ``updatedSince``, sorted by
  id for stable paging; pages fetched in parallel when the total is known, written in order.
- ``server``: the API's own export (``POST export-enriched-attempts`` for each exam, then the
  BackgroundJob polled until it completes, then its NDJSON file downloaded and converted to the
  chosen format, with the status and ``since`` filters applied while streaming). A resume re-polls
  the same job and skips the lines already committed.

The ledger records which export *generation* is running: running the job again after it
completed starts a new generation, whereas a stopped or killed one resumes. A generation fixes,
when it starts, everything a resume must keep: the file it writes, the exam ids (names resolved)
and the ``since`` baseline. Its file is never one that exists already:

- ``output`` may hold ``{run}`` (the ledger's run number) and ``{date}`` (the run's start date,
  UTC, ``YYYY-MM-DD``); any other placeholder is a SpecError at ``task.output``.
- Without a placeholder, generation *g* writes ``attempts.csv`` for g = 1 and ``attempts.<g>.csv``
  after; with one, the formatted name. If that name is taken (a file of an earlier generation, or
  of an earlier ledger: ``--restart`` and the embedded sandbox start at generation 1 again), the
  next free ``.<k>`` name is used. A resume continues the file named in the ledger, whatever
  ``{date}`` says by then.

``since: last-run`` exports only the attempts updated since the start of the last generation
that completed (however many stops and resumes it took); with none recorded, everything.

Exams are given by id or exact name (as assign-markers takes them); an unknown name is a
SpecError at its ``task.exams[i]`` line, raised before anything is written. So is a filter value
the server refuses (a 400 naming ``status`` or ``updatedSince``): every new generation first
reads one attempt with its filters.
"""

from __future__ import annotations

import asyncio
import os
import string
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
from msgspec import Struct

from ..clock import Clock, SystemClock
from ..errors import ApiError, BadRequest, CheckpointError, Forbidden, NotFound, SynapBulkError
from ..items import RunContext, StreamProgress, StreamResult
from ..jsonapi import UNSET, AnyResource, Document, NewResource, Relationship, ResourceIdentifier
from ..resources import (
    TYPE_BACKGROUND_JOB,
    TYPE_EXAM,
    TYPE_EXPORT_ENRICHED_ATTEMPT,
    BackgroundJob,
    Exam,
)
from ..sinks import DEFAULT_COLUMNS, Sink, check_columns, make_sink
from ..templates import spec_error
from .base import CursorStore

if TYPE_CHECKING:
    from ..client import PageCursor, SynapClient
    from ..jsonapi import ListDocument
    from ..profile import ApiProfile
    from ..spec import ExportAttemptsSpec, JobFile

__all__ = [
    "ExportAttemptsTask",
    "ExportProgress",
    "ExportResult",
    "ExportSettings",
    "output_for",
    "resolve_exams",
    "run_export",
]

#: The ledger cursor naming the export generation; each stream has ``export:<exam>``.
META_CURSOR = "export"
ALL_EXAMS = "*"
#: Lines of a server export file written per commit.
DOWNLOAD_CHUNK = 1000
#: The placeholders ``output`` may hold.
PLACEHOLDERS = ("run", "date")
#: Durability window: commit (fsync + ledger cursor) at most this often ...
COMMIT_INTERVAL_MS = 500
#: ... or after this many pages, whichever comes first. 1 = after every page.
COMMIT_PAGES = 50

Phase = Literal["paging", "waiting", "downloading", "finishing", "done"]


class ExportProgress(Struct, kw_only=True):
    """What the export has done so far (for the progress bar)."""

    phase: Phase
    exam: str = ""
    rows: int = 0
    pages: int = 0
    total: int | None = None
    bytes: int = 0
    job_progress: float | None = None


class ExportResult(Struct, kw_only=True):
    """How an export ended; ``rows`` counts every row of the file, resumed runs included."""

    status: Literal["completed", "stopped"]
    output: str
    format: str
    mode: str
    rows: int
    pages: int
    bytes: int
    exams: list[str]
    since: str | None
    resumed: bool
    generation: int
    elapsed_s: float


class ExportSettings(Struct, frozen=True, kw_only=True):
    """The export spec resolved against the job file (paths absolute, defaults applied).

    ``exams`` are as written (ids or exact names). ``output`` is the file name as written, made
    absolute; its last ``template_parts`` parts are a template to format (0: a plain name), and
    ``templated`` says whether they use ``{run}`` or ``{date}``.
    """

    exams: tuple[str, ...]
    statuses: tuple[str, ...]
    format: str
    output: Path
    columns: tuple[str, ...] | None
    since: str | None
    mode: str
    page_size: int | None
    parallel: int
    template_parts: int = 0
    templated: bool = False
    #: The durability window: a kill loses at most this much (re-fetched on resume).
    commit_interval_ms: int = COMMIT_INTERVAL_MS
    commit_pages: int = COMMIT_PAGES


class _Meta(Struct, kw_only=True, omit_defaults=True):
    gen: int = 0
    state: Literal["running", "complete"] = "running"
    since: str | None = None
    #: When the run that began this generation started (resumes do not move it).
    started_at: str = ""
    #: When the last *complete* generation started: the next ``since: last-run``.
    last_complete_started_at: str | None = None
    #: The file this generation writes, chosen when it began ("" in older ledgers).
    output: str = ""
    #: The exam ids it exports, names resolved when it began (None in older ledgers).
    exams: list[str] | None = None
    #: The run that began it.
    run: int = 0


class _Stream(Struct, kw_only=True, omit_defaults=True):
    gen: int
    #: Where the next page starts (client page cursor, as builtins), None = from the beginning.
    cursor: Any = None
    #: The file's committed length after this stream's last committed page.
    offset: int = 0
    #: Where this stream began in the file (a server export restarts from here if its job is lost).
    start_offset: int = 0
    rows: int = 0
    pages: int = 0
    done: bool = False
    job: str | None = None  # server mode: the BackgroundJob id


def _output_template(written: str) -> tuple[int, bool]:
    """(template parts, uses a placeholder) of an ``output`` as written; ValueError if bad."""
    if "{" not in written and "}" not in written:
        return 0, False
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(written) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}} (known: {{run}}, the run's number, and "
                "{date}, the run's start date; write {{ and }} for literal braces)"
            )
    try:
        written.format(run=1, date="2000-01-01")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad placeholder: {exc}") from None
    return len(Path(os.path.expanduser(written)).parts), bool(fields)


def settings_from_spec(spec: ExportAttemptsSpec, job: JobFile | None) -> ExportSettings:
    """Resolve and check the export spec; SpecError names the job-file line of a bad value."""
    fmt = spec.format
    try:
        template_parts, templated = _output_template(spec.output)
    except ValueError as exc:
        raise spec_error(job, "task.output", str(exc)) from None
    output = Path(spec.output)
    if job is not None:
        output = job.resolve(spec.output)
    columns = tuple(spec.columns) if spec.columns else None
    if columns is not None:
        try:
            check_columns(columns)
        except ValueError as exc:
            raise spec_error(job, "task.columns", str(exc)) from None
    since = spec.since
    if since not in (None, "last-run"):
        try:
            datetime.fromisoformat(str(since).replace("Z", "+00:00"))
        except ValueError:
            raise spec_error(
                job, "task.since", f"expected last-run or an RFC 3339 time, got {since!r}"
            ) from None
    return ExportSettings(
        exams=tuple(str(e) for e in spec.exams),
        statuses=tuple(spec.statuses),
        format=fmt,
        output=output,
        columns=columns,
        since=since,
        mode=spec.mode,
        page_size=spec.page_size,
        parallel=max(1, spec.parallel),
        template_parts=template_parts,
        templated=templated,
        commit_interval_ms=spec.commit_interval_ms,
        commit_pages=spec.commit_pages,
    )


def _rfc3339(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _utc_date(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d")


# --- the output file's name ---------------------------------------------------------------


class _Shown:
    """Formats as fixed text whatever the format spec (``plan``'s ``{run}`` before the run)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __format__(self, spec: str) -> str:
        return self.text


def _formatted(s: ExportSettings, run: object, date: str) -> Path:
    """``output`` with its placeholders filled (only the written parts are formatted)."""
    k = s.template_parts
    if not k:
        return s.output
    parts = s.output.parts
    tail = [part.format(run=run, date=date) for part in parts[-k:]]
    return Path(*parts[:-k], *tail)


def _numbered(path: Path, k: int) -> Path:
    """``attempts.csv`` for k = 1, else ``attempts.<k>.csv``."""
    return path if k <= 1 else path.with_name(f"{path.stem}.{k}{path.suffix}")


def _taken(path: Path, fmt: str) -> bool:
    """Whether a file of that name exists (for Parquet: or its staging files)."""
    if path.exists():
        return True
    if fmt == "parquet":
        return any(path.with_name(path.name + ext).exists() for ext in (".partial", ".tmp"))
    return False


def output_for(s: ExportSettings, generation: int, run: object, date: str) -> Path:
    """The file a new export generation writes: never one that exists already.

    A plain name gets the generation number from generation 2 on (``attempts.2.csv``); a
    templated one is formatted. A name that is taken moves on to the next free ``.<k>`` name.
    """
    base = _formatted(s, run, date)
    k = 1 if s.templated else generation
    while _taken(_numbered(base, k), s.format):
        k += 1
    return _numbered(base, k)


# --- exams by id or name, and the filters the server refuses ------------------------------


async def resolve_exams(
    client: SynapClient, profile: ApiProfile, refs: Sequence[str], job: JobFile | None
) -> tuple[list[str], dict[str, int]]:
    """The exam ids of ``task.exams`` (each an id or an exact, case-sensitive name), in order
    and without repeats, and the index in ``refs`` of each id; an unknown or ambiguous name is
    a SpecError at its ``task.exams[i]`` line.

    Like assign-markers: a value without spaces is first read as an id (``GET exams/<id>``);
    otherwise, or when there is none, the exams listing (read once) is searched by name.
    """
    ids: list[str] = []
    index: dict[str, int] = {}
    listing: list[Exam] | None = None

    async def by_id(ref: str) -> str | None:
        if not ref or any(c.isspace() for c in ref):
            return None
        try:
            return (await client.get(profile.exams_path, ref, Exam)).id
        except (NotFound, BadRequest):
            return None

    # The id reads at once (an export of hundreds of exams waited on each in turn); the first
    # other failure, in the order written, is raised as it is.
    got = await asyncio.gather(*(by_id(r.strip()) for r in refs), return_exceptions=True)
    for result in got:
        if isinstance(result, BaseException):
            raise result
    for i, raw in enumerate(refs):
        ref = raw.strip()
        found = got[i]
        assert not isinstance(found, BaseException)
        if found is None:
            if listing is None:
                pages = client.paginate(
                    profile.exams_path, None, Exam, page_size=profile.max_page_size
                )
                listing = [e async for e in pages]
            named = [e for e in listing if e.id == ref] or [
                e for e in listing if (e.attributes.name or "").strip() == ref
            ]
            if not named:
                raise spec_error(job, f"task.exams[{i}]", f"no exam with id or name {ref!r}")
            if len(named) > 1:
                which = ", ".join(e.id for e in named)
                raise spec_error(
                    job,
                    f"task.exams[{i}]",
                    f"{len(named)} exams are named {ref!r} ({which}); give the id",
                )
            found = named[0].id
        if found not in index:
            index[found] = i
            ids.append(found)
    return ids, index


def _index_of_ids(refs: Sequence[str], ids: Sequence[str]) -> dict[str, int]:
    """For a resume (ids from the ledger): the ``task.exams`` index of each exam given by id."""
    index: dict[str, int] = {}
    for i, ref in enumerate(refs):
        if ref.strip() in ids:
            index.setdefault(ref.strip(), i)
    return index


def _refused(
    exc: ApiError, job: JobFile | None, profile: ApiProfile, exam_at: str
) -> SynapBulkError:
    """A 400 about a filter as a SpecError at the job-file line of the value (else ``exc``)."""
    for err in exc.errors:
        src = err.source
        where = (src.parameter or src.pointer or "") if src is not None else ""
        at = ""
        if where == profile.filter_status or where.endswith("/status"):
            at = "task.statuses"
        elif where == profile.filter_updated_since or where.endswith("/updatedSince"):
            at = "task.since"
        elif where == profile.filter_exam or where.endswith("/examV2"):
            at = exam_at
        if at:
            why = err.detail or err.title or str(exc)
            return spec_error(
                job, at, f"the server refused this filter: {why} ({exc.method} {exc.path})"
            )
    return exc


def _load(raw: Any, tp: type[Any]) -> Any:
    if raw is None or raw == "":
        return None
    try:
        if isinstance(raw, (bytes, str)):
            return msgspec.json.decode(raw, type=tp)
        return msgspec.convert(raw, tp)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CheckpointError(f"unreadable export cursor in the ledger: {exc}") from None


def _dump(value: Struct) -> str:
    return msgspec.json.encode(value).decode()


async def run_export(
    spec: ExportAttemptsSpec | ExportSettings,
    job: JobFile | None,
    client: SynapClient,
    ledger: CursorStore,
    *,
    progress_cb: Callable[[ExportProgress], None] | None = None,
    clock: Clock | None = None,
    poll_interval: float = 1.0,
    max_pages: int | None = None,
    stop: anyio.Event | None = None,
    run: RunContext | None = None,
) -> ExportResult:
    """Export (or resume exporting) the attempts ``settings`` describe into its output file.

    The export stops cleanly (status ``stopped``, resumable) at the first page boundary after
    ``stop`` is set, or after ``max_pages`` pages in this call, committing that page at once.
    Cancelling the call or a kill is safe too; the pages written since the last commit (at most
    the durability window, ``commit_interval_ms`` / ``commit_pages``, as read on ``clock``) are
    cut off and fetched again on resume.

    ``run`` is the ledger's run (its number for ``{run}``, its start for ``{date}`` and for the
    generation's ``since: last-run`` baseline); without one, the generation number and now.
    ``job`` lets errors name their job-file line.
    """
    settings = spec if isinstance(spec, ExportSettings) else settings_from_spec(spec, job)
    exporter = _Exporter(settings, job, client, ledger, progress_cb, clock or SystemClock(), run)
    exporter.stop_event = stop
    return await exporter.run(poll_interval=poll_interval, max_pages=max_pages)


class _Stop(Exception):
    """Internal: ``max_pages`` reached."""


class _Exporter:
    def __init__(
        self,
        settings: ExportSettings,
        job: JobFile | None,
        client: SynapClient,
        ledger: CursorStore,
        progress_cb: Callable[[ExportProgress], None] | None,
        clock: Clock,
        run: RunContext | None,
    ) -> None:
        self.s = settings
        self.job = job
        self.run_context = run
        #: The generation's file and exam ids (from its record in the ledger).
        self.output = settings.output
        self.exam_ids: list[str] = list(settings.exams)
        self.exam_index: dict[str, int] = {}
        self.client = client
        self.ledger = ledger
        self.progress_cb = progress_cb
        self.clock = clock
        self.profile = client.profile
        self.sink: Sink = make_sink(settings.format)
        self.rows = 0
        self.pages = 0
        self.pages_this_call = 0
        self.offset = 0
        self.total: int | None = None
        self.max_pages: int | None = None
        self.stop_event: anyio.Event | None = None
        #: Pages written since the last durable commit, and when that commit was (clock time).
        self.uncommitted = 0
        #: The streams changed since the last durable commit, in export order.
        self.dirty: dict[str, _Stream] = {}
        self.committed_at = clock.now()
        #: Durable commits made by this call (for tests and benchmarks).
        self.commits = 0

    # -- state ------------------------------------------------------------------------------

    def _stream_names(self) -> list[str]:
        return list(self.exam_ids) or [ALL_EXAMS]

    def _exam_at(self, name: str) -> str:
        """The job-file path of the exam a stream exports (for errors)."""
        i = self.exam_index.get(name)
        return "task.exams" if i is None else f"task.exams[{i}]"

    async def _meta(self) -> _Meta | None:
        meta: _Meta | None = _load(await self.ledger.get_cursor(META_CURSOR), _Meta)
        return meta

    async def _stream(self, exam: str, gen: int) -> _Stream | None:
        st: _Stream | None = _load(await self.ledger.get_cursor(f"export:{exam}"), _Stream)
        if st is None or st.gen != gen:
            return None
        return st

    async def _save(self, exam: str, st: _Stream) -> None:
        await self.ledger.set_cursor(f"export:{exam}", _dump(st))

    def _report(self, phase: Phase, exam: str = "", job_progress: float | None = None) -> None:
        if self.progress_cb is not None:
            self.progress_cb(
                ExportProgress(
                    phase=phase,
                    exam=exam,
                    rows=self.rows,
                    pages=self.pages,
                    total=self.total,
                    bytes=self.offset,
                    job_progress=job_progress,
                )
            )

    # -- run ------------------------------------------------------------------------------------

    async def run(self, *, poll_interval: float, max_pages: int | None) -> ExportResult:
        started = time.monotonic()
        self.poll_interval = poll_interval
        self.max_pages = max_pages
        previous = meta = await self._meta()
        resumed = meta is not None and meta.state == "running"
        if meta is None or meta.state == "complete":
            meta = await self._new_generation(meta)
        else:
            self.exam_ids = list(meta.exams) if meta.exams is not None else list(self.s.exams)
            self.exam_index = _index_of_ids(self.s.exams, self.exam_ids)
        if meta.output:
            self.output = Path(meta.output)
        gen = meta.gen
        names = self._stream_names()
        streams = {name: await self._stream(name, gen) for name in names}
        resume_offset: int | None = None
        if resumed:
            offsets = [st.offset for st in streams.values() if st is not None]
            resume_offset = max(offsets) if offsets else 0
            self.rows = sum(st.rows for st in streams.values() if st is not None)
            self.pages = sum(st.pages for st in streams.values() if st is not None)
        columns: Sequence[str] | None = self.s.columns
        if columns is None and self.s.format != "ndjson":
            columns = DEFAULT_COLUMNS
        if resumed and self._finished_before(streams):
            # Killed after the final conversion but before the ledger heard of it.
            names = []
        elif resume_offset is None:
            try:
                self.sink.open(self.output, columns, None, exclusive=True)
            except FileExistsError:
                # Someone wrote that name since it was chosen: forget this generation.
                await self.ledger.set_cursor(META_CURSOR, _dump(previous) if previous else "")
                raise CheckpointError(
                    f"{self.output} appeared as the export began; it was left alone. Run "
                    "again: the export picks the next free name"
                ) from None
        else:
            self.sink.open(self.output, columns, resume_offset)
        self.offset = resume_offset or 0
        status: Literal["completed", "stopped"] = "completed"
        try:
            for name in names:
                st = streams[name]
                if st is None:
                    at = self.sink.position()
                    st = _Stream(gen=gen, offset=at, start_offset=at)
                    if self.s.mode == "server":
                        await self._save(name, st)
                    # Pages: recorded with its first commit; until then a resume starts it anew.
                if st.done:
                    continue
                if self.s.mode == "server":
                    await self._server_stream(name, st, meta.since)
                else:
                    await self._page_stream(name, st, meta.since)
            if names:
                if self.dirty:  # the export's last page commits at once
                    await self._durable()
                self._report("finishing")
                self.sink.finish()
        except _Stop:
            status = "stopped"
        finally:
            self.sink.close()
        if status == "completed":
            meta.state = "complete"
            meta.last_complete_started_at = meta.started_at
            await self.ledger.set_cursor(META_CURSOR, _dump(meta))
            self._report("done")
        return ExportResult(
            status=status,
            output=str(self.output),
            format=self.s.format,
            mode=self.s.mode,
            rows=self.rows,
            pages=self.pages,
            bytes=self.offset,
            exams=list(self.exam_ids),
            since=meta.since,
            resumed=resumed,
            generation=gen,
            elapsed_s=time.monotonic() - started,
        )

    def _finished_before(self, streams: dict[str, _Stream | None]) -> bool:
        """Whether a Parquet export was already converted (its staging file is gone)."""
        if self.s.format != "parquet" or not all(
            st is not None and st.done for st in streams.values()
        ):
            return False
        staging = self.output.with_name(self.output.name + ".partial")
        return self.output.exists() and not staging.exists()

    async def _new_generation(self, previous: _Meta | None) -> _Meta:
        """Fix what the generation's resumes must keep, check it with the server, record it.

        Nothing is written (file or ledger) before the exam names are resolved and the server
        accepted the filters, so a job-file error leaves no trace.
        """
        gen = previous.gen + 1 if previous is not None else 1
        ctx = self.run_context
        started = ctx.started_at if ctx is not None else datetime.now(UTC)
        run_number = ctx.run_id if ctx is not None else gen
        last_complete = previous.last_complete_started_at if previous is not None else None
        since: str | None = None
        if self.s.since == "last-run":
            # The start of the last generation that completed, whatever stops and resumes it
            # took (its resume runs' starts would miss what changed before them). None
            # recorded: everything. Not the ledger's last completed *run*: that may have been
            # a resume.
            since = last_complete
        elif self.s.since is not None:
            since = self.s.since
        self.exam_ids, self.exam_index = await resolve_exams(
            self.client, self.profile, self.s.exams, self.job
        )
        await self._probe(since)
        self.output = output_for(self.s, gen, run_number, _utc_date(started))
        meta = _Meta(
            gen=gen,
            state="running",
            since=since,
            started_at=_rfc3339(started),
            last_complete_started_at=last_complete,
            output=str(self.output),
            exams=list(self.exam_ids),
            run=run_number,
        )
        await self.ledger.set_cursor(META_CURSOR, _dump(meta))
        return meta

    async def _probe(self, since: str | None) -> None:
        """Read one attempt with the generation's filters: a refused value fails here."""
        p = self.profile
        name = self._stream_names()[0]
        params = _attempt_params(p, self.s, name, since)
        params[p.page_size_param] = "1"
        try:
            await self.client.get_page(p.attempts_path, params, AnyResource)
        except BadRequest as exc:
            raise _refused(exc, self.job, p, self._exam_at(name)) from None

    async def _commit(self, name: str, st: _Stream, rows: int, *, now: bool = False) -> None:
        """After a page (written, ``st.cursor`` the next one's, ``st.done`` if it was the
        stream's last): count it, and commit if the durability window is full, ``now``, or the
        export stops. A stream that ends records where it ended, for the next commit."""
        st.rows += rows
        st.pages += 1
        self.rows += rows
        self.pages += 1
        self.pages_this_call += 1
        self.uncommitted += 1
        self.dirty[name] = st
        if st.done:
            st.offset = self.sink.position()
        stopping = (self.max_pages is not None and self.pages_this_call >= self.max_pages) or (
            self.stop_event is not None and self.stop_event.is_set()
        )
        if (
            now
            or stopping
            or self.uncommitted >= self.s.commit_pages
            or (self.clock.now() - self.committed_at) * 1000 >= self.s.commit_interval_ms
        ):
            await self._durable()
        if stopping:
            raise _Stop

    async def _durable(self, name: str | None = None, st: _Stream | None = None) -> None:
        """Make the file durable, then record, stream by stream in export order, where each
        one's next page starts and the file's length: until then, the pages written since the
        previous commit are not part of the export (a resume cuts them off).

        The order makes a kill between two records safe: a finished stream records the length
        at its own end, the stream in progress the whole file's, and a resume cuts the file back
        to the greatest recorded length, so it never keeps a page a cursor does not cover."""
        if name is not None and st is not None:
            self.dirty[name] = st
        length = self.sink.commit()
        for n, stream in self.dirty.items():
            if not stream.done:
                stream.offset = length
            await self._save(n, stream)
        self.dirty.clear()
        self.offset = length
        self.uncommitted = 0
        self.committed_at = self.clock.now()
        self.commits += 1

    # -- mode pages -------------------------------------------------------------------------

    async def _page_stream(self, name: str, st: _Stream, since: str | None) -> None:
        p = self.profile
        pages = self.client.pages(
            p.attempts_path,
            _attempt_params(self.profile, self.s, name, since),
            self.sink.row_type,
            start=_cursor_in(st.cursor),
            parallel=self.s.parallel,
        )
        self._report("paging", name)
        try:
            await self._page_loop(name, st, pages)
        except BadRequest as exc:
            raise _refused(exc, self.job, p, self._exam_at(name)) from None
        if not st.done:  # an empty listing: recorded with the next commit
            st.done = True
            st.offset = self.sink.position()
            self.dirty[name] = st

    async def _page_loop(
        self,
        name: str,
        st: _Stream,
        pages: AsyncGenerator[tuple[PageCursor | None, ListDocument[Any]], None],
    ) -> None:
        first = True
        async with aclosing(pages):
            async for cursor, page in pages:
                if first:
                    first = False
                    total = page.meta.get("total")
                    # Rows of this stream so far + what it still holds + what came before.
                    if isinstance(total, int):
                        self.total = self.rows - st.rows + total
                rows: list[Any] = page.data
                self.sink.write_page(rows)
                st.cursor = _cursor_out(cursor)
                # The last page says so in the same durable record, or a resume starts over.
                st.done = cursor is None
                await self._commit(name, st, len(rows))
                self._report("paging", name)

    # -- mode server ------------------------------------------------------------------------

    async def _server_stream(self, name: str, st: _Stream, since: str | None) -> None:
        job_id = st.job
        url: str | None = None
        if job_id is not None:
            try:
                url = await self._wait(name, job_id)
            except (NotFound, Forbidden):
                url = None
        if url is None:
            if st.rows:
                # The old job is gone; its file may not be in the same order: redo the stream.
                raise CheckpointError(
                    f"the server export job {job_id} of exam {name} is gone and its file was "
                    "partly written; run again with --restart"
                )
            job_id = await self._create_job(name, since)
            st.job = job_id
            await self._save(name, st)
            url = await self._wait(name, job_id)
        await self._download(name, st, url, since)
        st.done = True
        await self._durable(name, st)

    async def _create_job(self, exam: str, since: str | None) -> str:
        """POST the export; its filters mirror the page mode's query parameters."""
        p = self.profile
        filters: dict[str, str] = {}
        if self.s.statuses:
            filters["status"] = ",".join(self.s.statuses)
        if since:
            filters["updatedSince"] = since
        rels: dict[str, Relationship] = {}
        if exam != ALL_EXAMS:
            rels["examV2"] = Relationship(data=ResourceIdentifier(type=TYPE_EXAM, id=exam))
        body = NewResource(
            type=TYPE_EXPORT_ENRICHED_ATTEMPT,
            attributes={"filter": filters} if filters else UNSET,
            relationships=rels or UNSET,
        )
        try:
            resp = await self.client.request(
                "POST", p.exports_path, body={"data": body}, idempotent=True
            )
        except BadRequest as exc:
            raise _refused(exc, self.job, p, self._exam_at(exam)) from None
        doc = msgspec.json.decode(resp.body, type=Document[AnyResource])
        res = doc.data
        if res.type == TYPE_BACKGROUND_JOB:
            return res.id
        linked = res.rel_id("backgroundJob")
        if linked:
            return linked
        return res.id

    async def _wait(self, exam: str, job_id: str) -> str:
        p = self.profile
        while True:
            job: BackgroundJob = await self.client.get(
                p.background_jobs_path, job_id, BackgroundJob
            )
            a = job.attributes
            if a.status == "completed":
                if not a.fileUrl:
                    raise SynapBulkError(f"export job {job_id} completed without a fileUrl")
                self._report("waiting", exam, 1.0)
                return a.fileUrl
            if a.status == "failed":
                raise SynapBulkError(f"export job {job_id} of exam {exam} failed: {a.error or '?'}")
            self._report("waiting", exam, a.progress)
            await self.clock.sleep(self.poll_interval)

    async def _download(self, name: str, st: _Stream, url: str, since: str | None) -> None:
        skip = st.rows
        keep = _row_filter(set(self.s.statuses), since)
        decode_row = self.sink.decode_row
        batch: list[Any] = []
        seen = 0  # lines of the file kept by the filter, so that a resume can skip them
        self._report("downloading", name)
        lines = self.client.stream_lines(url)
        async with aclosing(lines):
            async for line in lines:
                if not line.strip() or (keep is not None and not keep(line)):
                    continue
                seen += 1
                if seen <= skip:
                    continue
                batch.append(decode_row(line))
                if len(batch) >= DOWNLOAD_CHUNK:
                    self.sink.write_page(batch)
                    await self._commit(name, st, len(batch), now=True)
                    self._report("downloading", name)
                    batch = []
        if batch:
            self.sink.write_page(batch)
            await self._commit(name, st, len(batch), now=True)
            self._report("downloading", name)


def _attempt_params(
    p: ApiProfile, s: ExportSettings, exam: str, since: str | None
) -> dict[str, str]:
    """Query parameters of the attempt listing: filters, sorted by id for stable paging."""
    params: dict[str, str] = {
        p.sort_param: "id",
        p.page_size_param: str(s.page_size or p.max_page_size),
    }
    if exam != ALL_EXAMS:
        params[p.filter_exam] = exam
    if s.statuses:
        params[p.filter_status] = ",".join(s.statuses)
    if since:
        params[p.filter_updated_since] = since
    return params


class _FilterAttrs(Struct):
    examStatus: str | None = None
    updatedAt: str | None = None


class _FilterRow(Struct):
    attributes: _FilterAttrs | None = None


def _row_filter(statuses: set[str], since: str | None) -> Callable[[bytes], bool] | None:
    """The page mode's server-side filters, applied to the lines of a downloaded export."""
    if not statuses and not since:
        return None
    since_dt = _parse_time(since) if since else None
    decoder = msgspec.json.Decoder(_FilterRow)

    def keep(line: bytes) -> bool:
        attrs = decoder.decode(line).attributes or _FilterAttrs()
        if statuses and attrs.examStatus not in statuses:
            return False
        if since_dt is not None and attrs.updatedAt:
            parsed = _parse_time(attrs.updatedAt)
            if parsed is not None and parsed < since_dt:
                return False
        return True

    return keep


def _parse_time(text: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _cursor_out(cursor: Any) -> Any:
    return msgspec.to_builtins(cursor) if cursor is not None else None


def _cursor_in(raw: Any) -> Any:
    if raw is None:
        return None
    from ..client import PageCursor

    return msgspec.convert(raw, PageCursor)


# --- the stream task --------------------------------------------------------------------


class ExportAttemptsTask:
    """``kind: export-attempts`` as a :class:`~synap_bulk.tasks.base.StreamTask` for the runner."""

    shape: Literal["stream"] = "stream"
    kind = "export-attempts"

    def __init__(self, spec: ExportAttemptsSpec, job: JobFile, profile: ApiProfile) -> None:
        self.settings = settings_from_spec(spec, job)
        #: For errors found while running (an unknown exam, a refused filter) at their line.
        self.job = job
        self.profile = profile

    def input_hash(self) -> str:
        return ""

    async def run(
        self,
        client: SynapClient,
        cursors: CursorStore,
        *,
        stop: anyio.Event,
        progress: Callable[[StreamProgress], None],
        run: RunContext,
    ) -> StreamResult:
        last_phase: list[Phase] = []

        def on_progress(p: ExportProgress) -> None:
            note = ""
            if p.phase in ("waiting", "downloading"):
                what = (
                    "waiting for the server's export job" if p.phase == "waiting" else "downloading"
                )
                note = f"exam {p.exam}: {what}"
            if last_phase and last_phase[0] == p.phase and p.phase in ("waiting", "downloading"):
                note = ""  # said once per phase
            last_phase[:] = [p.phase]
            total, done = p.total, p.rows
            if p.phase == "waiting":  # the server's job: its progress, in percent
                total, done = 100, round((p.job_progress or 0.0) * 100)
            progress(StreamProgress(done=done, total=total, note=note))

        r = await run_export(
            self.settings, self.job, client, cursors, progress_cb=on_progress, stop=stop, run=run
        )
        message = (
            f"Export {r.status}: {r.rows} attempts, {r.bytes} bytes -> {r.output} "
            f"({r.format}, mode {r.mode}"
            + (f", since {r.since}" if r.since else "")
            + (", resumed" if r.resumed else "")
            + ")"
        )
        return StreamResult(
            status=r.status,
            counts={"exported": r.rows},
            message=message,
            # The run's status and time are the summary's own; the rest describes the file.
            details={
                k: v for k, v in msgspec.to_builtins(r).items() if k not in ("status", "elapsed_s")
            },
        )

    async def plan(self, client: SynapClient, cursors: CursorStore | None) -> list[str]:
        """How many attempts each exam would give, into which file, and whether the run would
        resume or start afresh. Reads the exams (names) and one attempt per exam; writes
        nothing anywhere. An unknown exam or a refused filter fails as the run would."""
        settings, profile = self.settings, self.profile
        meta: _Meta | None = None
        if cursors is not None:
            meta = _load(await cursors.get_cursor(META_CURSOR), _Meta)
        resumes = meta is not None and meta.state == "running"
        since = settings.since
        if resumes and meta is not None:
            since = meta.since
        elif since == "last-run":
            since = meta.last_complete_started_at if meta is not None else None
        if resumes and meta is not None and meta.exams is not None:
            ids = list(meta.exams)
            index = _index_of_ids(settings.exams, ids)
        else:
            ids, index = await resolve_exams(client, profile, settings.exams, self.job)
        if resumes and meta is not None and meta.output:
            output = Path(meta.output)
        else:
            gen = meta.gen + 1 if meta is not None else 1
            today = _utc_date(datetime.now(UTC))
            output = output_for(settings, gen, _Shown("{run}"), today)
        counts: dict[str, int | None] = {}
        for name in ids or [ALL_EXAMS]:
            params = _attempt_params(profile, settings, name, since)
            params[profile.page_size_param] = "1"
            try:
                page = await client.get_page(profile.attempts_path, params, AnyResource)
            except BadRequest as exc:
                at = f"task.exams[{index[name]}]" if name in index else "task.exams"
                raise _refused(exc, self.job, profile, at) from None
            total = page.meta.get("total")
            counts[name] = total if isinstance(total, int) else None
        known = [n for n in counts.values() if n is not None]
        written = {e: settings.exams[i].strip() for e, i in index.items()}
        lines = []
        for name, n in counts.items():
            label = "all exams" if name == ALL_EXAMS else f"exam {name}"
            if written.get(name, name) != name:
                label = f"exam {written[name]!r} ({name})"
            lines.append(f"  {label}: {n if n is not None else 'unknown number of'} attempts")
        lines.append(
            f"Plan: export {sum(known)} attempts -> {output} ({settings.format}, "
            f"mode {settings.mode}"
            + (f", updated since {since}" if since else "")
            + "); "
            + ("resumes the export in progress" if resumes else "a new export (new file)")
        )
        return lines
