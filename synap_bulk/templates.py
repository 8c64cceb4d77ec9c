"""Templates: YAML values whose strings hold ``{column}`` placeholders, filled from CSV rows.

One syntax for every task. A user import's fields and groups are *text* templates
(:func:`render_template`, :func:`template_fields`); a request's path, body and key are
*value* templates (:func:`compile_template`), which may also convert a value.

A job's body, path and key are written once in YAML and filled from each CSV row::

    body:
      data:
        type: AttemptTimerReset
        attributes: {extraTimeInMs: "{extra_ms:int}", reason: "Access arrangement {ref}"}
        relationships:
          attempt: {data: {type: Attempt, id: "{attempt_id}"}}

Rules, kept small on purpose:

- ``{name}`` is replaced by the row's value of column ``name`` (any text without braces);
  ``{{`` and ``}}`` are literal braces. Substitution is plain text replacement: nothing is ever
  evaluated, formatted or looked up by attribute.
- A string that is *exactly* one placeholder may convert its value: ``{minutes:int}``,
  ``{score:float}``, ``{flag:bool}`` (true/false, yes/no, 1/0, case-insensitive) or
  ``{extra:json}`` (any JSON value). Anywhere else a conversion is a job-file error. An empty or
  unparsable cell under a conversion makes that row invalid (:class:`TemplateValueError`), with
  the column named; without conversion an empty cell renders as an empty string.
- Mapping keys are literal; numbers, booleans and null pass through unchanged.

:func:`compile_template` parses once and records, for every placeholder, the job-file path of
its string (``task.body.data.attributes.extraTimeInMs``) and the JSON pointer it fills
(``/data/attributes/extraTimeInMs``), so that an unknown column is reported at its line and a
server error's ``source.pointer`` maps back to the input column.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from msgspec import Struct

from .errors import SpecError
from .sources import delimiter_hint


class JobFile(Protocol):
    """What templates need of ``spec.JobFile``: its path and the line of a dotted path."""

    @property
    def path(self) -> Path: ...

    def line_of(self, path: str) -> int | None: ...

    def error(self, at: str, message: str) -> SpecError: ...


__all__ = [
    "CONVERSIONS",
    "Field",
    "JobFile",
    "Template",
    "TemplateValueError",
    "compile_template",
    "render_template",
    "spec_error",
    "template_fields",
]

CONVERSIONS = ("int", "float", "bool", "json")

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


class TemplateValueError(ValueError):
    """A row's value cannot be converted as its placeholder asks; names the column."""

    def __init__(self, column: str, message: str) -> None:
        self.column = column
        super().__init__(f"{column}: {message}")


class Field(Struct, frozen=True):
    """One placeholder: the column, its conversion, where it sits in the job and the body."""

    column: str
    conversion: str | None
    at: str  # job-file path of the string holding it
    pointer: str  # JSON pointer of the value it fills ("" for the root)


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


_Part = str | tuple[str, str | None]  # literal text, or (column, conversion or None)


@functools.lru_cache(maxsize=512)
def _parse(text: str) -> tuple[_Part, ...]:
    """Split a string into literal text and (column, conversion) parts.

    ValueError says what is wrong and where. A column name is any text without braces (CSV
    headers such as ``Candidate No.`` or ``Email [work]`` are common); a trailing ``:int``,
    ``:float``, ``:bool`` or ``:json`` is a conversion, any other colon is part of the name.
    """
    parts: list[_Part] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise ValueError(
                f"template {text!r}: unmatched '}}' at position {i} "
                "(write '}}' for a literal brace)"
            )
        if c != "{":
            literal.append(c)
            i += 1
            continue
        if text.startswith("{{", i):
            literal.append("{")
            i += 2
            continue
        end = text.find("}", i + 1)
        if end < 0:
            raise ValueError(
                f"template {text!r}: unmatched '{{' at position {i} "
                "(write '{{' for a literal brace)"
            )
        inner = text[i + 1 : end]
        if "{" in inner:
            raise ValueError(f"template {text!r}: '{{' inside placeholder {{{inner}}}")
        name, conv = inner, None
        head, sep, tail = inner.rpartition(":")
        if sep and tail in CONVERSIONS:
            name, conv = head, tail
        if not name.strip():
            raise ValueError(
                f"template {text!r}: empty placeholder {{{inner}}}; write {{column}} with a "
                "column name, or '{{' and '}}' for literal braces"
            )
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append((name, conv))
        i = end + 1
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


