"""The sandbox's attempt operations: locks, overrides (extra time, a later close, more
attempts) and marking entries, as a mixin of :class:`~synap_bulk.sandbox.app.SandboxApp`.

The docs know these by name only (Create/Delete AttemptLock, Create/List AttemptOverride) or by
their create body (Create MarkingEntry); paths, statuses and rules here are the profile's
assumptions, stated once:

``POST /v3/attempt-locks``      AttemptLock: to-one ``attempt``, optional ``reason``: 201. The
                                attempt's candidate cannot start it until the lock is deleted.
                                A second lock of a locked attempt: 409 ``already_locked``.
                                ``GET`` lists (``filter[attempt]``); ``DELETE /{id}`` unlocks (204).
``POST /v3/attempt-overrides``  AttemptOverride: to-one ``attempt`` and at least one of
                                ``extraTimeInMs`` (0..86400000), ``deactivateAt`` (RFC 3339),
                                ``attemptsAllowed`` (>= 1), with ``reason``: 201. A revoked
                                attempt: 409 ``attempt_revoked``. ``GET`` lists; ``DELETE /{id}``
                                reverts (204).
``POST /v3/marking-entries``    MarkingEntry: to-one ``attempt``, optional ``owner`` (the marker;
                                default the acting user), ``credits`` >= 0, ``penalties`` >= 0,
                                ``status`` pending | submitted, ``candidateFeedback``. The marker
                                must hold a marker role on the attempt (403 ``not_a_marker``);
                                the attempt must be submitted (409 ``not_submitted``); a draft
                                exam: 403 ``exam_draft`` (the docs' example of a 403). The answer
                                adds ``role``, ``points``, ``maxPoints``. ``PATCH /{id}`` updates;
                                a submitted entry is final (409 ``entry_submitted``). ``GET``
                                lists (``filter[attempt]``, ``filter[owner]``).

Every record is a :class:`~.records.DocRec`, persisted with the rest of the state.
"""

from __future__ import annotations

from typing import Any

from ..jsonapi import ErrorObject
from ..resources import MARKER_ROLES, TYPE_ATTEMPT, TYPE_EXAM, TYPE_USER
from .records import DocRec
from .store import AttemptRec, parse_iso
from .wire import (
    _P,
    ApiFailure,
    Ctx,
    Out,
    RouteHost,
    _doc,
    _invalid,
    _resource_in,
    _to_one,
    fail,
    not_found,
)

__all__ = [
    "TYPE_ATTEMPT_LOCK",
    "TYPE_ATTEMPT_OVERRIDE",
    "TYPE_MARKING_ENTRY",
    "AttemptOpsRoutes",
    "route_table",
]

TYPE_ATTEMPT_LOCK = "AttemptLock"
TYPE_ATTEMPT_OVERRIDE = "AttemptOverride"
TYPE_MARKING_ENTRY = "MarkingEntry"
_MAX_MS = 86_400_000
_PTR = "/data/attributes/"


def route_table() -> list[tuple[str, str, str, str, str, bool]]:
    """(method, path, route name, handler name, permission, needs a body) of each route."""
    locks = f"/v3/{_P.attempt_locks_path}"
    overrides = f"/v3/{_P.attempt_overrides_path}"
    entries = f"/v3/{_P.marking_entries_path}"
    return [
        ("GET", locks, "attempt-locks.list", "locks_list", "staff", False),
        ("POST", locks, "attempt-locks.create", "lock_create", "staff", True),
        ("GET", f"{locks}/{{id}}", "attempt-locks.get", "lock_get", "staff", False),
        ("DELETE", f"{locks}/{{id}}", "attempt-locks.delete", "lock_delete", "staff", False),
        ("GET", overrides, "attempt-overrides.list", "overrides_list", "staff", False),
        ("POST", overrides, "attempt-overrides.create", "override_create", "staff", True),
        ("GET", f"{overrides}/{{id}}", "attempt-overrides.get", "override_get", "staff", False),
        (
            "DELETE",
            f"{overrides}/{{id}}",
            "attempt-overrides.delete",
            "override_delete",
            "staff",
            False,
        ),
        ("GET", entries, "marking-entries.list", "entries_list", "staff", False),
        ("POST", entries, "marking-entries.create", "entry_create", "staff", True),
        ("GET", f"{entries}/{{id}}", "marking-entries.get", "entry_get", "staff", False),
        ("PATCH", f"{entries}/{{id}}", "marking-entries.update", "entry_update", "staff", True),
    ]


