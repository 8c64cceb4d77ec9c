"""What a run leaves behind: the summary, the failures file, the success file and the plan file.

The failures file is built to be fixed and fed straight back as the next run's source: the
input's own columns, in the input's order and delimiter, values as read (formula-looking ones
escaped, below), then
``_line``, ``_error_status``, ``_error_code``, ``_error_field`` and ``_error_detail``. Reading it
back with :class:`~synap_bulk.sources.CsvSource` gives the same values, so a re-run sends the
same data; the ``_`` columns are ignored by tasks, and dropped from the input columns when a
failures file is itself the input (so the header never grows run after run).

Files are UTF-8 (``bom=True`` adds a BOM, e.g. to mirror an input that had one so a spreadsheet
opens both alike), quoted where needed, with CRLF line ends as RFC 4180 says. They are written
to a temporary name and renamed when complete, so a crash never leaves half a report. A
:class:`FailuresWriter` that received no row removes the file (and any stale one from an earlier
run) instead of leaving an empty file that looks like "something failed".

Nothing here ever receives the API token: writers get rows and errors, the summary gets counts.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Protocol, Self

import msgspec
from msgspec import Struct
from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from .items import ItemError, PlanRow
from .sinks import FORMULA_START

if TYPE_CHECKING:
    from _csv import Writer

__all__ = [
    "COUNT_KEYS",
    "FAILURE_COLUMNS",
    "PLAN_COLUMNS",
    "RESERVED_COLUMNS",
    "SUCCESS_COLUMNS",
    "ClientFigures",
    "FailuresWriter",
    "PlanWriter",
    "SuccessWriter",
    "Summary",
    "csv_safe",
    "escape_formula",
    "format_duration",
]

FAILURE_COLUMNS = ("_line", "_error_status", "_error_code", "_error_field", "_error_detail")
SUCCESS_COLUMNS = ("_line", "_action", "_remote_id")
PLAN_COLUMNS = ("_line", "key", "name", "action", "remote_id", "detail")
#: Columns the writers add; taken out of the input's columns so re-runs keep one header.
RESERVED_COLUMNS = frozenset(FAILURE_COLUMNS + SUCCESS_COLUMNS)


def csv_safe(value: str) -> str:
    """``value`` with a leading single quote if a spreadsheet would run it as a formula.

    Applied to text that comes from elsewhere (the server's error detail, task messages), not
    reversed on reading. The input's own columns get :func:`escape_formula` instead, which
    reading a result file back undoes, so a fixed failures file re-runs with the same data
    (``+44 20 7946 0958`` is sent as written, not as ``'+44 20 7946 0958``).
    """
    if value and value[0] in FORMULA_START:
        return "'" + value
    return value


def escape_formula(value: str) -> str:
    """An input value made safe for a spreadsheet, reversibly (see the module docstring).

    ``=1+1`` -> ``'=1+1``, ``'=1+1`` -> ``''=1+1``; anything else unchanged.
    :func:`synap_bulk.sources.unescape_formula` undoes it.
    """
    rest = value.lstrip("'")
    if rest and rest[0] in FORMULA_START:
        return "'" + value
    return value


class _CsvWriter:
    """A CSV written to ``<name>.tmp`` and renamed into place on a clean close."""

    #: Whether a file with no data row is kept (header only) or removed.
    keep_empty = True

    def __init__(
        self, path: Path | str, columns: Sequence[str], *, delimiter: str = ",", bom: bool = False
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.delimiter = delimiter
        self.encoding = "utf-8-sig" if bom else "utf-8"
        self.rows = 0
        self.closed = False
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._file: IO[str] | None = None
        self._writer: Writer | None = None

    def open(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._tmp.open("w", encoding=self.encoding, newline="")
        self._writer = csv.writer(
            self._file, delimiter=self.delimiter, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL
        )
        self._writer.writerow(self.columns)
        return self

    def _row(self, values: Iterable[str]) -> None:
        if self.closed:
            raise ValueError(f"{self.path.name}: write after close")
        if self._writer is None:
            self.open()
        assert self._writer is not None
        self._writer.writerow(values)
        self.rows += 1

    def close(self) -> None:
        """Finish the file: rename it into place, or remove it (and a stale one) if empty."""
        if self.closed:
            return
        self.closed = True
        if self._file is None:
            self.open()
        assert self._file is not None
        self._file.close()
        self._file = self._writer = None
        if self.rows or self.keep_empty:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop the partial file, leaving whatever was at ``path`` before."""
        self.closed = True
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _input_columns(columns: Iterable[str]) -> list[str]:
    return [c for c in columns if c not in RESERVED_COLUMNS]


class FailuresWriter(_CsvWriter):
    """The rows that need fixing: input columns as read, then line and error columns.

    Removed at close when no row was written, so an old failures file never outlives the
    failures it listed.
    """

    keep_empty = False

    def __init__(
        self,
        path: Path | str,
        input_columns: Iterable[str],
        *,
        delimiter: str = ",",
        bom: bool = False,
    ) -> None:
        self.input_columns = _input_columns(input_columns)
        super().__init__(
            path, [*self.input_columns, *FAILURE_COLUMNS], delimiter=delimiter, bom=bom
        )

    def write(self, line: int, row: Mapping[str, str], error: ItemError) -> None:
        self._row(
            [
                *(escape_formula(row.get(c, "")) for c in self.input_columns),
                str(line),
                csv_safe(error.status),
                csv_safe(error.code),
                csv_safe(error.field),
                csv_safe(error.detail),
            ]
        )


class SuccessWriter(_CsvWriter):
    """Each line that is done, with what was done and the remote id (header kept when empty)."""

    def __init__(
        self,
        path: Path | str,
        input_columns: Iterable[str],
        *,
        delimiter: str = ",",
        bom: bool = False,
    ) -> None:
        self.input_columns = _input_columns(input_columns)
        #: Lines written per action (created, updated, ...): the summary's action counts.
        self.actions: dict[str, int] = {}
        super().__init__(
            path, [*self.input_columns, *SUCCESS_COLUMNS], delimiter=delimiter, bom=bom
        )

    def write(self, line: int, row: Mapping[str, str], action: str, remote_id: str) -> None:
        self.actions[action] = self.actions.get(action, 0) + 1
        self._row(
            [
                *(escape_formula(row.get(c, "")) for c in self.input_columns),
                str(line),
                csv_safe(action),
                csv_safe(remote_id),
            ]
        )


class PlanWriter(_CsvWriter):
    """One line per planned item. Not an input for anything, so every text cell is made safe."""

    def __init__(self, path: Path | str, *, delimiter: str = ",", bom: bool = False) -> None:
        super().__init__(path, PLAN_COLUMNS, delimiter=delimiter, bom=bom)

    def write(self, row: PlanRow) -> None:
        self._row(
            [
                str(row.line),
                csv_safe(row.key),
                csv_safe(row.label),
                csv_safe(row.action),
                csv_safe(row.remote_id),
                csv_safe(row.detail),
            ]
        )


# -- summary -----------------------------------------------------------------------------------

#: Counts every summary carries (0 when nothing happened), in display order.
COUNT_KEYS = (
    "done",
    "created",
    "updated",
    "unchanged",
    "failed",
    "invalid",
    "in_doubt",
    "skipped",
)


#: Counts of items a resume will take up: marked in flight (looked up or reported first) and
#: not reached yet (known when the task counted its input).
_LEFT = ("in_flight", "not_started")
#: Counts that are item statuses; every other count is an action (created, assigned, ...).
_STATUSES = frozenset({"done", "failed", "invalid", "in_doubt", "skipped", "superseded", *_LEFT})


class ClientFigures(Protocol):
    """What the summary reads of ``client.ClientStatistics`` (structural, to keep layers apart)."""

    @property
    def requests(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def throttled(self) -> int: ...
    @property
    def pauses(self) -> int: ...
    @property
    def latency_ms_p50(self) -> float: ...
    @property
    def latency_ms_p95(self) -> float: ...
    @property
    def latency_ms_p99(self) -> float: ...


class Summary(Struct, kw_only=True):
    """The outcome of one run, printed at the end and written as ``summary.json``.

    ``status`` is ``completed``, ``stopped`` (interrupted or circuit breaker: resumable) or
    ``aborted`` (401 or a second signal). ``counts`` always holds :data:`COUNT_KEYS` and any
    further per-status or per-action counts the ledger gave. ``skipped`` counts items already
    done in an earlier run. ``achieved_rate`` is requests per second of elapsed time.

    ``this_run`` is what this run did (its items' statuses and actions, ``skipped`` for those an
    earlier run had done); ``job_total`` is where the whole job stands after it. ``counts``
    keeps the job totals as before. ``acting_as``/``portal_id``/``token_from`` say who the token
    acted as and where it came from (never the token itself).
    """

    job_name: str
    kind: str
    status: str
    reason: str = ""
    counts: dict[str, int] = {}
    elapsed_s: float = 0.0
    requests: int = 0
    achieved_rate: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    latency_ms_p99: float = 0.0
    #: Requests the client re-sent (after a 429, a 5xx or a dropped connection).
    retries: int = 0
    #: Items the engine attempted again after a failure the client gave up on or would not
    #: repeat alone (a create whose outcome was unknown is looked up first, never just re-sent).
    item_retries: int = 0
    #: Items whose unknown outcome a lookup resolved: the server had carried the write out.
    reconciled: int = 0
    throttled: int = 0
    pauses: int = 0
    task: dict[str, Any] = {}
    failures_file: str = ""
    success_file: str = ""
    run_id: int = 0
    run_dir: str = ""
    this_run: dict[str, int] = {}
    job_total: dict[str, int] = {}
    acting_as: str = ""
    portal_id: str = ""
    token_from: str = ""

    @classmethod
    def build(
        cls,
        *,
        job_name: str,
        kind: str,
        status: str,
        reason: str = "",
        counts: Mapping[str, int] | None = None,
        skipped: int | None = None,
        elapsed_s: float,
        client: ClientFigures | None = None,
        item_retries: int = 0,
        reconciled: int = 0,
        task: Mapping[str, Any] | None = None,
        failures_file: str = "",
        success_file: str = "",
    ) -> Summary:
        """Assemble a summary from the ledger's counts and the client's statistics."""
        merged = dict.fromkeys(COUNT_KEYS, 0)
        for key, value in (counts or {}).items():
            merged[key] = int(value)
        if skipped is not None:
            merged["skipped"] = skipped
        requests = client.requests if client is not None else 0
        return cls(
            job_name=job_name,
            kind=kind,
            status=status,
            reason=reason,
            counts=merged,
            elapsed_s=round(elapsed_s, 3),
            requests=requests,
            achieved_rate=round(requests / elapsed_s, 2) if elapsed_s > 0 else 0.0,
            latency_ms_p50=round(client.latency_ms_p50, 2) if client is not None else 0.0,
            latency_ms_p95=round(client.latency_ms_p95, 2) if client is not None else 0.0,
            latency_ms_p99=round(client.latency_ms_p99, 2) if client is not None else 0.0,
            retries=client.retries if client is not None else 0,
            item_retries=item_retries,
            reconciled=reconciled,
            throttled=client.throttled if client is not None else 0,
            pauses=client.pauses if client is not None else 0,
            task=dict(task or {}),
            failures_file=failures_file,
            success_file=success_file,
        )

    def to_builtins(self) -> dict[str, Any]:
        """The summary as plain dicts and numbers (for the ledger's run record)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    def write(self, path: Path | str) -> None:
        """Write indented JSON atomically (temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(msgspec.json.format(self.to_json(), indent=2) + b"\n")
        os.replace(tmp, path)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """``console.print(summary)`` shows :meth:`render` verbatim (brackets are not markup),
        wrapped to the console's width."""
        yield Text(self.render(max(40, options.max_width)))

    def render(self, width: int = 80) -> str:
        """A few aligned plain-text lines for the end of a run, wrapped to ``width`` columns.

        Plain text, not rich markup: print it with ``console.print(summary)`` or
        ``markup=False``, since a job name or reason may hold ``[brackets]``. A row too long
        for the width continues on the next line under its first figure.
        """
        c = self.job_total or self.counts
        lines = [
            f"{self.job_name} ({self.kind}): {self.status} in {format_duration(self.elapsed_s)}"
        ]
        if self.run_id:
            lines[0] = (
                f"{self.job_name} ({self.kind}) run {self.run_id}: " + lines[0].split(": ", 1)[1]
            )
        if self.reason:
            lines[0] += f" - {self.reason}"
        rows: list[tuple[str, list[str]]] = []
        if self.acting_as:
            # User, portal and token source as separate parts, so a narrow terminal wraps
            # between them rather than inside a name.
            who, _, portal = self.acting_as.partition(" on portal ")
            parts = [who, f"on portal {portal}"] if portal else [who]
            rows.append(("acting as", [*parts, f"token from {self.token_from}"]))
        if self.this_run:
            rows.append(("this run", _items(self.this_run, skipped=True, left=False)))
            rows.append(("job total", _items(c, skipped=False, left=True)))
        else:
            rows.append(("items", _items(c, skipped=True, left=True)))
        # What needs a person's attention on a line of its own, zeros included: a summary that
        # says "0 failed" is one you can trust.
        to_fix = [
            f"{c.get(k, 0):,} {k.replace('_', ' ')}" for k in ("failed", "invalid", "in_doubt")
        ]
        rows.append(("to fix", to_fix))
        rows.append(
            (
                "requests",
                [
                    f"{self.requests:,} at {self.achieved_rate:.1f} req/s",
                    f"{self.throttled:,} throttled (429)",
                    f"{self.pauses:,} pauses",
                ],
            )
        )
        rows.append(
            (
                "retries",
                [
                    f"{self.retries:,} requests re-sent",
                    f"{self.item_retries:,} items tried again",
                    f"{self.reconciled:,} reconciled",
                ],
            )
        )
        if self.requests:
            rows.append(
                (
                    "latency",
                    [
                        f"p50 {self.latency_ms_p50:.0f} ms",
                        f"p95 {self.latency_ms_p95:.0f} ms",
                        f"p99 {self.latency_ms_p99:.0f} ms",
                    ],
                )
            )
        scalars = [
            f"{k} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} {v}"
            for k, v in self.task.items()
            if isinstance(v, (str, int, float, bool))
        ]
        if scalars:
            rows.append(("task", scalars))
        if self.failures_file:
            rows.append(("failures", [self.failures_file]))
        if self.success_file:
            rows.append(("success", [self.success_file]))
        if self.run_dir:
            rows.append(("run files", [self.run_dir]))
        label_width = max(len(label) for label, _ in rows)
        indent = " " * (label_width + 4)
        for label, parts in rows:
            first, *rest = _wrap(parts, width - len(indent))
            lines.append(f"  {label:<{label_width}}  {first}")
            lines += [indent + line for line in rest]
        return "\n".join(lines)


def _items(c: Mapping[str, int], *, skipped: bool, left: bool) -> list[str]:
    """``1,234 done (1,000 created, 234 unchanged) · 5 already done · 3 not started``."""
    # Actions (created, updated, assigned, ...) are every count that is not a status.
    actions = [f"{v:,} {k.replace('_', ' ')}" for k, v in c.items() if k not in _STATUSES and v]
    items = [f"{c.get('done', 0):,} done" + (f" ({', '.join(actions)})" if actions else "")]
    if skipped and c.get("skipped"):
        items.append(f"{c['skipped']:,} already done")
    if left:  # left for a resume (a stopped run): neither done nor anything to fix yet
        items += [f"{c[k]:,} {k.replace('_', ' ')}" for k in _LEFT if c.get(k)]
        if c.get("superseded"):
            items.append(f"{c['superseded']:,} replaced by fixed rows")
    return items


def _wrap(parts: list[str], width: int) -> list[str]:
    """Join parts with " · " into lines of at most ``width`` (a part is never split)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return lines or [""]


def format_duration(seconds: float) -> str:
    """``42.3s``, ``6m12s``, ``2h05m``: short enough for a progress line."""
    if seconds < 0.995:
        return f"{seconds:.2f}s"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
