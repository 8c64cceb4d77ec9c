"""The job-file parts of undo and guards: ``guard:``, ``kind: group-sync`` and a request's
``undo:`` template (``spec.py`` puts them into the job file's shape and merges :data:`DOCS`)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta, Struct

__all__ = ["DOCS", "GroupSyncSpec", "GuardSpec", "UndoTemplateSpec"]


class GuardSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Limits on a run's destructive changes; beyond one the run stops before its first
    destructive write unless ``--yes`` (``guards.py``). Omitted keys keep their defaults."""

    max_deletes: Annotated[int, Meta(ge=0)] = 50
    max_removals: Annotated[int, Meta(ge=0)] | None = None
    max_removals_share: Annotated[float, Meta(ge=0, le=1)] = 0.1
    max_unassignments: Annotated[int, Meta(ge=0)] = 50


class UndoTemplateSpec(Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """How a ``request`` row is reversed: a request rendered from the row and the response."""

    method: Literal["POST", "PUT", "PATCH", "DELETE"]
    path: str
    body: Any = None


class GroupSyncSpec(
    Struct,
    tag="group-sync",
    tag_field="kind",
    kw_only=True,
    forbid_unknown_fields=True,
    frozen=True,
):
    """Make a group's membership exactly a CSV's users."""

    kind: ClassVar[str] = "group-sync"
    group: str
    source: str
    match: Literal["emailAddress", "externalId", "id"] = "emailAddress"
    column: str
    batch_size: Annotated[int, Meta(ge=1, le=1000)] = 100
    delimiter: Annotated[str, Meta(min_length=1, max_length=1)] = ","


DOCS: dict[str, str] = {
    "guard": (
        "Limits on destructive changes (deletes, membership removals, marker unassignments); "
        "beyond one, the run (or undo) stops before its first destructive write with the "
        "plan's counts unless --yes. Omitted: the defaults below."
    ),
    "guard.max_deletes": "Resources one run may delete.",
    "guard.max_removals": "Memberships one run may remove in all. Omitted: no count limit.",
    "guard.max_removals_share": (
        "The share (0 to 1) of one group's current members one run may remove."
    ),
    "guard.max_unassignments": "Marker assignments one run may remove.",
    "task[request].undo": (
        "How a row is reversed by undo: a request (method, path, body) rendered from the row's "
        "columns and {response.id}, the id in the row's response. Omitted: the job's rows are "
        "listed as not reversible."
    ),
    "task[request].undo.method": "The reverse request's HTTP method.",
    "task[request].undo.path": "Its path, a template of the row's columns and {response.id}.",
    "task[request].undo.body": "Its JSON body, a template like task.body. Omitted: no body.",
    "task[group-sync].kind": (
        "group-sync: make a group's membership exactly the users of a CSV (adds and removes)."
    ),
    "task[group-sync].group": "The user group, by id or exact name.",
    "task[group-sync].source": "The CSV of the members, relative to the job file's folder.",
    "task[group-sync].match": "What the CSV's column holds: emailAddress, externalId or id.",
    "task[group-sync].column": "The CSV column naming each member.",
    "task[group-sync].batch_size": "Users per relationship call (adds and removes).",
    "task[group-sync].delimiter": "The CSV's field separator (one character).",
}
