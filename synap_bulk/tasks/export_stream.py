"""The exporter: one export generation, its streams, commits, page mode, server mode, download.

:class:`_Exporter` runs (or resumes) a generation: it writes the file page by page through the
sink and commits it (fsync + ledger cursors) within the durability window; a stream is an exam
paged through ``GET attempts`` (mode ``pages``) or the server's own export job, polled and
downloaded (mode ``server``). See :mod:`synap_bulk.tasks.export_attempts` for the whole story.

Both export kinds run this exporter. What it lists (the streams, the path and query of a page
listing, the server export's create body, the rows of a page, the errors at their line) is a
handful of hook methods whose defaults are ``export-attempts``'; ``kind: export`` overrides them
(:mod:`.export_collection`), the generations, commits, resume and download are shared.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
from msgspec import Struct

from ..clock import Clock
from ..errors import BadRequest, CheckpointError, Forbidden, NotFound, SynapBulkError
from ..items import RunContext
from ..jsonapi import UNSET, AnyResource, Document, NewResource, Relationship, ResourceIdentifier
from ..resources import TYPE_BACKGROUND_JOB, TYPE_EXAM, TYPE_EXPORT_ENRICHED_ATTEMPT
from ..sinks import DEFAULT_COLUMNS, Sink, make_sink
from .base import CursorStore
from .export_naming import _utc_date, output_for
from .export_query import _attempt_params, _index_of_ids, _refused, resolve_exams
from .export_records import (
    ALL_EXAMS,
    META_CURSOR,
    ExportProgress,
    ExportResult,
    ExportSettings,
    Phase,
    _dump,
    _load,
    _Meta,
    _Stream,
)

if TYPE_CHECKING:
    from ..client import PageCursor, SynapClient
    from ..jsonapi import ListDocument
    from ..spec import JobFile

#: Lines of a server export file written per commit.
DOWNLOAD_CHUNK = 1000


def _rfc3339(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


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
            self._restore(meta)
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
        await self._resolve()
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

    # -- what is exported: the hooks a kind's exporter overrides (these are export-attempts') --

    def _restore(self, meta: _Meta) -> None:
        """A resume: the streams its generation fixed when it began."""
        self.exam_ids = list(meta.exams) if meta.exams is not None else list(self.s.exams)
        self.exam_index = _index_of_ids(self.s.exams, self.exam_ids)

    async def _resolve(self) -> None:
        """A new generation: fix its streams (exam names resolved to ids)."""
        self.exam_ids, self.exam_index = await resolve_exams(
            self.client, self.profile, self.s.exams, self.job
        )

    def _label(self, name: str) -> str:
        """Stream ``name`` in a message."""
        return f"exam {name}"

    def _list_path(self) -> str:
        """The collection mode ``pages`` lists."""
        return self.profile.attempts_path

    def _params(self, name: str, since: str | None) -> dict[str, str]:
        """The query of stream ``name``'s listing (its filters, a stable sort, the page size)."""
        return _attempt_params(self.profile, self.s, name, since)

    def _refused(self, exc: BadRequest, name: str) -> SynapBulkError:
        """A 400 of stream ``name`` as a SpecError at the job-file line it is about."""
        return _refused(exc, self.job, self.profile, self._exam_at(name))

    def _page_type(self) -> Any:
        """The type a listing's resources are decoded into."""
        return self.sink.row_type

    def _rows(self, page: ListDocument[Any]) -> list[Any]:
        """The sink's rows of one page."""
        rows: list[Any] = page.data
        return rows

    def _job_request(self, name: str, since: str | None) -> tuple[str, NewResource]:
        """Mode ``server``: the path and body creating stream ``name``'s export job; its
        filters mirror the page mode's query parameters."""
        filters: dict[str, str] = {}
        if self.s.statuses:
            filters["status"] = ",".join(self.s.statuses)
        if since:
            filters["updatedSince"] = since
        rels: dict[str, Relationship] = {}
        if name != ALL_EXAMS:
            rels["examV2"] = Relationship(data=ResourceIdentifier(type=TYPE_EXAM, id=name))
        body = NewResource(
            type=TYPE_EXPORT_ENRICHED_ATTEMPT,
            attributes={"filter": filters} if filters else UNSET,
            relationships=rels or UNSET,
        )
        return self.profile.exports_path, body

    def _line_filter(self, since: str | None) -> Callable[[bytes], bool] | None:
        """Mode ``server``: which lines of the downloaded file to keep (None: all)."""
        return _row_filter(set(self.s.statuses), since)

    async def _probe(self, since: str | None) -> None:
        """Read one resource with the generation's filters: a refused value fails here."""
        p = self.profile
        name = self._stream_names()[0]
        params = self._params(name, since)
        params[p.page_size_param] = "1"
        try:
            await self.client.get_page(self._list_path(), params, AnyResource)
        except BadRequest as exc:
            raise self._refused(exc, name) from None

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
        pages = self.client.pages(
            self._list_path(),
            self._params(name, since),
            self._page_type(),
            start=_cursor_in(st.cursor),
            parallel=self.s.parallel,
        )
        self._report("paging", name)
        try:
            await self._page_loop(name, st, pages)
        except BadRequest as exc:
            raise self._refused(exc, name) from None
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
                rows = self._rows(page)
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
                    f"the server export job {job_id} of {self._label(name)} is gone and its "
                    "file was partly written; run again with --restart"
                )
            job_id = await self._create_job(name, since)
            st.job = job_id
            await self._save(name, st)
            url = await self._wait(name, job_id)
        await self._download(name, st, url, since)
        st.done = True
        await self._durable(name, st)

    async def _create_job(self, exam: str, since: str | None) -> str:
        """POST the export (see :meth:`_job_request`); the BackgroundJob's id."""
        path, body = self._job_request(exam, since)
        try:
            resp = await self.client.request("POST", path, body={"data": body}, idempotent=True)
        except BadRequest as exc:
            raise self._refused(exc, exam) from None
        doc = msgspec.json.decode(resp.body, type=Document[AnyResource])
        res = doc.data
        if res.type == TYPE_BACKGROUND_JOB:
            return res.id
        linked = res.rel_id(self.profile.export_job_relationship)
        if linked:
            return linked
        return res.id

    async def _wait(self, exam: str, job_id: str) -> str:
        p = self.profile  # the BackgroundJob's field names and status values are its settings
        while True:
            job = await self.client.get(p.background_jobs_path, job_id, AnyResource)
            a = job.attributes
            status = a.get(p.job_status_attribute)
            if status in p.job_completed_statuses:
                url = a.get(p.job_file_attribute)
                if not url or not isinstance(url, str):
                    raise SynapBulkError(
                        f"export job {job_id} completed without a {p.job_file_attribute}"
                    )
                self._report("waiting", exam, 1.0)
                return url
            if status in p.job_failed_statuses:
                error = a.get(p.job_error_attribute) or "?"
                raise SynapBulkError(f"export job {job_id} of {self._label(exam)} failed: {error}")
            progress = a.get(p.job_progress_attribute)
            fraction = float(progress) if isinstance(progress, (int, float)) else None
            self._report("waiting", exam, fraction)
            await self.clock.sleep(self.poll_interval)

    async def _download(self, name: str, st: _Stream, url: str, since: str | None) -> None:
        skip = st.rows
        keep = self._line_filter(since)
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
