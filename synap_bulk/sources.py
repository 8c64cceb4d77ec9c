"""CSV input: rows with the line they start on, header checks, per-row helpers.

A source is read whole at construction: the bytes are hashed (the ledger's input hash) and
decoded once, so the rows a run processes are exactly the bytes it hashed, and a file that cannot
be used at all (missing, not UTF-8, header lacking a column, unclosed quote) fails before any
request with a :class:`~synap_bulk.errors.SourceError` naming the place. Problems of one row
(too many fields, malformed quoting) are not exceptions: they travel on :attr:`CsvRow.problem`
so the task can send that row to the failures file while the others proceed.

Line numbers are physical: the header is line 1, a record with a quoted newline spans several
lines and the next record starts after them; ``\\r\\n``, ``\\n`` and a lone ``\\r`` each end one
line (spreadsheet exports use all three).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import re
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from msgspec import Struct

from .errors import SourceError
from .sinks import FORMULA_START

if TYPE_CHECKING:
    from _csv import Reader

__all__ = [
    "ORIGIN_COLUMN",
    "CsvRow",
    "CsvSource",
    "DuplicateTracker",
    "delimiter_hint",
    "is_email",
    "is_result_file",
    "missing_values",
    "normalize_email",
    "read_table",
    "unescape_formula",
]

#: The column of a result file (failures, success) that holds the row's line in the original
#: input; a file fed back keeps those lines.
ORIGIN_COLUMN = "_line"

#: A value our result files wrote with one apostrophe added (``report.escape_formula``): one or
#: more apostrophes, then a character a spreadsheet would start a formula with.
_ESCAPED_FORMULA = re.compile("'+[" + re.escape("".join(sorted(FORMULA_START))) + "]", re.DOTALL)


def is_result_file(header: Iterable[str]) -> bool:
    """Whether a header is one of our result files (failures, success): ``_line`` plus an
    ``_error_*`` or ``_action`` column. Only those have formula-looking values escaped."""
    names = set(header)
    return ORIGIN_COLUMN in names and (
        "_action" in names or any(n.startswith("_error_") for n in names)
    )


def _our_column(name: str) -> bool:
    """A column our writers add (its text is escaped one way, ``report.csv_safe``)."""
    return name in (ORIGIN_COLUMN, "_action", "_remote_id") or name.startswith("_error_")


def unescape_formula(value: str) -> str:
    """``value`` as it was before ``report.escape_formula``: one leading ``'`` less when
    apostrophes are followed by a formula character (``'=x`` -> ``=x``, ``''=x`` -> ``'=x``)."""
    return value[1:] if _ESCAPED_FORMULA.match(value) else value


#: How many header names a "missing column" message lists before eliding the rest.
_HEADER_SHOWN = 12


class CsvRow(Struct, frozen=True, gc=False):
    """One record: the physical line it starts on, its values by column, and what is wrong with it.

    ``values`` always holds every header column (a short record is padded with ``""``), so
    failure files can write the row back whatever happened to it. ``problem`` is ``None`` for a
    well-formed row; otherwise a sentence for the failures file's ``_error_detail``.
    """

    line: int
    values: dict[str, str]
    problem: str | None = None


class CsvSource:
    """A UTF-8 CSV file (BOM optional; CRLF, LF or CR line ends) read as :class:`CsvRow` records.

    Iterating yields the data rows in file order and may be repeated (a task may count rows in
    ``prepare`` and stream them again later). Blank records (every value empty or spaces) are
    skipped. Header names are stripped of surrounding spaces; a blank or repeated name is refused,
    as is a header lacking any of ``required``.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        required: Iterable[str] = (),
        delimiter: str = ",",
        display_name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.display_name = display_name or self.path.name
        if len(delimiter) != 1 or delimiter in '\r\n"':
            raise ValueError(
                f"a CSV delimiter is one character other than a quote or newline, got {delimiter!r}"
            )
        self.delimiter = delimiter
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{self.display_name}: cannot read: {exc.strerror or exc}") from None
        self._sha256 = hashlib.sha256(data).hexdigest()
        self.has_bom = data.startswith(codecs.BOM_UTF8)
        skip = len(codecs.BOM_UTF8) if self.has_bom else 0
        body = memoryview(data)[skip:]
        offset = _utf8_error_offset(body)  # checked once: the error names its byte and line
        if offset is not None:
            offset += skip
            raise SourceError(
                f"{self.display_name}: not valid UTF-8 at byte {offset} "
                f"(line {_line_of_offset(data, offset)}); save the file as UTF-8"
            )
        # Kept compressed (a CSV shrinks 3-5 times at level 1, in ~5 ms a MB) and decompressed
        # and decoded as it is read, a chunk at a time: the whole file as bytes would be the
        # largest object of an import (12 MB for 200,000 rows), a str of it up to four times
        # that, per reader. The rows are still exactly the bytes hashed above.
        self._packed = gzip.compress(body, compresslevel=1, mtime=0)
        body.release()
        del data
        self._lines: list[str] | None = None  # physical lines, split only if a row is malformed
        self.header, self.header_line, self._body_start = self._read_header()
        self.check_columns(required)

    # -- header -------------------------------------------------------------------------------

    def _stream(self) -> io.TextIOWrapper:
        """The file's text, decompressed and decoded a chunk at a time."""
        raw = gzip.GzipFile(fileobj=io.BytesIO(self._packed), mode="rb")
        return io.TextIOWrapper(raw, encoding="utf-8", newline="")

    def _reader(self) -> Reader:
        # strict: malformed quoting is reported (per row) instead of silently merged.
        return csv.reader(self._stream(), delimiter=self.delimiter, strict=True)

    def _read_header(self) -> tuple[list[str], int, int]:
        """The header names, the line they are on, and the line the data starts after."""
        reader = self._reader()
        last = 0
        try:
            for record in reader:
                start, last = last + 1, reader.line_num
                if not "".join(record).strip():
                    continue
                header = [name.strip() for name in record]
                self._check_header(header, start)
                return header, start, last
        except csv.Error as exc:
            raise SourceError(
                f"{self.display_name}:{last + 1}: the header cannot be read: {exc}"
            ) from None
        raise SourceError(f"{self.display_name}: empty file (no header row)")

    def _check_header(self, header: list[str], line: int) -> None:
        where: dict[str, int] = {}
        for index, name in enumerate(header, start=1):
            if not name:
                raise SourceError(
                    f"{self.display_name}:{line}: blank column name in the header (column {index})"
                )
            if name in where:
                raise SourceError(
                    f"{self.display_name}:{line}: duplicate column name {name!r} in the header "
                    f"(columns {where[name]} and {index})"
                )
            where[name] = index

    def check_columns(self, required: Iterable[str]) -> None:
        """Refuse a header that lacks any of ``required``, naming them all in one message."""
        present = set(self.header)
        missing = [c for c in dict.fromkeys(required) if c not in present]
        if not missing:
            return
        shown = ", ".join(self.header[:_HEADER_SHOWN])
        if len(self.header) > _HEADER_SHOWN:
            shown += ", ..."
        hint = delimiter_hint(self.header, self.delimiter, settable=False)
        raise SourceError(
            f"{self.display_name}: missing column(s): {', '.join(missing)} (header: {shown}){hint}"
        )

    # -- rows ---------------------------------------------------------------------------------

    def sha256(self) -> str:
        """Hex SHA-256 of the file's bytes as read (the ledger refuses to resume if it changes)."""
        return self._sha256

    def __iter__(self) -> Iterator[CsvRow]:
        """The data rows. In a result file fed back (it has a ``_line`` column: the failures
        file, fixed by hand), a row keeps the line it had in the original input, so every later
        result file still points at the row the person first wrote; and when it is one of our
        result files (:func:`is_result_file`), a value escaped against spreadsheet formulas
        (``'=x``) is read as it was (``=x``), so the next run sends exactly the original."""
        if ORIGIN_COLUMN not in self.header:
            yield from self._records()
            return
        escaped = is_result_file(self.header)
        for row in self._records():
            if escaped:
                # Values our writers escaped against spreadsheet formulas get theirs back.
                row = CsvRow(
                    row.line,
                    {
                        c: v if _our_column(c) else unescape_formula(v)
                        for c, v in row.values.items()
                    },
                    row.problem,
                )
            origin = row.values.get(ORIGIN_COLUMN, "").strip()
            if origin.isdigit() and int(origin) > 0:
                yield CsvRow(int(origin), row.values, row.problem)
            else:
                yield row

    def _records(self) -> Iterator[CsvRow]:
        header = self.header
        width = len(header)
        reader = self._reader()
        name = self.display_name
        last = 0  # reader.line_num after the previous record
        # Skip up to the end of the header record (leading blank lines included).
        while last < self._body_start:
            next(reader)
            last = reader.line_num
        while True:
            try:
                for record in reader:
                    start, last = last + 1, reader.line_num
                    if len(record) == width:
                        if not "".join(record).strip():
                            continue
                        values = dict(zip(header, record, strict=True))
                        yield CsvRow(start, values, _nul_problem(values))
                    elif len(record) < width:
                        if not "".join(record).strip():
                            continue
                        values = dict(zip(header, record, strict=False))
                        for column in header[len(record) :]:
                            values[column] = ""
                        yield CsvRow(start, values, _nul_problem(values))
                    else:
                        if not "".join(record).strip():
                            continue
                        extra = record[width:]
                        shown = ", ".join(repr(v) for v in extra[:3])
                        if len(extra) > 3:
                            shown += ", ..."
                        yield CsvRow(
                            start,
                            dict(zip(header, record[:width], strict=True)),
                            f"{len(record)} fields but the header has {width} columns "
                            f"(extra: {shown})",
                        )
                return
            except csv.Error as exc:
                start, last = last + 1, reader.line_num
                message = str(exc)
                if message == "unexpected end of data":
                    raise SourceError(
                        f"{name}:{start}: a quoted field is never closed "
                        "(it runs to the end of the file)"
                    ) from None
                if message.startswith("field larger than field limit"):
                    if last > start:  # it ran over lines: a quote left open, the rest unsure
                        raise SourceError(
                            f"{name}:{start}: {message}; is a quote left open?"
                        ) from None
                    # One physical line with a huge value: that row is invalid, not the file.
                    yield CsvRow(
                        start,
                        self._split_line(start),
                        f"a value longer than {csv.field_size_limit():,} characters (the "
                        "most one CSV field may hold)",
                    )
                    continue
                # The reader drops the rest of the bad line and resumes at the next one; the
                # failures file still gets the row's values, read leniently from its lines.
                yield CsvRow(
                    start,
                    self._lenient_values(start, last),
                    f"malformed quoting: {message} (lines {start}-{last})"
                    if last > start
                    else f"malformed quoting: {message}",
                )

    def _split_line(self, line: int) -> dict[str, str]:
        """The values of physical line ``line`` split on the delimiter (a row already in error
        whose field is too long for the csv module: the failures file still gets its values)."""
        if self._lines is None:
            self._lines = self._stream().readlines()
        fields = self._lines[line - 1].rstrip("\r\n").split(self.delimiter)
        values = dict.fromkeys(self.header, "")
        values.update(zip(self.header, fields, strict=False))
        return values

    def _lenient_values(self, first: int, last: int) -> dict[str, str]:
        """Best-effort values of physical lines ``first..last`` (only for rows already in error)."""
        if self._lines is None:
            self._lines = self._stream().readlines()
        raw = "".join(self._lines[first - 1 : last])
        records = list(csv.reader(io.StringIO(raw, newline=""), delimiter=self.delimiter))
        fields = [v for record in records[:1] for v in record]
        values = dict.fromkeys(self.header, "")
        values.update(zip(self.header, fields, strict=False))
        return values


