"""The API profile: every point the Synap docs leave open, as one named, overridable setting.

The client, the tasks and the sandbox all read these; nothing else in the code guesses a path, a
parameter name or a header. Each setting's comment says whether it is documented ([DOC]) or an
assumption ([ASSUMED]) about a point the public docs leave open; docs/sandbox.md lists the
assumptions the sandbox makes by default. A job file may override any of them under
``api.profile``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import Struct

__all__ = ["DEFAULT_PROFILE", "ApiProfile", "load_profile"]


def _role_paths() -> dict[str, str]:
    return {
        "markers": "markers",
        "provisional": "provisional-markers",
        "moderating": "moderating-markers",
        "escalating": "escalating-markers",
        "auditing": "auditing-markers",
        "back-readers": "back-readers",
    }


def _since_filters() -> dict[str, str]:
    return {
        "users": "filter[updatedSince]",
        "attempts": "filter[updatedSince]",
        "enriched-attempts": "filter[updatedSince]",
        "action-logs": "filter[createdSince]",
    }


def _server_export_types() -> dict[str, str]:
    return {
        "export-enriched-attempts": "ExportEnrichedAttempt",
        "user-group-exports": "UserGroupExport",
        "exam-candidate-exports": "ExamCandidateExport",
        "invite-exports": "InviteExport",
    }


def _relationship_types() -> dict[str, str]:
    return {"userGroup": "UserGroup", "examV2": "Exam-V-2", "user": "User", "exam": "Exam-V-2"}


def _role_relationships() -> dict[str, str]:
    return {
        "markers": "markers",
        "provisional": "provisionalMarkers",
        "moderating": "moderatingMarkers",
        "escalating": "escalatingMarkers",
        "auditing": "auditingMarkers",
        "back-readers": "backReaders",
    }


def _role_pools() -> dict[str, str]:
    return {
        "markers": "markers",
        "provisional": "markers",
        "moderating": "moderatingMarkers",
        "escalating": "escalatingMarkers",
        "auditing": "auditingMarkers",
        "back-readers": "backReadingMarkers",
    }


class ApiProfile(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the client assumes about the server. Defaults are the sandbox's behaviour."""

    # --- paths (relative to the base URL, which ends in /v3) ---
    users_path: str = "users"  # [DOC-EX] TOC: List/Get/Delete User
    registrations_path: str = "user-registrations"  # [DOC-EX] seen
    user_groups_path: str = "user-groups"  # [DOC-EX] seen (PATCH)
    group_members_relationship: str = "users"  # [ASSUMED] Add/Remove Users to UserGroup
    exams_path: str = "exam-v-2s"  # [ASSUMED] collection path of type Exam-V-2 is unknown
    attempts_path: str = "attempts"  # [DOC-EX] seen (GET item)
    timer_resets_path: str = "attempt-timer-resets"  # [ASSUMED] from the TOC name
    attempt_locks_path: str = "attempt-locks"  # [ASSUMED] TOC: Create/Delete AttemptLock
    attempt_overrides_path: str = "attempt-overrides"  # [ASSUMED] TOC: Create/List AttemptOverride
    marking_entries_path: str = "marking-entries"  # [DOC-EX] seen (POST)
    exports_path: str = "export-enriched-attempts"  # [ASSUMED] from the TOC name
    background_jobs_path: str = "background-jobs"  # [ASSUMED] from the TOC name
    portals_path: str = "portals"  # [ASSUMED] body seen, path not
    #: [ASSUMED] the portal a token belongs to, under ``portals_path``.
    portal_current_path: str = "portals/current"
    #: [ASSUMED] the user a token acts as (or the Subject-User); "" when the API has no such
    #: route: identity is then the portal alone.
    current_user_path: str = "users/me"
    #: [ASSUMED] the /relationships/<segment> of each marker role on an attempt.
    marker_role_paths: dict[str, str] = msgspec.field(default_factory=_role_paths)

    #: [ASSUMED] the attempt's relationship (JSON:API member) holding each role's markers.
    marker_role_relationships: dict[str, str] = msgspec.field(default_factory=_role_relationships)
    #: The exam's marker-pool group of each role: the pool relationships are [DOC-EX] (Create
    #: ExamV2), which pool serves which role is [ASSUMED] (provisional markers from ``markers``).
    marker_role_pools: dict[str, str] = msgspec.field(default_factory=_role_pools)
    #: [ASSUMED] the verbs of Assign / Unassign <Role> Markers on the role's relationship path,
    #: with a to-many linkage body (JSON:API: POST adds, DELETE removes).
    marker_assign_method: Literal["POST", "PUT", "PATCH"] = "POST"
    marker_unassign_method: Literal["DELETE", "POST", "PATCH"] = "DELETE"

    # --- background jobs (server-side exports) [ASSUMED]: shapes undocumented ---
    #: the relationship of an export resource that links its BackgroundJob (when the create
    #: does not answer with the BackgroundJob itself).
    export_job_relationship: str = "backgroundJob"
    job_status_attribute: str = "status"
    job_completed_statuses: list[str] = msgspec.field(default_factory=lambda: ["completed"])
    job_failed_statuses: list[str] = msgspec.field(default_factory=lambda: ["failed"])
    job_file_attribute: str = "fileUrl"
    job_progress_attribute: str = "progress"  #: a fraction 0..1 (absent: unknown)
    job_error_attribute: str = "error"

    # --- pagination [ASSUMED]: JSON:API families; strategy and sizes undocumented ---
    pagination: Literal["page-number", "offset"] = "page-number"
    page_number_param: str = "page[number]"
    page_size_param: str = "page[size]"
    page_offset_param: str = "page[offset]"
    page_limit_param: str = "page[limit]"
    page_size: int = 100
    max_page_size: int = 500

    # --- filters [ASSUMED]: names follow the attribute/relationship names ---
    filter_email: str = "filter[emailAddress]"
    filter_external_id: str = "filter[externalId]"
    filter_user_group: str = "filter[userGroup]"
    filter_group_name: str = "filter[name]"
    #: [ASSUMED] exams have no name filter ("" = none: a lookup by name lists the exams once).
    filter_exam_name: str = ""
    filter_exam: str = "filter[examV2]"
    filter_user: str = "filter[user]"
    filter_status: str = "filter[status]"
    filter_attempt: str = "filter[attempt]"  # locks, overrides, marking entries by attempt
    filter_owner: str = "filter[owner]"  # marking entries by marker
    filter_updated_since: str = "filter[updatedSince]"
    sort_param: str = "sort"

    # --- kind: export (any collection) [ASSUMED]: JSON:API families, names undocumented ---
    #: The updated-time filter of each collection ``since`` may use; a collection missing here
    #: refuses ``since`` (the sandbox's collections by default).
    since_filters: dict[str, str] = msgspec.field(default_factory=_since_filters)
    include_param: str = "include"
    #: Sparse fieldsets: ``fields[<type>]``.
    fields_param: str = "fields"
    #: The sort that keeps a listing's pages stable while it is paged.
    export_sort: str = "id"
    #: The JSON:API type of each server-side export's create body, by its path.
    server_export_types: dict[str, str] = msgspec.field(default_factory=_server_export_types)
    #: The type a to-one relationship links, by name (a server export's ``relationships``).
    relationship_types: dict[str, str] = msgspec.field(default_factory=_relationship_types)
    enriched_attempts_path: str = "enriched-attempts"  # [ASSUMED] from the TOC name
    action_logs_path: str = "action-logs"  # [ASSUMED] from the TOC name
    user_group_exports_path: str = "user-group-exports"  # [ASSUMED] from the TOC name
    exam_candidate_exports_path: str = "exam-candidate-exports"  # [ASSUMED] from the TOC name
    filter_created_since: str = "filter[createdSince]"
    filter_action: str = "filter[action]"
    # --- relationships and fields the docs show only in part ---
    #: [DOC-EX] the attempt's candidate and exam relationships (seen on Get Attempt).
    attempt_user_relationship: str = "user"
    attempt_exam_relationship: str = "examV2"

    # --- headers ---
    #: [ASSUMED] the docs name the feature "Subject-User" but not the header.
    subject_user_header: str = "Subject-User"
    #: [ASSUMED] 429 is not documented; we honour Retry-After in seconds or as an HTTP date.
    retry_after_header: str = "Retry-After"
    ratelimit_remaining_header: str = "X-RateLimit-Remaining"
    ratelimit_reset_header: str = "X-RateLimit-Reset"
    ratelimit_limit_header: str = "X-RateLimit-Limit"

    # --- registrations ---
    #: [DOC] "only one group is currently allowed" in a registration's userGroups.
    registration_max_groups: int = 1
    #: [ASSUMED] externalId is writable on User (DOC-EX); accepted at registration too.
    registration_accepts_external_id: bool = True
    #: [ASSUMED] a UserRegistration's id is the new User's id (the cookbook implies it). When
    #: false, the import looks the new user up by its match key instead.
    registration_id_is_user_id: bool = True
    #: [ASSUMED] a PATCH with an attribute set to null clears it: undo restores an attribute
    #: that had no value this way. False: such a restore is reported as a conflict instead.
    patch_null_clears: bool = True


DEFAULT_PROFILE = ApiProfile()


def load_profile(overrides: dict[str, Any] | None) -> ApiProfile:
    """The default profile with ``overrides`` applied; unknown keys raise ``ValidationError``."""
    if not overrides:
        return DEFAULT_PROFILE
    base = msgspec.structs.asdict(DEFAULT_PROFILE)
    base.update(overrides)
    return msgspec.convert(base, ApiProfile)
