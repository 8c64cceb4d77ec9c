"""The job file: validated Structs, YAML with line-numbered errors, ``${ENV}`` expansion, schema.

A job file is read with PyYAML's composer so that every node keeps its line, expanded, turned
into plain data (guided by the target types, so ``exams: [12]`` gives the string ``"12"``) and
converted to msgspec Structs that forbid unknown keys. Every problem is a :class:`SpecError`
printing ``file:line: path: message``; a value that came from the environment is never quoted
back (it may be a secret), and neither is anything under a ``token`` key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import yaml
from msgspec import Meta, Struct
from msgspec import inspect as mi

from .errors import SpecError

__all__ = [
    "ApiSpec",
    "AssignMarkersSpec",
    "BreakerSpec",
    "ExportAttemptsSpec",
    "Job",
    "JobFile",
    "LookupSpec",
    "RequestSpec",
    "RunSpec",
    "TaskSpec",
    "UserImportSpec",
    "job_schema",
    "load_job",
]


# --- the shape -------------------------------------------------------------------------------


class BreakerSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Circuit breaker: stop the run when too many recent attempts failed on the server side."""

    window: Annotated[int, Meta(ge=1)] = 200
    min_requests: Annotated[int, Meta(ge=1)] = 50
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.5


class RunSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Where the ledger and reports go, and how patient the engine is."""

    ledger: str | None = None
    out_dir: str | None = None
    grace_seconds: Annotated[float, Meta(ge=0)] = 10.0
    max_item_attempts: Annotated[int, Meta(ge=1)] = 5
    breaker: BreakerSpec = msgspec.field(default_factory=BreakerSpec)


class ApiSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The target: base URL (or ``sandbox``), credentials and the client's limits."""

    base_url: str
    token: str | None = None
    token_file: str | None = None
    rate: Annotated[float, Meta(ge=0.1)] | Literal["auto"] | None = None
    concurrency: Annotated[int, Meta(ge=1, le=1000)] = 16
    subject_user: str | None = None
    timeout: Annotated[float, Meta(gt=0)] = 30.0
    profile: dict[str, Any] = {}

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        # rich's pretty printer (progress, tracebacks with locals) must not show it either.
        return [
            (name, "<redacted>" if name == "token" and value else value)
            for name in self.__struct_fields__
            for value in (getattr(self, name),)
        ]

    def __repr__(self) -> str:
        # The token must never reach a log or a traceback through a repr.
        token = "<redacted>" if self.token else "None"
        return (
            f"ApiSpec(base_url={self.base_url!r}, token={token}, token_file={self.token_file!r}, "
            f"rate={self.rate!r}, concurrency={self.concurrency})"
        )


class UserImportSpec(
    Struct,
    tag="user-import",
    tag_field="kind",
    kw_only=True,
    forbid_unknown_fields=True,
    frozen=True,
):
    """Register or update users from a CSV, matching on externalId or emailAddress."""

    kind: ClassVar[str] = "user-import"
    source: str
    match: Literal["externalId", "emailAddress"]
    mode: Literal["create", "upsert", "update"] = "upsert"
    fields: dict[str, str]
    groups: list[str] = []
    password: str | None = None
    welcome_email: bool = False
    lookup: Literal["auto", "listing", "per-row"] = "auto"
    listing_threshold: Annotated[int, Meta(ge=0)] = 200
    delimiter: Annotated[str, Meta(min_length=1, max_length=1)] = ","


def _submitted() -> list[str]:
    return ["submitted"]


class AssignMarkersSpec(
    Struct,
    tag="assign-markers",
    tag_field="kind",
    kw_only=True,
    forbid_unknown_fields=True,
    frozen=True,
):
    """Give attempts their markers for a role, from a CSV mapping or by a strategy."""

    kind: ClassVar[str] = "assign-markers"
    role: Literal["markers", "provisional", "moderating", "escalating", "auditing", "back-readers"]
    action: Literal["assign", "unassign"] = "assign"
    exams: list[str] = []
    statuses: list[str] = msgspec.field(default_factory=_submitted)
    mapping: str | None = None
    mapping_columns: dict[str, str] = {}
    strategy: Literal["round-robin", "balanced", "random"] | None = None
    seed: int = 0
    per_attempt: Annotated[int, Meta(ge=1)] = 1
    max_per_marker: Annotated[int, Meta(ge=0)] | None = None
    exclusions: str | None = None
    exclusion_columns: dict[str, str] = {}
    markers: str | None = None


class ExportAttemptsSpec(
    Struct,
    tag="export-attempts",
    tag_field="kind",
    kw_only=True,
    forbid_unknown_fields=True,
    frozen=True,
):
    """Stream attempts to NDJSON, CSV or Parquet, resumably and incrementally."""

    kind: ClassVar[str] = "export-attempts"
    exams: list[str] = []
    statuses: list[str] = []
    format: Literal["ndjson", "csv", "parquet"] = "ndjson"
    output: str
    columns: list[str] | None = None
    since: str | None = None
    mode: Literal["pages", "server"] = "pages"
    page_size: Annotated[int, Meta(ge=1)] | None = None
    parallel: Annotated[int, Meta(ge=1)] = 4


class LookupSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A GET whose non-empty result means a reconcilable request already took effect."""

    path: str
    params: dict[str, str] = {}


class RequestSpec(
    Struct, tag="request", tag_field="kind", kw_only=True, forbid_unknown_fields=True, frozen=True
):
    """One templated request per CSV row."""

    kind: ClassVar[str] = "request"
    source: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    body: Any = None
    key: str | None = None
    safety: Literal["idempotent", "reconcilable", "unsafe"] | None = None
    lookup: LookupSpec | None = None
    delimiter: Annotated[str, Meta(min_length=1, max_length=1)] = ","


TaskSpec = UserImportSpec | AssignMarkersSpec | ExportAttemptsSpec | RequestSpec


class Job(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A whole job file."""

    version: Literal[1]
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    api: ApiSpec
    sandbox: dict[str, Any] | None = None
    run: RunSpec = msgspec.field(default_factory=RunSpec)
    task: TaskSpec


#: Human wording for constraints a type description would render badly.
_DESCRIBE_OVERRIDES = {
    "name": "a name of letters, digits, '.', '_' and '-' (it names the output folder)",
}
_MAPPING_COLUMN_KEYS = ("attempt", "candidate", "exam", "marker")
_EXCLUSION_COLUMN_KEYS = ("marker", "candidate")
_LOCALHOSTS = ("localhost", "127.0.0.1", "[::1]")


def job_schema() -> dict[str, Any]:
    """The JSON Schema of job files, for editors (``python -m synap_bulk schema``)."""
    schema: dict[str, Any] = msgspec.json.schema(Job)
    schema["title"] = "synap_bulk job file"
    return schema


# --- the loaded job --------------------------------------------------------------------------


class JobFile:
    """A validated job file with the line of every key, for errors found later."""

    def __init__(self, spec: Job, path: Path, lines: dict[str, int]) -> None:
        self.spec = spec
        self.path = path
        self.dir = path.parent
        self._lines = lines

    def __repr__(self) -> str:
        return f"JobFile({str(self.path)!r}, name={self.spec.name!r}, kind={self.spec.task.kind!r})"

    def line_of(self, dotted_path: str) -> int | None:
        """The line of ``task.body.data.attributes.reason`` (or of its nearest written parent)."""
        return _nearest_line(self._lines, dotted_path)

    def error(self, at: str, message: str) -> SpecError:
        """A SpecError about the value at dotted path ``at``: ``file:line: at: message``."""
        return SpecError(message, file=str(self.path), line=self.line_of(at), path=at)

    def input_file(self, at: str, written: str) -> Path:
        """The input file named at dotted path ``at``; a SpecError at that line if it is absent."""
        path = self.resolve(written)
        if not path.is_file():
            raise self.error(at, f"no such file: {path}")
        return path

    def task_hash(self) -> str:
        """sha256 of the canonical JSON of the task section (defaults applied, keys sorted)."""
        data = msgspec.json.encode(msgspec.to_builtins(self.spec.task), order="sorted")
        return hashlib.sha256(data).hexdigest()

    def resolve(self, path_in_job: str) -> Path:
        """A path written in the job file, taken relative to the job file's folder."""
        p = Path(os.path.expanduser(path_in_job))
        return p if p.is_absolute() else self.dir / p