def _nul_problem(values: Mapping[str, str]) -> str | None:
    """Why a row holding a NUL character is invalid (no API stores one in text), or None."""
    for column, value in values.items():
        if "\x00" in value:
            return f"column {column} holds a NUL character (\\0); remove it"
    return None


#: Bytes checked at once by :func:`_utf8_error_offset`.
_CHECK_CHUNK = 1 << 20


def _utf8_error_offset(data: memoryview) -> int | None:
    """The offset of the first byte of ``data`` that is not valid UTF-8 (as ``bytes.decode``
    reports it), or None; checked a chunk at a time, never holding the whole text as a str."""
    pos, size = 0, len(data)
    while True:
        end = pos + _CHECK_CHUNK
        final = end >= size
        try:
            _, used = codecs.utf_8_decode(data[pos:end], "strict", final)
        except UnicodeDecodeError as exc:
            return pos + exc.start
        if final:
            return None
        pos += used


def _line_of_offset(data: bytes, offset: int) -> int:
    """The physical line (from 1) holding byte ``offset``; CRLF, LF and CR each end a line."""
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def read_table(
    path: Path | str, required: Iterable[str] = (), *, delimiter: str = ","
) -> list[CsvRow]:
    """Every row of a small CSV (mappings, exclusions, marker lists), header checked."""
    return list(CsvSource(path, required=required, delimiter=delimiter))


