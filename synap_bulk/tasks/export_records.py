"""The export's records: the settings it runs with, what it reports, what the ledger keeps.

:class:`ExportSettings` (the spec resolved), :class:`ExportProgress` and :class:`ExportResult`
(what a run reports), and the ledger's two records, the generation (``_Meta``, cursor
``export``) and each stream's (``_Stream``, cursor ``export:<exam>``), with their (de)coding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec import Struct

from ..errors import CheckpointError
from ..items import StreamProgress, StreamResult

#: The ledger cursor naming the export generation; each stream has ``export:<exam>``.
META_CURSOR = "export"
ALL_EXAMS = "*"
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


def progress_for_runner(
    progress: Callable[[StreamProgress], None], label: Callable[[ExportProgress], str]
) -> Callable[[ExportProgress], None]:
    """An exporter's progress as the runner's bar takes it: rows so far (the server job's
    percent while it runs), with one note per phase of a server-side export, e.g. ``exam X:
    downloading`` (``label`` names what the note is about)."""
    said: list[Phase] = []

    def on_progress(p: ExportProgress) -> None:
        note = ""
        if p.phase in ("waiting", "downloading") and said != [p.phase]:
            what = "waiting for the server's export job" if p.phase == "waiting" else "downloading"
            note = f"{label(p)}: {what}"
        said[:] = [p.phase]
        total, done = p.total, p.rows
        if p.phase == "waiting":  # the server's job: its progress, in percent
            total, done = 100, round((p.job_progress or 0.0) * 100)
        progress(StreamProgress(done=done, total=total, note=note))

    return on_progress


def stream_result(
    r: ExportResult, what: str, *, drop: tuple[str, ...] = (), **extra: Any
) -> StreamResult:
    """The runner's view of a finished export: ``Export completed: N <what>, ...``; the
    details describe the file (the run's status and time are the summary's own)."""
    message = (
        f"Export {r.status}: {r.rows} {what}, {r.bytes} bytes -> {r.output} "
        f"({r.format}, mode {r.mode}"
        + (f", since {r.since}" if r.since else "")
        + (", resumed" if r.resumed else "")
        + ")"
    )
    skip = ("status", "elapsed_s", *drop)
    details = {k: v for k, v in msgspec.to_builtins(r).items() if k not in skip} | extra
    return StreamResult(
        status=r.status, counts={"exported": r.rows}, message=message, details=details
    )
