"""YAML with node marks: plain data plus the line of every key, msgspec paths mapped to file:line.

PyYAML's composer keeps the line of every node. :class:`Reader` walks the composed nodes into
plain data, guided by a msgspec target type (so ``exams: [12]`` gives the string ``"12"`` when a
string is wanted), records the line of every dotted path (``task.fields.name``,
``task.groups[1]``) and expands ``${NAME}``, ``${NAME:-default}`` and ``$$`` in string values.
:meth:`Reader.error_from` turns a ``msgspec.ValidationError`` and its ``$.a.b[0]`` path into a
:class:`~synap_bulk.errors.SpecError` printing ``file:line: a.b[0]: message`` in words for the
person editing the file. A value that came from the environment is never quoted back (it may be a
secret), and neither is anything under a key whose name contains ``token``.

Nothing here knows about job files; :mod:`synap_bulk.spec` builds them on top of it.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import msgspec
import yaml
from msgspec import inspect as mi

from .errors import SpecError

__all__ = [
    "Reader",
    "compose",
    "describe",
    "nearest_line",
    "show",
    "unknown_key_message",
]

T = TypeVar("T")


#: How deep collections may nest in a document; deeper is refused before it can recurse.
MAX_DEPTH = 64
#: How many nodes aliases may add to a document, all aliases together ("billion laughs").
MAX_ALIAS_NODES = 10_000


class _Loader(yaml.SafeLoader):
    """PyYAML's safe composer with limits: nesting depth, alias expansion, no recursive alias.

    Every node's expanded size (itself plus its children, aliases counted in full) is known
    once composed, so an alias adds exactly its target's size to the document: the running sum
    is what expanding the document costs, checked before anything is expanded.
    """

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file = file
        self._depth = 0
        self._sizes: dict[int, int] = {}
        self._alias_nodes = 0

    def _refuse(self, message: str, mark: Any) -> SpecError:
        return SpecError(message, file=self.file, line=mark.line + 1 if mark else None)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise self._refuse(
                        f"alias *{event.anchor} refers to a node that contains it "
                        "(a recursive alias)",
                        event.start_mark,
                    )
                self._alias_nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise self._refuse(
                        f"aliases expand to more than {MAX_ALIAS_NODES} nodes "
                        f"(alias *{event.anchor})",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise self._refuse(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None:
            self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: yaml.Node) -> int:
        if isinstance(node, yaml.MappingNode):
            pairs: list[tuple[yaml.Node, yaml.Node]] = node.value
            return 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in pairs)
        if isinstance(node, yaml.SequenceNode):
            items: list[yaml.Node] = node.value
            return 1 + sum(self._sizes[id(n)] for n in items)
        return 1


def compose(text: str, file: str) -> yaml.Node | None:
    """The node tree of ``text`` (None if empty); a syntax error is a SpecError at its line.

    So is nesting deeper than :data:`MAX_DEPTH`, a recursive alias, and aliases that together
    add more than :data:`MAX_ALIAS_NODES` nodes: reading a hostile file costs bounded time,
    memory and stack.
    """
    loader = _Loader(text, file)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "cannot parse"
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from None
    except RecursionError:  # a safety net: the depth limit should come first
        raise SpecError("invalid YAML: nested too deeply", file=file) from None
    finally:
        loader.dispose()


# --- YAML nodes to data ----------------------------------------------------------------------

#: The longest integer a job file may write (Python refuses to parse past 4300 digits).
_MAX_INT_TEXT = 100
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"
_TEXT_TAGS = {
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:timestamp",
}
#: The tags a node may carry: the ones plain YAML resolves to. Any other (``!env``,
#: ``!!python/name``, ``!!binary``) is refused rather than constructed or ignored.
_ALLOWED_TAGS = {
    *_TEXT_TAGS,
    _STR_TAG,
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


class Reader:
    """Turns composed YAML nodes into plain data, recording lines and env-derived paths.

    ``root_type`` (a msgspec type-info, or None for no guidance) is what the whole document is
    meant to be; ``describe_overrides`` gives, by dotted path, the words an error uses for what
    the value there should be, where :func:`describe` would render a constraint badly.
    """

    def __init__(
        self,
        file: str,
        root_type: mi.Type | None = None,
        *,
        describe_overrides: Mapping[str, str] | None = None,
        unset_ok: Collection[str] = (),
    ) -> None:
        self.file = file
        #: Dotted paths where an unset ``${NAME}`` expands to "" instead of an error (a command
        #: that never uses the value, e.g. the token for ``validate``).
        self.unset_ok = frozenset(unset_ok)
        self.root_type = root_type
        self.describe_overrides: Mapping[str, str] = describe_overrides or {}
        #: The line of every dotted path written in the file ("" is the document itself).
        self.lines: dict[str, int] = {"": 1}
        #: Dotted paths whose value came from ``${NAME}``, with the (first) variable's name.
        self.from_env: dict[str, str] = {}
        self._loader = yaml.SafeLoader("")
        self._resolver = yaml.resolver.Resolver()

    def build(self, root: yaml.Node) -> Any:
        """The plain data of a composed document, ``${ENV}`` expanded, lines recorded."""
        return self._walk(root, "", self.root_type)

    def _walk(self, node: yaml.Node, path: str, tinfo: mi.Type | None) -> Any:
        if node.tag not in _ALLOWED_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise SpecError(
                f"YAML tags are not allowed, got {show(tag)}",
                file=self.file,
                line=node.start_mark.line + 1,
                path=path,
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, tinfo)
        if isinstance(node, yaml.SequenceNode):
            item_t = _narrow(tinfo, [])
            item_t = item_t.item_type if isinstance(item_t, mi.ListType) else None
            out: list[Any] = []
            for i, sub in enumerate(node.value):
                sub_path = f"{path}[{i}]"
                self.lines[sub_path] = sub.start_mark.line + 1
                out.append(self._walk(sub, sub_path, item_t))
            return out
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node, path, tinfo)

    def _mapping(self, node: yaml.MappingNode, path: str, tinfo: mi.Type | None) -> dict[str, Any]:
        kind: Any = None
        for k, v in node.value:
            if (
                isinstance(k, yaml.ScalarNode)
                and k.value == "kind"
                and isinstance(v, yaml.ScalarNode)
            ):
                kind = v.value
        struct_t = _narrow(tinfo, {"kind": kind})
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(
                    "mapping keys must be plain names",
                    file=self.file,
                    line=key_node.start_mark.line + 1,
                    path=path,
                )
            key = str(key_node.value)
            sub_path = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in out:
                raise SpecError(
                    f'duplicate key "{key}" (first on line {self.lines[sub_path]})',
                    file=self.file,
                    line=line,
                    path=sub_path,
                )
            self.lines[sub_path] = line
            out[key] = self._walk(value_node, sub_path, _child_type(struct_t, key))
        return out

    def _scalar(self, node: yaml.ScalarNode, path: str, tinfo: mi.Type | None) -> Any:
        value = node.value
        tag = node.tag
        if tag == _STR_TAG and "$" in value:
            value = self._expand(value, path, node.start_mark.line + 1)
            if node.style is None:  # a plain scalar: `rate: ${RATE}` may be a number
                tag = self._resolver.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
        if tag in _TEXT_TAGS and node.style is None and _wants_text(tinfo):
            return value  # `exams: [12]`, `name: 2027` -> the text as written
        if tag == "tag:yaml.org,2002:timestamp":
            return value
        line = node.start_mark.line + 1
        if tag == "tag:yaml.org,2002:int" and len(value) > _MAX_INT_TEXT:
            raise SpecError(
                f"expected an integer of at most {_MAX_INT_TEXT} characters, "
                f"got one of {len(value)}",
                file=self.file,
                line=line,
                path=path,
            )
        plain = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, node.style)
        try:
            out = self._loader.construct_object(plain, deep=True)
        except (yaml.YAMLError, ValueError) as exc:
            raise SpecError(
                f"cannot read the value: {exc}", file=self.file, line=line, path=path
            ) from None
        if isinstance(out, float) and not math.isfinite(out):
            shown = self.show(path, value) if path in self.from_env else value
            raise SpecError(
                f"expected a finite number, got {shown}", file=self.file, line=line, path=path
            )
        return out

    def _expand(self, text: str, path: str, line: int) -> str:
        names: list[str] = []

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            names.append(name)
            found = os.environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is not None:
                    return default
                if path in self.unset_ok:
                    return ""
                raise SpecError(
                    f"environment variable {name} is not set",
                    file=self.file,
                    line=line,
                    path=path,
                )
            return found

        out = _ENV_RE.sub(sub, text)
        if names:
            self.from_env[path] = names[0]
        return out

    # -- errors ---------------------------------------------------------------------------

    def show(self, path: str, value: Any) -> str:
        """A value for an error message, unless it may be a secret."""
        if path in self.from_env:
            return f"the value of ${{{self.from_env[path]}}}"
        last = path.rsplit(".", 1)[-1]
        if "token" in last.lower():
            return "a value (not shown)"
        return show(value)

    def convert(self, data: Any, target: type[T], prefix: str = "") -> T:
        """``msgspec.convert(data, target)``; a ValidationError becomes the SpecError at its line.

        ``data`` is the plain data at dotted path ``prefix`` ("" for the whole document).
        """
        try:
            return msgspec.convert(data, target)
        except msgspec.ValidationError as exc:
            raise self.error_from(exc, mi.type_info(target), data, prefix) from None

    def error_from(
        self, exc: msgspec.ValidationError, root_t: mi.Type, data: Any, prefix: str
    ) -> SpecError:
        """Map msgspec's message and ``$.a.b[0]`` path to ``file:line: a.b[0]: message``."""
        text = str(exc)
        m = re.search(r" - at `\$(.*)`$", text)
        raw_path = m.group(1) if m else ""
        if m:
            text = text[: m.start()]
        parts = re.findall(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]", raw_path)
        path = prefix
        value: Any = data
        t: mi.Type | None = root_t
        parent_t: mi.Type | None = None
        union_t: mi.Type | None = None
        for name, index in parts:
            union_t = t
            parent_t = _narrow(t, value)
            if name:
                value = value.get(name) if isinstance(value, dict) else None
                t = _child_type(parent_t, name)
                path = f"{path}.{name}" if path else name
            elif index == "...":
                vt = parent_t.value_type if isinstance(parent_t, mi.DictType) else None
                key = _first_bad_key(value, vt)
                value = value.get(key) if isinstance(value, dict) else None
                t = vt
                path = f"{path}.{key}" if path else key
            else:
                i = int(index)
                value = value[i] if isinstance(value, list) and i < len(value) else None
                t = parent_t.item_type if isinstance(parent_t, mi.ListType) else None
                path = f"{path}[{i}]"

        def err(at: str, message: str) -> SpecError:
            return SpecError(message, file=self.file, line=self.line(at), path=at)

        missing = re.match(r"Object missing required field `(.+)`", text)
        if missing:
            return err(path, f'missing required key "{missing.group(1)}"')
        unknown = re.match(r"Object contains unknown field `(.+)`", text)
        if unknown:
            key = unknown.group(1)
            allowed = _field_names(_narrow(t, value))
            at = f"{path}.{key}" if path else key
            return err(at, unknown_key_message(key, allowed))
        if parts and parts[-1][0] and _is_tag_of(union_t, parts[-1][0]):
            tags = _tags(union_t)
            expected = ", ".join(show(x) for x in tags)
            return err(path, f"expected one of {expected}, got {self.show(path, value)}")
        wanted = self.describe_overrides.get(path) or (describe(t) if t is not None else "")
        if wanted:
            return err(path, f"expected {wanted}, got {self.show(path, value)}")
        return err(path, text[:1].lower() + text[1:])

    def line(self, path: str) -> int | None:
        """The line of a dotted path, or of its nearest parent written in the file."""
        return nearest_line(self.lines, path)


