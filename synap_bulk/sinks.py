"""Export writers (NDJSON, CSV, Parquet) that can be cut back to a checkpointed length.

An export is a stream of pages. After each page the exporter calls :meth:`Sink.commit`, which
makes everything written so far durable (flush + fsync) and returns the *committed length*; the
ledger stores that number next to the page cursor. After a crash the exporter reopens the sink
with ``resume_offset`` set to it: whatever was written after the last commit is cut off and the
export continues from the next page, so no row is lost and none is written twice.

Rows are JSON:API resource objects as plain dicts (``{"id", "type", "attributes",
"relationships", ...}``). Tabular formats pick columns by dotted path:

- ``id``, ``type``: the resource's own members;
- ``attributes.score``, ``attributes.marks.points``: attribute values, nested by dots;
- ``relationships.user.id`` (or just ``relationships.user``): the linked id; to-many linkage
  gives the ids joined by ``;``;
- ``meta.x``, ``links.self``: the resource's meta and links members.

A value that is an object or a list (and is not linkage) is written as compact JSON.

Formats:

- **NDJSON**: with no columns, one resource object per line exactly as the server sent it;
  with columns, one flat object per line keyed by the dotted paths. Committed length: bytes.
- **CSV**: UTF-8, a header row, then one row per resource. Cells a spreadsheet would run as a
  formula are neutralised as OWASP recommends (see :func:`neutralise`). Committed length: bytes.
- **Parquet** (``pip install -e ".[parquet]"``): a Parquet file cannot be appended to once its
  footer is written, so pages go to an Arrow IPC stream next to the output (``<output>.partial``,
  truncatable like the others; committed length: its bytes) and :meth:`ParquetSink.finish`
  converts it batch by batch into the final Parquet file (written to a temporary name, then
  renamed), at flat memory. Column types come from the Attempt resource's attribute types.
"""

from __future__ import annotations

import csv
import io
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from .errors import CheckpointError, SpecError

__all__ = [
    "DEFAULT_COLUMNS",
    "FORMATS",
    "CsvSink",
    "NdjsonSink",
    "ParquetSink",
    "Sink",
    "column_getter",
    "make_sink",
    "neutralise",
    "row_builder",
]

#: What an attempt export holds when the job does not choose its columns.
DEFAULT_COLUMNS: tuple[str, ...] = (
    "id",
    "attributes.title",
    "attributes.examStatus",
    "attributes.status",
    "attributes.score",
    "attributes.marks.points",
    "attributes.marks.maxPoints",
    "attributes.resultsStatus",
    "attributes.timeStarted",
    "attributes.timeCompleted",
    "attributes.updatedAt",
    "relationships.user.id",
    "relationships.examV2.id",
)

FORMATS = ("ndjson", "csv", "parquet")

Row = Mapping[str, Any]


class Sink(Protocol):
    """A resumable export writer; see the module docstring for the commit protocol."""

    path: Path

    def open(self, path: Path, columns: Sequence[str] | None, resume_offset: int | None) -> None:
        """Start a new file (``resume_offset`` None) or cut an existing one back and append."""
        ...

    def write_page(self, rows: Sequence[Row]) -> None:
        """Append one page of resources (buffered until :meth:`commit`)."""
        ...

    def commit(self) -> int:
        """Make everything written durable; return the committed length to checkpoint."""
        ...

    def finish(self) -> None:
        """The export is complete: commit and produce the final artefact."""
        ...

    def close(self) -> None:
        """Release the file; uncommitted data may be lost (a resume cuts it off anyway)."""
        ...


# --- columns ------------------------------------------------------------------------------

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


def _cell(value: Any) -> Any:
    """Scalars as they are; objects and lists as compact JSON text."""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def _linkage_ids(rel: Any) -> Any:
    if not isinstance(rel, Mapping):
        return None
    data = rel.get("data")
    if data is None:
        return None
    if isinstance(data, list):
        return ";".join(str(d.get("id", "")) for d in data if isinstance(d, Mapping))
    if isinstance(data, Mapping):
        return data.get("id")
    return None


def column_getter(column: str) -> Callable[[Row], Any]:
    """A function reading one dotted-path column from a resource dict (None when absent)."""
    parts = column.split(".")
    if not column or any(not p for p in parts):
        raise ValueError(f"invalid column {column!r}")
    head, rest = parts[0], parts[1:]
    if head == "relationships":
        if len(rest) == 1 or (len(rest) == 2 and rest[1] == "id"):
            name = rest[0]

            def get_rel(r: Row) -> Any:
                rels = r.get("relationships")
                return _linkage_ids(rels.get(name)) if rels else None

            return get_rel
        if len(rest) >= 2 and rest[1] in ("meta", "links", "data"):
            pass  # a general path below
        else:
            raise ValueError(
                f"invalid column {column!r}: use relationships.<name>.id for the linked id"
            )
    if not rest:
        key = head

        def get_top(r: Row) -> Any:
            return _cell(r.get(key))

        return get_top
    if len(rest) == 1:
        outer, inner = head, rest[0]

        def get_two(r: Row) -> Any:
            v = r.get(outer)
            return _cell(v.get(inner)) if isinstance(v, Mapping) else None

        return get_two
    path = tuple(parts)

    def get_deep(r: Row) -> Any:
        v: Any = r
        for p in path:
            if not isinstance(v, Mapping):
                return None
            v = v.get(p)
        return _cell(v)

    return get_deep