# -- text templates: one string filled from a row, every value text -------------------------


@functools.lru_cache(maxsize=512)
def _text_parts(template: str) -> tuple[_Part, ...]:
    parts = _parse(template)
    for p in parts:
        if not isinstance(p, str) and p[1] is not None:
            raise ValueError(
                f"template {template!r}: a conversion (:{p[1]}) is for request bodies; "
                "here every value is text, so write {" + p[0] + "}"
            )
    return parts


def template_fields(template: str) -> list[str]:
    """The column names a text template uses, each once, in order of first use."""
    return list(dict.fromkeys(p[0] for p in _text_parts(template) if not isinstance(p, str)))


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{column}`` placeholders from ``values`` as plain text (nothing is evaluated)."""
    out: list[str] = []
    for p in _text_parts(template):
        if isinstance(p, str):
            out.append(p)
            continue
        try:
            out.append(values[p[0]])
        except KeyError:
            raise ValueError(f"template {template!r}: no column {p[0]!r} in the row") from None
    return "".join(out)


def _convert(column: str, conv: str, value: str) -> Any:
    text = value.strip()
    if not text:
        raise TemplateValueError(column, f"a value is required (placeholder :{conv})")
    try:
        if conv == "int":
            return int(text)
        if conv == "float":
            return float(text)
        if conv == "bool":
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        return orjson.loads(text)
    except (ValueError, orjson.JSONDecodeError):
        raise TemplateValueError(column, f"not {_ARTICLE[conv]}: {value!r}") from None


_ARTICLE = {"int": "an integer", "float": "a number", "bool": "a boolean", "json": "valid JSON"}


# Compiled nodes: a literal value, a text with placeholders, a typed single placeholder, or a
# container of nodes. Kept as tiny classes so that rendering is one method call per node.


class _Node:
    __slots__ = ()

    def render(self, row: Mapping[str, str]) -> Any:
        raise NotImplementedError


class _Literal(_Node):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, row: Mapping[str, str]) -> Any:
        return self.value


class _Text(_Node):
    __slots__ = ("parts",)

    def __init__(self, parts: tuple[_Part, ...]) -> None:
        self.parts = parts

    def render(self, row: Mapping[str, str]) -> Any:
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
            else:
                out.append(row.get(p[0]) or "")
        return "".join(out)


class _Typed(_Node):
    __slots__ = ("column", "conv")

    def __init__(self, column: str, conv: str) -> None:
        self.column = column
        self.conv = conv

    def render(self, row: Mapping[str, str]) -> Any:
        return _convert(self.column, self.conv, row.get(self.column) or "")


class _Dict(_Node):
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, _Node]]) -> None:
        self.items = items

    def render(self, row: Mapping[str, str]) -> Any:
        return {k: v.render(row) for k, v in self.items}


class _List(_Node):
    __slots__ = ("nodes",)

    def __init__(self, nodes: list[_Node]) -> None:
        self.nodes = nodes

    def render(self, row: Mapping[str, str]) -> Any:
        return [v.render(row) for v in self.nodes]


class Template:
    """A compiled template; :meth:`render` fills it from one row (column -> text)."""

    def __init__(self, root: _Node, fields: tuple[Field, ...], *, job: JobFile | None) -> None:
        self._root = root
        self.fields = fields
        self._job = job

    @property
    def columns(self) -> list[str]:
        """The columns used, in order of first appearance."""
        return list(dict.fromkeys(f.column for f in self.fields))

    @property
    def is_constant(self) -> bool:
        return not self.fields

    def render(self, row: Mapping[str, str]) -> Any:
        """The value for this row; :class:`TemplateValueError` when a conversion fails."""
        return self._root.render(row)

    def validate(
        self, header: Sequence[str], *, source: str = "the input", delimiter: str = ","
    ) -> None:
        """Raise SpecError at the job-file line of the first placeholder not in ``header``."""
        known = set(header)
        for f in self.fields:
            if f.column not in known:
                hint = delimiter_hint(header, delimiter)
                raise spec_error(
                    self._job,
                    f.at,
                    f"unknown column {{{f.column}}}; {source} has: {', '.join(header)}{hint}",
                )

    def column_for_pointer(self, pointer: str) -> str:
        """The column feeding a JSON pointer: exact, else the nearest field above or below it."""
        pointer = pointer.rstrip("/")
        best = ""
        best_len = -1
        for f in self.fields:
            if f.pointer == pointer:
                return f.column
            if pointer.startswith(f.pointer + "/") and len(f.pointer) > best_len:
                best, best_len = f.column, len(f.pointer)
        if best:
            return best
        for f in self.fields:
            if f.pointer.startswith(pointer + "/"):
                return f.column
        return ""


def spec_error(job: JobFile | None, at: str, message: str) -> SpecError:
    """``job.error(at, message)``, or an error naming only the path when there is no job file."""
    return job.error(at, message) if job is not None else SpecError(message, path=at)


def compile_template(value: Any, *, job: JobFile | None, at: str) -> Template:
    """Parse ``value`` (found at job path ``at``) once; SpecError names the line of a bad string."""
    fields: list[Field] = []

    def walk(v: Any, path: str, pointer: str) -> _Node:
        if isinstance(v, str):
            try:
                parts = _parse(v)
            except ValueError as exc:
                raise spec_error(job, path, str(exc)) from None
            holes = [p for p in parts if not isinstance(p, str)]
            if not holes:
                return _Literal("".join(p for p in parts if isinstance(p, str)))
            for name, conv in holes:
                fields.append(Field(name, conv, path, pointer))
            if len(parts) == 1 and not isinstance(parts[0], str) and parts[0][1] is not None:
                return _Typed(parts[0][0], parts[0][1])
            convs = [c for _, c in holes if c is not None]
            if convs:
                raise spec_error(
                    job,
                    path,
                    f"a conversion (:{convs[0]}) is only allowed when the whole string is one "
                    f'placeholder, as in "{{{holes[0][0]}:{convs[0]}}}"',
                )
            return _Text(parts)
        if isinstance(v, Mapping):
            items: list[tuple[str, _Node]] = []
            for k, sub in v.items():
                key = str(k)
                if "{" in key or "}" in key:
                    raise spec_error(
                        job, f"{path}.{key}", "placeholders are not allowed in mapping keys"
                    )
                items.append((key, walk(sub, f"{path}.{key}", f"{pointer}/{_escape_pointer(key)}")))
            if not any(not isinstance(n, _Literal) for _, n in items):
                return _Literal({k: n.render({}) for k, n in items})
            return _Dict(items)
        if isinstance(v, (list, tuple)):
            nodes = [walk(sub, f"{path}[{i}]", f"{pointer}/{i}") for i, sub in enumerate(v)]
            if all(isinstance(n, _Literal) for n in nodes):
                return _Literal([n.render({}) for n in nodes])
            return _List(nodes)
        if v is None or isinstance(v, (bool, int, float)):
            return _Literal(v)
        raise spec_error(job, path, f"unsupported value of type {type(v).__name__}")

    root = walk(value, at, "")
    return Template(root, tuple(fields), job=job)
