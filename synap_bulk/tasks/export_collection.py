"""``kind: export``: any listable collection of the API (or a server-side export) to a file.

The same exporter as ``export-attempts`` (:mod:`.export_stream`: parallel pages written in
order, the durability window, a resume cut back to the committed length and continued from the
committed cursor, so every record appears exactly once; flat memory; formula-safe CSV), with
the collection as its one stream (ledger cursor ``export:*``). ``export-attempts`` is the preset
of it for attempts (exams by name as streams, status filters); this kind is the general one:

- ``resource`` is any collection path (``users``, ``user-groups``, ``exam-v-2s``,
  ``enriched-attempts``, ``action-logs``, ``a/b/c``...): the API has hundreds of operations, so
  any path of segments is allowed and the server says whether it exists (a 404 on the first
  read is an error at ``task.resource``).
- ``filters`` become ``filter[<name>]`` parameters; ``sort`` (default: the profile's
  ``export_sort``, a stable order for paging), ``include`` and ``fields`` (sparse fieldsets,
  ``fields[<type>]``) are sent as JSON:API says. A filter the server refuses (a 400 naming
  it) is an error at its job-file line, raised before anything is written.
- ``columns`` are dotted paths of each resource; a column whose first part is none of the
  resource's members (``id``, ``type``, ``attributes``, ``relationships``, ``meta``,
  ``links``) names a to-one relationship and reads the resource it links from the page's
  ``included`` (``user.attributes.emailAddress``); its relationship is added to ``include``.
- ``since`` (last-run or an RFC 3339 time) uses the collection's updated-time filter, named by
  the profile's ``since_filters``; a collection without one refuses ``since`` at its line.
- ``mode: server``: ``resource`` names a server-side export (``user-group-exports``,
  ``exam-candidate-exports``...; its create body's type comes from the profile's
  ``server_export_types``), created with ``filters`` as ``attributes.filter`` and
  ``relationships`` as to-one links; its BackgroundJob is polled (progress shown) and its
  NDJSON file downloaded, as ``export-attempts`` does. ``since`` keeps the lines whose
  ``attributes.updatedAt`` is at or after it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec
import orjson
from msgspec import Struct

from ..clock import Clock, SystemClock
from ..errors import ApiError, BadRequest, NotFound, SynapBulkError
from ..items import RunContext, StreamProgress, StreamResult
from ..jsonapi import UNSET, AnyResource, NewResource, Relationship, ResourceIdentifier
from ..sinks import check_columns
from ..templates import spec_error
from .base import CursorStore
from .export_lookups import compile_export_lookups, resolve_query
from .export_naming import _output_template, _Shown, _utc_date, output_for
from .export_records import (
    META_CURSOR,
    ExportProgress,
    ExportResult,
    ExportSettings,
    _load,
    _Meta,
    progress_for_runner,
    stream_result,
)
from .export_stream import _Exporter, _row_filter

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..jsonapi import ListDocument
    from ..profile import ApiProfile
    from ..spec import ExportSpec, JobFile

__all__ = ["CollectionQuery", "ExportTask", "run_collection_export", "settings_from_spec"]

#: A collection path: segments of letters, digits and ``._~-``, joined by ``/``.
_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9][A-Za-z0-9._~-]*)*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: The members of a JSON:API resource object; any other first part of a column is a join.
_MEMBERS = frozenset({"id", "type", "attributes", "relationships", "meta", "links"})


class CollectionQuery(Struct, frozen=True, kw_only=True):
    """What ``kind: export`` asks the server, resolved from the spec (see the module doc)."""

    resource: str
    filters: tuple[tuple[str, str], ...] = ()
    sort: str = ""
    include: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    relationships: tuple[tuple[str, str], ...] = ()
    #: The to-one relationships whose included resources columns read.
    joins: tuple[str, ...] = ()
    #: mode server: the create body's type.
    export_type: str = ""
    #: The updated-time filter ``since`` uses ("" for none).
    since_filter: str = ""


def settings_from_spec(
    spec: ExportSpec, job: JobFile | None, profile: ApiProfile
) -> tuple[ExportSettings, CollectionQuery]:
    """Resolve and check the spec; a SpecError names the job-file line of a bad value."""
    resource = spec.resource.strip().strip("/")
    if not _PATH.match(resource):
        raise spec_error(
            job,
            "task.resource",
            f"expected a collection path (segments of letters, digits, '.', '_', '~', '-' "
            f"joined by '/', e.g. users or user-groups), got {spec.resource!r}",
        )
    server = spec.mode == "server"
    for name in spec.filters:
        if not _NAME.match(name):
            raise spec_error(
                job, f"task.filters.{name}", f"expected a filter name, e.g. userGroup, got {name!r}"
            )
    try:
        template_parts, templated = _output_template(spec.output)
    except ValueError as exc:
        raise spec_error(job, "task.output", str(exc)) from None
    output = job.resolve(spec.output) if job is not None else Path(spec.output)
    columns = tuple(spec.columns) if spec.columns else None
    joins: list[str] = []
    if columns is not None:
        try:
            check_columns(columns)
        except ValueError as exc:
            raise spec_error(job, "task.columns", str(exc)) from None
        for column in columns:
            head = column.split(".", 1)[0]
            if head not in _MEMBERS and head not in joins:
                if server:
                    raise spec_error(
                        job,
                        "task.columns",
                        f"column {column!r} reads an included {head!r}: a server export's "
                        "file has no included resources (use mode pages)",
                    )
                joins.append(head)
    elif spec.format != "ndjson":
        raise spec_error(
            job,
            "task.format",
            f"a {spec.format} export of {resource} needs columns, e.g. "
            "[id, attributes.name] (only ndjson writes whole resources)",
        )
    export_type = ""
    rels: list[tuple[str, str]] = []
    if server:
        for key, given in (("sort", spec.sort), ("include", spec.include), ("fields", spec.fields)):
            if given:
                raise spec_error(
                    job, f"task.{key}", f"{key} is for mode pages; a server export takes filters"
                )
        known = profile.server_export_types
        export_type = known.get(resource, "")
        if not export_type:
            raise spec_error(
                job,
                "task.resource",
                f"no server-side export {resource!r} in the API profile (known: "
                f"{', '.join(sorted(known))}); add its type under "
                "api.profile.server_export_types",
            )
        types = profile.relationship_types
        for name, target in spec.relationships.items():
            if name not in types:
                raise spec_error(
                    job,
                    f"task.relationships.{name}",
                    f"unknown relationship {name!r} (known: {', '.join(sorted(types))}); add "
                    "its type under api.profile.relationship_types",
                )
            rels.append((name, str(target)))
    elif spec.relationships:
        raise spec_error(
            job, "task.relationships", "relationships are for mode server (the export's links)"
        )
    since = spec.since
    since_filter = ""
    if since is not None:
        if since != "last-run":
            try:
                datetime.fromisoformat(str(since).replace("Z", "+00:00"))
            except ValueError:
                raise spec_error(
                    job, "task.since", f"expected last-run or an RFC 3339 time, got {since!r}"
                ) from None
        if not server:
            since_filter = profile.since_filters.get(resource, "")
            if not since_filter:
                known_since = ", ".join(sorted(profile.since_filters)) or "none"
                raise spec_error(
                    job,
                    "task.since",
                    f"{resource} has no updated-time filter in the API profile (collections "
                    f"with one: {known_since}); remove since, or name its filter under "
                    "api.profile.since_filters",
                )
    include = list(dict.fromkeys([*(i.strip() for i in spec.include if i.strip()), *joins]))
    settings = ExportSettings(
        exams=(),
        statuses=(),
        format=spec.format,
        output=output,
        columns=columns,
        since=since,
        mode=spec.mode,
        page_size=spec.page_size,
        parallel=max(1, spec.parallel),
        template_parts=template_parts,
        templated=templated,
        commit_interval_ms=spec.commit_interval_ms,
        commit_pages=spec.commit_pages,
    )
    query = CollectionQuery(
        resource=resource,
        filters=tuple((k, str(v)) for k, v in spec.filters.items()),
        sort=profile.export_sort if spec.sort is None else spec.sort,
        include=tuple(include),
        fields=tuple((t, ",".join(f)) for t, f in spec.fields.items()),
        relationships=tuple(rels),
        joins=tuple(joins),
        export_type=export_type,
        since_filter=since_filter,
    )
    return settings, query


def _params(
    p: ApiProfile, s: ExportSettings, q: CollectionQuery, since: str | None
) -> dict[str, str]:
    """The listing's query: filters, sort, include, fieldsets, page size, since."""
    params: dict[str, str] = {p.page_size_param: str(s.page_size or p.max_page_size)}
    if q.sort:
        params[p.sort_param] = q.sort
    for name, value in q.filters:
        params[f"filter[{name}]"] = value
    if q.include:
        params[p.include_param] = ",".join(q.include)
    for type_, names in q.fields:
        params[f"{p.fields_param}[{type_}]"] = names
    if since and q.since_filter:
        params[q.since_filter] = since
    return params


