"""What undo and the guard need of an assign-markers run: each marker assignment's
before-image, and how many assignments an unassign run would remove."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..guards import Destructive
from ..images import BeforeImage
from ..items import InvalidRow, Item
from ..resources import TYPE_ATTEMPT, TYPE_USER

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..profile import ApiProfile

__all__ = ["marker_images", "unassignments"]


async def marker_images(
    client: SynapClient,
    profile: ApiProfile,
    attempt_id: str,
    role_path: str,
    markers: Sequence[str],
    *,
    assign: bool,
) -> list[BeforeImage]:
    """Before the write: each marker's assignment and whether it existed before (read from
    the server now), so that an undo removes only what the run added."""
    p = profile
    found = await client.get_members(p.attempts_path, attempt_id, role_path)
    current = {r.id for r in found}
    return [
        BeforeImage(
            op="assign" if assign else "unassign",
            ref=f"{p.attempts_path}/{attempt_id}/{role_path}/{m}",
            path=p.attempts_path,
            resource_type=TYPE_ATTEMPT,
            resource_id=attempt_id,
            relationship=role_path,
            member_type=TYPE_USER,
            member_id=m,
            existed_before=m in current,
        )
        for m in markers
    ]


def unassignments(prepared: Sequence[Item | InvalidRow], *, assign: bool) -> Destructive:
    """The assignments an unassign run would remove (an assign run removes none)."""
    if assign:
        return Destructive()
    n = sum(len(e.payload.get("markers", [])) for e in prepared if isinstance(e, Item))
    return Destructive(unassignments=n)