class AttemptOpsRoutes(RouteHost):
    """/v3 attempt-locks, attempt-overrides and marking-entries."""

    # ------------------------------------------------------------------ shared

    def _docs(self, type_: str) -> list[DocRec]:
        return [d for d in self.state.store.docs.values() if d.type == type_]

    def _one_doc(self, type_: str, id_: str) -> DocRec:
        doc = self.state.store.docs.get(id_)
        if doc is None or doc.type != type_:
            raise not_found(type_, id_)
        return doc

    def _list_docs(self, ctx: Ctx, type_: str, filters: dict[str, str]) -> Out:
        q = ctx.request.query
        items = self._docs(type_)
        for param, link in filters.items():
            value = q.get(param)
            if value is not None:
                wanted = set(value.split(","))
                items = [d for d in items if d.link(link) in wanted]
        return self._page(ctx.request, items, DocRec.render, tuple(filters))

    def _target_attempt(self, rels: dict[str, Any], errors: list[ErrorObject]) -> str | None:
        try:
            return _to_one(rels, "attempt", TYPE_ATTEMPT, required=True)
        except ApiFailure as exc:
            if exc.status != 400:
                raise
            errors.extend(exc.errors)
            return None

    def _existing_attempt(self, attempt_id: str) -> AttemptRec:
        attempt = self.state.store.attempts.get(attempt_id)
        if attempt is None:
            raise not_found(TYPE_ATTEMPT, attempt_id, pointer="/data/relationships/attempt")
        return attempt

    @staticmethod
    def _reason(attrs: dict[str, Any], errors: list[ErrorObject]) -> str:
        reason = attrs.get("reason", "")
        if not isinstance(reason, str):
            errors.append(_invalid(_PTR + "reason", "reason must be a string"))
            return ""
        return reason

    def _created(self, doc: DocRec, path: str) -> Out:
        location = f"{self.state.root}/v3/{path}/{doc.id}"
        return Out(201, _doc(doc.render()), {"Location": location})

    # ------------------------------------------------------------------ locks

    def locks_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return self._list_docs(ctx, TYPE_ATTEMPT_LOCK, {_P.filter_attempt: "attempt"})

    def lock_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self._one_doc(TYPE_ATTEMPT_LOCK, m["id"]).render()))

    def lock_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_ATTEMPT_LOCK)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors: list[ErrorObject] = []
        reason = self._reason(attrs, errors)
        attempt_id = self._target_attempt(data.get("relationships", {}), errors)
        if errors:
            raise ApiFailure(400, errors)
        assert attempt_id is not None
        attempt = self._existing_attempt(attempt_id)
        held = [d for d in self._docs(TYPE_ATTEMPT_LOCK) if d.link("attempt") == attempt.id]
        if held:
            raise fail(
                409,
                "Conflict",
                f"attempt {attempt.id} is already locked (lock {held[0].id})",
                code="already_locked",
                pointer="/data/relationships/attempt",
            )
        doc = self.state.store.add_doc(
            TYPE_ATTEMPT_LOCK,
            {"reason": reason, "lockedBy": ctx.actor.id},
            {"attempt": (TYPE_ATTEMPT, attempt.id)},
        )
        return self._created(doc, _P.attempt_locks_path)

    def lock_delete(self, ctx: Ctx, m: dict[str, str]) -> Out:
        self.state.store.delete_doc(self._one_doc(TYPE_ATTEMPT_LOCK, m["id"]))
        return Out(204, None)

    # ------------------------------------------------------------------ overrides

    def overrides_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return self._list_docs(ctx, TYPE_ATTEMPT_OVERRIDE, {_P.filter_attempt: "attempt"})

    def override_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self._one_doc(TYPE_ATTEMPT_OVERRIDE, m["id"]).render()))

    def override_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_ATTEMPT_OVERRIDE)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors: list[ErrorObject] = []
        kept: dict[str, Any] = {"reason": self._reason(attrs, errors)}
        extra = attrs.get("extraTimeInMs")
        if extra is not None:
            if isinstance(extra, bool) or not isinstance(extra, int) or not 0 <= extra <= _MAX_MS:
                errors.append(
                    _invalid(
                        _PTR + "extraTimeInMs",
                        f"extraTimeInMs must be an integer in [0, {_MAX_MS}]",
                    )
                )
            kept["extraTimeInMs"] = extra
        close = attrs.get("deactivateAt")
        if close is not None:
            if not isinstance(close, str) or not _is_rfc3339(close):
                errors.append(_invalid(_PTR + "deactivateAt", "deactivateAt must be RFC 3339"))
            kept["deactivateAt"] = close
        allowed = attrs.get("attemptsAllowed")
        if allowed is not None:
            if isinstance(allowed, bool) or not isinstance(allowed, int) or allowed < 1:
                errors.append(_invalid(_PTR + "attemptsAllowed", "attemptsAllowed must be >= 1"))
            kept["attemptsAllowed"] = allowed
        if extra is None and close is None and allowed is None:
            errors.append(
                _invalid(
                    "/data/attributes",
                    "an override sets extraTimeInMs, deactivateAt or attemptsAllowed",
                )
            )
        attempt_id = self._target_attempt(data.get("relationships", {}), errors)
        if errors:
            raise ApiFailure(400, errors)
        assert attempt_id is not None
        attempt = self._existing_attempt(attempt_id)
        if attempt.exam_status == "revoked":
            raise fail(
                409,
                "Conflict",
                f"attempt {attempt.id} is revoked; it cannot be overridden",
                code="attempt_revoked",
                pointer="/data/relationships/attempt",
            )
        doc = self.state.store.add_doc(
            TYPE_ATTEMPT_OVERRIDE, kept, {"attempt": (TYPE_ATTEMPT, attempt.id)}
        )
        return self._created(doc, _P.attempt_overrides_path)

    def override_delete(self, ctx: Ctx, m: dict[str, str]) -> Out:
        self.state.store.delete_doc(self._one_doc(TYPE_ATTEMPT_OVERRIDE, m["id"]))
        return Out(204, None)

    # ------------------------------------------------------------------ marking entries

    def entries_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        filters = {_P.filter_attempt: "attempt", _P.filter_owner: "owner"}
        return self._list_docs(ctx, TYPE_MARKING_ENTRY, filters)

    def entry_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self._one_doc(TYPE_MARKING_ENTRY, m["id"]).render()))

    @staticmethod
    def _marks(attrs: dict[str, Any], errors: list[ErrorObject], kept: dict[str, Any]) -> None:
        for name in ("credits", "penalties"):
            value = attrs.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                errors.append(_invalid(_PTR + name, f"{name} must be a number >= 0"))
            kept[name] = value
        status = attrs.get("status")
        if status is not None:
            if status not in ("pending", "submitted"):
                errors.append(_invalid(_PTR + "status", "status must be pending or submitted"))
            kept["status"] = status
        feedback = attrs.get("candidateFeedback")
        if feedback is not None:
            if not isinstance(feedback, str):
                errors.append(_invalid(_PTR + "candidateFeedback", "must be a string"))
            kept["candidateFeedback"] = feedback
        for name in ("rubricMarks",):
            value = attrs.get(name)
            if value is not None:
                if not isinstance(value, dict):
                    errors.append(_invalid(_PTR + name, f"{name} must be an object"))
                kept[name] = value

    def entry_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_MARKING_ENTRY)
        attrs: dict[str, Any] = data.get("attributes", {})
        rels: dict[str, Any] = data.get("relationships", {})
        errors: list[ErrorObject] = []
        kept: dict[str, Any] = {"status": "pending"}
        self._marks(attrs, errors, kept)
        attempt_id = self._target_attempt(rels, errors)
        owner_id: str | None = None
        try:
            owner_id = _to_one(rels, "owner", TYPE_USER, required=False)
        except ApiFailure as exc:
            if exc.status != 400:
                raise
            errors.extend(exc.errors)
        if errors:
            raise ApiFailure(400, errors)
        assert attempt_id is not None
        attempt = self._existing_attempt(attempt_id)
        store = self.state.store
        exam = store.exams.get(attempt.exam_id)
        if exam is None:
            raise not_found(TYPE_EXAM, attempt.exam_id)
        if exam.status == "draft":
            raise fail(
                403,
                "Forbidden",
                f"exam {exam.id} is still a draft; its attempts cannot be marked",
                code="exam_draft",
            )
        owner = owner_id or ctx.actor.id
        if owner not in store.users:
            raise not_found(TYPE_USER, owner, pointer="/data/relationships/owner")
        role = self._marker_role(attempt, owner)
        if role is None:
            raise fail(
                403,
                "Forbidden",
                f"user {owner} holds no marker role on attempt {attempt.id}",
                code="not_a_marker",
                pointer="/data/relationships/owner",
            )
        if attempt.exam_status != "submitted":
            raise fail(
                409,
                "Conflict",
                f"attempt {attempt.id} is {attempt.exam_status}, not submitted: nothing to mark",
                code="not_submitted",
                pointer="/data/relationships/attempt",
            )
        kept.update(_points(kept), role=role)
        doc = store.add_doc(
            TYPE_MARKING_ENTRY,
            kept,
            {
                "attempt": (TYPE_ATTEMPT, attempt.id),
                "owner": (TYPE_USER, owner),
                "candidate": (TYPE_USER, attempt.user_id),
            },
        )
        return self._created(doc, _P.marking_entries_path)

    def entry_update(self, ctx: Ctx, m: dict[str, str]) -> Out:
        doc = self._one_doc(TYPE_MARKING_ENTRY, m["id"])
        data = _resource_in(ctx.body, TYPE_MARKING_ENTRY, id_=doc.id)
        attrs: dict[str, Any] = data.get("attributes", {})
        errors: list[ErrorObject] = []
        kept: dict[str, Any] = {}
        self._marks(attrs, errors, kept)
        unknown = sorted(set(attrs) - set(kept))
        for name in unknown:
            errors.append(_invalid(_PTR + name, f"{name} cannot be changed"))
        if errors:
            raise ApiFailure(400, errors)
        if doc.attributes.get("status") == "submitted":
            raise fail(
                409,
                "Conflict",
                f"marking entry {doc.id} is submitted; it can no longer change",
                code="entry_submitted",
            )
        doc.attributes = {**doc.attributes, **kept}
        doc.attributes.update(_points(doc.attributes))
        doc.updated_at = self.state.wall()
        self.state.store.changed(doc)
        return Out(200, _doc(doc.render()))

    def _marker_role(self, attempt: AttemptRec, user_id: str) -> str | None:
        """The first marker role (job-file name) the user holds on the attempt."""
        for name, role in MARKER_ROLES.items():
            if user_id in attempt.roles.get(role.relationship, {}):
                return name
        return None


def _is_rfc3339(text: str) -> bool:
    try:
        return parse_iso(text) is not None
    except ValueError:
        return False


def _points(attrs: dict[str, Any]) -> dict[str, Any]:
    credits = attrs.get("credits") or 0
    penalties = attrs.get("penalties") or 0
    return {"points": max(0, credits - penalties), "maxPoints": 100}