def row_builder(columns: Sequence[str]) -> Callable[[Row], list[Any]]:
    """A function turning a resource dict into the list of its column values."""
    getters = [column_getter(c) for c in columns]

    def build(r: Row) -> list[Any]:
        return [g(r) for g in getters]

    return build


def check_columns(columns: Sequence[str]) -> None:
    """Raise ValueError naming the first unusable column (empty part, bad relationship path)."""
    if not columns:
        raise ValueError("at least one column is needed")
    for c in columns:
        column_getter(c)


# --- CSV neutralisation -------------------------------------------------------------------

_FORMULA_START = frozenset("=+-@\t\r")


def neutralise(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula.

    OWASP (CSV Injection): a text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
    return is prefixed with a single quote. The check is on *text*: a value the server sent as a
    JSON number (``-2.5``) is written as a number and stays numeric in the spreadsheet, because a
    number literal cannot carry a formula; the same characters in a string (``"-2+3+cmd|..."``,
    even ``"-5"``) are always prefixed. ``None`` becomes an empty cell, booleans ``true``/``false``.
    """
    if isinstance(value, str):
        if value and value[0] in _FORMULA_START:
            return "'" + value
        return value
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value


# --- base: a binary file cut back to a committed length ------------------------------------


class _FileSink:
    """Shared open/truncate/commit logic; subclasses turn pages into bytes."""

    def __init__(self) -> None:
        self.path = Path()
        self._file: io.BufferedRandom | None = None
        self.columns: list[str] | None = None
        self.rows_written = 0

    def _data_path(self, path: Path) -> Path:
        return path

    def open(self, path: Path, columns: Sequence[str] | None, resume_offset: int | None) -> None:
        self.path = path
        self.columns = list(columns) if columns is not None else None
        target = self._data_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if resume_offset is None:
            f = open(target, "w+b")  # noqa: SIM115 - kept open across pages, closed in close()
        else:
            try:
                f = open(target, "r+b")  # noqa: SIM115
            except FileNotFoundError:
                if resume_offset:
                    raise CheckpointError(
                        f"cannot resume the export: {target} is gone but the ledger says "
                        f"{resume_offset} bytes were committed; run again with --restart"
                    ) from None
                f = open(target, "w+b")  # noqa: SIM115
            size = f.seek(0, os.SEEK_END)
            if size < resume_offset:
                f.close()
                raise CheckpointError(
                    f"cannot resume the export: {target} has {size} bytes but the ledger says "
                    f"{resume_offset} were committed; run again with --restart"
                )
            f.truncate(resume_offset)
            f.seek(resume_offset)
        self._file = f
        self._start(f.tell())

    def _start(self, length: int) -> None:
        """Called once the file is at its committed length (0 for a new file)."""

    def _out(self) -> io.BufferedRandom:
        if self._file is None:
            raise RuntimeError("sink is not open")
        return self._file

    def commit(self) -> int:
        f = self._out()
        f.flush()
        os.fsync(f.fileno())
        return f.tell()

    def finish(self) -> None:
        self.commit()
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class NdjsonSink(_FileSink):
    """One JSON object per line: the resource itself, or its chosen columns as a flat object."""

    def open(self, path: Path, columns: Sequence[str] | None, resume_offset: int | None) -> None:
        super().open(path, columns, resume_offset)
        self._build = row_builder(self.columns) if self.columns is not None else None

    def write_page(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        dumps = orjson.dumps
        if self._build is None:
            data = b"\n".join([dumps(r) for r in rows])
        else:
            cols = self.columns
            assert cols is not None
            build = self._build
            data = b"\n".join([dumps(dict(zip(cols, build(r), strict=True))) for r in rows])
        f = self._out()
        f.write(data)
        f.write(b"\n")
        self.rows_written += len(rows)


class CsvSink(_FileSink):
    """UTF-8 CSV with one header row, formula-looking text cells neutralised."""

    def open(self, path: Path, columns: Sequence[str] | None, resume_offset: int | None) -> None:
        super().open(path, list(columns) if columns else list(DEFAULT_COLUMNS), resume_offset)
        cols = self.columns
        assert cols is not None
        getters = [column_getter(c) for c in cols]
        n = neutralise

        def build(r: Row) -> list[Any]:
            return [n(g(r)) for g in getters]

        self._build = build
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf, lineterminator="\r\n")

    def _start(self, length: int) -> None:
        if length == 0:
            assert self.columns is not None
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\r\n").writerow([neutralise(c) for c in self.columns])
            self._out().write(buf.getvalue().encode())

    def write_page(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        self._writer.writerows(map(self._build, rows))
        buf = self._buf
        self._out().write(buf.getvalue().encode())
        buf.seek(0)
        buf.truncate()
        self.rows_written += len(rows)


# --- Parquet ------------------------------------------------------------------------------

PARQUET_HINT = 'Parquet output needs pyarrow: pip install -e ".[parquet]"'


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise SpecError(PARQUET_HINT) from None
    return pyarrow


def _attribute_kinds() -> dict[str, str]:
    """dotted column -> kind ('str', 'float', 'int', 'bool', 'json') from the Attempt Structs."""
    from .resources import AttemptAttributes, Marks

    def kind(tp: Any) -> str:
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        base = typing.get_origin(args[0]) or args[0]
        if base is str:
            return "str"
        if base is bool:
            return "bool"
        if base is int:
            return "int"
        if base is float:
            return "float"
        return "json"

    out: dict[str, str] = {"id": "str", "type": "str"}
    for name, tp in typing.get_type_hints(AttemptAttributes).items():
        out[f"attributes.{name}"] = kind(tp)
    for name, tp in typing.get_type_hints(Marks).items():
        out[f"attributes.marks.{name}"] = kind(tp)
    out["attributes.marks"] = "json"
    return out


def _column_kind(column: str, known: Mapping[str, str]) -> str:
    if column in known:
        return known[column]
    return "str"


class ParquetSink(_FileSink):
    """Pages to an Arrow IPC stream (``<output>.partial``), converted to Parquet on finish."""

    def __init__(self, *, row_group_size: int = 65_536) -> None:
        super().__init__()
        self._pa = _pyarrow()
        self.row_group_size = row_group_size

    def _data_path(self, path: Path) -> Path:
        return path.with_name(path.name + ".partial")

    def open(self, path: Path, columns: Sequence[str] | None, resume_offset: int | None) -> None:
        pa = self._pa
        cols = list(columns) if columns else list(DEFAULT_COLUMNS)
        known = _attribute_kinds()
        self._kinds = [_column_kind(c, known) for c in cols]
        types_ = {
            "str": pa.string(),
            "float": pa.float64(),
            "int": pa.int64(),
            "bool": pa.bool_(),
            "json": pa.string(),
        }
        self._schema = pa.schema(
            [pa.field(c, types_[k]) for c, k in zip(cols, self._kinds, strict=True)]
        )
        self._getters = [column_getter(c) for c in cols]
        super().open(path, cols, resume_offset)

    def _start(self, length: int) -> None:
        if length == 0:
            self._out().write(self._schema.serialize().to_pybytes())

    def _convert(self, kind: str, values: list[Any]) -> list[Any]:
        if kind == "str" or kind == "json":
            return [v if v is None or isinstance(v, str) else str(v) for v in values]
        if kind == "float":
            return [float(v) if isinstance(v, (int, float)) else None for v in values]
        if kind == "int":
            return [v if isinstance(v, int) and not isinstance(v, bool) else None for v in values]
        return [v if isinstance(v, bool) else None for v in values]

    def write_page(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        pa = self._pa
        arrays = [
            pa.array(self._convert(k, [g(r) for r in rows]), type=f.type)
            for g, k, f in zip(self._getters, self._kinds, self._schema, strict=True)
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self._schema)
        self._out().write(batch.serialize().to_pybytes())
        self.rows_written += len(rows)

    def finish(self) -> None:
        self.commit()
        self.close()
        pa = self._pa
        staging = self._data_path(self.path)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with pa.OSFile(str(staging), "rb") as src:
            reader = pa.ipc.open_stream(src)
            with pa.parquet.ParquetWriter(str(tmp), reader.schema) as writer:
                pending: list[Any] = []
                n = 0
                wrote = False
                for batch in reader:
                    pending.append(batch)
                    n += batch.num_rows
                    if n >= self.row_group_size:
                        writer.write_table(pa.Table.from_batches(pending, reader.schema))
                        pending, n, wrote = [], 0, True
                if pending or not wrote:
                    writer.write_table(pa.Table.from_batches(pending, reader.schema))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        staging.unlink()


def make_sink(fmt: str) -> Sink:
    """The sink for an export format name."""
    if fmt == "ndjson":
        return NdjsonSink()
    if fmt == "csv":
        return CsvSink()
    if fmt == "parquet":
        return ParquetSink()
    raise ValueError(f"unknown export format {fmt!r} (expected one of {', '.join(FORMATS)})")
