"""CSV sources: line numbers, encodings, header checks and per-row problems."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from synap_bulk import sources
from synap_bulk.errors import SourceError
from synap_bulk.sources import (
    CsvRow,
    CsvSource,
    DuplicateTracker,
    is_email,
    missing_values,
    normalize_email,
    read_table,
)


def write(tmp_path: Path, data: bytes | str, name: str = "candidates.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def lines_and_values(source: CsvSource) -> list[tuple[int, dict[str, str]]]:
    return [(row.line, row.values) for row in source]


def test_quoted_newlines_give_each_record_its_starting_line(tmp_path: Path) -> None:
    """A record with quoted newlines spans lines and the next record's line counts them."""
    path = write(
        tmp_path,
        'email,note\r\na@x.io,"one\r\ntwo\nthree"\r\nb@x.io,plain\r\nc@x.io,"x\ry"\nd@x.io,z\n',
    )
    assert lines_and_values(CsvSource(path)) == [
        (2, {"email": "a@x.io", "note": "one\r\ntwo\nthree"}),
        (5, {"email": "b@x.io", "note": "plain"}),
        (6, {"email": "c@x.io", "note": "x\ry"}),
        (8, {"email": "d@x.io", "note": "z"}),
    ]


def test_bom_and_crlf_are_transparent(tmp_path: Path) -> None:
    """A BOM is not part of the first column name and CRLF does not leak into values."""
    path = write(tmp_path, b"\xef\xbb\xbfemail,name\r\na@x.io,Ann\r\nb@x.io,Bob\r\n")
    source = CsvSource(path, required=["email"])
    assert source.header == ["email", "name"]
    assert source.has_bom
    assert lines_and_values(source) == [
        (2, {"email": "a@x.io", "name": "Ann"}),
        (3, {"email": "b@x.io", "name": "Bob"}),
    ]


def test_lone_cr_line_ends_are_lines(tmp_path: Path) -> None:
    """Old Mac-style CR-only files are split into lines and numbered like any other."""
    path = write(tmp_path, "email\ra@x.io\rb@x.io\r")
    assert [(r.line, r.values["email"]) for r in CsvSource(path)] == [(2, "a@x.io"), (3, "b@x.io")]


def test_blank_rows_are_skipped_but_keep_counting_lines(tmp_path: Path) -> None:
    """Blank lines and rows of empty cells are skipped; later rows keep their physical lines."""
    path = write(tmp_path, "\nemail,name\n\n , \n,,\na@x.io,Ann\n")
    source = CsvSource(path)
    assert source.header_line == 2
    assert lines_and_values(source) == [(6, {"email": "a@x.io", "name": "Ann"})]


def test_iteration_can_be_repeated(tmp_path: Path) -> None:
    """A task may count the rows in prepare and stream them again."""
    path = write(tmp_path, "email\na@x.io\nb@x.io\n")
    source = CsvSource(path)
    assert list(source) == list(source)
    assert len(list(source)) == 2


def test_not_utf8_names_byte_offset_and_line(tmp_path: Path) -> None:
    """A Latin-1 byte is a SourceError naming its byte offset and line."""
    data = b"email,name\r\na@x.io,Ann\r\nb@x.io,Ren" + b"\xe9e\r\n"
    path = write(tmp_path, data)
    with pytest.raises(SourceError) as info:
        CsvSource(path)
    offset = data.index(b"\xe9")
    assert str(info.value) == (
        f"candidates.csv: not valid UTF-8 at byte {offset} (line 3); save the file as UTF-8"
    )


def test_not_utf8_offset_counts_the_bom(tmp_path: Path) -> None:
    """The byte offset is into the file as stored, BOM included."""
    path = write(tmp_path, b"\xef\xbb\xbfemail\n\xff\n")
    with pytest.raises(SourceError, match=r"not valid UTF-8 at byte 9 \(line 2\)"):
        CsvSource(path)


@pytest.mark.parametrize("where", range(0, 9))
def test_utf8_is_checked_in_chunks_with_the_whole_file_s_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: int
) -> None:
    """The check reads a chunk at a time: a character split over two chunks is valid, and a bad
    byte anywhere is named at the offset decoding the whole file gives."""
    monkeypatch.setattr(sources, "_CHECK_CHUNK", 4)
    good = "email,name\nä@x.io,Zoë 😀\n".encode()
    assert [r.values["name"] for r in CsvSource(write(tmp_path, good))] == ["Zoë 😀"]
    bad = good[: 11 + where] + b"\xc3(" + good[11 + where :]
    with pytest.raises(UnicodeDecodeError) as whole:
        bad.decode("utf-8")
    with pytest.raises(SourceError, match=rf"not valid UTF-8 at byte {whole.value.start} "):
        CsvSource(write(tmp_path, bad))
    cut = good + "€".encode()[:2]  # a character cut short by the end of the file
    with pytest.raises(SourceError, match=rf"not valid UTF-8 at byte {len(good)} \(line 3\)"):
        CsvSource(write(tmp_path, cut))