def load_job(path: str | Path) -> JobFile:
    """Read, expand and validate a job file; every problem is a SpecError naming its line."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("no such job file", file=file) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte offset {exc.start})", file=file) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=file) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "cannot parse"
        raise SpecError(f"invalid YAML: {problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", file=file) from None
    if root is None:
        raise SpecError("the job file is empty", file=file, line=1)
    reader = _Reader(file)
    data = reader.build(root)
    if not isinstance(data, dict):
        raise SpecError(
            f"expected a mapping at the top of the job file, got {_show(data)}", file=file, line=1
        )
    try:
        spec = msgspec.convert(data, Job)
    except msgspec.ValidationError as exc:
        raise reader.error_from(exc, mi.type_info(Job), data, "") from None
    job = JobFile(spec, path, reader.lines)
    _check(job, data, reader)
    return job


# --- checks msgspec cannot express -----------------------------------------------------------


def _check(job: JobFile, data: dict[str, Any], reader: _Reader) -> None:
    spec = job.spec
    api = spec.api

    def err(at: str, message: str) -> SpecError:
        return SpecError(message, file=reader.file, line=job.line_of(at), path=at)

    base = api.base_url
    if base != "sandbox":
        low = base.lower()
        host = low.split("://", 1)[-1].split("/", 1)[0]
        hostname = host if host.startswith("[") else host.rsplit(":", 1)[0]
        ok = low.startswith("https://") or (low.startswith("http://") and hostname in _LOCALHOSTS)
        if not ok or not hostname:
            raise err(
                "api.base_url",
                f'expected "sandbox" or an https:// URL (http:// only for localhost), '
                f"got {reader.show('api.base_url', base)}",
            )
        if spec.sandbox is not None:
            raise err("sandbox", 'a sandbox section is only allowed when api.base_url is "sandbox"')
    if api.token is not None and api.token_file is not None:
        raise err("api.token_file", "give api.token or api.token_file, not both")
    if api.profile:
        from .profile import ApiProfile, load_profile

        try:
            load_profile(dict(api.profile))
        except msgspec.ValidationError as exc:
            raw = data["api"]["profile"]
            raise reader.error_from(exc, mi.type_info(ApiProfile), raw, "api.profile") from None
    if spec.sandbox:
        _check_sandbox(spec.sandbox, reader)

    task = spec.task
    if isinstance(task, AssignMarkersSpec):
        # "mapping or strategy, not both" is checked by the task itself, at the same line.
        for name, allowed in (
            ("mapping_columns", _MAPPING_COLUMN_KEYS),
            ("exclusion_columns", _EXCLUSION_COLUMN_KEYS),
        ):
            for key in getattr(task, name):
                if key not in allowed:
                    raise err(f"task.{name}.{key}", _unknown_key_message(key, allowed))
    if isinstance(task, RequestSpec) and task.safety == "reconcilable" and task.lookup is None:
        raise err(
            "task.safety",
            "a reconcilable request needs a lookup (a GET that finds what the request created)",
        )


def _check_sandbox(settings: dict[str, Any], reader: _Reader) -> None:
    """Validate the sandbox section against SandboxConfig when the sandbox is installed."""
    try:
        from .sandbox import SandboxConfig  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return
    try:
        msgspec.convert(settings, SandboxConfig)
    except msgspec.ValidationError as exc:
        raise reader.error_from(exc, mi.type_info(SandboxConfig), settings, "sandbox") from None
    except TypeError:
        return


# --- YAML nodes to data ----------------------------------------------------------------------

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_TEXT_TAGS = {
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:timestamp",
}


class _Reader:
    """Turns composed YAML nodes into plain data, recording lines and env-derived paths."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {"": 1}
        self.from_env: dict[str, str] = {}
        self._loader = yaml.SafeLoader("")
        self._resolver = yaml.resolver.Resolver()

    def build(self, root: yaml.Node) -> Any:
        return self._walk(root, "", mi.type_info(Job))

    def _walk(self, node: yaml.Node, path: str, tinfo: mi.Type | None) -> Any:
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
        plain = yaml.ScalarNode(tag, value, node.start_mark, node.end_mark, node.style)
        return self._loader.construct_object(plain, deep=True)

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
        return _show(value)

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
            return SpecError(message, file=self.file, line=self._line(at), path=at)

        missing = re.match(r"Object missing required field `(.+)`", text)
        if missing:
            return err(path, f'missing required key "{missing.group(1)}"')
        unknown = re.match(r"Object contains unknown field `(.+)`", text)
        if unknown:
            key = unknown.group(1)
            allowed = _field_names(_narrow(t, value))
            at = f"{path}.{key}" if path else key
            return err(at, _unknown_key_message(key, allowed))
        if parts and parts[-1][0] and _is_tag_of(union_t, parts[-1][0]):
            tags = _tags(union_t)
            expected = ", ".join(_show(x) for x in tags)
            return err(path, f"expected one of {expected}, got {self.show(path, value)}")
        wanted = _DESCRIBE_OVERRIDES.get(path) or (_describe(t) if t is not None else "")
        if wanted:
            return err(path, f"expected {wanted}, got {self.show(path, value)}")
        return err(path, text[:1].lower() + text[1:])

    def _line(self, path: str) -> int | None:
        return _nearest_line(self.lines, path)


def _nearest_line(lines: Mapping[str, int], path: str) -> int | None:
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


def _describe(t: mi.Type) -> str:
    """What a value of type ``t`` looks like, in words for the person editing the file."""
    if isinstance(t, mi.Metadata):
        return _describe(t.type)
    if isinstance(t, mi.UnionType):
        literals: list[Any] = []
        parts: list[str] = []
        for m in t.types:
            if isinstance(m, mi.NoneType):
                continue
            if isinstance(m, mi.LiteralType):
                literals.extend(m.values)
            else:
                parts.append(_describe(m))
        if literals:
            if parts or len(literals) == 1:
                parts.extend(_show(x) for x in literals)
            else:
                parts.append("one of " + ", ".join(_show(x) for x in literals))
        if not parts:
            return "null"
        return " or ".join(dict.fromkeys(parts))
    if isinstance(t, mi.LiteralType):
        if len(t.values) == 1:
            return _show(t.values[0])
        return "one of " + ", ".join(_show(x) for x in t.values)
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


def _show(value: Any) -> str:
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


def _unknown_key_message(key: str, allowed: Any) -> str:
    names = [str(a) for a in allowed]
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    if names:
        return f"unknown key (expected one of: {', '.join(names)})"
    return "unknown key"