def _refused_at(
    exc: ApiError, job: JobFile | None, p: ApiProfile, q: CollectionQuery
) -> SynapBulkError:
    """A 400 naming one of the spec's values as a SpecError at its job-file line."""
    for err in exc.errors:
        src = err.source
        where = (src.parameter or src.pointer or "") if src is not None else ""
        at = ""
        if q.since_filter and where == q.since_filter:
            at = "task.since"
        elif where.startswith("filter[") and where.endswith("]"):
            name = where[7:-1]
            at = f"task.filters.{name}" if name in dict(q.filters) else "task.filters"
        elif where.startswith("/data/attributes/filter/"):
            name = where.rsplit("/", 1)[1]
            at = f"task.filters.{name}" if name in dict(q.filters) else "task.filters"
        elif where.startswith("/data/relationships/"):
            name = where.split("/")[3]
            has = name in dict(q.relationships)
            at = f"task.relationships.{name}" if has else "task.relationships"
        elif where == p.include_param:
            at = "task.include"
        elif where == p.sort_param:
            at = "task.sort"
        elif where.startswith(p.fields_param + "["):
            at = "task.fields"
        if at:
            why = err.detail or err.title or str(exc)
            return spec_error(job, at, f"the server refused this: {why} ({exc.method} {exc.path})")
    return exc