def nearest_line(lines: Mapping[str, int], path: str) -> int | None:
    """The line of ``path`` in ``lines``, else of its nearest recorded parent (else of "")."""
    while path:
        line = lines.get(path)
        if line is not None:
            return line
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines.get("")


# --- type-info helpers -----------------------------------------------------------------------


def _narrow(t: mi.Type | None, value: Any) -> mi.Type | None:
    """The member of a union that a mapping or list value is meant to be."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if not isinstance(t, mi.UnionType):
        return t
    members = [m.type if isinstance(m, mi.Metadata) else m for m in t.types]
    if isinstance(value, dict):
        for m in members:
            tag_field = getattr(m, "tag_field", None)
            if tag_field is not None and value.get(tag_field) == getattr(m, "tag", None):
                return m
        for m in members:
            if isinstance(m, (mi.StructType, mi.DataclassType, mi.DictType)) and (
                getattr(m, "tag_field", None) is None
            ):
                return m
        return None
    if isinstance(value, list):
        for m in members:
            if isinstance(m, mi.ListType):
                return m
    return t


def _child_type(t: mi.Type | None, key: str) -> mi.Type | None:
    if isinstance(t, (mi.StructType, mi.DataclassType)):
        for f in t.fields:
            if f.encode_name == key:
                return f.type
        return None
    if isinstance(t, mi.DictType):
        return t.value_type
    return None


def _field_names(t: mi.Type | None) -> list[str]:
    if isinstance(t, (mi.StructType, mi.DataclassType)):
        names = [f.encode_name for f in t.fields]
        tag_field = getattr(t, "tag_field", None)
        return [tag_field, *names] if tag_field else names
    return []


def _is_tag_of(t: mi.Type | None, name: str) -> bool:
    if isinstance(t, mi.UnionType):
        return any(getattr(m, "tag_field", None) == name for m in t.types)
    return getattr(t, "tag_field", None) == name


def _tags(t: mi.Type | None) -> list[Any]:
    members = t.types if isinstance(t, mi.UnionType) else (t,)
    return [getattr(m, "tag", None) for m in members if getattr(m, "tag", None) is not None]


def _wants_text(t: mi.Type | None) -> bool:
    """True when the target is a string (maybe optional): a YAML number or date stays text."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.StrType):
        return True
    if isinstance(t, mi.UnionType):
        kinds = [m for m in t.types if not isinstance(m, mi.NoneType)]
        return len(kinds) == 1 and isinstance(kinds[0], mi.StrType)
    return False