def test_source_does_not_keep_the_file_whole(tmp_path: Path) -> None:
    """The text is kept compressed, a fraction of the file's size, and still reads back as it
    was, as often as asked."""
    rows = [f"C{i:06d},first.last.{i}@example.edu,Cohort {i % 3:02d}" for i in range(20_000)]
    data = ("\ufeffcandidate_no,email,cohort\r\n" + "\r\n".join(rows) + "\r\n").encode()
    source = CsvSource(write(tmp_path, data))
    assert len(source._packed) < len(data) / 3
    for _ in range(2):
        values = [",".join(r.values.values()) for r in source]
        assert values == rows
    assert source.sha256() == hashlib.sha256(data).hexdigest()


def test_missing_columns_are_named_together(tmp_path: Path) -> None:
    """Every missing required column is named in one message, with the header."""
    path = write(tmp_path, "first_name,last_name,candidate_no\nA,B,1\n")
    with pytest.raises(SourceError) as info:
        CsvSource(path, required=["email", "first_name", "cohort"])
    assert str(info.value) == (
        "candidates.csv: missing column(s): email, cohort "
        "(header: first_name, last_name, candidate_no)"
    )


def test_a_semicolon_side_file_missing_columns_says_to_save_it_with_commas(
    tmp_path: Path,
) -> None:
    """A side CSV (e.g. assign-markers' mapping, which has no delimiter setting) saved with ';'
    is refused with a hint to save it comma-separated, not a key that does not exist."""
    path = write(tmp_path, "attempt;marker\na1;m@x.org\n", name="map.csv")
    with pytest.raises(SourceError) as info:
        CsvSource(path, required=["marker"])
    assert str(info.value) == (
        "map.csv: missing column(s): marker (header: attempt;marker); the header looks "
        "';'-separated: save the file comma-separated"
    )


def test_long_header_is_elided_in_messages(tmp_path: Path) -> None:
    """A very wide header is shortened in the message rather than flooding the screen."""
    path = write(tmp_path, ",".join(f"c{i}" for i in range(20)) + "\n")
    with pytest.raises(SourceError) as info:
        CsvSource(path, required=["email"], display_name="wide.csv")
    assert str(info.value) == (
        "wide.csv: missing column(s): email "
        "(header: c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, ...)"
    )


def test_blank_and_duplicate_header_names_are_refused(tmp_path: Path) -> None:
    """A header cell that is blank, or repeats another after trimming, is refused."""
    with pytest.raises(SourceError) as info:
        CsvSource(write(tmp_path, "email,,name\n"))
    assert str(info.value) == "candidates.csv:1: blank column name in the header (column 2)"
    with pytest.raises(SourceError) as info:
        CsvSource(write(tmp_path, "email,name, email\n"))
    assert str(info.value) == (
        "candidates.csv:1: duplicate column name 'email' in the header (columns 1 and 3)"
    )


def test_empty_and_missing_files(tmp_path: Path) -> None:
    """An empty file and a missing one are SourceErrors naming the file."""
    with pytest.raises(SourceError, match=r"^candidates.csv: empty file \(no header row\)$"):
        CsvSource(write(tmp_path, "\r\n\r\n"))
    with pytest.raises(SourceError, match=r"^nope.csv: cannot read: No such file"):
        CsvSource(tmp_path / "nope.csv")


def test_too_many_fields_is_a_row_problem(tmp_path: Path) -> None:
    """A row with extra fields carries a problem; the rows around it are fine."""
    path = write(tmp_path, "email,name\na@x.io,Ann\nb@x.io,Bob,extra,more\nc@x.io\n")
    rows = list(CsvSource(path))
    assert rows == [
        CsvRow(2, {"email": "a@x.io", "name": "Ann"}),
        CsvRow(
            3,
            {"email": "b@x.io", "name": "Bob"},
            "4 fields but the header has 2 columns (extra: 'extra', 'more')",
        ),
        CsvRow(4, {"email": "c@x.io", "name": ""}),
    ]


def test_malformed_quoting_is_a_row_problem(tmp_path: Path) -> None:
    """Text after a closing quote spoils that row only, and later lines stay numbered."""
    path = write(tmp_path, 'email,name\na@x.io,"Ann"x\nb@x.io,Bob\n')
    rows = list(CsvSource(path))
    assert rows[0].line == 2
    assert rows[0].problem == "malformed quoting: ',' expected after '\"'"
    assert rows[0].values == {"email": "a@x.io", "name": "Annx"}
    assert rows[1] == CsvRow(3, {"email": "b@x.io", "name": "Bob"})


