"""The sandbox's in-memory portal: seeded deterministically, mutated only by the app's handlers.

Every record caches its encoded JSON:API resource (``msgspec.Raw``) until it changes, so a page
of 100 attempts costs 100 memory copies, not 100 encodings. All mutation happens synchronously
inside one handler (no ``await`` in between), so the event loop makes every write atomic.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import random
import string
import time
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any

import msgspec

from ..jsonapi import Relationship, Resource, ResourceIdentifier
from ..resources import (
    MARKER_ROLES,
    TYPE_ATTEMPT,
    TYPE_ATTEMPT_TIMER_RESET,
    TYPE_BACKGROUND_JOB,
    TYPE_EXAM,
    TYPE_PORTAL,
    TYPE_USER,
    TYPE_USER_GROUP,
)
from .config import SandboxConfig

__all__ = [
    "ATTEMPT_ROLE_RELATIONSHIPS",
    "EXAM_POOL_RELATIONSHIPS",
    "AttemptRec",
    "ExamRec",
    "GroupRec",
    "JobRec",
    "PortalRec",
    "Store",
    "TimerResetRec",
    "UserRec",
    "iso",
    "parse_iso",
]

_encoder = msgspec.json.Encoder()
_ALPHABET = string.ascii_letters + string.digits

#: The attempt relationships of the six marker roles, in a stable order.
ATTEMPT_ROLE_RELATIONSHIPS: tuple[str, ...] = tuple(r.relationship for r in MARKER_ROLES.values())
#: The exam's marker-pool relationships (each points at one UserGroup).
EXAM_POOL_RELATIONSHIPS: tuple[str, ...] = tuple(
    dict.fromkeys(r.pool for r in MARKER_ROLES.values())
)

#: 2026-01-05T00:00:00Z: seeded timestamps fall in the weeks after it.
_EPOCH0 = 1767571200.0

#: (examStatus, weight) of seeded attempts of a published exam.
_STATUS_WEIGHTS = (
    ("enrolled", 15),
    ("notified", 10),
    ("inProgress", 15),
    ("submitted", 45),
    ("expired", 10),
    ("revoked", 5),
)

_FIRST = (
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko",
    "Liam", "Maya", "Nils", "Olu", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Viktor",
    "Wen", "Xavi", "Yara", "Zoe",
)  # fmt: skip
_LAST = (
    "Abara", "Brennan", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito",
    "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quispe", "Rossi",
    "Silva", "Tanaka", "Usman", "Varga", "Weber", "Xu", "Yilmaz", "Zhang",
)  # fmt: skip


def iso(epoch: float) -> str:
    """RFC 3339 UTC with milliseconds, as the API's examples show dates."""
    whole = int(epoch)
    ms = round((epoch - whole) * 1000)
    if ms == 1000:
        whole, ms = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{ms:03d}Z"


