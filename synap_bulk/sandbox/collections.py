"""The sandbox's read-only collections beyond the core ones, compound documents, and two more
server-side exports, as a mixin of :class:`~synap_bulk.sandbox.app.SandboxApp`.

- ``GET enriched-attempts``: each attempt with its candidate's and exam's names (type
  ``EnrichedAttempt``), filtered like ``attempts`` (examV2, user, status, updatedSince).
- ``GET action-logs``: the portal's audit trail (type ``ActionLog``), derived from the store
  (registrations, group joins, attempts started and submitted, timer resets), so a state file
  keeps it with no record of its own; filters action, user, createdSince.
- ``POST user-group-exports`` (``UserGroupExport``, to-one ``userGroup``: the group's members)
  and ``POST exam-candidate-exports`` (``ExamCandidateExport``, to-one ``examV2``: the users
  with an attempt at the exam), each a BackgroundJob like ``export-enriched-attempts`` whose
  NDJSON file holds one User per line.
- Every listing (:meth:`~synap_bulk.sandbox.app.SandboxApp._page`) takes ``include`` (the
  linked resources of the relationships named, in ``included``; an unknown one is a 400) and
  sparse fieldsets ``fields[<type>]``, as JSON:API 1.1 says. Their names, the paths and the
  filter names are the profile's; none is documented (see docs/sandbox.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..jsonapi import Resource
from ..resources import TYPE_ATTEMPT, TYPE_EXAM, TYPE_USER, TYPE_USER_GROUP
from .exports import ExportRoutes
from .marking import _attempt_filters
from .records import _one, parse_iso
from .store import AttemptRec, JobRec, Store, UserRec, iso
from .wire import _P, Ctx, Out, _doc, _encoder, _resource_in, _sorted, _to_one, fail, not_found

__all__ = ["CollectionRoutes", "compound", "compound_params"]

TYPE_ENRICHED_ATTEMPT = "EnrichedAttempt"
TYPE_ACTION_LOG = "ActionLog"
TYPE_USER_GROUP_EXPORT = "UserGroupExport"
TYPE_EXAM_CANDIDATE_EXPORT = "ExamCandidateExport"

#: The relationships ``include`` may name, by resource type.
INCLUDABLE: dict[str, frozenset[str]] = {
    TYPE_USER: frozenset({"userGroups"}),
    TYPE_ATTEMPT: frozenset({"user", "examV2"}),
    TYPE_ENRICHED_ATTEMPT: frozenset({"user", "examV2"}),
    TYPE_EXAM: frozenset({"userGroup"}),
    TYPE_ACTION_LOG: frozenset({"user"}),
    TYPE_USER_GROUP: frozenset(),
}
#: The actions an action log entry may have.
ACTIONS = (
    "user.registered",
    "user.addedToGroup",
    "attempt.started",
    "attempt.submitted",
    "attemptTimerReset.created",
)

_decoder = msgspec.json.Decoder()


# --------------------------------------------------------------------------- compound documents


def compound_params(query: Any) -> list[str]:
    """The ``include`` and ``fields[...]`` parameters of a listing's query."""
    return [k for k in query if k == _P.include_param or k.startswith(_P.fields_param + "[")]


def _render(store: Store, type_: str, id_: str) -> msgspec.Raw | None:
    rec: Any
    if type_ == TYPE_USER:
        rec = store.users.get(id_)
    elif type_ == TYPE_USER_GROUP:
        rec = store.groups.get(id_)
    elif type_ == TYPE_EXAM:
        rec = store.exams.get(id_)
    elif type_ == TYPE_ATTEMPT:
        rec = store.attempts.get(id_)
    else:
        rec = None
    return rec.render() if rec is not None else None


def compound(store: Store, query: Any, data: list[msgspec.Raw]) -> tuple[list[Any], list[Any]]:
    """The page's resources (sparse fieldsets applied) and its ``included`` resources."""
    include = [i.strip() for i in query.get(_P.include_param, "").split(",") if i.strip()]
    fieldsets: dict[str, set[str]] = {}
    for key in compound_params(query):
        if key != _P.include_param:
            names = query[key]
            fieldsets[key[len(_P.fields_param) + 1 : -1]] = {
                n.strip() for n in names.split(",") if n.strip()
            }
    rows: list[dict[str, Any]] = [_decoder.decode(bytes(r)) for r in data]
    for path in include:
        if "." in path:
            raise fail(
                400,
                "Bad Request",
                f"include path {path!r}: nested includes are not supported",
                code="invalid_include",
                parameter=_P.include_param,
            )
        for row in rows:
            allowed = INCLUDABLE.get(row.get("type", ""))
            if allowed is not None and path not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise fail(
                    400,
                    "Bad Request",
                    f"cannot include {path!r} for {row['type']} (includable: {known})",
                    code="invalid_include",
                    parameter=_P.include_param,
                )
    seen: set[tuple[str, str]] = set()
    included: list[dict[str, Any]] = []
    for row in rows:
        rels = row.get("relationships") or {}
        for path in include:
            linkage = (rels.get(path) or {}).get("data")
            targets = linkage if isinstance(linkage, list) else [linkage] if linkage else []
            for t in targets:
                ref = (str(t.get("type", "")), str(t.get("id", "")))
                if ref in seen:
                    continue
                seen.add(ref)
                raw = _render(store, *ref)
                if raw is not None:
                    included.append(_decoder.decode(bytes(raw)))
    for res in (*rows, *included):
        wanted = fieldsets.get(res.get("type", ""))
        if wanted is not None:
            for member in ("attributes", "relationships"):
                if isinstance(res.get(member), dict):
                    res[member] = {k: v for k, v in res[member].items() if k in wanted}
    return rows, included


