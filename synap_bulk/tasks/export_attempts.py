"""``kind: export-attempts``: every attempt of some exams, streamed to NDJSON, CSV or Parquet.

An export is a stream, not a set of items: :class:`ExportAttemptsTask` is a stream task, which
the runner drives instead of the engine. The file is written page by page; after each page the
sink is committed (flush + fsync) and the ledger records, durably, the page cursor and the
file's committed length. A resumed export cuts the file back to that length and continues from
the next page: every attempt of the server appears exactly once, and memory stays flat (a few
pages at most) whatever the size.

Two modes:

- ``pages`` (default): ``GET attempts`` filtered by exam, status and ``updatedSince``, sorted by
  id for stable paging; pages fetched in parallel when the total is known, written in order.
- ``server``: the API's own export (``POST export-enriched-attempts`` for each exam, then the
  BackgroundJob polled until it completes, then its NDJSON file downloaded and converted to the
  chosen format, with the status and ``since`` filters applied while streaming). A resume re-polls
  the same job and skips the lines already committed.

``since: last-run`` exports only the attempts updated since the start of the previous export
that completed. The ledger records which export *generation* is running: running the job again
after it completed starts a new generation (a new file), whereas a stopped or killed one resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
from msgspec import Struct

from ..clock import Clock, SystemClock
from ..errors import CheckpointError, Forbidden, NotFound, SynapBulkError
from ..items import RunContext, StreamProgress, StreamResult
from ..jsonapi import UNSET, AnyResource, Document, NewResource, Relationship, ResourceIdentifier
from ..resources import (
    TYPE_BACKGROUND_JOB,
    TYPE_EXAM,
    TYPE_EXPORT_ENRICHED_ATTEMPT,
    BackgroundJob,
)
from ..sinks import DEFAULT_COLUMNS, Sink, check_columns, make_sink
from ..templates import spec_error
from .base import CursorStore

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..profile import ApiProfile
    from ..spec import ExportAttemptsSpec, JobFile

__all__ = [
    "ExportAttemptsTask",
    "ExportProgress",
    "ExportResult",
    "ExportSettings",
    "run_export",
]

#: The ledger cursor naming the export generation; each stream has ``export:<exam>``.
META_CURSOR = "export"
ALL_EXAMS = "*"
#: Lines of a server export file written per commit.
DOWNLOAD_CHUNK = 1000

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
    """The export spec resolved against the job file (paths absolute, defaults applied)."""

    exams: tuple[str, ...]
    statuses: tuple[str, ...]
    format: str
    output: Path
    columns: tuple[str, ...] | None
    since: str | None
    mode: str
    page_size: int | None
    parallel: int


class _Meta(Struct, kw_only=True, omit_defaults=True):
    gen: int = 0
    state: Literal["running", "complete"] = "running"
    since: str | None = None
    started_at: str = ""
    #: When the last *complete* generation started: the next ``since: last-run``.
    last_complete_started_at: str | None = None


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


def settings_from_spec(spec: ExportAttemptsSpec, job: JobFile | None) -> ExportSettings:
    """Resolve and check the export spec; SpecError names the job-file line of a bad value."""
    fmt = spec.format
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
    )


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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
) -> ExportResult:
    """Export (or resume exporting) the attempts ``settings`` describe into its output file.

    The export stops cleanly (status ``stopped``, resumable) at the first page boundary after
    ``stop`` is set, or after ``max_pages`` pages in this call: the state is then exactly the one
    a kill after that page leaves. Cancelling the call is safe too; only the page in progress is
    redone on resume.
    """
    settings = spec if isinstance(spec, ExportSettings) else settings_from_spec(spec, job)
    exporter = _Exporter(settings, client, ledger, progress_cb, clock or SystemClock())
    exporter.stop_event = stop
    return await exporter.run(poll_interval=poll_interval, max_pages=max_pages)


class _Stop(Exception):
    """Internal: ``max_pages`` reached."""


class _Exporter:
    def __init__(
        self,
        settings: ExportSettings,
        client: SynapClient,
        ledger: CursorStore,
        progress_cb: Callable[[ExportProgress], None] | None,
        clock: Clock,
    ) -> None:
        self.s = settings
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

    # -- state ------------------------------------------------------------------------------

    def _stream_names(self) -> list[str]:
        return list(self.s.exams) or [ALL_EXAMS]

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
        meta = await self._meta()
        resumed = meta is not None and meta.state == "running"
        if meta is None or meta.state == "complete":
            meta = await self._new_generation(meta)
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
        else:
            self.sink.open(self.s.output, columns, resume_offset)
        self.offset = resume_offset or 0
        status: Literal["completed", "stopped"] = "completed"
        try:
            for name in names:
                st = streams[name]
                if st is None:
                    st = _Stream(gen=gen, offset=self.offset, start_offset=self.offset)
                    await self._save(name, st)
                if st.done:
                    continue
                if self.s.mode == "server":
                    await self._server_stream(name, st, meta.since)
                else:
                    await self._page_stream(name, st, meta.since)
            if names:
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
            output=str(self.s.output),
            format=self.s.format,
            mode=self.s.mode,
            rows=self.rows,
            pages=self.pages,
            bytes=self.offset,
            exams=list(self.s.exams),
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
        staging = self.s.output.with_name(self.s.output.name + ".partial")
        return self.s.output.exists() and not staging.exists()

    async def _new_generation(self, previous: _Meta | None) -> _Meta:
        since: str | None = None
        if self.s.since == "last-run":
            if previous is not None and previous.last_complete_started_at:
                since = previous.last_complete_started_at
            else:
                since = await self.ledger.last_completed_run_started_at()
        elif self.s.since is not None:
            since = self.s.since
        meta = _Meta(
            gen=(previous.gen + 1) if previous is not None else 1,
            state="running",
            since=since,
            started_at=_now_rfc3339(),
            last_complete_started_at=previous.last_complete_started_at if previous else None,
        )
        await self.ledger.set_cursor(META_CURSOR, _dump(meta))
        return meta

    async def _commit(self, name: str, st: _Stream, rows: int) -> None:
        """After a page: make the file durable, then record where the next page starts."""
        self.offset = self.sink.commit()
        st.offset = self.offset
        st.rows += rows
        st.pages += 1
        self.rows += rows
        self.pages += 1
        await self._save(name, st)
        self.pages_this_call += 1
        if self.max_pages is not None and self.pages_this_call >= self.max_pages:
            raise _Stop
        if self.stop_event is not None and self.stop_event.is_set():
            raise _Stop

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
        if not st.done:  # an empty listing
            st.done = True
            await self._save(name, st)

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
        await self._save(name, st)

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
        resp = await self.client.request(
            "POST", p.exports_path, body={"data": body}, idempotent=True
        )
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
                    await self._commit(name, st, len(batch))
                    self._report("downloading", name)
                    batch = []
        if batch:
            self.sink.write_page(batch)
            await self._commit(name, st, len(batch))
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
            self.settings, None, client, cursors, progress_cb=on_progress, stop=stop
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
        """How many attempts each exam would give, and whether the run would resume or start
        afresh. Reads one attempt per exam; writes nothing anywhere."""
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
        counts: dict[str, int | None] = {}
        for name in list(settings.exams) or [ALL_EXAMS]:
            params = _attempt_params(profile, settings, name, since)
            params[profile.page_size_param] = "1"
            page = await client.get_page(profile.attempts_path, params, AnyResource)
            total = page.meta.get("total")
            counts[name] = total if isinstance(total, int) else None
        known = [n for n in counts.values() if n is not None]
        lines = []
        for name, n in counts.items():
            label = "all exams" if name == ALL_EXAMS else f"exam {name}"
            lines.append(f"  {label}: {n if n is not None else 'unknown number of'} attempts")
        lines.append(
            f"Plan: export {sum(known)} attempts -> {settings.output} ({settings.format}, "
            f"mode {settings.mode}"
            + (f", updated since {since}" if since else "")
            + "); "
            + ("resumes the export in progress" if resumes else "a new export (new file)")
        )
        return lines
