"""The job file: validated Structs, the checks msgspec cannot express, and its JSON Schema.

A job file is read by :mod:`synap_bulk.yamlmarks` (every node keeps its line, ``${ENV}`` is
expanded, the data is guided by the target types, so ``exams: [12]`` gives the string ``"12"``)
and converted to msgspec Structs that forbid unknown keys. Every problem is a :class:`SpecError`
printing ``file:line: path: message``; a value that came from the environment is never quoted
back (it may be a secret), and neither is anything under a ``token`` key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct
from msgspec import inspect as mi

from .errors import InsecureURL, SpecError
from .profile import DEFAULT_PROFILE, ApiProfile, load_profile
from .urls import check_base_url
from .yamlmarks import Reader, compose, nearest_line, show, unknown_key_message

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
    #: Durability window: the file and its cursor are committed together at most this often
    #: (a kill loses at most the window; a resume still gives every row exactly once).
    commit_interval_ms: Annotated[int, Meta(ge=0, le=60_000)] = 500
    commit_pages: Annotated[int, Meta(ge=1, le=10_000)] = 50


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


def job_schema() -> dict[str, Any]:
    """The JSON Schema of job files, for editors (``python -m synap_bulk schema``)."""
    schema: dict[str, Any] = msgspec.json.schema(Job)
    schema["title"] = "synap_bulk job file"
    return schema


# --- the loaded job --------------------------------------------------------------------------


class JobFile:
    """A validated job file with the line of every key, for errors found later."""

    def __init__(
        self, spec: Job, path: Path, lines: dict[str, int], profile: ApiProfile = DEFAULT_PROFILE
    ) -> None:
        self.spec = spec
        self.path = path
        self.dir = path.parent
        self._lines = lines
        #: The API profile: the defaults with ``api.profile`` applied, resolved once at load.
        self.profile = profile
        #: Dotted paths whose value came from ``${VAR}`` (not written in the file).
        self.from_env: frozenset[str] = frozenset()

    def secret_warnings(self) -> list[str]:
        """Warnings about how the job keeps its token (never the token itself)."""
        api = self.spec.api
        out: list[str] = []
        if api.token and "api.token" not in self.from_env:
            out.append(
                f"{self.path}:{self.line_of('api.token')}: api.token is written in the job file; "
                "anyone who can read the file can use it: prefer token_file or ${SYNAP_TOKEN}"
            )
        if api.token_file:
            path = self.resolve(api.token_file)
            try:
                mode = path.stat().st_mode
            except OSError:
                return out
            if mode & 0o077:
                out.append(
                    f"{path}: the token file can be read by other users; "
                    f"restrict it with: chmod 600 {path}"
                )
        return out

    def __repr__(self) -> str:
        return f"JobFile({str(self.path)!r}, name={self.spec.name!r}, kind={self.spec.task.kind!r})"

    def line_of(self, dotted_path: str) -> int | None:
        """The line of ``task.body.data.attributes.reason`` (or of its nearest written parent)."""
        return nearest_line(self._lines, dotted_path)

    def error(self, at: str, message: str) -> SpecError:
        """A SpecError about the value at dotted path ``at``: ``file:line: at: message``."""
        return SpecError(message, file=str(self.path), line=self.line_of(at), path=at)

    def input_file(self, at: str, written: str) -> Path:
        """The input file named at dotted path ``at``; a SpecError at that line if it is absent."""
        path = self.resolve(written)
        if path.is_dir():
            raise self.error(at, f"expected a file, got a directory: {path}")
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


#: The largest job file read (1 MiB): a job file is a page of settings, not data.
MAX_JOB_BYTES = 1 << 20


#: Values only a command that contacts the server needs.
_SECRETS = ("api.token", "api.token_file")


def load_job(path: str | Path, *, offline: bool = False) -> JobFile:
    """Read, expand and validate a job file; every problem is a SpecError naming its line.

    ``offline`` is for commands that contact no server (validate, status, settle): an unset
    ``${VAR}`` in the token settings is then no error.
    """
    path = Path(path)
    file = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JOB_BYTES + 1)
    except FileNotFoundError:
        raise SpecError("no such job file", file=file) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=file) from None
    if len(raw) > MAX_JOB_BYTES:
        raise SpecError(f"the job file is larger than {MAX_JOB_BYTES} bytes", file=file)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"not UTF-8 text (byte offset {exc.start})", file=file, line=line) from None
    root = compose(text, file)
    if root is None:
        raise SpecError("the job file is empty", file=file, line=1)
    reader = Reader(
        file,
        mi.type_info(Job),
        describe_overrides=_DESCRIBE_OVERRIDES,
        unset_ok=_SECRETS if offline else (),
    )
    data = reader.build(root)
    if not isinstance(data, dict):
        raise SpecError(
            f"expected a mapping at the top of the job file, got {show(data)}", file=file, line=1
        )
    spec = reader.convert(data, Job)
    job = JobFile(spec, path, reader.lines)
    job.from_env = frozenset(reader.from_env)
    _check(job, data, reader, offline)
    return job


# --- checks msgspec cannot express -----------------------------------------------------------


def _check(job: JobFile, data: dict[str, Any], reader: Reader, offline: bool = False) -> None:
    spec = job.spec
    api = spec.api

    def err(at: str, message: str) -> SpecError:
        return SpecError(message, file=reader.file, line=job.line_of(at), path=at)

    base = api.base_url
    if base != "sandbox":
        try:
            check_base_url(base)  # the client's own rule, so a job that loads is not refused later
        except InsecureURL:
            # Not the InsecureURL's text: it quotes the URL, which may come from ${ENV}.
            raise err(
                "api.base_url",
                f'expected "sandbox" or an https:// URL (http:// only for localhost), '
                f"got {reader.show('api.base_url', base)}",
            ) from None
        if spec.sandbox is not None:
            raise err("sandbox", 'a sandbox section is only allowed when api.base_url is "sandbox"')
    if api.token is not None and api.token_file is not None:
        raise err("api.token_file", "give api.token or api.token_file, not both")
    if api.token_file and not offline and not job.resolve(api.token_file).is_file():
        # Not the path: like everything under a token key, it is never quoted back.
        raise err("api.token_file", "no such file (a relative path is taken from the job's folder)")
    for at, written in (("run.ledger", spec.run.ledger), ("run.out_dir", spec.run.out_dir)):
        if written is None:
            continue
        place = job.resolve(written)
        if at == "run.ledger" and place.is_dir():
            raise err(at, f"expected a file for the ledger, got a directory: {place}")
        if at == "run.out_dir" and place.exists() and not place.is_dir():
            raise err(at, f"expected a directory for the results, got a file: {place}")
    if api.profile:
        try:
            job.profile = load_profile(dict(api.profile))
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
                    raise err(f"task.{name}.{key}", unknown_key_message(key, allowed))
    if isinstance(task, RequestSpec) and task.safety == "reconcilable" and task.lookup is None:
        raise err(
            "task.safety",
            "a reconcilable request needs a lookup (a GET that finds what the request created)",
        )


def _check_sandbox(settings: dict[str, Any], reader: Reader) -> None:
    """Validate the sandbox section against SandboxConfig when the sandbox is installed."""
    try:
        from .sandbox import SandboxConfig  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return
    try:
        reader.convert(settings, SandboxConfig, "sandbox")
    except TypeError:
        return