def _updated_since(items: list[UserRec], since: str) -> list[UserRec]:
    """The users updated at or after ``since`` (``filter[updatedSince]`` of ``users``)."""
    try:
        cutoff = round(parse_iso(since), 3)
    except ValueError:
        raise fail(
            400,
            "Bad Request",
            f"{_P.filter_updated_since} must be an RFC 3339 timestamp",
            code="invalid",
            parameter=_P.filter_updated_since,
        ) from None
    return [u for u in items if round(u.updated_at, 3) >= cutoff]


# --------------------------------------------------------------------------- action logs


class _LogEntry:
    __slots__ = ("action", "at", "id", "target", "user_id")

    def __init__(self, id_: str, action: str, at: float, user_id: str, target: tuple[str, str]):
        self.id = id_
        self.action = action
        self.at = at
        self.user_id = user_id
        self.target = target

    def render(self) -> msgspec.Raw:
        res = Resource(
            type=TYPE_ACTION_LOG,
            id=self.id,
            attributes={"action": self.action, "createdAt": iso(self.at)},
            relationships={
                "user": _one(TYPE_USER, self.user_id),
                "target": _one(*self.target),
            },
        )
        return msgspec.Raw(_encoder.encode(res))


def action_log(store: Store) -> list[_LogEntry]:
    """The portal's actions, oldest first (ties by id), derived from the store's records."""
    out: list[_LogEntry] = []
    for u in store.user_list():
        out.append(
            _LogEntry(f"L-reg-{u.id}", "user.registered", u.created_at, u.id, (TYPE_USER, u.id))
        )
        for gid, at in u.groups.items():
            out.append(
                _LogEntry(
                    f"L-join-{u.id}-{gid}", "user.addedToGroup", at, u.id, (TYPE_USER_GROUP, gid)
                )
            )
    for a in store.attempt_list():
        if a.time_started:
            out.append(
                _LogEntry(
                    f"L-start-{a.id}",
                    "attempt.started",
                    a.time_started,
                    a.user_id,
                    (TYPE_ATTEMPT, a.id),
                )
            )
        if a.time_completed:
            out.append(
                _LogEntry(
                    f"L-submit-{a.id}",
                    "attempt.submitted",
                    a.time_completed,
                    a.user_id,
                    (TYPE_ATTEMPT, a.id),
                )
            )
    for r in store.timer_resets.values():
        attempt = store.attempts.get(r.attempt_id)
        if attempt is not None:
            out.append(
                _LogEntry(
                    f"L-reset-{r.id}",
                    "attemptTimerReset.created",
                    r.created_at,
                    store.admin_id,
                    (TYPE_ATTEMPT, attempt.id),
                )
            )
    out.sort(key=lambda e: (e.at, e.id))
    return out


# --------------------------------------------------------------------------- the routes


