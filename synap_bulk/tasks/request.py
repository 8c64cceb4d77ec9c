"""``kind: request``: one templated API request per CSV row, with the engine's safety.

The job gives a method, a path template and a JSON:API body template (``templates.py``), filled
from each row by plain substitution; the key template names the item in the ledger (by default
the method, the rendered path and a hash of the rendered body, so identical rows collapse into
one and are reported as duplicates).

How a request may be repeated is the job's declaration (``safety``), defaulting by method:

- ``idempotent`` (default for GET, PUT, PATCH, DELETE): retried freely, re-sent on resume.
- ``reconcilable``: needs a ``lookup`` (a GET whose non-empty result means "already done");
  an ambiguous failure or an item found in flight on resume is looked up before anything is
  re-sent, and ``plan`` uses the same lookup to show what is already done.
- ``unsafe`` (default for POST): sent at most once; an item whose outcome is unknown is reported
  for review, never re-sent.

A DELETE may carry a body (a relationship removal) when the job declares its ``safety``.

``lookups`` (``synap_bulk.lookups``) turn a row's natural keys into ids in ``prepare``, before
any write: ``{user.id}``, ``{exam.id}``, ``{attempt.id}`` are then placeholders like columns, and
a row whose lookup finds nothing or more than one record is invalid (failures file, its line
and the reason). ``subject_user`` acts as another user per row (an id, or an email that is
looked up); ``output`` keeps a GET job's responses as NDJSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import msgspec

from ..errors import NotFound, SpecError
from ..guards import Destructive
from ..images import BeforeImage, ImageBook, NullImages
from ..items import CsvStyle, InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from ..jsonapi import encode
from ..lookups import LOOKUP_KEYS, LookupDef, LookupResolver, lookup_fields, problem
from ..profile import ApiProfile
from ..sources import CsvSource, DuplicateTracker
from ..templates import Template, TemplateValueError, compile_template
from .request_undo import RowUndo, count_destructive

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..spec import JobFile, RequestSpec
    from .base import CursorStore

__all__ = ["METHODS", "RequestTask", "default_safety"]

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

_ACTIONS = {"GET": "fetched", "PUT": "updated", "PATCH": "updated", "DELETE": "deleted"}


def default_safety(method: str) -> Safety:
    """POST creates something each time it is sent; the other methods can be repeated."""
    return Safety.UNSAFE if method.upper() == "POST" else Safety.IDEMPOTENT


class _Doc(msgspec.Struct):
    """Just enough of a response document to find the primary data's id(s)."""

    data: Any = None


def _first_id(body: bytes) -> str | None:
    """The id of a response's primary data (first of a list); None when there is none."""
    if not body:
        return None
    try:
        doc = msgspec.json.decode(body, type=_Doc)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    data = doc.data
    if isinstance(data, list):
        data = data[0] if data else None
    if isinstance(data, dict):
        ident = data.get("id")
        return str(ident) if ident is not None else ""
    return None