# -- per-row checks ----------------------------------------------------------------------------

#: Pragmatic, not RFC 5322: one ``@``, no spaces, a domain of non-empty dot-separated labels.
_EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+")


def normalize_email(value: str) -> str:
    """The form emails are compared in: trimmed and lower-cased (Synap matches them so)."""
    return value.strip().lower()


#: Delimiters spreadsheets save with besides the comma (European locales use ";").
_OTHER_DELIMITERS = {";": "';'", "\t": "'\\t' (tab)", "|": "'|'"}


def delimiter_hint(header: Sequence[str], delimiter: str, *, settable: bool = True) -> str:
    """A hint when a header read as one column looks written with another delimiter, e.g.
    ``; the header looks ';'-separated: set task.delimiter: ';'`` ('' otherwise). For a file
    whose delimiter has no setting (``settable=False``), the hint says to save it with commas."""
    if len(header) != 1:
        return ""
    for other, shown in _OTHER_DELIMITERS.items():
        if other != delimiter and other in header[0]:
            if not settable:
                return f"; the header looks {shown}-separated: save the file comma-separated"
            return f"; the header looks {shown}-separated: set task.delimiter: {shown.split()[0]}"
    return ""


def is_email(value: str) -> bool:
    """Whether ``value`` looks like an address the server would accept (catches typos early)."""
    return len(value) <= 254 and _EMAIL.fullmatch(value) is not None


