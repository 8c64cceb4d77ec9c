"""Export writers (NDJSON, CSV, Parquet) that can be cut back to a checkpointed length.

An export is a stream of pages. :meth:`Sink.write_page` writes a page through the file's small
buffer to the OS (not fsynced: no page is held in memory). Every durability window (some pages
or some hundred milliseconds, see the exporter) it calls :meth:`Sink.commit`, which makes
everything written so far durable (flush + fsync) and returns the *committed length*; the
ledger stores that number next to the page cursor of the same moment. After a crash the
exporter reopens the sink with ``resume_offset`` set to it: whatever was written after the last
commit (the pages of an unfinished window) is cut off and the export continues from the
committed cursor, so no row is lost and none is written twice.

Rows are JSON:API resource objects, decoded straight from the response into the sink's
:attr:`Sink.row_type` (``msgspec.Raw`` for whole resources, or a Struct generated for just the
chosen columns): no per-resource dict is built. Tabular formats pick columns by dotted path:

- ``id``, ``type``: the resource's own members;
- ``attributes.score``, ``attributes.marks.points``: attribute values, nested by dots;
- ``relationships.user.id`` (or just ``relationships.user``): the linked id; to-many linkage
  gives the ids joined by ``;``;
- ``meta.x``, ``links.self``: the resource's meta and links members.

An object or list value (not linkage) is written as compact JSON text in CSV and Parquet, and
stays a nested value in NDJSON.

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

A new file is opened with ``exclusive=True`` by the exporter: the sink then refuses (with
``FileExistsError``) to start over a file that already exists, so an export never replaces a
file it did not write itself. A resume (``resume_offset`` given) reopens its own file.
"""

from __future__ import annotations

import csv
import io
import operator
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import msgspec
import orjson

from .errors import CheckpointError, SpecError

