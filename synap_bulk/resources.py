"""Synap resources: attribute Structs named exactly as the API names its fields.

Every field is optional and unknown fields are ignored: the API is beta and additive, and we
depend on as little of the payload as we can (the API's versioning policy: changes inside /v3
are additive only). Use them as ``Resource[UserAttributes]`` etc.; ``TYPE_*`` are the JSON:API
type strings.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET, Struct, UnsetType

from .jsonapi import Resource

__all__ = [
    "ATTEMPT_STATUSES",
    "MARKER_ROLES",
    "TYPE_ATTEMPT",
    "TYPE_ATTEMPT_TIMER_RESET",
    "TYPE_BACKGROUND_JOB",
    "TYPE_EXAM",
    "TYPE_EXPORT_ENRICHED_ATTEMPT",
    "TYPE_PORTAL",
    "TYPE_USER",
    "TYPE_USER_GROUP",
    "TYPE_USER_REGISTRATION",
    "Attempt",
    "AttemptAttributes",
    "AttemptTimerReset",
    "AttemptTimerResetAttributes",
    "BackgroundJob",
    "BackgroundJobAttributes",
    "Exam",
    "ExamAttributes",
    "MarkerRole",
    "Marks",
    "Portal",
    "PortalAttributes",
    "User",
    "UserAttributes",
    "UserGroup",
    "UserGroupAttributes",
    "UserPatchAttributes",
    "UserRegistration",
    "UserRegistrationAttributes",
]

TYPE_USER = "User"
TYPE_USER_REGISTRATION = "UserRegistration"
TYPE_USER_GROUP = "UserGroup"
TYPE_EXAM = "Exam-V-2"
TYPE_ATTEMPT = "Attempt"
TYPE_ATTEMPT_TIMER_RESET = "AttemptTimerReset"
TYPE_BACKGROUND_JOB = "BackgroundJob"
TYPE_EXPORT_ENRICHED_ATTEMPT = "ExportEnrichedAttempt"
TYPE_PORTAL = "Portal"


class MarkerRole(Struct, frozen=True):
    """A marker role: its name in job files, the attempt relationship, the exam's pool."""

    name: str
    relationship: str
    pool: str


#: The six marker roles (Assign Markers, Provisional, Moderating, Escalating, Auditing,
#: Backreaders). ``relationship`` is the attempt's relationship; ``pool`` is the exam's
#: marker-pool UserGroup relationship that a marker must belong to.
MARKER_ROLES: dict[str, MarkerRole] = {
    r.name: r
    for r in (
        MarkerRole("markers", "markers", "markers"),
        MarkerRole("provisional", "provisionalMarkers", "markers"),
        MarkerRole("moderating", "moderatingMarkers", "moderatingMarkers"),
        MarkerRole("escalating", "escalatingMarkers", "escalatingMarkers"),
        MarkerRole("auditing", "auditingMarkers", "auditingMarkers"),
        MarkerRole("back-readers", "backReaders", "backReadingMarkers"),
    )
}

#: examStatus values as the sandbox models them (the product UI's list, docs give only the first).
ATTEMPT_STATUSES = (
    "enrolled",
    "notified",
    "inProgress",
    "submitted",
    "expired",
    "revoked",
)


class UserAttributes(Struct, kw_only=True):
    name: str | None = None
    emailAddress: str | None = None
    externalId: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    createdAt: str | None = None
    updatedAt: str | None = None
    lastSeen: str | None = None
    emailVerified: bool | None = None
    timeZone: str | None = None
    locale: str | None = None
    attr: dict[str, Any] | None = None
    preferences: dict[str, Any] | None = None
    userGroupsMetadata: dict[str, Any] | None = None


class UserPatchAttributes(Struct, kw_only=True, omit_defaults=True):
    """Writable User attributes; UNSET means "leave alone", None means "clear"."""

    name: str | UnsetType = UNSET
    emailAddress: str | UnsetType = UNSET
    externalId: str | UnsetType | None = UNSET
    timeZone: str | UnsetType | None = UNSET
    attr: dict[str, Any] | UnsetType | None = UNSET
    preferences: dict[str, Any] | UnsetType | None = UNSET
    marketingEmailsConsent: str | UnsetType | None = UNSET


class UserRegistrationAttributes(Struct, kw_only=True, omit_defaults=True):
    """Create body of ``POST /v3/user-registrations`` (one user, at most one group)."""

    name: str | UnsetType = UNSET
    emailAddress: str | UnsetType = UNSET
    password: str | UnsetType = UNSET
    externalId: str | UnsetType = UNSET
    welcomeEmailDisabled: bool | UnsetType = UNSET
    locale: str | UnsetType = UNSET
    timeZone: str | UnsetType = UNSET
    attr: dict[str, Any] | UnsetType = UNSET
    registrationSource: dict[str, Any] | UnsetType = UNSET
    preferences: dict[str, Any] | UnsetType = UNSET


class UserGroupAttributes(Struct, kw_only=True):
    name: str | None = None
    description: str | None = None
    attr: dict[str, Any] | None = None
    isArchived: bool | None = None
    isDefaultGroup: bool | None = None
    defaultGroupType: str | None = None
    totalUsers: int | None = None
    parentId: str | None = None
    internal: bool | None = None
    membershipExpiryEnabled: bool | None = None
    membershipExpiryTimeToExpireInMs: int | None = None


class ExamAttributes(Struct, kw_only=True):
    name: str | None = None
    status: str | None = None
    isArchived: bool | None = None
    shortDescription: str | None = None
    markingDoubleEnabled: bool | None = None
    markingDoubleAllocation: str | None = None
    markingDoubleMinMarkers: int | None = None
    lockedByDefault: bool | None = None
    createdAt: str | None = None


class Marks(Struct, kw_only=True):
    points: float | None = None
    maxPoints: float | None = None
    credits: float | None = None
    penalties: float | None = None


class AttemptAttributes(Struct, kw_only=True):
    title: str | None = None
    createdAt: str | None = None
    updatedAt: str | None = None
    isCompleted: bool | None = None
    timeStarted: str | None = None
    timeCompleted: str | None = None
    status: str | None = None
    examStatus: str | None = None
    score: float | None = None
    marks: Marks | None = None
    grade: dict[str, Any] | None = None
    resultsStatus: str | None = None
    resultsMarkingStatus: str | None = None
    resultsPendingMarks: int | None = None
    isRevoked: bool | None = None
    isOpen: bool | None = None
    resitCount: int | None = None
    attemptsAllowed: int | None = None
    version: int | None = None
    proctorEnabled: bool | None = None


class AttemptTimerResetAttributes(Struct, kw_only=True, omit_defaults=True):
    """Extra time for one attempt (``POST /v3/attempt-timer-resets``, shape assumed)."""

    extraTimeInMs: int | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    createdAt: str | UnsetType = UNSET


class BackgroundJobAttributes(Struct, kw_only=True):
    status: str | None = None  # pending | running | completed | failed
    progress: float | None = None
    fileUrl: str | None = None
    error: str | None = None
    createdAt: str | None = None
    completedAt: str | None = None


class PortalAttributes(Struct, kw_only=True):
    name: str | None = None
    subdomain: str | None = None
    timeZone: str | None = None


User = Resource[UserAttributes]
UserRegistration = Resource[UserAttributes]
UserGroup = Resource[UserGroupAttributes]
Exam = Resource[ExamAttributes]
Attempt = Resource[AttemptAttributes]
AttemptTimerReset = Resource[AttemptTimerResetAttributes]
BackgroundJob = Resource[BackgroundJobAttributes]
Portal = Resource[PortalAttributes]