def missing_values(row: CsvRow | Mapping[str, str], columns: Iterable[str]) -> list[str]:
    """The columns among ``columns`` whose value is empty or only spaces, in the order given."""
    values = row.values if isinstance(row, CsvRow) else row
    return [c for c in columns if not (values.get(c) or "").strip()]


class DuplicateTracker:
    """Remembers the first line each key was seen on, to name it when the key repeats.

    Kept compact, as it holds every key of an input at once (a dict of ``str`` keys and ``int``
    lines cost ~124 bytes a key, 25 MB for 200,000 rows): an open-addressing table of entry
    numbers over flat arrays of each key's hash, line and end in one buffer of the keys' UTF-8
    bytes (~40 bytes a key plus its bytes). Keys are compared exactly, bytes for bytes.
    """

    __slots__ = ("_ends", "_hashes", "_keys", "_lines", "_mask", "_slots")

    _FIRST_SIZE = 1024  # table slots at first; doubled whenever half of them are taken

    def __init__(self) -> None:
        self._slots = array("i", [-1]) * self._FIRST_SIZE  # entry number, -1 when empty
        self._mask = self._FIRST_SIZE - 1
        self._hashes = array("q")
        self._lines = array("i")
        self._ends = array("q")  # where each key's bytes end in _keys
        self._keys = bytearray()

    def _find(self, data: bytes, h: int) -> tuple[int, int]:
        """(entry number or -1, the slot where it is or would go) of the key ``data``."""
        slots, hashes, mask = self._slots, self._hashes, self._mask
        i = h & mask
        while True:
            entry = slots[i]
            if entry < 0:
                return -1, i
            if hashes[entry] == h:
                start = self._ends[entry - 1] if entry else 0
                if self._keys[start : self._ends[entry]] == data:
                    return entry, i
            i = (i + 1) & mask

    def seen(self, key: str, line: int) -> int | None:
        """The earlier line of ``key``, or ``None`` (and ``line`` is remembered) if it is new."""
        data = key.encode("utf-8", "surrogatepass")
        h = hash(key)
        slot = h & self._mask
        if self._slots[slot] >= 0:  # taken: the key itself, or another one probed past
            entry, slot = self._find(data, h)
            if entry >= 0:
                earlier = self._lines[entry]
                return None if earlier == line else earlier
        entry = len(self._hashes)
        self._slots[slot] = entry
        self._hashes.append(h)
        self._lines.append(line)
        keys = self._keys
        keys += data
        self._ends.append(len(keys))
        if 2 * entry + 2 > len(self._slots):
            self._grow()
        return None

    def _grow(self) -> None:
        size = 2 * len(self._slots)
        slots = array("i", [-1]) * size
        mask = size - 1
        for entry, h in enumerate(self._hashes):
            i = h & mask
            while slots[i] >= 0:
                i = (i + 1) & mask
            slots[i] = entry
        self._slots, self._mask = slots, mask

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        return self._find(key.encode("utf-8", "surrogatepass"), hash(key))[0] >= 0

    def __len__(self) -> int:
        return len(self._hashes)
