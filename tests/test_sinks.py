"""Export sinks: formats, columns, formula neutralisation, and cut-back-and-append resume."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from synap_bulk.errors import CheckpointError
from synap_bulk.sinks import (
    DEFAULT_COLUMNS,
    Columns,
    CsvSink,
    NdjsonSink,
    ParquetSink,
    Sink,
    make_sink,
    neutralise,
)


def attempt(i: int, **attrs: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "title": f"Attempt {i}",
        "examStatus": "submitted",
        "score": i / 2,
        "marks": {"points": i, "maxPoints": 10},
        "updatedAt": "2026-05-01T10:00:00Z",
    }
    base.update(attrs)
    return {
        "type": "Attempt",
        "id": str(i),
        "attributes": base,
        "relationships": {
            "user": {"data": {"type": "User", "id": f"u{i}"}},
            "examV2": {"data": {"type": "Exam-V-2", "id": "e1"}},
            "markers": {"data": [{"type": "User", "id": "m1"}, {"type": "User", "id": "m2"}]},
        },
    }


def write(sink: Sink, resources: list[dict[str, Any]]) -> None:
    """Write resources the way the exporter does: decoded from JSON into the sink's row type."""
    sink.write_page([sink.decode_row(orjson.dumps(r)) for r in resources])


def read(columns: list[str], resource: dict[str, Any]) -> list[Any]:
    c = Columns(columns)
    return c.values([c.decode(orjson.dumps(resource))])[0]


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_columns_read_dotted_paths() -> None:
    """Dotted paths reach ids, nested attributes, linkage ids and to-many linkage."""
    r = attempt(3)
    cols = [
        "id",
        "attributes.score",
        "attributes.marks.points",
        "relationships.user.id",
        "relationships.examV2",
        "relationships.markers.id",
        "attributes.missing",
        "relationships.nothing.id",
    ]
    assert read(cols, r) == [
        "3",
        1.5,
        3,
        "u3",
        "e1",
        "m1;m2",
        None,
        None,
    ]
    assert read(["attributes.marks", "attributes.marks.points"], r) == [
        {"points": 3, "maxPoints": 10},
        3,
    ]
    with pytest.raises(ValueError, match=r"relationships\.<name>\.id"):
        Columns(["relationships.user.name"])
    with pytest.raises(ValueError, match="invalid column"):
        Columns(["attributes..score"])


def test_columns_survive_null_in_the_middle_of_a_path() -> None:
    """An explicit null object or linkage yields empty values, not an error."""
    r = attempt(1)
    r["attributes"]["marks"] = None
    r["relationships"]["user"] = {"data": None}
    del r["relationships"]["examV2"]
    cols = ["id", "attributes.marks.points", "relationships.user.id", "relationships.examV2.id"]
    assert read(cols, r) == ["1", None, None, None]
    assert read(["id"], {"id": "9", "type": "Attempt"}) == ["9"]
    graded = attempt(2, grade={"letter": "B", "band": {"n": 2}})
    cols = ["attributes.grade.letter", "attributes.grade.band.n", "attributes.marks.maxPoints"]
    assert read(cols, graded) == ["B", 2, 10]
    assert read(cols, attempt(3, grade=None, marks=None)) == [None, None, None]
    assert read(["attributes", "meta.x"], {"id": "1", "attributes": None}) == [None, None]


def test_neutralise_prefixes_formula_text_but_keeps_numbers() -> None:
    """Text starting with = + - @ tab or CR gets a quote; JSON numbers stay numeric."""
    for text in ["=1+1", "+1", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "\rx", "-5"]:
        assert neutralise(text) == "'" + text
    assert neutralise("plain") == "plain"
    assert neutralise("a=b") == "a=b"
    assert neutralise("") == ""
    assert neutralise(-2.5) == -2.5
    assert neutralise(-3) == -3
    assert neutralise(None) == ""
    assert neutralise(True) == "true"


def test_csv_sink_neutralises_formula_cells(tmp_path: Path) -> None:
    """A CSV export neutralises formula-looking titles but writes negative scores as numbers."""
    path = tmp_path / "out.csv"
    sink = CsvSink()
    sink.open(path, ["id", "attributes.title", "attributes.score"], None)
    write(
        sink,
        [
            attempt(1, title='=HYPERLINK("http://evil","x")', score=-2.5),
            attempt(2, title="@cmd", score=4),
            attempt(3, title="-1+1", score=None),
            attempt(4, title="\tTab", score=0),
        ],
    )
    sink.finish()
    rows = read_csv(path)
    assert [r["attributes.title"] for r in rows] == [
        '\'=HYPERLINK("http://evil","x")',
        "'@cmd",
        "'-1+1",
        "'\tTab",
    ]
    assert [r["attributes.score"] for r in rows] == ["-2.5", "4", "", "0"]


