"""Templates: safe text substitution, typed placeholders, and errors at the job-file line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synap_bulk.errors import SpecError
from synap_bulk.spec import load_job
from synap_bulk.templates import (
    TemplateValueError,
    compile_template,
    render_template,
    template_fields,
)

BODY = {
    "data": {
        "type": "AttemptTimerReset",
        "attributes": {"extraTimeInMs": "{extra_ms:int}", "reason": "Access arrangement {ref}"},
        "relationships": {"attempt": {"data": {"type": "Attempt", "id": "{attempt_id}"}}},
    }
}


JOB_TEXT = """\
version: 1
name: extra-time
api: {base_url: sandbox}
task:
  kind: request
  source: rows.csv
  method: POST
  path: attempt-timer-resets
  body:
    data:
      type: AttemptTimerReset
      attributes:
        extraTimeInMs: "{extra_minutes:int}"
        reason: "{reason}"
"""


def test_render_substitutes_columns_and_converts_types() -> None:
    """Placeholders are filled from the row; :int yields a JSON integer; literals pass through."""
    t = compile_template(BODY, job=None, at="task.body")
    body = t.render({"extra_ms": " 900000 ", "ref": "AA-7", "attempt_id": "42"})
    assert body == {
        "data": {
            "type": "AttemptTimerReset",
            "attributes": {"extraTimeInMs": 900000, "reason": "Access arrangement AA-7"},
            "relationships": {"attempt": {"data": {"type": "Attempt", "id": "42"}}},
        }
    }
    assert t.columns == ["extra_ms", "ref", "attempt_id"]


def test_conversions() -> None:
    """:float, :bool and :json convert; a literal brace is written doubled."""
    t = compile_template(
        {"f": "{a:float}", "b": "{b:bool}", "j": "{c:json}", "lit": "{{x}} {a}", "n": 3, "z": None},
        job=None,
        at="task.body",
    )
    out = t.render({"a": "1.5", "b": "Yes", "c": '{"k": [1, 2]}'})
    assert out == {"f": 1.5, "b": True, "j": {"k": [1, 2]}, "lit": "{x} 1.5", "n": 3, "z": None}


def test_substitution_never_evaluates() -> None:
    """Values that look like format fields or attribute access are copied as plain text."""
    t = compile_template("/users/{id}", job=None, at="task.path")
    assert t.render({"id": "{0.__class__}"}) == "/users/{0.__class__}"
    with pytest.raises(SpecError):
        compile_template("{id.__class__:int}x", job=None, at="task.path")


def test_bad_values_name_the_column() -> None:
    """A value a conversion cannot parse, or an empty one, raises naming its column."""
    t = compile_template({"x": "{minutes:int}"}, job=None, at="task.body")
    with pytest.raises(TemplateValueError, match="minutes: not an integer: 'ten'") as info:
        t.render({"minutes": "ten"})
    assert info.value.column == "minutes"
    with pytest.raises(TemplateValueError, match="minutes: a value is required"):
        t.render({"minutes": ""})
    with pytest.raises(TemplateValueError, match="flag: not a boolean: 'maybe'"):
        compile_template("{flag:bool}", job=None, at="t").render({"flag": "maybe"})


def test_unknown_placeholder_is_reported_at_its_job_file_line(tmp_path: Path) -> None:
    """An unknown column names the job file, the line of its string, its path and the columns."""
    (tmp_path / "extra-time.yaml").write_text(JOB_TEXT)
    job = load_job(tmp_path / "extra-time.yaml")
    t = compile_template(job.spec.task.body, job=job, at="task.body")  # type: ignore[union-attr]
    with pytest.raises(SpecError) as info:
        t.validate(["attempt_id", "extra_minutes", "note"], source="arrangements.csv")
    assert str(info.value) == (
        f"{tmp_path / 'extra-time.yaml'}:14: task.body.data.attributes.reason: "
        "unknown column {reason}; arrangements.csv has: attempt_id, extra_minutes, note"
    )
    assert info.value.line == 14


def test_syntax_errors_name_the_line(tmp_path: Path) -> None:
    """Unclosed braces and conversions inside longer text are job-file errors at their line."""
    text = JOB_TEXT.split("  path:")[0] + "  path: 'attempts/{id'\n  body: ['{n:int} min']\n"
    (tmp_path / "j.yaml").write_text(text)
    job = load_job(tmp_path / "j.yaml")
    spec: Any = job.spec.task
    with pytest.raises(
        SpecError,
        match=r"j\.yaml:8: task\.path: template 'attempts/\{id': unmatched '\{' at position 9",
    ):
        compile_template(spec.path, job=job, at="task.path")
    with pytest.raises(SpecError, match=r"j\.yaml:9: task\.body\[0\]: a conversion \(:int\)"):
        compile_template(spec.body, job=job, at="task.body")
    with pytest.raises(SpecError, match="placeholders are not allowed in mapping keys"):
        compile_template({"{k}": 1}, job=None, at="task.body")


def test_unknown_suffix_is_part_of_the_column_name() -> None:
    """Only :int :float :bool :json are conversions; other colons belong to the column name."""
    t = compile_template("{a:b}", job=None, at="t")
    assert t.columns == ["a:b"]
    assert t.render({"a:b": "v"}) == "v"


def test_column_for_pointer_maps_server_errors_to_columns() -> None:
    """A source.pointer maps to the column feeding it, or to the nearest field around it."""
    t = compile_template(BODY, job=None, at="task.body")
    assert t.column_for_pointer("/data/attributes/extraTimeInMs") == "extra_ms"
    assert t.column_for_pointer("/data/relationships/attempt") == "attempt_id"
    assert t.column_for_pointer("/data/attributes/reason/0") == "ref"
    assert t.column_for_pointer("/data/type") == ""
    fields = {f.pointer: f.at for f in t.fields}
    assert fields["/data/attributes/extraTimeInMs"] == "task.body.data.attributes.extraTimeInMs"


# -- text templates (user import) -----------------------------------------------------------


def test_render_template_fills_and_escapes() -> None:
    """Placeholders are replaced as text; doubled braces are literal braces."""
    values = {"first name": "Ann", "last": "{Smith}", "n": "0"}
    assert render_template("{first name} {last}", values) == "Ann {Smith}"
    assert render_template("{{literal}} {n}}}", values) == "{literal} 0}"
    assert render_template("no fields", values) == "no fields"
    assert render_template("", values) == ""
    assert template_fields("{a}-{b}-{a} {{c}}") == ["a", "b"]


def test_column_names_are_any_text_without_braces() -> None:
    """Headers of real exports (dots, brackets, colons) are names, never attribute access."""
    values = {"Candidate No.": "S1", "Email [work]": "a@b.io", "a!r": "x", "t:start": "9"}
    assert render_template("{Candidate No.}/{Email [work]}/{a!r}/{t:start}", values) == (
        "S1/a@b.io/x/9"
    )
    assert template_fields("{Candidate No.} {t:start}") == ["Candidate No.", "t:start"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "x {}",
            "template 'x {}': empty placeholder {}; write {column} with a column name, "
            "or '{{' and '}}' for literal braces",
        ),
        ("{a", "template '{a': unmatched '{' at position 0 (write '{{' for a literal brace)"),
        ("a}", "template 'a}': unmatched '}' at position 1 (write '}}' for a literal brace)"),
        ("{a{b}", "template '{a{b}': '{' inside placeholder {a{b}"),
        (
            "{n:int}",
            "template '{n:int}': a conversion (:int) is for request bodies; here every value "
            "is text, so write {n}",
        ),
    ],
)
def test_malformed_text_templates_are_refused(template: str, message: str) -> None:
    """A malformed template is a ValueError that says what is wrong and where."""
    with pytest.raises(ValueError) as info:
        template_fields(template)
    assert str(info.value) == message
    with pytest.raises(ValueError):
        render_template(template, {"a": "1", "b": "2", "n": "3"})


def test_render_template_names_an_absent_column() -> None:
    """A column missing from the row is a ValueError naming it."""
    with pytest.raises(ValueError, match="no column 'email' in the row"):
        render_template("{email}", {"name": "Ann"})
