"""The YAML reader on its own: lines of keys, msgspec paths as file:line, ${ENV} expansion."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from msgspec import Meta, Struct
from msgspec import inspect as mi

from synap_bulk.errors import SpecError
from synap_bulk.yamlmarks import Reader, compose


class Item(Struct, forbid_unknown_fields=True):
    name: str
    count: Annotated[int, Meta(ge=1)] = 1


class Doc(Struct, forbid_unknown_fields=True):
    title: str
    items: list[Item] = []


def read(text: str, target: Any = None) -> tuple[Reader, Any]:
    root = compose(text, "f.yaml")
    assert root is not None
    reader = Reader("f.yaml", None if target is None else mi.type_info(target))
    return reader, reader.build(root)


def test_every_nested_key_and_list_item_has_its_line() -> None:
    """A nested key and a list item record their own line; an unwritten path takes its parent's."""
    reader, data = read("top: 1\nouter:\n  inner:\n    deep: x\n  list:\n    - a\n    - b\n")
    assert data == {"top": 1, "outer": {"inner": {"deep": "x"}, "list": ["a", "b"]}}
    assert reader.lines["outer.inner.deep"] == 4
    assert reader.lines["outer.list[1]"] == 7
    assert reader.line("outer.inner.missing") == 3
    assert reader.line("nowhere") == 1


def test_a_msgspec_validation_path_becomes_file_line_and_dotted_path() -> None:
    """msgspec's ``$.items[1].count`` is reported at that value's line, in words."""
    reader, data = read("title: t\nitems:\n  - name: a\n  - name: b\n    count: 0\n", Doc)
    with pytest.raises(SpecError) as info:
        reader.convert(data, Doc)
    assert str(info.value) == "f.yaml:5: items[1].count: expected an integer >= 1, got 0"
    assert (info.value.line, info.value.path) == (5, "items[1].count")


def test_an_unknown_key_names_the_closest_allowed_one_at_its_line() -> None:
    """A misspelt key is refused at its own line with a did-you-mean."""
    reader, data = read("title: t\nitems:\n  - name: a\n    cuont: 2\n", Doc)
    with pytest.raises(SpecError) as info:
        reader.convert(data, Doc)
    assert str(info.value) == 'f.yaml:4: items[0].cuont: unknown key (did you mean "count"?)'


def test_numbers_stay_text_where_the_target_wants_a_string() -> None:
    """``title: 2027`` gives the string "2027" for a str field, and the int 2027 unguided."""
    assert read("title: 2027\n", Doc)[1] == {"title": "2027"}
    assert read("title: 2027\n")[1] == {"title": 2027}


def test_env_expansion_defaults_and_dollar_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${NAME}``, ``${NAME:-default}`` and ``$$`` expand; a plain scalar may become a number."""
    monkeypatch.setenv("YM_RATE", "12.5")
    monkeypatch.setenv("YM_EMPTY", "")
    monkeypatch.delenv("YM_UNSET", raising=False)
    reader, data = read(
        "rate: ${YM_RATE}\n"
        "quoted: '${YM_RATE}'\n"
        "fallback: ${YM_UNSET:-p:default}\n"
        "empty: ${YM_EMPTY:-used}\n"
        "price: $$5 ${YM_EMPTY}\n"
    )
    assert data == {
        "rate": 12.5,
        "quoted": "12.5",
        "fallback": "p:default",
        "empty": "used",
        "price": "$5 ",
    }
    assert reader.from_env == {
        "rate": "YM_RATE",
        "quoted": "YM_RATE",
        "fallback": "YM_UNSET",
        "empty": "YM_EMPTY",
        "price": "YM_EMPTY",
    }


def test_an_unset_variable_is_an_error_at_its_line_and_env_values_are_not_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing variable is named at its line; a bad value from the environment is not shown."""
    monkeypatch.delenv("YM_UNSET", raising=False)
    monkeypatch.setenv("YM_SECRET", "s3cret")
    with pytest.raises(SpecError) as info:
        read("title: t\nitems:\n  - name: ${YM_UNSET}\n")
    assert str(info.value) == "f.yaml:3: items[0].name: environment variable YM_UNSET is not set"
    reader, data = read("title: t\nitems:\n  - name: a\n    count: ${YM_SECRET}\n", Doc)
    with pytest.raises(SpecError) as info:
        reader.convert(data, Doc)
    message = str(info.value)
    assert message == (
        "f.yaml:4: items[0].count: expected an integer >= 1, got the value of ${YM_SECRET}"
    )
    assert "s3cret" not in message


