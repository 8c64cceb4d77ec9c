"""The sandbox's handlers for exams, attempts, marker roles and timer resets, as a mixin of
:class:`~synap_bulk.sandbox.app.SandboxApp` (which routes to them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..jsonapi import ErrorObject
from ..resources import (
    ATTEMPT_STATUSES,
    MARKER_ROLES,
    TYPE_ATTEMPT,
    TYPE_ATTEMPT_TIMER_RESET,
    TYPE_EXAM,
    TYPE_USER,
    MarkerRole,
)
from .store import AttemptRec, ExamRec, Store, parse_iso
from .wire import (
    _P,
    ApiFailure,
    Ctx,
    Out,
    RouteHost,
    _doc,
    _encoder,
    _invalid,
    _linkage_list,
    _required,
    _resource_in,
    _self_or_staff,
    _sorted,
    _to_one,
    err,
    fail,
    not_found,
)

__all__ = ["MarkingRoutes"]


#: The attempts' sort keys (``sort=``), and those that never change once an attempt exists.
_ATTEMPT_SORT_KEYS: dict[str, Callable[[AttemptRec], Any]] = {
    "id": lambda a: a.id,
    "createdAt": lambda a: a.created_at,
    "updatedAt": lambda a: a.updated_at,
    "score": lambda a: a.score,
    "examStatus": lambda a: a.exam_status,
}
_FIXED_KEYS = frozenset({"id", "createdAt"})


def _roles_by_path() -> dict[str, MarkerRole]:
    """/relationships/<segment> of each marker role, from the sandbox's profile."""
    return {path: MARKER_ROLES[name] for name, path in _P.marker_role_paths.items()}


