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
from .spec_undo import DOCS as _UNDO_DOCS
from .spec_undo import GroupSyncSpec, GuardSpec, UndoTemplateSpec
from .urls import check_base_url
from .yamlmarks import Reader, compose, nearest_line, show, unknown_key_message

__all__ = [
    "ApiSpec",
    "AssignMarkersSpec",
    "BreakerSpec",
    "ExportAttemptsSpec",
    "ExportSpec",
    "GroupSyncSpec",
    "GuardSpec",
    "Job",
    "JobFile",
    "LookupSpec",
    "NamedLookupSpec",
    "RequestSpec",
    "RunSpec",
    "TaskSpec",
    "UserImportSpec",
    "field_paths",
    "job_schema",
    "job_sections",
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
    rate: Annotated[float, Meta(ge=0.1)] | Literal["auto", "none"] | None = None
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


class NamedLookupSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A named lookup of a row's target by natural keys (``synap_bulk.lookups``)."""

    resource: Literal["users", "user-groups", "exams", "attempts"]
    by: dict[str, str]
    strategy: Literal["auto", "per-row", "listing"] = "auto"


class ExportSpec(
    Struct, tag="export", tag_field="kind", kw_only=True, forbid_unknown_fields=True, frozen=True
):
    """Stream any listable collection (or a server-side export) to NDJSON, CSV or Parquet."""

    kind: ClassVar[str] = "export"
    resource: str
    filters: dict[str, str] = {}
    sort: str | None = None
    include: list[str] = []
    fields: dict[str, list[str]] = {}
    relationships: dict[str, str] = {}
    format: Literal["ndjson", "csv", "parquet"] = "ndjson"
    output: str
    columns: list[str] | None = None
    since: str | None = None
    mode: Literal["pages", "server"] = "pages"
    page_size: Annotated[int, Meta(ge=1)] | None = None
    parallel: Annotated[int, Meta(ge=1)] = 4
    commit_interval_ms: Annotated[int, Meta(ge=0, le=60_000)] = 500
    commit_pages: Annotated[int, Meta(ge=1, le=10_000)] = 50
    lookups: dict[str, NamedLookupSpec] = {}


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
    lookups: dict[str, NamedLookupSpec] = {}
    subject_user: str | None = None
    output: str | None = None
    undo: UndoTemplateSpec | None = None


TaskSpec = (
    UserImportSpec
    | AssignMarkersSpec
    | ExportAttemptsSpec
    | ExportSpec
    | RequestSpec
    | GroupSyncSpec
)


class Job(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """A whole job file."""

    version: Literal[1]
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    api: ApiSpec
    sandbox: dict[str, Any] | None = None
    run: RunSpec = msgspec.field(default_factory=RunSpec)
    guard: GuardSpec = msgspec.field(default_factory=GuardSpec)
    task: TaskSpec


#: Human wording for constraints a type description would render badly.
_DESCRIBE_OVERRIDES = {
    "name": "a name of letters, digits, '.', '_' and '-' (it names the output folder)",
}
_MAPPING_COLUMN_KEYS = ("attempt", "candidate", "exam", "marker")
_EXCLUSION_COLUMN_KEYS = ("marker", "candidate")


#: The JSON Schema dialect of :func:`job_schema`.
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: The identity of :func:`job_schema` (a URN: the schema is generated, not published anywhere).
SCHEMA_ID = "urn:synap-bulk:job-file:1"

#: The task kinds and their Structs, in the order the reference lists them.
TASK_KINDS: dict[str, type[Struct]] = {
    "user-import": UserImportSpec,
    "assign-markers": AssignMarkersSpec,
    "export-attempts": ExportAttemptsSpec,
    "export": ExportSpec,
    "request": RequestSpec,
    "group-sync": GroupSyncSpec,
}

_KIND_OF = {struct: kind for kind, struct in TASK_KINDS.items()}

#: The description of every key of a job file, by dotted path (``task[KIND].key`` for the keys
#: of one task kind). The one place keys are described: :func:`job_schema` and the reference
#: (``docs/job-files.md``, :mod:`synap_bulk.reference`) are built from it, and
#: tests/test_reference.py fails when a field has no entry here or an entry names no field.
FIELD_DOCS: dict[str, str] = {
    # --- the top level ---
    "version": "The job file format's version; always 1.",
    "name": (
        "The job's name: letters, digits, '.', '_' and '-'. It names the output folder "
        "(out/<name>/) and the job in summaries."
    ),
    "api": "The server: its base URL (or the embedded sandbox), the token and the client's limits.",
    "sandbox": (
        'The embedded sandbox\'s settings; only allowed with api.base_url "sandbox". '
        "Omitted: a default seeded sandbox that forgets its data when the run ends."
    ),
    "run": "Where the ledger and the result files go, and how patient the engine is.",
    "task": "What the job does: one of the task kinds, chosen by its kind key.",
    # --- api ---
    "api.base_url": (
        "The API's base URL, e.g. https://api.synap.ac/v3 (https://; http:// only for "
        'localhost), or "sandbox" to start a seeded sandbox in-process.'
    ),
    "api.token": (
        "The personal access token; write ${SYNAP_TOKEN} rather than the token itself. "
        "Give token or token_file, not both; against the sandbox, omitted: the sandbox's token."
    ),
    "api.token_file": (
        "A file holding the token (relative to the job file's folder); keep it chmod 600. "
        "Give token or token_file, not both."
    ),
    "api.rate": (
        'Requests per second at most. "auto": find the server\'s limit and keep just under '
        'it. "none": no ceiling (the client slows down only when the server throttles). '
        'Omitted: "auto" against a remote server, "none" against the sandbox or localhost.'
    ),
    "api.concurrency": "Requests in flight at most (1 to 1000).",
    "api.subject_user": (
        "A user id to act as: sent in the profile's subject-user header with every request. "
        "Omitted: act as the token's own user."
    ),
    "api.timeout": (
        "Seconds a request may take in all before it counts as failed (connecting: at most 10)."
    ),
    "api.profile": (
        "Overrides of the API profile (header names, page sizes, paths the public docs leave "
        "open); omitted keys keep the built-in defaults."
    ),
    # --- run ---
    "run.ledger": (
        "The ledger (SQLite) that makes the job resumable, relative to the job file's folder. "
        "Omitted: ledger.sqlite in the out_dir (a ledger left at the old default, "
        "<job file name>.ledger.sqlite beside the job file, is still used while none is there)."
    ),
    "run.out_dir": (
        "The folder of the result files (summary, failures, success, plans), relative to the "
        "job file's folder. Omitted: out/<name>/ beside the job file."
    ),
    "run.grace_seconds": (
        "On a stop (Ctrl-C, SIGTERM, the breaker), seconds the rows in flight get to finish "
        "before they are cancelled."
    ),
    "run.max_item_attempts": (
        "Times the engine tries one row in all (a retryable failure is tried again after a "
        "growing pause) before recording it as failed."
    ),
    "run.breaker": "The circuit breaker: stop the run when too many recent requests failed.",
    "run.breaker.window": "How many of the most recent requests the breaker looks at.",
    "run.breaker.min_requests": "Requests the window must hold before the breaker may trip.",
    "run.breaker.threshold": (
        "The share of server-side failures (5xx, dropped connections) in the window that stops "
        "the run (0 to 1)."
    ),
    # --- task: user-import ---
    "task[user-import].kind": "user-import: register or update users from a CSV.",
    "task[user-import].source": "The CSV of users, relative to the job file's folder.",
    "task[user-import].match": (
        "The attribute that finds an existing user: externalId, or emailAddress (trimmed, "
        "compared case-insensitively)."
    ),
    "task[user-import].mode": (
        "create: only register new users; update: only change existing ones; upsert: both."
    ),
    "task[user-import].fields": (
        'User attributes and their templates, e.g. {name: "{first_name} {last_name}", '
        'emailAddress: "{email}"}; {column} is replaced by the row\'s value.'
    ),
    "task[user-import].groups": (
        "User groups (by name or id, templates allowed) each user is put in."
    ),
    "task[user-import].password": (
        "A password template for newly registered users. Omitted: none is sent (the server's "
        "own sign-in flow applies)."
    ),
    "task[user-import].welcome_email": (
        "Whether the server sends new users its welcome email. Default false: it is disabled."
    ),
    "task[user-import].lookup": (
        "How existing users are found: listing (one paginated listing of the directory), "
        "per-row (one lookup per row), or auto (listing above listing_threshold rows)."
    ),
    "task[user-import].listing_threshold": (
        "With lookup auto: above this many rows, one listing instead of a lookup per row."
    ),
    "task[user-import].delimiter": "The CSV's field separator (one character).",
    # --- task: assign-markers ---
    "task[assign-markers].kind": "assign-markers: give attempts their markers for a role.",
    "task[assign-markers].role": "The marking role the markers are assigned for.",
    "task[assign-markers].action": (
        "assign: add markers; unassign: remove them (the mapping's pairs or, without one, "
        "every marker of the role)."
    ),
    "task[assign-markers].exams": (
        "The exams whose attempts are in scope: ids or exact names. Empty: every exam."
    ),
    "task[assign-markers].statuses": "The attempt statuses (examStatus) in scope.",
    "task[assign-markers].mapping": (
        "A CSV of (attempt or candidate + exam, marker) pairs to apply, instead of a strategy; "
        "relative to the job file's folder."
    ),
    "task[assign-markers].mapping_columns": (
        "Renames of the mapping's columns: keys attempt, candidate, exam, marker; values the "
        "CSV's own header names."
    ),
    "task[assign-markers].strategy": (
        "How markers are chosen without a mapping: balanced (fewest assignments first), "
        "round-robin or random (seeded)."
    ),
    "task[assign-markers].seed": (
        "The seed of the strategy: same seed and server state, same allocation."
    ),
    "task[assign-markers].per_attempt": "Different markers each attempt gets (2: double marking).",
    "task[assign-markers].max_per_marker": (
        "Attempts one marker may have at most, counting those already on the server. "
        "Omitted: no limit."
    ),
    "task[assign-markers].exclusions": (
        "A CSV of marker,candidate pairs (email or id) that must never be assigned; relative "
        "to the job file's folder."
    ),
    "task[assign-markers].exclusion_columns": (
        "Renames of the exclusions' columns: keys marker, candidate; values the CSV's own "
        "header names."
    ),
    "task[assign-markers].markers": (
        "A CSV of the pool members that may be chosen (relative to the job file's folder). "
        "Omitted: every member of the exam's pool for the role."
    ),
    # --- task: export-attempts ---
    "task[export-attempts].kind": "export-attempts: stream attempts to a file, resumably.",
    "task[export-attempts].exams": "Exam ids whose attempts are exported. Empty: every attempt.",
    "task[export-attempts].statuses": (
        "Attempt statuses (examStatus) exported, e.g. [submitted, expired]. Empty: any."
    ),
    "task[export-attempts].format": "The output format (parquet needs the parquet extra).",
    "task[export-attempts].output": (
        "The output file, relative to the job file's folder; a completed export is never "
        "replaced (the next one is name.2.ext, name.3.ext, ...)."
    ),
    "task[export-attempts].columns": (
        "Dotted paths of the attempt resource to export, e.g. attributes.score. Omitted: the "
        "default columns (NDJSON: the resources as the server sent them)."
    ),
    "task[export-attempts].since": (
        "Only attempts updated at or after this: last-run (the start of the previous complete "
        "export) or an RFC 3339 time. Omitted: every attempt."
    ),
    "task[export-attempts].mode": (
        "pages: page through the attempts; server: the API's export-enriched-attempts "
        "background job."
    ),
    "task[export-attempts].page_size": "Attempts per page. Omitted: the profile's max_page_size.",
    "task[export-attempts].parallel": "Pages fetched at once (written in order).",
    "task[export-attempts].commit_interval_ms": (
        "Durability window: the file and its cursor are committed together at least this often "
        "(milliseconds); a kill loses at most the window, a resume still gives every row once."
    ),
    "task[export-attempts].commit_pages": (
        "Durability window: commit after at most this many pages, whatever the time."
    ),
    # --- task: export ---
    "task[export].kind": (
        "export: stream any listable collection (or, with mode server, a server-side export) "
        "to a file, resumably; export-attempts is its preset for attempts."
    ),
    "task[export].resource": (
        "The collection path, e.g. users, user-groups, exam-v-2s, attempts, enriched-attempts, "
        "action-logs (any path of segments is allowed); with mode server, the export's create "
        "path, e.g. user-group-exports, exam-candidate-exports."
    ),
    "task[export].filters": (
        "filter[...] values, e.g. {userGroup: G123} sends filter[userGroup]=G123, or "
        "{userGroup: '{group.id}'} with a lookup; with mode server, the export's "
        "attributes.filter object."
    ),
    "task[export].sort": (
        "The sort parameter. Omitted: the profile's export_sort (a stable order for paging)."
    ),
    "task[export].include": (
        "Relationships whose resources the server includes (include=...); a column "
        "<relationship>.<path> adds its relationship itself."
    ),
    "task[export].fields": (
        "Sparse fieldsets by resource type, e.g. {User: [emailAddress, externalId]} sends "
        "fields[User]=emailAddress,externalId."
    ),
    "task[export].relationships": (
        "mode server: the export's to-one relationships by name, e.g. {userGroup: G123}; the "
        "linked type comes from the profile's relationship_types."
    ),
    "task[export].format": "The output format (parquet needs the parquet extra).",
    "task[export].output": (
        "The output file, relative to the job file's folder; {run} and {date} as in "
        "export-attempts; a completed export is never replaced."
    ),
    "task[export].columns": (
        "Dotted paths of each resource, e.g. attributes.emailAddress, relationships.user.id, "
        "or a to-one relationship's included resource, e.g. user.attributes.emailAddress. "
        "Needed for csv and parquet; omitted with ndjson: the resources as sent."
    ),
    "task[export].since": (
        "Only records updated at or after this: last-run (the start of the previous complete "
        "export) or an RFC 3339 time; only for a collection with an updated-time filter in "
        "the profile's since_filters."
    ),
    "task[export].mode": (
        "pages: page through the collection; server: create the server-side export named by "
        "resource, poll its background job, download its file."
    ),
    "task[export].page_size": "Resources per page. Omitted: the profile's max_page_size.",
    "task[export].parallel": "Pages fetched at once (written in order).",
    "task[export].commit_interval_ms": (
        "Durability window: the file and its cursor are committed together at least this often "
        "(milliseconds); a kill loses at most the window, a resume still gives every row once."
    ),
    "task[export].commit_pages": (
        "Durability window: commit after at most this many pages, whatever the time."
    ),
    "task[export].lookups": (
        "Named lookups resolved once before the first page, with constant keys, e.g. "
        "{group: {resource: user-groups, by: {name: Cohort 01}}}; filters and relationships "
        "may then use {group.id} (or {group}). Nothing or more than one found is an error."
    ),
    # --- task: request ---
    "task[request].kind": "request: one templated API request per CSV row.",
    "task[request].source": "The CSV, one request per row; relative to the job file's folder.",
    "task[request].method": "The HTTP method.",
    "task[request].path": (
        "The path under the base URL, a template: each {column} value is one percent-encoded "
        "path segment."
    ),
    "task[request].body": (
        "The JSON body: any YAML value whose strings may hold {column}; a string that is just "
        "{column:int}, {column:float}, {column:bool} or {column:json} sends a typed value. "
        "Omitted: no body."
    ),
    "task[request].key": (
        "The row's key in the ledger, a template (rows with one key are duplicates). "
        "Omitted: the method, path and body."
    ),
    "task[request].safety": (
        "How a request may be repeated: idempotent (retried, re-sent on resume), reconcilable "
        "(looked up first; needs lookup) or unsafe (sent at most once). Omitted: idempotent "
        "for GET, PUT, PATCH, DELETE; unsafe for POST."
    ),
    "task[request].lookup": (
        "A GET whose non-empty result means the row's request already took effect "
        "(required with safety reconcilable)."
    ),
    "task[request].lookup.path": "The GET's path, a template like task.path.",
    "task[request].lookup.params": "The GET's query parameters; the values are templates.",
    "task[request].delimiter": "The CSV's field separator (one character).",
    "task[request].lookups": (
        "Named lookups that turn a row's natural keys into ids before any write: "
        "{name: {resource, by}}; {name.id} and {name.<attribute>} are then placeholders. "
        "A row whose lookup finds nothing or more than one record is invalid."
    ),
    "task[request].subject_user": (
        "Act as this user, per row: a template giving a user id, or an email address "
        "(looked up). Omitted: api.subject_user."
    ),
    "task[request].output": (
        "GET only: append every response as one NDJSON line {key, line, response} to this "
        "file (relative to the job file's folder)."
    ),
    "task[request].lookups.<name>.resource": (
        "The collection searched: users, user-groups, exams or attempts."
    ),
    "task[request].lookups.<name>.by": (
        "key -> template: users by emailAddress, externalId or id; user-groups and exams by "
        "name or id; attempts by user and exam (ids, e.g. {user.id}) or id."
    ),
    "task[request].lookups.<name>.strategy": (
        "auto (one listing when cheaper than a filtered GET per distinct key), per-row or listing."
    ),
    # --- sandbox (synap_bulk.sandbox.SandboxConfig) ---
    "sandbox.seed": "The seed of the generated portal: same seed, same data.",
    "sandbox.users": "Candidate (student) users; the admin and the markers come on top.",
    "sandbox.groups": "Candidate cohort groups (besides the default and marker-pool groups).",
    "sandbox.exams": "Exams; the last one is a draft when there are two or more.",
    "sandbox.attempts_per_exam": "Attempts of each exam.",
    "sandbox.markers": "Marker users, spread over the five marker-pool groups.",
    "sandbox.rate": "The rate limit per token (requests per second); 0: unlimited.",
    "sandbox.burst": "The rate limit's bucket size. Omitted: max(1, rate).",
    "sandbox.retry_after": "The form of a 429's Retry-After header.",
    "sandbox.ratelimit_headers": (
        "Whether every /v3 answer carries X-RateLimit-Limit, -Remaining and -Reset."
    ),
    "sandbox.limiter": (
        "How a 429 looks: api (JSON:API, Retry-After, X-RateLimit-*) or blind (an nginx "
        "limit_req HTML page, no Retry-After, no X-RateLimit-* headers)."
    ),
    "sandbox.retry_after_grace_ms": (
        "A request arriving this soon after a 429 is not counted as inside the Retry-After "
        "window (it was already on the wire)."
    ),
    "sandbox.latency_ms": "Delay of every answer (milliseconds).",
    "sandbox.jitter_ms": "Uniform extra delay in [0, jitter_ms), seeded per request.",
    "sandbox.route_latency_ms": "Delay by route name (e.g. users.list), replacing latency_ms.",
    "sandbox.group_join_latency_ms": "Extra delay of a group join. Omitted: 4 * latency_ms.",
    "sandbox.fault_rate": "Probability (0 to 1) that a /v3 request fails with an injected fault.",
    "sandbox.faults": (
        "Relative weights of the fault kinds (500, 502, 503, 504, html502, drop, truncate, "
        "commit-then-500, commit-then-drop)."
    ),
    "sandbox.token": "The sandbox's valid token.",
    "sandbox.extra_tokens": "More valid tokens of the same portal, each with its own rate limit.",
    "sandbox.bad_token_status": "The status of a present but wrong token.",
    "sandbox.subject_user_header": "The header naming the user to act as.",
    "sandbox.default_page_size": "Page size when a request gives none.",
    "sandbox.max_page_size": "The largest page size accepted.",
    "sandbox.page_size_over_max": (
        "A page size above max_page_size: reject (400 naming the parameter) or clamp (a page "
        "of the maximum, with a next link)."
    ),
    "sandbox.export_job_steps": "Polls of an export's background job until it is completed.",
    "sandbox.host": "The address the sandbox listens on.",
    "sandbox.port": "The port the sandbox listens on; 0: a free one.",
    "sandbox.ignore_filters": (
        "Query parameters (e.g. filter[emailAddress]) the sandbox accepts and then ignores, as a "
        "server that does not know a filter might (to rehearse `doctor` and the preflight)."
    ),
    "sandbox.profile": (
        "The API profile the sandbox follows (overrides, as api.profile). Omitted: the job's "
        "api.profile, so a profile written for the real API is rehearsed here."
    ),
    "sandbox.state": (
        "A state file (relative to the job file's folder) that keeps the sandbox's data "
        "across runs, as a real portal would; when it exists its data wins over the settings "
        "above. Omitted: the data lasts as long as the run."
    ),
}


FIELD_DOCS.update(_UNDO_DOCS)


def _sandbox_config() -> type[Struct]:
    from .sandbox.config import SandboxConfig

    return SandboxConfig


def job_sections() -> list[tuple[str, type[Struct]]]:
    """Every section of a job file as (dotted path, Struct), the top level first."""
    sections: list[tuple[str, type[Struct]]] = [
        ("", Job),
        ("api", ApiSpec),
        ("run", RunSpec),
        ("run.breaker", BreakerSpec),
        ("guard", GuardSpec),
        ("sandbox", _sandbox_config()),
    ]
    for kind, struct in TASK_KINDS.items():
        sections.append((f"task[{kind}]", struct))
        if struct is RequestSpec:
            sections.append((f"task[{kind}].lookup", LookupSpec))
            sections.append((f"task[{kind}].lookups.<name>", NamedLookupSpec))
            sections.append((f"task[{kind}].undo", UndoTemplateSpec))
    return sections


def field_paths() -> list[str]:
    """The dotted path of every key of a job file (the task kinds' ``kind`` included)."""
    out: list[str] = []
    for prefix, struct in job_sections():
        names = [f.encode_name for f in _struct_fields(struct)]
        if struct in TASK_KINDS.values():
            names.insert(0, "kind")
        out.extend(f"{prefix}.{n}" if prefix else n for n in names)
    return out


def _struct_fields(struct: type[Struct]) -> tuple[mi.Field, ...]:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    return info.fields


def field_default(field: mi.Field) -> tuple[bool, Any]:
    """(whether the field has a default, that default as JSON data)."""
    if field.default is not msgspec.NODEFAULT:
        return True, msgspec.to_builtins(field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return True, msgspec.to_builtins(field.default_factory())
    return False, None


def job_schema() -> dict[str, Any]:
    """The JSON Schema of job files, for editors (``python -m synap_bulk schema``).

    Draft 2020-12; every property has a description (from :data:`FIELD_DOCS`) and, unless it is
    required, its default. The task is chosen by ``kind`` with ``if``/``then``, so a validator
    reports an error inside the chosen kind (``task.match``), not "valid under none of".
    """
    sandbox = _sandbox_config()
    structs: list[type[Struct]] = [Job, sandbox]
    _, defs = msgspec.json.schema_components(structs, ref_template="#/$defs/{name}")
    root: dict[str, Any] = defs.pop("Job")
    for prefix, struct in job_sections():
        node = root if struct is Job else defs[struct.__name__]
        props: dict[str, Any] = node["properties"]
        for field in _struct_fields(struct):
            path = f"{prefix}.{field.encode_name}" if prefix else field.encode_name
            prop = props[field.encode_name]
            prop["description"] = FIELD_DOCS[path]
            has_default, default = field_default(field)
            if has_default:
                prop["default"] = default
        kind = _KIND_OF.get(struct)
        if kind is not None:
            props["kind"] = {"const": kind, "description": FIELD_DOCS[f"{prefix}.kind"]}
    props = root["properties"]
    props["sandbox"] = {
        "description": FIELD_DOCS["sandbox"],
        "default": None,
        "type": ["object", "null"],
        "if": {"type": "object"},
        "then": {"$ref": f"#/$defs/{sandbox.__name__}"},
    }
    props["task"] = {
        "description": FIELD_DOCS["task"],
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"enum": list(TASK_KINDS), "description": "The task kind."},
        },
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"$ref": f"#/$defs/{struct.__name__}"},
            }
            for kind, struct in TASK_KINDS.items()
        ],
    }
    schema: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "synap_bulk job file",
        "description": (
            "A job file of synap_bulk (YAML); every key is described in docs/job-files.md."
        ),
        **{k: v for k, v in root.items() if k not in ("title", "description")},
        "$defs": defs,
    }
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