class _CollectionExporter(_Exporter):
    """The shared exporter with one stream: the collection (or the server export)."""

    def __init__(self, settings: ExportSettings, query: CollectionQuery, *args: Any) -> None:
        super().__init__(settings, *args)
        self.q = query

    def _restore(self, meta: _Meta) -> None:
        self.exam_ids, self.exam_index = [], {}

    async def _resolve(self) -> None:
        self.exam_ids, self.exam_index = [], {}

    def _label(self, name: str) -> str:
        return self.q.resource

    def _list_path(self) -> str:
        return self.q.resource

    def _params(self, name: str, since: str | None) -> dict[str, str]:
        return _params(self.profile, self.s, self.q, since)

    def _refused(self, exc: BadRequest, name: str) -> SynapBulkError:
        return _refused_at(exc, self.job, self.profile, self.q)

    async def _probe(self, since: str | None) -> None:
        if self.s.mode == "server":
            return  # the create call is the check
        params = self._params("*", since)
        params[self.profile.page_size_param] = "1"
        try:
            # Raw: a collection's resources need not have attributes (relationship linkage).
            await self.client.get_page(self.q.resource, params, msgspec.Raw)
        except BadRequest as exc:
            raise self._refused(exc, "*") from None
        except NotFound as exc:
            raise spec_error(
                self.job,
                "task.resource",
                f"the server has no collection {self.q.resource!r}: {exc}",
            ) from None

    def _page_type(self) -> Any:
        return msgspec.Raw if self.q.joins else self.sink.row_type

    def _rows(self, page: ListDocument[Any]) -> list[Any]:
        if not self.q.joins:
            rows: list[Any] = page.data
            return rows
        return _joined(page.data, page.included, self.q.joins, self.sink.decode_row)

    async def _create_job(self, exam: str, since: str | None) -> str:
        try:
            return await super()._create_job(exam, since)
        except NotFound as exc:  # a linked group or exam that does not exist: at its line
            raise _refused_at(exc, self.job, self.profile, self.q) from None

    def _job_request(self, name: str, since: str | None) -> tuple[str, NewResource]:
        types = self.profile.relationship_types
        rels = {
            rel: Relationship(data=ResourceIdentifier(type=types[rel], id=target))
            for rel, target in self.q.relationships
        }
        body = NewResource(
            type=self.q.export_type,
            attributes={"filter": dict(self.q.filters)} if self.q.filters else UNSET,
            relationships=rels or UNSET,
        )
        return self.q.resource, body

    def _line_filter(self, since: str | None) -> Callable[[bytes], bool] | None:
        return _row_filter(set(), since)