def _first_bad_key(value: Any, vt: mi.Type | None) -> str:
    if not isinstance(value, dict) or not value:
        return "?"
    for key, v in value.items():
        if not _conforms(v, vt):
            return str(key)
    return str(next(iter(value)))


def _conforms(v: Any, t: mi.Type | None) -> bool:
    if t is None or isinstance(t, mi.AnyType):
        return True
    if isinstance(t, mi.Metadata):
        return _conforms(v, t.type)
    if isinstance(t, mi.UnionType):
        return any(_conforms(v, m) for m in t.types)
    if isinstance(t, mi.StrType):
        return isinstance(v, str)
    if isinstance(t, mi.NoneType):
        return v is None
    if isinstance(t, mi.BoolType):
        return isinstance(v, bool)
    if isinstance(t, (mi.IntType, mi.FloatType)):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(t, mi.LiteralType):
        return v in t.values
    if isinstance(t, mi.ListType):
        return isinstance(v, list)
    return isinstance(v, dict)


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    parts = []
    for op, bound in ((">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt)):
        if bound is not None:
            parts.append(f"{op} {bound}")
    return (" " + " and ".join(parts)) if parts else ""


def describe(t: mi.Type) -> str:
    """What a value of type ``t`` looks like, in words for the person editing the file."""
    if isinstance(t, mi.Metadata):
        return describe(t.type)
    if isinstance(t, mi.UnionType):
        literals: list[Any] = []
        parts: list[str] = []
        for m in t.types:
            if isinstance(m, mi.NoneType):
                continue
            if isinstance(m, mi.LiteralType):
                literals.extend(m.values)
            else:
                parts.append(describe(m))
        if literals:
            if parts or len(literals) == 1:
                parts.extend(show(x) for x in literals)
            else:
                parts.append("one of " + ", ".join(show(x) for x in literals))
        if not parts:
            return "null"
        return " or ".join(dict.fromkeys(parts))
    if isinstance(t, mi.LiteralType):
        if len(t.values) == 1:
            return show(t.values[0])
        return "one of " + ", ".join(show(x) for x in t.values)
    if isinstance(t, mi.IntType):
        return "an integer" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.StrType):
        if t.max_length == 1 and t.min_length == 1:
            return "a single character"
        if t.min_length:
            return "a non-empty string"
        return "a string"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.ListType):
        return "a list"
    if isinstance(t, (mi.DictType, mi.StructType, mi.DataclassType)):
        return "a mapping"
    if isinstance(t, mi.NoneType):
        return "null"
    return "a value"


def show(value: Any) -> str:
    """A value as an error message quotes it: JSON-style scalars, "a mapping", "a list"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def unknown_key_message(key: str, allowed: Any) -> str:
    """ "unknown key", with the closest allowed name, else the list of allowed names."""
    names = [str(a) for a in allowed]
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    if names:
        return f"unknown key (expected one of: {', '.join(names)})"
    return "unknown key"