class MarkingRoutes(RouteHost):
    """/v3 exams, attempts, their marker-role relationships and attempt-timer-resets."""

    # ------------------------------------------------------------------ exams

    def _exam(self, id_: str) -> ExamRec:
        exam = self.state.store.exams.get(id_)
        if exam is None:
            raise not_found(TYPE_EXAM, id_)
        return exam

    def exams_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        items = list(self.state.store.exams.values())
        status = q.get(_P.filter_status)
        if status is not None:
            wanted = set(status.split(","))
            items = [e for e in items if e.status in wanted]
        items = _sorted(
            items,
            q,
            {"id": lambda e: e.id, "name": lambda e: e.name, "createdAt": lambda e: e.created_at},
        )
        return self._page(ctx.request, items, ExamRec.render, (_P.filter_status,))

    def exam_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        return Out(200, _doc(self._exam(m["id"]).render()))

    # ------------------------------------------------------------------ attempts

    def _attempt(self, id_: str) -> AttemptRec:
        attempt = self.state.store.attempts.get(id_)
        if attempt is None:
            raise not_found(TYPE_ATTEMPT, id_)
        return attempt

    def attempts_list(self, ctx: Ctx, m: dict[str, str]) -> Out:
        q = ctx.request.query
        store = self.state.store
        items = _attempt_filters(store, q, "parameter")
        exam_id: str = q.get(_P.filter_exam) or ""
        spec: str = q.get(_P.sort_param) or ""
        cacheable = (
            bool(exam_id)
            and bool(spec)
            and items is store.attempts_by_exam.get(exam_id)
            and all(f.strip().lstrip("-") in _FIXED_KEYS for f in spec.split(","))
        )
        hit = store.sorted_attempts.get((exam_id, spec)) if cacheable else None
        if hit is not None and hit[0] is items and hit[1] == len(items):
            items = hit[2]
        else:
            whole = items
            items = _sorted(items, q, _ATTEMPT_SORT_KEYS)
            if cacheable:
                store.sorted_attempts[(exam_id, spec)] = (whole, len(whole), items)
        allowed = (_P.filter_exam, _P.filter_user, _P.filter_status, _P.filter_updated_since)
        return self._page(ctx.request, items, AttemptRec.render, allowed)

    def attempt_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt = self._attempt(m["id"])
        _self_or_staff(ctx, attempt.user_id)
        return Out(200, _doc(attempt.render()))

    def _role(self, m: dict[str, str]) -> tuple[AttemptRec, MarkerRole, ExamRec]:
        by_path = _roles_by_path()
        role = by_path.get(m["role"])
        attempt = self._attempt(m["id"])
        if role is None:
            raise fail(
                404,
                "Not Found",
                f"attempts have no relationship {m['role']!r} (known: {', '.join(by_path)})",
                code="not_found",
            )
        return attempt, role, self._exam(attempt.exam_id)

    def _writable(self, exam: ExamRec) -> None:
        if exam.status == "draft":
            raise fail(
                403,
                "Forbidden",
                f"exam {exam.id} is still a draft; its attempts cannot be marked",
                code="exam_draft",
            )

    def _pool_checked(self, ctx: Ctx, exam: ExamRec, role: MarkerRole) -> list[str]:
        ids = _linkage_list(ctx.body, TYPE_USER)
        store = self.state.store
        pool_id = exam.pools.get(role.pool)
        pool = store.groups.get(pool_id) if pool_id else None
        missing: list[ErrorObject] = []
        outside: list[ErrorObject] = []
        for i, uid in enumerate(ids):
            if uid not in store.users:
                missing.append(
                    err(
                        404,
                        "Not Found",
                        f"User {uid} does not exist",
                        code="not_found",
                        pointer=f"/data/{i}",
                    )
                )
            elif pool is None or uid not in pool.members:
                outside.append(
                    err(
                        400,
                        "Bad Request",
                        f"user {uid} is not in the exam's {role.pool} pool",
                        code="not_in_pool",
                        pointer=f"/data/{i}",
                    )
                )
        if missing:
            raise ApiFailure(404, missing)
        if outside:
            raise ApiFailure(400, outside)
        return ids

    def markers_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, _ = self._role(m)
        ids = attempt.role_members(role.relationship)
        links = {"self": f"{self.state.root}{ctx.request.path}"}
        body = _encoder.encode(
            {"data": [{"type": TYPE_USER, "id": uid} for uid in ids], "links": links}
        )
        return Out(200, body)

    def markers_add(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, exam = self._role(m)
        self._writable(exam)
        ids = self._pool_checked(ctx, exam, role)
        current = attempt.role_members(role.relationship)
        if any(uid not in current for uid in ids):
            for uid in ids:
                current[uid] = None
            attempt.touch(self.state.wall())
            self.state.store.changed(attempt)
        return Out(204, None)

    def markers_remove(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, exam = self._role(m)
        self._writable(exam)
        ids = _linkage_list(ctx.body, TYPE_USER)
        current = attempt.role_members(role.relationship)
        if any(uid in current for uid in ids):
            for uid in ids:
                current.pop(uid, None)
            attempt.touch(self.state.wall())
            self.state.store.changed(attempt)
        return Out(204, None)

    def markers_replace(self, ctx: Ctx, m: dict[str, str]) -> Out:
        attempt, role, exam = self._role(m)
        self._writable(exam)
        ids = self._pool_checked(ctx, exam, role)
        if list(attempt.role_members(role.relationship)) != ids:
            attempt.roles[role.relationship] = dict.fromkeys(ids)
            attempt.touch(self.state.wall())
            self.state.store.changed(attempt)
        return Out(204, None)

    def timer_reset_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_ATTEMPT_TIMER_RESET)
        attrs: dict[str, Any] = data.get("attributes", {})
        rels: dict[str, Any] = data.get("relationships", {})
        ptr = "/data/attributes/"
        errors: list[ErrorObject] = []
        extra = attrs.get("extraTimeInMs")
        if extra is None:
            errors.append(_required(ptr + "extraTimeInMs", "extraTimeInMs"))
        elif isinstance(extra, bool) or not isinstance(extra, int) or not 0 < extra <= 86_400_000:
            errors.append(
                _invalid(ptr + "extraTimeInMs", "extraTimeInMs must be an integer in (0, 86400000]")
            )
        reason = attrs.get("reason", "")
        if not isinstance(reason, str):
            errors.append(_invalid(ptr + "reason", "reason must be a string"))
        attempt_id: str | None = None
        try:
            attempt_id = _to_one(rels, "attempt", TYPE_ATTEMPT, required=True)
        except ApiFailure as exc:
            if exc.status != 400:
                raise
            errors.extend(exc.errors)
        if errors:
            raise ApiFailure(400, errors)
        assert attempt_id is not None and isinstance(extra, int) and isinstance(reason, str)
        attempt = self.state.store.attempts.get(attempt_id)
        if attempt is None:
            raise not_found(TYPE_ATTEMPT, attempt_id, pointer="/data/relationships/attempt")
        self._writable(self._exam(attempt.exam_id))
        reset = self.state.store.add_timer_reset(attempt, extra, reason)
        return Out(201, _doc(reset.render()))


def _attempt_filters(store: Store, params: Any, source: str) -> list[AttemptRec]:
    """Attempts matching examV2/user/status/updatedSince, in creation order.

    ``params`` holds the filter values (query parameters or an export's filter object);
    ``source`` is "parameter" or a pointer prefix, for error objects.
    """

    def where(key: str) -> dict[str, str]:
        if source == "parameter":
            return {"parameter": key}
        return {"pointer": f"{source}/{key}"}

    exam_id = params.get(_P.filter_exam)
    user_id = params.get(_P.filter_user)
    items: list[AttemptRec]
    if exam_id is not None:
        items = store.attempts_by_exam.get(exam_id, [])
        if user_id is not None:
            items = [a for a in items if a.user_id == user_id]
    elif user_id is not None:
        items = store.attempts_by_user.get(user_id, [])
    else:
        items = store.attempt_list()
    status = params.get(_P.filter_status)
    if status is not None:
        wanted = set(status.split(","))
        unknown = wanted - set(ATTEMPT_STATUSES)
        if unknown:
            raise fail(
                400,
                "Bad Request",
                f"unknown examStatus {sorted(unknown)[0]!r} (known: {', '.join(ATTEMPT_STATUSES)})",
                code="invalid",
                **where(_P.filter_status),
            )
        items = [a for a in items if a.exam_status in wanted]
    since = params.get(_P.filter_updated_since)
    if since is not None:
        try:
            cutoff = parse_iso(since)
        except ValueError:
            raise fail(
                400,
                "Bad Request",
                f"{_P.filter_updated_since} must be an RFC 3339 timestamp",
                code="invalid",
                **where(_P.filter_updated_since),
            ) from None
        # Compare at the millisecond precision the API shows.
        cutoff = round(cutoff, 3)
        items = [a for a in items if round(a.updated_at, 3) >= cutoff]
    return items