def test_a_yaml_syntax_error_names_its_line() -> None:
    """Unparsable YAML is a SpecError at the line the parser stopped on."""
    with pytest.raises(SpecError) as info:
        compose("a: 1\nb: [2\nc: 3\n", "f.yaml")
    assert info.value.line is not None and info.value.line >= 2
    assert str(info.value).startswith(f"f.yaml:{info.value.line}: invalid YAML: ")
    assert compose("", "f.yaml") is None


def error(text: str, target: Any = None) -> str:
    with pytest.raises(SpecError) as info:
        read(text, target)
    return str(info.value)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_an_alias_bomb_is_refused_at_the_alias_that_crosses_the_budget() -> None:
    """Aliases that together add more than 10,000 nodes are refused at the alias's line, before
    anything is expanded; a few aliases within the budget expand as written."""
    assert error(BOMB) == "f.yaml:5: aliases expand to more than 10000 nodes (alias *d)"
    assert read("a: &a [1, 2]\nb: [*a, *a]\n")[1] == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


def test_a_recursive_alias_is_refused_at_its_line() -> None:
    """An alias inside the node it names is an error at the alias, not a RecursionError."""
    assert error("top: 1\nloop: &l\n  - a\n  - *l\n") == (
        "f.yaml:4: alias *l refers to a node that contains it (a recursive alias)"
    )
    assert error("m: &m {self: *m}\n") == (
        "f.yaml:1: alias *m refers to a node that contains it (a recursive alias)"
    )


def test_nesting_deeper_than_the_limit_is_refused_at_its_line() -> None:
    """64 levels of nesting read; one more, or 3,000 brackets, is a SpecError at the first node
    too deep, never a RecursionError."""
    assert read("[" * 63 + "]" * 63)[1] is not None
    assert error("a: " + "[" * 64 + "]" * 64) == "f.yaml:1: nested more than 64 levels deep"
    assert error("a: 1\nb: " + "[" * 3000) == "f.yaml:2: nested more than 64 levels deep"
    block = "".join(f"{'  ' * i}k{i}:\n" for i in range(70))
    assert error(block) == "f.yaml:64: nested more than 64 levels deep"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("title: !foo bar\n", 'f.yaml:1: title: YAML tags are not allowed, got "!foo"'),
        ("items: !seq [a]\n", 'f.yaml:1: items: YAML tags are not allowed, got "!seq"'),
        ("x: !!binary aGk=\n", 'f.yaml:1: x: YAML tags are not allowed, got "!!binary"'),
        (
            "x: !!python/name:os.system\n",
            'f.yaml:1: x: YAML tags are not allowed, got "!!python/name:os.system"',
        ),
        ("rate: .inf\n", "f.yaml:1: rate: expected a finite number, got .inf"),
        ("rate: -.Inf\n", "f.yaml:1: rate: expected a finite number, got -.Inf"),
        ("list: [1, .NaN]\n", "f.yaml:1: list[1]: expected a finite number, got .NaN"),
        (
            "n: " + "9" * 5000 + "\n",
            "f.yaml:1: n: expected an integer of at most 100 characters, got one of 5000",
        ),
    ],
)
def test_values_plain_yaml_cannot_carry_are_refused_at_their_line(text: str, expected: str) -> None:
    """An explicit non-standard tag, a non-finite number or an integer too long to parse is a
    SpecError at its line."""
    assert error(text) == expected


def test_standard_tags_and_a_long_but_sane_integer_still_read() -> None:
    """``!!str``, ``!!int`` and ``!!float`` are plain YAML and read as before."""
    assert read("a: !!str 12\nb: !!int '7'\nc: !!float 1\nd: " + "9" * 100 + "\n")[1] == {
        "a": "12",
        "b": 7,
        "c": 1.0,
        "d": int("9" * 100),
    }


def test_a_non_finite_number_from_the_environment_is_not_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``rate: ${X}`` with X=.inf is refused by the variable's name, not its value."""
    monkeypatch.setenv("YM_INF", ".inf")
    assert error("rate: ${YM_INF}\n") == (
        "f.yaml:1: rate: expected a finite number, got the value of ${YM_INF}"
    )