def parse_iso(text: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp; ``ValueError`` when it is not one."""
    from datetime import datetime

    value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _ids(kind: str, ids: Iterable[str]) -> Relationship:
    return Relationship(data=[ResourceIdentifier(type=kind, id=i) for i in ids])


def _one(kind: str, id_: str | None) -> Relationship:
    return Relationship(data=ResourceIdentifier(type=kind, id=id_) if id_ is not None else None)


class PortalRec:
    """The one portal every token belongs to."""

    __slots__ = ("id", "name", "raw", "subdomain", "time_zone")

    def __init__(self, id_: str, name: str, subdomain: str) -> None:
        self.id = id_
        self.name = name
        self.subdomain = subdomain
        self.time_zone = "Europe/London"
        self.raw: msgspec.Raw | None = None

    def render(self) -> msgspec.Raw:
        if self.raw is None:
            res = Resource(
                type=TYPE_PORTAL,
                id=self.id,
                attributes={
                    "name": self.name,
                    "subdomain": self.subdomain,
                    "timeZone": self.time_zone,
                },
            )
            self.raw = msgspec.Raw(_encoder.encode(res))
        return self.raw


class UserRec:
    """A user; ``role`` (admin, educator, student) decides what a Subject-User may do."""

    __slots__ = (
        "attr",
        "created_at",
        "email",
        "external_id",
        "groups",
        "id",
        "locale",
        "name",
        "preferences",
        "raw",
        "role",
        "time_zone",
        "updated_at",
    )

    def __init__(
        self,
        id_: str,
        name: str,
        email: str,
        external_id: str | None,
        role: str,
        created_at: float,
    ) -> None:
        self.id = id_
        self.name = name
        self.email = email
        self.external_id = external_id
        self.role = role
        self.created_at = created_at
        self.updated_at = created_at
        self.time_zone: str | None = None
        self.locale: str | None = None
        self.attr: dict[str, Any] = {}
        self.preferences: dict[str, Any] = {}
        #: group id -> epoch joined (insertion-ordered set of memberships)
        self.groups: dict[str, float] = {}
        self.raw: msgspec.Raw | None = None

    def render(self) -> msgspec.Raw:
        if self.raw is None:
            first, _, last = self.name.partition(" ")
            res = Resource(
                type=TYPE_USER,
                id=self.id,
                attributes={
                    "name": self.name,
                    "emailAddress": self.email,
                    "externalId": self.external_id,
                    "firstName": first,
                    "lastName": last,
                    "createdAt": iso(self.created_at),
                    "updatedAt": iso(self.updated_at),
                    "emailVerified": True,
                    "timeZone": self.time_zone,
                    "locale": self.locale,
                    "attr": self.attr,
                    "preferences": self.preferences,
                    "userGroupsMetadata": {
                        g: {"dateJoined": iso(t)} for g, t in self.groups.items()
                    },
                },
                relationships={"userGroups": _ids(TYPE_USER_GROUP, self.groups)},
            )
            self.raw = msgspec.Raw(_encoder.encode(res))
        return self.raw


class GroupRec:
    """A user group; ``members`` is an insertion-ordered set (dict keys)."""

    __slots__ = (
        "attr",
        "created_at",
        "default_type",
        "description",
        "id",
        "internal",
        "is_archived",
        "members",
        "name",
        "raw",
    )

    def __init__(
        self,
        id_: str,
        name: str,
        created_at: float,
        *,
        default_type: str | None = None,
        internal: bool = False,
        description: str = "",
    ) -> None:
        self.id = id_
        self.name = name
        self.created_at = created_at
        self.default_type = default_type
        self.internal = internal
        self.description = description
        self.attr: dict[str, Any] = {}
        self.is_archived = False
        self.members: dict[str, None] = {}
        self.raw: msgspec.Raw | None = None

    def render(self) -> msgspec.Raw:
        if self.raw is None:
            res = Resource(
                type=TYPE_USER_GROUP,
                id=self.id,
                attributes={
                    "name": self.name,
                    "description": self.description,
                    "attr": self.attr,
                    "isArchived": self.is_archived,
                    "isDefaultGroup": self.default_type is not None,
                    "defaultGroupType": self.default_type,
                    "totalUsers": len(self.members),
                    "internal": self.internal,
                    "createdAt": iso(self.created_at),
                },
            )
            self.raw = msgspec.Raw(_encoder.encode(res))
        return self.raw


class ExamRec:
    """An Exam-V-2: a candidate group and the five marker-pool groups."""

    __slots__ = ("created_at", "group_id", "id", "name", "pools", "raw", "status")

    def __init__(
        self, id_: str, name: str, status: str, group_id: str, pools: dict[str, str], at: float
    ) -> None:
        self.id = id_
        self.name = name
        self.status = status
        self.group_id = group_id
        self.pools = pools
        self.created_at = at
        self.raw: msgspec.Raw | None = None

    def render(self) -> msgspec.Raw:
        if self.raw is None:
            rels = {"userGroup": _one(TYPE_USER_GROUP, self.group_id)}
            for pool in EXAM_POOL_RELATIONSHIPS:
                rels[pool] = _one(TYPE_USER_GROUP, self.pools.get(pool))
            res = Resource(
                type=TYPE_EXAM,
                id=self.id,
                attributes={
                    "name": self.name,
                    "status": self.status,
                    "isArchived": False,
                    "shortDescription": f"{self.name} (sandbox)",
                    "markingDoubleEnabled": True,
                    "markingDoubleAllocation": "manual",
                    "markingDoubleMinMarkers": 2,
                    "lockedByDefault": False,
                    "createdAt": iso(self.created_at),
                },
                relationships=rels,
            )
            self.raw = msgspec.Raw(_encoder.encode(res))
        return self.raw


class AttemptRec:
    """An exam attempt with its marker relationships (role relationship -> ordered user ids)."""

    __slots__ = (
        "created_at",
        "exam_id",
        "exam_status",
        "extra_time_ms",
        "id",
        "marks",
        "raw",
        "resit_count",
        "roles",
        "score",
        "time_completed",
        "time_started",
        "title",
        "updated_at",
        "user_id",
    )

    def __init__(self, id_: str, exam_id: str, user_id: str, title: str, at: float) -> None:
        self.id = id_
        self.exam_id = exam_id
        self.user_id = user_id
        self.title = title
        self.created_at = at
        self.updated_at = at
        self.exam_status = "enrolled"
        self.score: float | None = None
        self.marks: dict[str, float] | None = None
        self.time_started: float | None = None
        self.time_completed: float | None = None
        self.resit_count = 0
        self.extra_time_ms = 0
        #: role relationship -> ordered set of user ids; created on first use (saves memory)
        self.roles: dict[str, dict[str, None]] = {}
        self.raw: msgspec.Raw | None = None

    def role_members(self, relationship: str) -> dict[str, None]:
        """The live ordered set of users in one marker-role relationship."""
        members = self.roles.get(relationship)
        if members is None:
            members = self.roles[relationship] = {}
        return members

    def touch(self, now: float) -> None:
        """Record a change: a new updatedAt and a fresh rendering."""
        self.updated_at = max(now, self.updated_at)
        self.raw = None

    def resource(self, meta: dict[str, Any] | None = None) -> Resource[dict[str, Any]]:
        status = self.exam_status
        rels = {
            "examV2": _one(TYPE_EXAM, self.exam_id),
            "user": _one(TYPE_USER, self.user_id),
        }
        for rel in ATTEMPT_ROLE_RELATIONSHIPS:
            rels[rel] = _ids(TYPE_USER, self.roles.get(rel, ()))
        return Resource(
            type=TYPE_ATTEMPT,
            id=self.id,
            attributes={
                "title": self.title,
                "createdAt": iso(self.created_at),
                "updatedAt": iso(self.updated_at),
                "isCompleted": status == "submitted",
                "timeStarted": iso(self.time_started) if self.time_started else None,
                "timeCompleted": iso(self.time_completed) if self.time_completed else None,
                "status": "completed" if status == "submitted" else "active",
                "examStatus": status,
                "score": self.score,
                "marks": self.marks,
                "resultsStatus": "pending" if status != "submitted" else "available",
                "isRevoked": status == "revoked",
                "isOpen": status in ("enrolled", "notified", "inProgress"),
                "resitCount": self.resit_count,
                "attemptsAllowed": 1 + self.resit_count,
                "extraTimeInMs": self.extra_time_ms,
            },
            relationships=rels,
            meta=meta or {},
        )

    def render(self) -> msgspec.Raw:
        if self.raw is None:
            self.raw = msgspec.Raw(_encoder.encode(self.resource()))
        return self.raw


class TimerResetRec:
    """One AttemptTimerReset (extra time given to one attempt)."""

    __slots__ = ("attempt_id", "created_at", "extra_ms", "id", "reason")

    def __init__(self, id_: str, attempt_id: str, extra_ms: int, reason: str, at: float) -> None:
        self.id = id_
        self.attempt_id = attempt_id
        self.extra_ms = extra_ms
        self.reason = reason
        self.created_at = at

    def render(self) -> msgspec.Raw:
        res = Resource(
            type=TYPE_ATTEMPT_TIMER_RESET,
            id=self.id,
            attributes={
                "extraTimeInMs": self.extra_ms,
                "reason": self.reason,
                "createdAt": iso(self.created_at),
            },
            relationships={"attempt": _one(TYPE_ATTEMPT, self.attempt_id)},
        )
        return msgspec.Raw(_encoder.encode(res))


class JobRec:
    """A BackgroundJob exporting enriched attempts; advances one step per poll."""

    __slots__ = (
        "completed_at",
        "created_at",
        "file_url",
        "filters",
        "id",
        "items",
        "polls",
        "signature",
        "status",
        "steps",
    )

    def __init__(
        self, id_: str, filters: dict[str, str], steps: int, signature: str, at: float
    ) -> None:
        self.id = id_
        self.filters = filters
        self.steps = steps
        self.signature = signature
        self.created_at = at
        self.completed_at: float | None = None
        self.polls = 0
        self.status = "pending"
        #: the attempts the file holds, fixed at completion (None until then)
        self.items: list[AttemptRec] | None = None
        self.file_url: str | None = None

    @property
    def progress(self) -> float:
        if self.status == "completed":
            return 1.0
        return round(min(self.polls, self.steps - 1) / self.steps, 4)

    def render(self) -> msgspec.Raw:
        res = Resource(
            type=TYPE_BACKGROUND_JOB,
            id=self.id,
            attributes={
                "status": self.status,
                "progress": self.progress,
                "fileUrl": self.file_url,
                "error": None,
                "createdAt": iso(self.created_at),
                "completedAt": iso(self.completed_at) if self.completed_at else None,
            },
        )
        return msgspec.Raw(_encoder.encode(res))


class Store:
    """The seeded portal: users, groups, exams, attempts, timer resets, export jobs.

    Lookups that the handlers need on the hot path are dict indexes (email, externalId, attempts
    by exam and by user); collections keep insertion order, which is the default list order.
    """

    def __init__(self, config: SandboxConfig, wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.wall = wall
        self._rng = random.Random(f"sandbox-ids:{config.seed}")
        self._used_ids: set[str] = set()
        self.users: dict[str, UserRec] = {}
        self.by_email: dict[str, str] = {}
        self.by_external_id: dict[str, str] = {}
        self.groups: dict[str, GroupRec] = {}
        self.exams: dict[str, ExamRec] = {}
        self.attempts: dict[str, AttemptRec] = {}
        self.attempts_by_exam: dict[str, list[AttemptRec]] = {}
        self.attempts_by_user: dict[str, list[AttemptRec]] = {}
        self.timer_resets: dict[str, TimerResetRec] = {}
        self.jobs: dict[str, JobRec] = {}
        self._user_list: list[UserRec] | None = None
        self._group_list: list[GroupRec] | None = None
        self._attempt_list: list[AttemptRec] | None = None
        self.portal = PortalRec(self.new_id(), "Sandbox Academy", "sandbox")
        self.admin_id = ""
        self.default_groups: dict[str, str] = {}  # defaultGroupType -> group id
        self.marker_ids: list[str] = []
        self.student_ids: list[str] = []
        # Seeding allocates millions of objects that all live on: the cyclic GC's passes over
        # them would only cost time (half of a big seed), so it pauses meanwhile.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._seed()
        finally:
            if gc_was_enabled:
                gc.enable()

    # ----------------------------------------------------------------- ids and lists

    def new_id(self) -> str:
        """A fresh 10-character alphanumeric id (like Synap's objectIds), deterministic per seed.

        The sequence is part of the seed's contract (demo files name seeded ids): keep it.
        """
        rnd = self._rng.random
        alphabet = _ALPHABET
        while True:
            # Same draws as ``"".join(rng.choices(_ALPHABET, k=10))``, without its overhead.
            candidate = "".join([alphabet[int(rnd() * 62)] for _ in range(10)])
            if candidate not in self._used_ids:
                self._used_ids.add(candidate)
                return candidate

    def user_list(self) -> list[UserRec]:
        if self._user_list is None:
            self._user_list = list(self.users.values())
        return self._user_list

    def group_list(self) -> list[GroupRec]:
        if self._group_list is None:
            self._group_list = list(self.groups.values())
        return self._group_list

    def attempt_list(self) -> list[AttemptRec]:
        if self._attempt_list is None:
            self._attempt_list = list(self.attempts.values())
        return self._attempt_list

    # ----------------------------------------------------------------- seeding

    def _seed(self) -> None:
        cfg = self.config
        rng = random.Random(f"sandbox-data:{cfg.seed}")
        t = _EPOCH0

        def group(name: str, **kw: Any) -> GroupRec:
            g = GroupRec(self.new_id(), name, t, **kw)
            self.groups[g.id] = g
            return g

        students = group("Students", default_type="student", description="Default students")
        educators = group("Educators", default_type="educator", description="Default educators")
        admins = group("Administrators", default_type="admin", description="Administrators")
        self.default_groups = {"student": students.id, "educator": educators.id}
        self.default_groups["admin"] = admins.id
        cohorts = [
            group(f"Cohort {i + 1:02d}", description="Candidates") for i in range(cfg.groups)
        ]
        pool_names = {
            "markers": "Markers pool",
            "moderatingMarkers": "Moderating markers pool",
            "escalatingMarkers": "Escalating markers pool",
            "auditingMarkers": "Auditing markers pool",
            "backReadingMarkers": "Back-reading markers pool",
        }
        pools = {rel: group(pool_names[rel], internal=True) for rel in EXAM_POOL_RELATIONSHIPS}

        admin = UserRec(self.new_id(), "Sandbox Admin", "admin@sandbox.example", None, "admin", t)
        self._insert_user(admin)
        self._join(admins, admin, t)
        self.admin_id = admin.id

        # Markers: marker i is in pool k when i % (k + 1) == 0, so marker 0 is in every pool
        # and every pool is non-empty.
        for i in range(cfg.markers):
            first, last = _FIRST[i % len(_FIRST)], _LAST[(i * 7 + 3) % len(_LAST)]
            at = t + 60.0 * (i + 1)
            m = UserRec(
                self.new_id(),
                f"{first} {last}",
                f"marker{i + 1:04d}@sandbox.example",
                f"M{i + 1:05d}",
                "educator",
                at,
            )
            self._insert_user(m)
            self._join(educators, m, at)
            for k, rel in enumerate(EXAM_POOL_RELATIONSHIPS):
                if i % (k + 1) == 0:
                    self._join(pools[rel], m, at)
            self.marker_ids.append(m.id)

        for i in range(cfg.users):
            first = _FIRST[rng.randrange(len(_FIRST))]
            last = _LAST[rng.randrange(len(_LAST))]
            at = t + 3600.0 + 30.0 * i + rng.random() * 30.0
            s = UserRec(
                self.new_id(),
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}.{i + 1}@students.example",
                f"S{i + 1:06d}",
                "student",
                at,
            )
            self._insert_user(s)
            self._join(students, s, at)
            self._join(cohorts[i % len(cohorts)], s, at)
            self.student_ids.append(s.id)

        statuses = [s for s, _ in _STATUS_WEIGHTS]
        cumulative = list(itertools.accumulate(w for _, w in _STATUS_WEIGHTS))
        total_weight = cumulative[-1]
        exam_t = t + 86400.0 * 7
        for e in range(cfg.exams):
            draft = cfg.exams >= 2 and e == cfg.exams - 1
            cohort = cohorts[e % len(cohorts)]
            exam = ExamRec(
                self.new_id(),
                f"Sandbox Exam {e + 1}",
                "draft" if draft else "published",
                cohort.id,
                {rel: pools[rel].id for rel in EXAM_POOL_RELATIONSHIPS},
                exam_t + 3600.0 * e,
            )
            self.exams[exam.id] = exam
            self.attempts_by_exam[exam.id] = []
            candidates = list(cohort.members) or self.student_ids
            if not candidates:
                continue
            n = len(candidates)
            for j in range(cfg.attempts_per_exam):
                uid = candidates[j % n]
                created = exam.created_at + 60.0 + j * 2.0 + rng.random()
                a = AttemptRec(self.new_id(), exam.id, uid, exam.name, created)
                a.resit_count = j // n
                if not draft:
                    status = statuses[bisect.bisect(cumulative, rng.random() * total_weight)]
                    a.exam_status = status
                    if status in ("inProgress", "submitted", "expired"):
                        a.time_started = created + 86400.0 + rng.random() * 3600.0
                    if status == "submitted":
                        assert a.time_started is not None
                        a.time_completed = a.time_started + 1800.0 + rng.random() * 3600.0
                        score = round(rng.random() * 100.0, 1)
                        a.score = score
                        a.marks = {
                            "points": round(score / 2.0, 1),
                            "maxPoints": 50.0,
                            "credits": round(score / 2.0, 1),
                            "penalties": 0.0,
                        }
                    last_change = a.time_completed or a.time_started or created
                    a.updated_at = last_change + rng.random() * 600.0
                self._insert_attempt(a)

    # ----------------------------------------------------------------- mutation helpers

    def _insert_user(self, u: UserRec) -> None:
        self.users[u.id] = u
        self.by_email[u.email.lower()] = u.id
        if u.external_id:
            self.by_external_id[u.external_id] = u.id
        self._user_list = None

    def _insert_attempt(self, a: AttemptRec) -> None:
        self.attempts[a.id] = a
        self.attempts_by_exam.setdefault(a.exam_id, []).append(a)
        self.attempts_by_user.setdefault(a.user_id, []).append(a)
        self._attempt_list = None

    def _join(self, g: GroupRec, u: UserRec, at: float) -> bool:
        if u.id in g.members:
            return False
        g.members[u.id] = None
        u.groups[g.id] = at
        g.raw = None
        u.raw = None
        return True

    def add_user(
        self, name: str, email: str, external_id: str | None, group_id: str | None
    ) -> UserRec:
        """Register a user (validation is the caller's job) into one group or Students."""
        now = self.wall()
        u = UserRec(self.new_id(), name, email, external_id, "student", now)
        gid = group_id or self.default_groups["student"]
        g = self.groups[gid]
        if g.default_type in ("educator", "admin"):
            u.role = g.default_type
        self._insert_user(u)
        self._join(g, u, now)
        return u

    def update_user_keys(self, u: UserRec, email: str | None, external_id: str | None) -> None:
        """Move the email/externalId indexes when a PATCH changes them."""
        if email is not None and email != u.email:
            self.by_email.pop(u.email.lower(), None)
            u.email = email
            self.by_email[email.lower()] = u.id
        if external_id != u.external_id:
            if u.external_id:
                self.by_external_id.pop(u.external_id, None)
            u.external_id = external_id
            if external_id:
                self.by_external_id[external_id] = u.id

    def delete_user(self, u: UserRec) -> None:
        del self.users[u.id]
        self.by_email.pop(u.email.lower(), None)
        if u.external_id:
            self.by_external_id.pop(u.external_id, None)
        for gid in u.groups:
            g = self.groups.get(gid)
            if g is not None:
                g.members.pop(u.id, None)
                g.raw = None
        self._user_list = None

    def add_group(self, name: str, description: str, attr: dict[str, Any]) -> GroupRec:
        g = GroupRec(self.new_id(), name, self.wall(), description=description)
        g.attr = attr
        self.groups[g.id] = g
        self._group_list = None
        return g

    def delete_group(self, g: GroupRec) -> None:
        for uid in g.members:
            u = self.users.get(uid)
            if u is not None:
                u.groups.pop(g.id, None)
                u.raw = None
        del self.groups[g.id]
        self._group_list = None

    def add_members(self, g: GroupRec, user_ids: Iterable[str]) -> int:
        """Set union; returns how many users actually joined."""
        now = self.wall()
        return sum(self._join(g, self.users[uid], now) for uid in user_ids)

    def remove_members(self, g: GroupRec, user_ids: Iterable[str]) -> int:
        """Set difference; returns how many users actually left."""
        left = 0
        for uid in user_ids:
            if uid in g.members:
                del g.members[uid]
                u = self.users.get(uid)
                if u is not None:
                    u.groups.pop(g.id, None)
                    u.raw = None
                left += 1
        if left:
            g.raw = None
        return left

    def add_timer_reset(self, a: AttemptRec, extra_ms: int, reason: str) -> TimerResetRec:
        now = self.wall()
        r = TimerResetRec(self.new_id(), a.id, extra_ms, reason, now)
        self.timer_resets[r.id] = r
        a.extra_time_ms += extra_ms
        if a.exam_status == "expired":
            a.exam_status = "inProgress"
        a.touch(now)
        return r

    def add_job(self, filters: dict[str, str]) -> JobRec:
        signature = f"{self._rng.getrandbits(128):032x}"
        job = JobRec(self.new_id(), filters, self.config.export_job_steps, signature, self.wall())
        self.jobs[job.id] = job
        return job

    # ----------------------------------------------------------------- queries

    def user_by_email(self, email: str) -> UserRec | None:
        """The user with this email (case-insensitive), for test assertions."""
        uid = self.by_email.get(email.lower())
        return self.users.get(uid) if uid else None

    def user_by_external_id(self, external_id: str) -> UserRec | None:
        uid = self.by_external_id.get(external_id)
        return self.users.get(uid) if uid else None

    def groups_named(self, name: str) -> list[GroupRec]:
        return [g for g in self.groups.values() if g.name == name]

    def counts(self) -> dict[str, int]:
        """Resource type -> how many exist now."""
        return {
            TYPE_PORTAL: 1,
            TYPE_USER: len(self.users),
            TYPE_USER_GROUP: len(self.groups),
            TYPE_EXAM: len(self.exams),
            TYPE_ATTEMPT: len(self.attempts),
            TYPE_ATTEMPT_TIMER_RESET: len(self.timer_resets),
            TYPE_BACKGROUND_JOB: len(self.jobs),
        }