def _joined(
    data: list[Any],
    included: list[AnyResource],
    joins: tuple[str, ...],
    decode: Callable[[bytes], Any],
) -> list[Any]:
    """Each resource with, beside its members, each joined relationship's included resource
    (its identifier when the server did not include it; None for no or to-many linkage)."""
    index = {(r.type, r.id): r for r in included}
    cache: dict[tuple[str, str], Any] = {}
    out: list[Any] = []
    for raw in data:
        row = orjson.loads(bytes(raw))
        rels = row.get("relationships") or {}
        for name in joins:
            rel = rels.get(name)
            linkage = rel.get("data") if isinstance(rel, dict) else None
            target: Any = None
            if isinstance(linkage, dict):
                key = (str(linkage.get("type")), str(linkage.get("id")))
                if key not in cache:
                    found = index.get(key)
                    cache[key] = msgspec.to_builtins(found) if found is not None else dict(linkage)
                target = cache[key]
            row[name] = target
        out.append(decode(orjson.dumps(row)))
    return out


async def run_collection_export(
    settings: ExportSettings,
    query: CollectionQuery,
    job: JobFile | None,
    client: SynapClient,
    ledger: CursorStore,
    *,
    progress_cb: Callable[[ExportProgress], None] | None = None,
    clock: Clock | None = None,
    poll_interval: float = 1.0,
    max_pages: int | None = None,
    stop: anyio.Event | None = None,
    run: RunContext | None = None,
) -> ExportResult:
    """Export (or resume exporting) the collection ``query`` names (see ``run_export``)."""
    exporter = _CollectionExporter(
        settings, query, job, client, ledger, progress_cb, clock or SystemClock(), run
    )
    exporter.stop_event = stop
    return await exporter.run(poll_interval=poll_interval, max_pages=max_pages)


class ExportTask:
    """``kind: export`` as a :class:`~synap_bulk.tasks.base.StreamTask` for the runner."""

    shape: Literal["stream"] = "stream"
    kind = "export"

    def __init__(self, spec: ExportSpec, job: JobFile, profile: ApiProfile) -> None:
        self.settings, self.query = settings_from_spec(spec, job, profile)
        templated = {f"task.filters.{k}": v for k, v in self.query.filters}
        templated |= {f"task.relationships.{k}": v for k, v in self.query.relationships}
        self.lookups = compile_export_lookups(spec.lookups, templated, job)
        self.job = job
        self.profile = profile

    def input_hash(self) -> str:
        return ""

    async def run(
        self,
        client: SynapClient,
        cursors: CursorStore,
        *,
        stop: anyio.Event,
        progress: Callable[[StreamProgress], None],
        run: RunContext,
    ) -> StreamResult:
        on_progress = progress_for_runner(progress, lambda p: self.query.resource)
        query = await resolve_query(self.query, self.lookups, client, self.profile, self.job)
        r = await run_collection_export(
            self.settings,
            query,
            self.job,
            client,
            cursors,
            progress_cb=on_progress,
            stop=stop,
            run=run,
        )
        what = f"{self.query.resource} records"
        return stream_result(r, what, drop=("exams",), resource=self.query.resource)

    async def plan(self, client: SynapClient, cursors: CursorStore | None) -> list[str]:
        """How many records the export would give, into which file, and whether the run would
        resume; reads one record (mode pages), writes nothing."""
        s, p = self.settings, self.profile
        q = await resolve_query(self.query, self.lookups, client, p, self.job)
        meta: _Meta | None = None
        if cursors is not None:
            meta = _load(await cursors.get_cursor(META_CURSOR), _Meta)
        resumes = meta is not None and meta.state == "running"
        since = s.since
        if resumes and meta is not None:
            since = meta.since
        elif since == "last-run":
            since = meta.last_complete_started_at if meta is not None else None
        if resumes and meta is not None and meta.output:
            output = Path(meta.output)
        else:
            gen = meta.gen + 1 if meta is not None else 1
            output = output_for(s, gen, _Shown("{run}"), _utc_date(datetime.now(UTC)))
        lines: list[str] = []
        if s.mode == "server":
            lines.append(f"  server export {q.resource} ({q.export_type}): size known when done")
        else:
            params = _params(p, s, q, since)
            params[p.page_size_param] = "1"
            try:
                page = await client.get_page(q.resource, params, msgspec.Raw)
            except BadRequest as exc:
                raise _refused_at(exc, self.job, p, q) from None
            except NotFound as exc:
                raise spec_error(
                    self.job, "task.resource", f"the server has no collection {q.resource!r}: {exc}"
                ) from None
            total = page.meta.get("total")
            n = total if isinstance(total, int) else "an unknown number of"
            lines.append(f"  {q.resource}: {n} records")
        lines.append(
            f"Plan: export {q.resource} -> {output} ({s.format}, mode {s.mode}"
            + (f", updated since {since}" if since else "")
            + "); "
            + ("resumes the export in progress" if resumes else "a new export (new file)")
        )
        return lines