__all__ = [
    "DEFAULT_COLUMNS",
    "FORMATS",
    "FORMULA_START",
    "Columns",
    "CsvSink",
    "NdjsonSink",
    "ParquetSink",
    "Sink",
    "check_columns",
    "make_sink",
    "neutralise",
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


class Sink(Protocol):
    """A resumable export writer; see the module docstring for the commit protocol."""

    path: Path
    #: The type each resource is decoded into (``msgspec.Raw`` or a Struct of the columns);
    #: set by :meth:`open`. Decoding pages straight into it is what keeps exports cheap.
    row_type: Any

    def open(
        self,
        path: Path,
        columns: Sequence[str] | None,
        resume_offset: int | None,
        *,
        exclusive: bool = False,
    ) -> None:
        """Start a new file (``resume_offset`` None) or cut an existing one back and append.

        With ``exclusive`` a new file must not exist yet (``FileExistsError`` otherwise)."""
        ...

    def decode_row(self, data: bytes) -> Any:
        """One resource (a line of JSON) as :attr:`row_type`."""
        ...

    def write_page(self, rows: Sequence[Any]) -> None:
        """Append one page of resources of :attr:`row_type` (durable at :meth:`commit`)."""
        ...

    def position(self) -> int:
        """The length written so far (not necessarily durable: see :meth:`commit`)."""
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

_LEAF = ""  # marks, in the column tree, a node that is itself a column


def _column_path(column: str) -> tuple[list[str], bool]:
    """The JSON path a column reads and whether its value is relationship linkage."""
    parts = column.split(".")
    if not column or any(not p for p in parts):
        raise ValueError(f"invalid column {column!r}")
    if parts[0] == "relationships":
        if len(parts) == 2 or (len(parts) == 3 and parts[2] == "id"):
            return ["relationships", parts[1], "data"], True
        if len(parts) < 4 or parts[2] not in ("meta", "links", "data"):
            raise ValueError(
                f"invalid column {column!r}: use relationships.<name>.id for the linked id"
            )
    return parts, False


def _linkage(data: Any) -> Any:
    """A relationship's ``data`` as the linked id, or the to-many ids joined by ``;``."""
    if data.__class__ is dict:
        return data.get("id")
    if data.__class__ is list:
        return ";".join(str(d.get("id", "")) for d in data if d.__class__ is dict)
    return None


def _has_children(node: dict[str, Any]) -> bool:
    return any(k not in (_LEAF, "__name__") for k in node)


class Columns:
    """A compiled column selection: the type to decode resources into, and a fast reader.

    Resources are decoded straight into msgspec Structs generated for exactly the chosen
    paths (unknown members are skipped by the decoder), and one ``operator.attrgetter`` reads
    all columns of a row in a single C call; only columns below a nested attribute object take
    a few Python steps more. A row with an explicit ``null`` where an object was expected
    (``"attributes": null``) takes the slow, per-column route.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        if not columns:
            raise ValueError("at least one column is needed")
        self.columns = list(columns)
        tree: dict[str, Any] = {}
        paths: list[tuple[list[str], bool]] = []
        for column in self.columns:
            path, link = _column_path(column)
            paths.append((path, link))
            node = tree
            for part in path:
                node = node.setdefault(part, {})
            node[_LEAF] = True
        self._counter = 0
        self.row_type: type[Any] = self._struct(tree)
        # Each column: the attribute path one attrgetter reads, then the steps left to take
        # per row. The attrgetter stops at a nested attribute object (``attributes.marks``),
        # which is often null; below it, and below a node that is itself a column (decoded as a
        # plain value), the steps are None-safe getattr / dict lookups.
        attr_paths: list[str] = []
        self._fixups: list[tuple[int, list[tuple[bool, str]], bool]] = []
        for i, (path, link) in enumerate(paths):
            node = tree
            names: list[str] = []
            steps: list[tuple[bool, str]] = []  # (is attribute, name or key)
            mode = "getter"
            for j, part in enumerate(path):
                if mode == "dict":
                    steps.append((False, part))
                    continue
                child = node[part]
                if mode == "getter":
                    names.append(child["__name__"])
                else:
                    steps.append((True, child["__name__"]))
                if _LEAF in child:
                    mode = "dict"  # decoded as a plain value; any deeper part is a dict key
                    continue
                if mode == "getter" and j >= 1 and path[0] != "relationships":
                    mode = "attr"
                node = child
            attr_paths.append(".".join(names))
            if steps or link:
                self._fixups.append((i, steps, link))
        self._attr_paths = attr_paths
        self._get = operator.attrgetter(*attr_paths) if len(attr_paths) > 1 else None
        self._single = operator.attrgetter(attr_paths[0])

    def _struct(self, node: dict[str, Any]) -> type[Any]:
        fields: list[tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        for key, child in node.items():
            if key in (_LEAF, "__name__"):
                continue
            name = f"f{len(fields)}"
            child["__name__"] = name
            rename[name] = key
            if _LEAF in child:
                fields.append((name, Any, None))
            else:
                sub = self._struct(child)
                fields.append((name, sub | None, msgspec.field(default_factory=sub)))
        self._counter += 1
        return msgspec.defstruct(
            f"_Row{self._counter}", fields, rename=rename, kw_only=True, module=__name__, gc=False
        )

    def _slow(self, row: Any) -> list[Any]:
        out: list[Any] = []
        for path in self._attr_paths:
            v = row
            for name in path.split("."):
                v = getattr(v, name, None)
                if v is None:
                    break
            out.append(v)
        return out

    def values(self, rows: Sequence[Any]) -> list[list[Any]]:
        """Each row's column values (linkage as ids; objects and lists left as they are)."""
        get = self._get
        out: list[list[Any]] = []
        append = out.append
        if get is None:
            single = self._single
            for r in rows:
                try:
                    append([single(r)])
                except AttributeError:
                    append(self._slow(r))
        else:
            for r in rows:
                try:
                    append(list(get(r)))
                except AttributeError:
                    append(self._slow(r))
        fixups = self._fixups
        if fixups:
            for v in out:
                for i, steps, link in fixups:
                    x = v[i]
                    for is_attr, key in steps:
                        if x is None:
                            break
                        if is_attr:
                            x = getattr(x, key, None)
                        else:
                            x = x.get(key) if x.__class__ is dict else None
                    v[i] = _linkage(x) if link else x
        return out

    def decode(self, data: bytes) -> Any:
        """One resource (JSON text) as :attr:`row_type`."""
        return msgspec.json.decode(data, type=self.row_type)


def check_columns(columns: Sequence[str]) -> None:
    """Raise ValueError naming the first unusable column (empty part, bad relationship path)."""
    Columns(columns)


# --- CSV neutralisation -------------------------------------------------------------------

#: First characters that make a spreadsheet read a text cell as a formula (OWASP, CSV injection).
FORMULA_START = frozenset("=+-@\t\r")


def neutralise(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula.

    OWASP (CSV Injection): a text cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage
    return is prefixed with a single quote. The check is on *text*: a value the server sent as a
    JSON number (``-2.5``) is written as a number and stays numeric in the spreadsheet, because a
    number literal cannot carry a formula; the same characters in a string (``"-2+3+cmd|..."``,
    even ``"-5"``) are always prefixed. ``None`` becomes an empty cell, booleans ``true``/``false``.
    """
    if isinstance(value, str):
        if value and value[0] in FORMULA_START:
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

    def open(
        self,
        path: Path,
        columns: Sequence[str] | None,
        resume_offset: int | None,
        *,
        exclusive: bool = False,
    ) -> None:
        self.path = path
        self.columns = list(columns) if columns is not None else None
        target = self._data_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if resume_offset is None:
            # Kept open across pages, closed in close(); "x" never replaces an existing file.
            f = open(target, "x+b" if exclusive else "w+b")  # noqa: SIM115
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

    def position(self) -> int:
        return self._out().tell()

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
    """One JSON object per line: the resource as sent, or its chosen columns as a flat object."""

    def open(
        self,
        path: Path,
        columns: Sequence[str] | None,
        resume_offset: int | None,
        *,
        exclusive: bool = False,
    ) -> None:
        self._columns = Columns(columns) if columns else None
        self.row_type = self._columns.row_type if self._columns else msgspec.Raw
        super().open(path, columns, resume_offset, exclusive=exclusive)

    def decode_row(self, data: bytes) -> Any:
        if self._columns is None:
            return msgspec.Raw(data.strip())
        return self._columns.decode(data)

    def write_page(self, rows: Sequence[Any]) -> None:
        if not rows:
            return
        if self._columns is None:
            data = b"\n".join(rows)
            if data.count(b"\n") != len(rows) - 1:
                # A resource sent pretty-printed: re-encode it on one line.
                data = b"\n".join([orjson.dumps(orjson.loads(bytes(r))) for r in rows])
        else:
            names = self._columns.columns
            dumps = orjson.dumps
            data = b"\n".join(
                [dumps(dict(zip(names, v, strict=True))) for v in self._columns.values(rows)]
            )
        f = self._out()
        f.write(data)
        f.write(b"\n")
        self.rows_written += len(rows)


_F = FORMULA_START


def _csv_cells(values: list[list[Any]]) -> list[list[Any]]:
    """:func:`neutralise` every cell, inlined: this runs once per cell of the export."""
    return [
        [
            ("'" + x if x and x[0] in _F else x)
            if x.__class__ is str
            else (
                x
                if x is None or x.__class__ in (int, float)
                else ("true" if x else "false")
                if x.__class__ is bool
                else neutralise(orjson.dumps(x).decode())
            )
            for x in v
        ]
        for v in values
    ]


class CsvSink(_FileSink):
    """UTF-8 CSV with one header row, formula-looking text cells neutralised."""

    def open(
        self,
        path: Path,
        columns: Sequence[str] | None,
        resume_offset: int | None,
        *,
        exclusive: bool = False,
    ) -> None:
        self._columns = Columns(columns or DEFAULT_COLUMNS)
        self.row_type = self._columns.row_type
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf, lineterminator="\r\n")
        super().open(path, self._columns.columns, resume_offset, exclusive=exclusive)

    def decode_row(self, data: bytes) -> Any:
        return self._columns.decode(data)

    def _start(self, length: int) -> None:
        if length == 0:
            self._writer.writerow([neutralise(c) for c in self._columns.columns])

    def write_page(self, rows: Sequence[Any]) -> None:
        self._writer.writerows(_csv_cells(self._columns.values(rows)))
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

    def open(
        self,
        path: Path,
        columns: Sequence[str] | None,
        resume_offset: int | None,
        *,
        exclusive: bool = False,
    ) -> None:
        if exclusive and resume_offset is None and path.exists():
            raise FileExistsError(f"{path} exists")
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
        self._columns = Columns(cols)
        self.row_type = self._columns.row_type
        super().open(path, cols, resume_offset, exclusive=exclusive)

    def decode_row(self, data: bytes) -> Any:
        return self._columns.decode(data)

    def _start(self, length: int) -> None:
        if length == 0:
            self._out().write(self._schema.serialize().to_pybytes())

    def _convert(self, kind: str, values: list[Any]) -> list[Any]:
        if kind == "str" or kind == "json":
            return [
                v
                if v is None or v.__class__ is str
                else orjson.dumps(v).decode()
                if v.__class__ in (dict, list)
                else str(v)
                for v in values
            ]
        if kind == "float":
            return [float(v) if isinstance(v, (int, float)) else None for v in values]
        if kind == "int":
            return [v if isinstance(v, int) and not isinstance(v, bool) else None for v in values]
        return [v if isinstance(v, bool) else None for v in values]

    def write_page(self, rows: Sequence[Any]) -> None:
        if not rows:
            return
        pa = self._pa
        by_column = list(zip(*self._columns.values(rows), strict=True))
        arrays = [
            pa.array(self._convert(k, list(col)), type=f.type)
            for col, k, f in zip(by_column, self._kinds, self._schema, strict=True)
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