class CollectionRoutes(ExportRoutes):
    """/v3 enriched-attempts, action-logs, user-group-exports and exam-candidate-exports."""

    def collection_routes(
        self,
    ) -> list[tuple[str, str, str, Callable[[Ctx, dict[str, str]], Out], str, bool]]:
        """(method, path, name, handler, permission, needs body) of this module's routes."""
        return [
            (
                "GET",
                f"/v3/{_P.enriched_attempts_path}",
                "enriched-attempts.list",
                self.enriched_list,
                "staff",
                False,
            ),
            (
                "GET",
                f"/v3/{_P.action_logs_path}",
                "action-logs.list",
                self.action_logs_list,
                "staff",
                False,
            ),
            (
                "POST",
                f"/v3/{_P.user_group_exports_path}",
                "user-group-exports.create",
                self.user_group_export_create,
                "staff",
                True,
            ),
            (
                "POST",
                f"/v3/{_P.exam_candidate_exports_path}",
                "exam-candidate-exports.create",
                self.exam_candidate_export_create,
                "staff",
                True,
            ),
        ]

    # ------------------------------------------------------------------ enriched attempts

    def _enriched(self, a: AttemptRec) -> msgspec.Raw:
        store = self.state.store
        user = store.users.get(a.user_id)
        exam = store.exams.get(a.exam_id)
        res = a.resource()
        attrs = dict(res.attributes)
        attrs["candidateName"] = user.name if user else None
        attrs["candidateEmailAddress"] = user.email if user else None
        attrs["candidateExternalId"] = user.external_id if user else None
        attrs["examName"] = exam.name if exam else None
        out = Resource(
            type=TYPE_ENRICHED_ATTEMPT,
            id=a.id,
            attributes=attrs,
            relationships={k: res.relationships[k] for k in ("user", "examV2")},
        )
        return msgspec.Raw(_encoder.encode(out))

    def enriched_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        items = _attempt_filters(self.state.store, q, "parameter")
        items = _sorted(
            items,
            q,
            {
                "id": lambda a: a.id,
                "createdAt": lambda a: a.created_at,
                "updatedAt": lambda a: a.updated_at,
                "score": lambda a: a.score,
            },
        )
        allowed = (_P.filter_exam, _P.filter_user, _P.filter_status, _P.filter_updated_since)
        return self._page(ctx.request, items, self._enriched, allowed)

    # ------------------------------------------------------------------ action logs

    def action_logs_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        items = action_log(self.state.store)
        action = q.get(_P.filter_action)
        if action is not None:
            wanted = set(action.split(","))
            unknown = wanted - set(ACTIONS)
            if unknown:
                raise fail(
                    400,
                    "Bad Request",
                    f"unknown action {sorted(unknown)[0]!r} (known: {', '.join(ACTIONS)})",
                    code="invalid",
                    parameter=_P.filter_action,
                )
            items = [e for e in items if e.action in wanted]
        user = q.get(_P.filter_user)
        if user is not None:
            items = [e for e in items if e.user_id == user]
        since = q.get(_P.filter_created_since)
        if since is not None:
            try:
                cutoff = round(parse_iso(since), 3)
            except ValueError:
                raise fail(
                    400,
                    "Bad Request",
                    f"{_P.filter_created_since} must be an RFC 3339 timestamp",
                    code="invalid",
                    parameter=_P.filter_created_since,
                ) from None
            items = [e for e in items if round(e.at, 3) >= cutoff]
        items = _sorted(items, q, {"id": lambda e: e.id, "createdAt": lambda e: e.at})
        allowed = (_P.filter_action, _P.filter_user, _P.filter_created_since)
        return self._page(ctx.request, items, _LogEntry.render, allowed)

    # ------------------------------------------------------------------ more server exports

    def _user_export(self, ctx: Ctx, type_: str, rel: str, target: str, kind: str) -> Out:
        data = _resource_in(ctx.body, type_)
        attrs: dict[str, Any] = data.get("attributes", {})
        extra = [k for k in attrs if k != "filter"] or [
            f"filter/{k}" for k in (attrs.get("filter") or {})
        ]
        if extra:
            raise fail(
                400,
                "Bad Request",
                f"{type_} takes no {extra[0]}",
                code="invalid",
                pointer=f"/data/attributes/{extra[0]}",
            )
        rid = _to_one(data.get("relationships", {}), rel, target, required=True)
        assert rid is not None
        store = self.state.store
        if (target == TYPE_USER_GROUP and rid not in store.groups) or (
            target == TYPE_EXAM and rid not in store.exams
        ):
            raise not_found(target, rid, pointer=f"/data/relationships/{rel}")
        job = store.add_job({rel: rid})
        job.kind = kind
        location = f"{self.state.root}/v3/{_P.background_jobs_path}/{job.id}"
        return Out(201, _doc(job.render()), {"Location": location})

    def user_group_export_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return self._user_export(
            ctx, TYPE_USER_GROUP_EXPORT, "userGroup", TYPE_USER_GROUP, _P.user_group_exports_path
        )

    def exam_candidate_export_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return self._user_export(
            ctx, TYPE_EXAM_CANDIDATE_EXPORT, "examV2", TYPE_EXAM, _P.exam_candidate_exports_path
        )

    def _complete(self, job: JobRec) -> None:
        if job.kind == "attempts":
            super()._complete(job)
            return
        store = self.state.store
        users: list[UserRec] = []
        if job.kind == _P.user_group_exports_path:
            group = store.groups.get(job.filters.get("userGroup", ""))
            members = group.members if group is not None else {}
            users = [store.users[u] for u in members if u in store.users]
        else:
            seen: dict[str, None] = {}
            for a in store.attempts_by_exam.get(job.filters.get("examV2", ""), []):
                seen.setdefault(a.user_id)
            users = [store.users[u] for u in seen if u in store.users]
        job.items = users
        job.status = "completed"
        job.completed_at = self.state.wall()
        job.file_url = self._file_url(job)

    def _job_line(self, job: JobRec) -> Callable[[Any], bytes]:
        if job.kind == "attempts":
            return super()._job_line(job)

        def line(user: UserRec) -> bytes:
            return bytes(user.render()) + b"\n"

        return line
