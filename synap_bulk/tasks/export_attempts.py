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

The code is in rooms: :mod:`.export_records` (settings, progress, result, ledger records),
:mod:`.export_naming` (the output file's name), :mod:`.export_query` (exams by id or name, the
listing's query, refused filters), :mod:`.export_stream` (the exporter); this module resolves
the spec, runs an export and is the stream task. Their public names are importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio

from ..clock import Clock, SystemClock
from ..errors import BadRequest
from ..items import RunContext, StreamProgress, StreamResult
from ..jsonapi import AnyResource
from ..sinks import check_columns
from ..templates import spec_error
from .base import CursorStore
from .export_naming import PLACEHOLDERS as PLACEHOLDERS
from .export_naming import _output_template, _Shown, _utc_date, output_for
from .export_query import _attempt_params, _index_of_ids, _refused, resolve_exams
from .export_records import (
    ALL_EXAMS,
    META_CURSOR,
    ExportProgress,
    ExportResult,
    ExportSettings,
    _load,
    _Meta,
    progress_for_runner,
    stream_result,
)
from .export_records import COMMIT_INTERVAL_MS as COMMIT_INTERVAL_MS
from .export_records import COMMIT_PAGES as COMMIT_PAGES
from .export_stream import DOWNLOAD_CHUNK as DOWNLOAD_CHUNK
from .export_stream import _Exporter

if TYPE_CHECKING:
    from ..client import SynapClient
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
        on_progress = progress_for_runner(progress, lambda p: f"exam {p.exam}")
        r = await run_export(
            self.settings, self.job, client, cursors, progress_cb=on_progress, stop=stop, run=run
        )
        return stream_result(r, "attempts")

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
