"""The sandbox's records: one class per resource type, each caching its encoded JSON:API resource
(``msgspec.Raw``) until it changes, so a page of 100 attempts costs 100 memory copies, not 100
encodings. :mod:`.store` holds them and is the only module that creates them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
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

__all__ = [
    "ATTEMPT_ROLE_RELATIONSHIPS",
    "EXAM_POOL_RELATIONSHIPS",
    "AttemptRec",
    "ExamRec",
    "GroupRec",
    "JobRec",
    "PortalRec",
    "TimerResetRec",
    "UserRec",
    "iso",
    "parse_iso",
]

_encoder = msgspec.json.Encoder()

#: The attempt relationships of the six marker roles, in a stable order.
ATTEMPT_ROLE_RELATIONSHIPS: tuple[str, ...] = tuple(r.relationship for r in MARKER_ROLES.values())
#: The exam's marker-pool relationships (each points at one UserGroup).
EXAM_POOL_RELATIONSHIPS: tuple[str, ...] = tuple(
    dict.fromkeys(r.pool for r in MARKER_ROLES.values())
)


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
    """A BackgroundJob of a server-side export; advances one step per poll. ``kind`` names the
    export (``attempts``: export-enriched-attempts; else a :mod:`.collections` export, whose
    ``items`` are users)."""

    __slots__ = (
        "completed_at",
        "created_at",
        "file_url",
        "filters",
        "id",
        "items",
        "kind",
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
        #: the records the file holds, fixed at completion (None until then)
        self.items: list[Any] | None = None
        self.kind = "attempts"
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


class DocRec:
    """A resource kept as its attributes and to-one links: attempt locks, attempt overrides and
    marking entries (``attempt_ops.py``), persisted as one generic record kind."""

    __slots__ = ("attributes", "created_at", "id", "links", "type", "updated_at")

    def __init__(
        self,
        type_: str,
        id_: str,
        attributes: dict[str, Any],
        links: dict[str, tuple[str, str]],
        at: float,
    ) -> None:
        self.type = type_
        self.id = id_
        self.attributes = attributes
        self.links = links  #: relationship -> (type, id)
        self.created_at = at
        self.updated_at = at

    def link(self, name: str) -> str:
        """The id a to-one relationship points at ('' when absent)."""
        found = self.links.get(name)
        return found[1] if found else ""

    def render(self) -> msgspec.Raw:
        attrs = {
            **self.attributes,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }
        rels = {name: _one(kind, id_) for name, (kind, id_) in self.links.items()}
        res = Resource(type=self.type, id=self.id, attributes=attrs, relationships=rels)
        return msgspec.Raw(_encoder.encode(res))