def test_unclosed_quote_is_a_source_error(tmp_path: Path) -> None:
    """A quote never closed would swallow the rest of the file: refuse it, naming the line."""
    path = write(tmp_path, 'email,name\na@x.io,Ann\nb@x.io,"Bob\nc@x.io,Cy\n')
    with pytest.raises(SourceError) as info:
        list(CsvSource(path))
    assert str(info.value) == (
        "candidates.csv:3: a quoted field is never closed (it runs to the end of the file)"
    )


def test_delimiter_and_sha256(tmp_path: Path) -> None:
    """Semicolon files read with delimiter=';'; sha256 is of the file's bytes."""
    data = b"email;name\na@x.io;Ann, Jr\n"
    source = CsvSource(write(tmp_path, data), delimiter=";")
    assert [r.values for r in source] == [{"email": "a@x.io", "name": "Ann, Jr"}]
    assert source.sha256() == hashlib.sha256(data).hexdigest()


def test_read_table_checks_the_header(tmp_path: Path) -> None:
    """read_table returns every row and applies the required-column check."""
    path = write(tmp_path, "marker,max\nm1@x.io,3\n", name="markers.csv")
    assert [r.values for r in read_table(path, ["marker"])] == [{"marker": "m1@x.io", "max": "3"}]
    with pytest.raises(SourceError, match=r"markers\.csv: missing column"):
        read_table(path, ["email"])


def test_email_helpers() -> None:
    """Emails are compared trimmed and lower-cased; the format check is pragmatic."""
    assert normalize_email("  Ann.Smith@Example.COM ") == "ann.smith@example.com"
    for good in ["a@b.co", "first.last+tag@sub.example.ac.uk", "o'neil@x.io"]:
        assert is_email(good), good
    for bad in ["", "a", "a@b", "a@@b.co", "a b@c.io", "a@b .io", "@b.io", "a@.b.io", "a@b.io."]:
        assert not is_email(bad), bad


def test_duplicate_tracker_names_the_first_line() -> None:
    """A repeated key returns the line it was first seen on; new keys return None."""
    seen = DuplicateTracker()
    assert seen.seen("a", 2) is None
    assert seen.seen("b", 3) is None
    assert seen.seen("a", 7) == 2
    assert seen.seen("a", 9) == 2
    assert "a" in seen and len(seen) == 2
    assert seen.seen("a", 2) is None  # the same row again (a fed-back file keeps lines)


def test_duplicate_tracker_agrees_with_a_dict_over_many_keys() -> None:
    """Past the table's growth, with keys of every kind (non-ASCII, empty, prefixes of each
    other, one hash apart), it answers exactly as a dict of first lines does."""
    rng = random.Random(7)
    pool = [f"C{i:06d}" for i in range(3000)] + ["", "é", "e\u0301", "C00001", "😀x", "\udc80"]
    seen, first = DuplicateTracker(), dict[str, int]()
    for line in range(2, 12_000):
        key = rng.choice(pool)
        expected = first.setdefault(key, line)
        assert seen.seen(key, line) == (None if expected == line else expected)
    assert len(seen) == len(first)
    assert all(k in seen for k in pool) == (len(first) == len(pool))
    assert all(k in seen for k in first) and "C999999" not in seen and 3 not in seen


def test_missing_values_lists_blank_required_cells() -> None:
    """Empty or whitespace-only cells (and absent ones) are missing, in the order asked."""
    row = CsvRow(2, {"email": " ", "name": "Ann", "cohort": ""})
    assert missing_values(row, ["cohort", "name", "email", "absent"]) == [
        "cohort",
        "email",
        "absent",
    ]
    assert missing_values({"name": "Ann"}, ["name"]) == []


def test_malformed_multiline_row_keeps_its_values_and_later_lines(tmp_path: Path) -> None:
    """A malformed multi-line record names its lines and keeps its values; the next row follows."""
    path = write(tmp_path, 'email,note\na@x.io,"x\ny"z\nb@x.io,ok\n')
    bad, good = list(CsvSource(path))
    assert bad == CsvRow(
        2,
        {"email": "a@x.io", "note": "x\nyz"},
        "malformed quoting: ',' expected after '\"' (lines 2-3)",
    )
    assert good == CsvRow(4, {"email": "b@x.io", "note": "ok"})


def test_a_fed_back_result_file_keeps_the_original_lines(tmp_path: Path) -> None:
    """Rows of a failures file fed back as input keep the line of the original CSV (its
    `_line` column); a row added by hand without one has its own line in the new file."""
    path = tmp_path / "fixed.csv"
    path.write_text(
        "email,_line,_error_detail\na@x.org,17,not an email\nb@x.org,,\nc@x.org,1043,dup\n"
    )
    rows = list(CsvSource(path))
    assert [r.line for r in rows] == [17, 3, 1043]
    assert rows[0].values["email"] == "a@x.org"