def test_csv_sink_default_columns_and_header_once(tmp_path: Path) -> None:
    """Without columns the CSV has the default header exactly once, then one row per resource."""
    path = tmp_path / "out.csv"
    sink = CsvSink()
    sink.open(path, None, None)
    write(sink, [attempt(1), attempt(2)])
    sink.commit()
    write(sink, [attempt(3)])
    sink.finish()
    text = path.read_text()
    assert text.splitlines()[0] == ",".join(DEFAULT_COLUMNS)
    rows = read_csv(path)
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["relationships.user.id"] == "u1"
    assert rows[0]["attributes.marks.points"] == "1"


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_resume_cuts_uncommitted_rows_and_appends(tmp_path: Path, fmt: str) -> None:
    """Reopening at the committed length drops what came after it and appends: no dup, no gap."""
    path = tmp_path / f"out.{fmt}"
    sink: Sink = make_sink(fmt)
    sink.open(path, None, None)
    write(sink, [attempt(1), attempt(2)])
    committed = sink.commit()
    assert committed == path.stat().st_size
    write(sink, [attempt(3)])  # written, never committed: the "crash" loses it
    sink.commit()
    sink.close()
    again: Sink = make_sink(fmt)
    again.open(path, None, committed)
    write(again, [attempt(3), attempt(4)])
    again.finish()
    if fmt == "csv":
        ids = [r["id"] for r in read_csv(path)]
        assert path.read_text().count("attributes.title") == 1
    else:
        ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == ["1", "2", "3", "4"]


def test_resume_offset_zero_on_a_new_csv_writes_the_header(tmp_path: Path) -> None:
    """A resume at length 0 (nothing committed yet) still gets exactly one header."""
    path = tmp_path / "out.csv"
    sink = CsvSink()
    sink.open(path, ["id"], 0)
    write(sink, [attempt(7)])
    sink.finish()
    assert path.read_bytes() == b"id\r\n7\r\n"


def test_resume_refuses_a_file_shorter_than_committed(tmp_path: Path) -> None:
    """If the output shrank or vanished since the checkpoint, resume fails with a clear error."""
    path = tmp_path / "out.ndjson"
    path.write_bytes(b"{}\n")
    with pytest.raises(CheckpointError, match="has 3 bytes but the ledger says 100"):
        NdjsonSink().open(path, None, 100)
    with pytest.raises(CheckpointError, match="is gone"):
        NdjsonSink().open(tmp_path / "missing.ndjson", None, 10)


def test_ndjson_full_resources_or_chosen_columns(tmp_path: Path) -> None:
    """NDJSON keeps the whole resource by default and writes flat objects for chosen columns."""
    full = tmp_path / "full.ndjson"
    sink = NdjsonSink()
    sink.open(full, None, None)
    write(sink, [attempt(1)])
    sink.finish()
    assert json.loads(full.read_text()) == attempt(1)
    flat = tmp_path / "flat.ndjson"
    sink = NdjsonSink()
    sink.open(flat, ["id", "attributes.score", "relationships.user.id"], None)
    write(sink, [attempt(1)])
    sink.finish()
    assert json.loads(flat.read_text()) == {
        "id": "1",
        "attributes.score": 0.5,
        "relationships.user.id": "u1",
    }


def test_parquet_sink_resumes_and_types_columns(tmp_path: Path) -> None:
    """Parquet output resumes through its staging file and keeps numbers numeric."""
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "out.parquet"
    sink = ParquetSink()
    sink.open(path, None, None)
    write(sink, [attempt(1), attempt(2)])
    committed = sink.commit()
    write(sink, [attempt(3)])
    sink.close()
    assert not path.exists()
    again = ParquetSink(row_group_size=2)
    again.open(path, None, committed)
    write(again, [attempt(3)])
    write(again, [attempt(4, score=-1.0)])
    again.finish()
    table = pq.read_table(path)
    assert table.column("id").to_pylist() == ["1", "2", "3", "4"]
    assert table.column("attributes.score").to_pylist() == [0.5, 1.0, 1.5, -1.0]
    assert str(table.schema.field("attributes.marks.points").type) == "double"
    assert not (tmp_path / "out.parquet.partial").exists()


def test_parquet_empty_export_is_a_valid_file(tmp_path: Path) -> None:
    """An export with no rows still produces a readable Parquet file with the schema."""
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "empty.parquet"
    sink = ParquetSink()
    sink.open(path, ["id", "attributes.score"], None)
    sink.finish()
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.column_names == ["id", "attributes.score"]


def test_parquet_without_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pyarrow the error tells the user which extra to install."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    from synap_bulk.errors import SpecError

    with pytest.raises(SpecError, match=r'pip install -e "\.\[parquet\]"'):
        ParquetSink()


def test_make_sink_rejects_unknown_format() -> None:
    """An unknown format name is refused."""
    with pytest.raises(ValueError, match="unknown export format 'xlsx'"):
        make_sink("xlsx")