class RequestTask:
    """One request per CSV row; see the module docstring."""

    shape: Literal["items"] = "items"
    kind = "request"
    unit = "row"
    plan_actions: tuple[str, ...] = ()
    #: Rows in the input, known after prepare() (the progress bar's total).
    total: int | None = None

    def __init__(self, spec: RequestSpec, job: JobFile, profile: ApiProfile) -> None:
        self.spec = spec
        self.job = job
        self.profile = profile
        self.method = spec.method.upper()
        if self.method not in METHODS:
            raise self._error("task.method", f"expected one of {', '.join(METHODS)}")
        safety = spec.safety
        self.safety: Safety = Safety(safety) if safety is not None else default_safety(self.method)
        self._path = compile_template(spec.path, job=job, at="task.path")
        self._body: Template | None = None
        if spec.body is not None:
            if self.method == "GET":
                raise self._error("task.body", "a GET request has no body")
            if self.method == "DELETE" and spec.safety is None:
                raise self._error(
                    "task.body",
                    "a DELETE with a body (a relationship removal) needs its safety declared: "
                    "add safety: idempotent (removing what is gone changes nothing) or unsafe",
                )
            self._body = compile_template(spec.body, job=job, at="task.body")
        if spec.output is not None and self.method != "GET":
            raise self._error("task.output", "output keeps the responses of a GET job only")
        self._output = job.resolve(spec.output) if spec.output else None
        self._lookups = self._compile_lookups(spec, job)
        self._subject = (
            compile_template(spec.subject_user, job=job, at="task.subject_user")
            if spec.subject_user
            else None
        )
        self._key = compile_template(spec.key, job=job, at="task.key") if spec.key else None
        self._lookup_path: Template | None = None
        self._lookup_params: Template | None = None
        lookup = spec.lookup
        if lookup is not None:
            self._lookup_path = compile_template(lookup.path, job=job, at="task.lookup.path")
            self._lookup_params = compile_template(
                dict(lookup.params or {}), job=job, at="task.lookup.params"
            )
        if self.safety is Safety.RECONCILABLE and lookup is None:
            raise self._error(
                "task.safety",
                "reconcilable requests need a lookup (a GET whose non-empty result means the "
                "request already took effect)",
            )
        delimiter = spec.delimiter
        self._source = CsvSource(job.input_file("task.source", spec.source), delimiter=delimiter)
        source_name = self._source.display_name
        header = list(self._source.header)
        names = [lk.name for lk in self._lookups]
        for i, lk in enumerate(self._lookups):
            known = header + self._derived(lk.columns, names[:i], header)
            for key, text in lk.by.items():
                tpl = compile_template(text, job=job, at=f"task.lookups.{lk.name}.by.{key}")
                tpl.validate(known, source=source_name, delimiter=self._source.delimiter)
        for template in self._templates():
            known = header + self._derived(template.columns, names, header)
            template.validate(known, source=source_name, delimiter=self._source.delimiter)
        self._counts: dict[str, int] = {}
        #: line -> the row's values with its lookups' fields, or the reason a lookup failed
        self._resolved: dict[int, dict[str, str] | ItemError] = {}
        self.lookup_stats: dict[str, Any] = {}
        self._undo = RowUndo(spec.undo, job, self._source) if spec.undo is not None else None
        self._images: ImageBook = NullImages()

    def bind_images(self, book: ImageBook) -> None:
        """Where each row's before-image (its rendered ``undo:``) goes."""
        self._images = book

    async def destructive(self, client: SynapClient) -> Destructive:
        """The deletes and relationship removals the rows would make (for the guard)."""
        return await count_destructive(self, client)

    def _error(self, at: str, message: str) -> SpecError:
        return self.job.error(at, message)

    def _compile_lookups(self, spec: RequestSpec, job: JobFile) -> list[LookupDef]:
        out: list[LookupDef] = []
        keys = LOOKUP_KEYS
        for name, lk in spec.lookups.items():
            at = f"task.lookups.{name}"
            if not name.replace("_", "").replace("-", "").isalnum():
                raise self._error(at, "a lookup's name is letters, digits, '_' and '-'")
            if not lk.by:
                raise self._error(f"{at}.by", "name at least one key to look up by")
            for key in lk.by:
                if key not in keys[lk.resource]:
                    raise self._error(
                        f"{at}.by.{key}",
                        f"{lk.resource} can be looked up by {', '.join(keys[lk.resource])}",
                    )
            if "id" in lk.by and len(lk.by) > 1:
                raise self._error(f"{at}.by", "look up by id alone")
            out.append(LookupDef(name, lk.resource, dict(lk.by), lk.strategy))
        return out

    @staticmethod
    def _derived(columns: list[str], names: list[str], header: list[str]) -> list[str]:
        """The placeholders among ``columns`` that are fields of the lookups ``names``."""
        return [c for c in columns if c not in header and "." in c and c.split(".", 1)[0] in names]

    def _templates(self) -> list[Template]:
        out = [self._path]
        for t in (self._body, self._key, self._lookup_path, self._lookup_params, self._subject):
            if t is not None:
                out.append(t)
        return out

    # -- what the runner reads ----------------------------------------------------------------

    def source_rows(self) -> CsvSource:
        """The input's records: one item each, with its line and values (see RowsByLine)."""
        return self._source

    def input_hash(self) -> str:
        return str(self._source.sha256())

    @property
    def input_columns(self) -> list[str]:
        return list(self._source.header)

    @property
    def csv_style(self) -> CsvStyle:
        return CsvStyle(delimiter=self._source.delimiter, bom=self._source.has_bom)

    def render_plan(self) -> None:
        return None

    async def prepare(self, client: SynapClient, memory: CursorStore) -> None:
        """Count the rows (the progress bar's total) and resolve every lookup, each distinct
        key once, so that a row that names nothing (or too much) is invalid before any write."""
        rows = [(row.line, dict(row.values)) for row in self._source if not row.problem]
        self.total = sum(1 for _ in self._source)
        self._resolved = {}
        if not self._lookups and not self._subject_needs_lookup(rows):
            return
        resolver = LookupResolver(client, self.profile)
        live: dict[int, dict[str, str]] = dict(rows)
        for lk in self._lookups:
            await self._resolve_one(resolver, lk, live)
        if self._subject is not None:
            subject = LookupDef("subject_user", "users", {"emailAddress": "{_subject}"})
            wanted: dict[int, dict[str, str]] = {}
            for line, values in live.items():
                text = str(self._subject.render(values)).strip()
                if "@" in text:
                    wanted[line] = {**values, "_subject": text}
            if wanted:
                found = await self._resolve_one(resolver, subject, wanted)
                for line, values in found.items():
                    live[line]["_subject_id"] = values["subject_user.id"]
        for line, values in live.items():
            self._resolved.setdefault(line, values)  # a failed subject lookup stays failed
        self.lookup_stats = {
            name: msgspec.to_builtins(st) for name, st in sorted(resolver.stats.items())
        }

    def _source_column(self, lk: LookupDef) -> str:
        """The input column a lookup's keys come from (through the lookups it builds on)."""
        header = set(self._source.header)
        by_name = {x.name: x for x in self._lookups}
        todo, seen = list(lk.columns), set()
        while todo:
            c = todo.pop(0)
            if c in header:
                return c
            ref = by_name.get(c.split(".", 1)[0])
            if ref is not None and ref.name not in seen:
                seen.add(ref.name)
                todo.extend(ref.columns)
        return next(iter(lk.columns), "")

    def _subject_needs_lookup(self, rows: list[tuple[int, dict[str, str]]]) -> bool:
        if self._subject is None:
            return False
        return any("@" in str(self._subject.render(v)) for _, v in rows)

    async def _resolve_one(
        self, resolver: LookupResolver, lk: LookupDef, live: dict[int, dict[str, str]]
    ) -> dict[int, dict[str, str]]:
        """Resolve ``lk`` for the rows still alive; a failing row leaves ``live``."""
        keys = {line: lk.render(values) for line, values in live.items()}
        empty = [line for line, k in keys.items() if any(not v for v in k)]
        column = self._source_column(lk)
        for line in empty:
            self._resolved[line] = ItemError(
                status="invalid",
                code="lookup",
                field=column,
                detail=f"{lk.name}: a value is required for {', '.join(lk.by)}",
            )
            live.pop(line)
            keys.pop(line)
        answers = await resolver.resolve(lk, list(keys.values()))
        done: dict[int, dict[str, str]] = {}
        for line, k in keys.items():
            found = answers[k]
            why = problem(lk, k, found)
            if why is not None:
                self._resolved[line] = ItemError(
                    status="invalid",
                    code="lookup",
                    field=column,
                    detail=why,
                )
                live.pop(line)
                continue
            live[line].update(lookup_fields(lk.name, found[0]))
            done[line] = live[line]
        return done

    # -- items --------------------------------------------------------------------------------

    def _render(self, values: Mapping[str, str]) -> dict[str, Any]:
        # In paths every value is one segment: "a/b" or "x?y=1" cannot reach another route.
        quoted = {k: quote(v.strip(), safe="") for k, v in values.items()}
        path = str(self._path.render(quoted)).strip()
        payload: dict[str, Any] = {"path": path.lstrip("/")}
        if self._lookups:
            payload["targets"] = {
                lk.name: values[f"{lk.name}.id"]
                for lk in self._lookups
                if f"{lk.name}.id" in values
            }
        if self._subject is not None:
            subject = values.get("_subject_id") or str(self._subject.render(values)).strip()
            if not subject:
                raise TemplateValueError(
                    self._subject.columns[0] if self._subject.columns else "subject_user",
                    "a Subject-User is required",
                )
            payload["subject_user"] = subject
        if self._body is not None:
            payload["body"] = self._body.render(values)
        if self._lookup_path is not None and self._lookup_params is not None:
            payload["lookup_path"] = str(self._lookup_path.render(quoted)).strip().lstrip("/")
            params = self._lookup_params.render(values)
            payload["lookup_params"] = {str(k): str(v) for k, v in params.items()}
        return payload

    def _item_key(self, values: Mapping[str, str], payload: Mapping[str, Any]) -> str:
        if self._key is not None:
            return str(self._key.render(values)).strip()
        key = f"{self.method} {payload['path']}"
        if "body" in payload:
            digest = hashlib.sha256(encode(payload["body"])).hexdigest()[:16]
            key = f"{key} {digest}"
        return key

    def check_rows(self) -> AsyncIterator[Item | InvalidRow]:
        """The checks of :meth:`items` with no server: lookups are not resolved, so their
        fields stand in as a value of their own per row (a row's duplicates and lookups are
        left to ``plan`` and ``run``)."""
        return self._rows(offline=True)

    def items(self) -> AsyncIterator[Item | InvalidRow]:
        return self._rows(offline=False)

    def _stand_ins(self, line: int) -> dict[str, str]:
        """Offline values of the lookups' fields a template uses: one per row and lookup."""
        names = {lk.name for lk in self._lookups}
        out: dict[str, str] = {}
        header = set(self._source.header)
        for template in self._templates():
            for column in template.columns:
                if column not in header and column.split(".", 1)[0] in names:
                    out[column] = f"{column.replace('.', '-')}-of-line-{line}"
        if self._subject is not None:
            out["_subject_id"] = f"subject-of-line-{line}"
        return out

    async def _rows(self, *, offline: bool) -> AsyncIterator[Item | InvalidRow]:
        seen = DuplicateTracker()
        for row in self._source:
            values = row.values
            hint = f"line:{row.line}"
            if row.problem:
                yield InvalidRow(
                    key=hint,
                    line=row.line,
                    row=values,
                    error=ItemError(status="invalid", code="row", detail=row.problem),
                )
                continue
            resolved = self._resolved.get(row.line)
            if isinstance(resolved, ItemError):
                yield InvalidRow(key=hint, line=row.line, row=values, error=resolved)
                continue
            filled = resolved if resolved is not None else values
            if offline and resolved is None and (self._lookups or self._subject is not None):
                filled = {**values, **self._stand_ins(row.line)}
            try:
                payload = self._render(filled)
                key = self._item_key(filled, payload)
            except TemplateValueError as exc:
                yield InvalidRow(
                    key=hint,
                    line=row.line,
                    row=values,
                    error=ItemError(
                        status="invalid", code="value", field=exc.column, detail=str(exc)
                    ),
                )
                continue
            problem = self._row_problem(payload, key)
            if problem is not None:
                yield InvalidRow(key=hint, line=row.line, row=values, error=problem)
                continue
            earlier = seen.seen(key, row.line)
            if earlier is not None:
                yield InvalidRow(
                    key=hint,
                    line=row.line,
                    row=values,
                    error=ItemError(
                        status="invalid",
                        code="duplicate",
                        field=(self._key.columns[0] if self._key and self._key.columns else ""),
                        detail=f"the same request as line {earlier}",
                    ),
                )
                continue
            yield Item(key=key, line=row.line, row=values, payload=payload)

    def _row_problem(self, payload: Mapping[str, Any], key: str) -> ItemError | None:
        path: str = payload["path"]
        column = self._path.columns[0] if self._path.columns else ""
        if not path or "//" in path or path.endswith("/"):
            return ItemError(
                status="invalid",
                code="required",
                field=column,
                detail=f"the path {path!r} has an empty segment",
            )
        if any(seg in (".", "..") for seg in path.split("?")[0].split("/")) or "#" in path:
            return ItemError(
                status="invalid", code="path", field=column, detail=f"unsafe path {path!r}"
            )
        if not key:
            return ItemError(status="invalid", code="required", detail="the key is empty")
        return None

    # -- plan / execute / reconcile -------------------------------------------------------------

    async def plan(self, item: Item, client: SynapClient) -> PlanRow:
        detail = f"{self.method} {item.payload['path']}"
        targets: Mapping[str, str] = item.payload.get("targets") or {}
        if targets:  # what each lookup found, so the plan shows which record a row reaches
            detail += " (" + ", ".join(f"{k} {v}" for k, v in targets.items()) + ")"
        if self.safety is Safety.RECONCILABLE:
            found = await self._look_up(item, client)
            if found is not None:
                return PlanRow(
                    key=item.key,
                    line=item.line,
                    action="unchanged",
                    detail=f"{detail}: already done",
                    remote_id=found,
                )
        return PlanRow(key=item.key, line=item.line, action=self.method.lower(), detail=detail)

    async def execute(self, item: Item, client: SynapClient) -> Outcome:
        payload = item.payload
        subject = payload.get("subject_user")
        extra: dict[str, Any] = {}
        if subject:
            extra["headers"] = {self.profile.subject_user_header: subject}
        ref = f"request:{item.key}"
        if self.method != "GET":
            await self._images.before(item.key, [self._image(item, ref)])
        resp = await client.request(
            self.method,
            payload["path"],
            body=payload.get("body"),
            idempotent=self.safety is Safety.IDEMPOTENT,
            **extra,
        )
        remote = _first_id(resp.body) or ""
        if self._output is not None:
            self._keep(item, resp.body)
        if self._undo is not None and self._undo.needs_response:
            await self._images.created(ref, remote, self._reverse(item, remote))
        if self.method == "POST":
            action = "created" if resp.status == 201 else "sent"
        else:
            action = _ACTIONS.get(self.method, "sent")
        return self._count(Outcome(status="done", action=action, remote_id=remote))

    def _image(self, item: Item, ref: str) -> BeforeImage:
        """The row's before-image: its reverse request, when the job has an ``undo:``."""
        undo: dict[str, Any] = {}
        if self._undo is not None:
            # One that needs the response is completed when the response comes.
            needs = self._undo.needs_response
            undo = {"pending": "response"} if needs else self._reverse(item, "")
        return BeforeImage(op="request", ref=ref, path=item.payload["path"], undo=undo)

    def _reverse(self, item: Item, response_id: str) -> dict[str, Any]:
        """The row's rendered undo: request, sent as the same Subject-User as the row."""
        assert self._undo is not None
        out = self._undo.render(item.row, response_id)
        if item.payload.get("subject_user"):
            out["subject_user"] = item.payload["subject_user"]
        return out

    async def reconcile(self, item: Item, client: SynapClient) -> Outcome | None:
        if self.safety is not Safety.RECONCILABLE:
            return None
        found = await self._look_up(item, client)
        if found is None:
            return None
        if self._undo is not None and self._undo.needs_response and found:
            await self._images.created(f"request:{item.key}", found, self._reverse(item, found))
        return self._count(Outcome(status="done", action="found", remote_id=found))

    async def _look_up(self, item: Item, client: SynapClient) -> str | None:
        """The id the lookup finds ('' if the result has no id), None when it finds nothing."""
        path = item.payload.get("lookup_path")
        if not path:
            return None
        try:
            resp = await client.request(
                "GET", path, params=item.payload.get("lookup_params") or None, idempotent=True
            )
        except NotFound:
            return None
        return _first_id(resp.body)

    def _keep(self, item: Item, body: bytes) -> None:
        """One NDJSON line per response (appended: a resumed run adds the rows it fetches)."""
        try:
            response = msgspec.json.decode(body) if body else None
        except msgspec.DecodeError:
            response = body.decode("utf-8", "replace")
        line = msgspec.json.encode({"key": item.key, "line": item.line, "response": response})
        assert self._output is not None
        self._output.parent.mkdir(parents=True, exist_ok=True)
        with self._output.open("ab") as fh:
            fh.write(line + b"\n")

    def absent_means_done(self, item: Item) -> str:
        """A DELETE repeated after an unknown outcome that finds nothing did its work."""
        return "deleted" if self.method == "DELETE" else ""

    def column_for_pointer(self, pointer: str) -> str:
        if self._body is None:
            return ""
        return self._body.column_for_pointer(pointer)

    def _count(self, outcome: Outcome) -> Outcome:
        self._counts[outcome.action] = self._counts.get(outcome.action, 0) + 1
        return outcome

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "safety": self.safety.value}
        out.update(sorted_counts(self._counts))
        if self.lookup_stats:
            out["lookups"] = self.lookup_stats
        return out


def sorted_counts(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items()))
