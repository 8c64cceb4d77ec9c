"""The undo of a run: its before-images (``images.py``) played backwards, as an item task.

One item per item of the undone run (all the writes one input row made), newest first; within
an item the writes are reversed in reverse order (memberships before the user that was created
with them). Every step looks at the server first and writes only what is still the run's doing:

- a created user is deleted, unless its attributes are no longer what the run wrote (conflict);
- a changed attribute is set back to its previous value when it still holds the run's value;
  when it holds neither, it is a conflict reported with both values and left alone;
- a link (group membership, marker assignment) the run added is removed, unless it existed
  before the run (or whether it did is unknown); a link the run removed is added back;
- a ``request`` row is reversed by its rendered ``undo:`` request; without one it is listed as
  not reversible.

So every step is safe to repeat (the task is idempotent): a resumed undo finds what is already
reversed and moves on. Undoing an undo is a plain re-run of the job.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from ..errors import ApiError
from ..images import BeforeImage
from ..items import CsvStyle, InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from ..jsonapi import RelationshipDocument, ResourceIdentifier, ResourcePatch
from ..profile import ApiProfile
from ..resources import User
from ..sources import normalize_email

if TYPE_CHECKING:
    from ..client import SynapClient
    from .base import CursorStore

__all__ = ["STEP_ACTIONS", "UndoTask"]

#: Actions of one step, as the plan counts them.
STEP_ACTIONS = (
    "delete",
    "restore",
    "remove",
    "unassign",
    "re-add",
    "reassign",
    "request",
    "conflict",
    "not reversible",
    "kept",
    "already undone",
    "undone before",
)

_ADDS = ("add-member", "assign")
_REMOVES = ("remove-member", "unassign")


class _Step:
    __slots__ = ("action", "conflict", "count", "detail", "group")

    def __init__(
        self, action: str, detail: str = "", *, count: int = 1, conflict: str = "", group: str = ""
    ) -> None:
        self.action = action
        self.detail = detail
        self.count = count
        self.conflict = conflict
        self.group = group


def _same(attr: str, a: Any, b: Any) -> bool:
    if attr == "emailAddress":
        return normalize_email(str(a or "")) == normalize_email(str(b or ""))
    return (a or "") == (b or "")


def _link_key(im: BeforeImage) -> tuple[str, str, str]:
    return (im.path, im.resource_id, im.relationship)


class UndoTask:
    """Reverse the writes of one or more runs; see the module docstring."""

    shape: Literal["items"] = "items"
    kind = "undo"
    safety = Safety.IDEMPOTENT
    plan_actions = STEP_ACTIONS
    unit = "item"
    input_columns = ("run", "item", "writes")
    csv_style = CsvStyle()

    def __init__(self, images: Sequence[BeforeImage], profile: ApiProfile) -> None:
        self.profile = profile
        by_item: dict[tuple[int, str], list[BeforeImage]] = defaultdict(list)
        for im in images:
            by_item[(im.run, im.item_key)].append(im)
        # Newest item first; each item's writes newest first.
        self._items = sorted(by_item.items(), key=lambda kv: -max(i.seq for i in kv[1]))
        self._links: dict[tuple[str, str, str], set[str] | None] = {}
        #: Steps by action, filled by plan() and execute() (the plan's and the report's counts).
        self.steps: Counter[str] = Counter()
        #: Links a plan would remove, by owner ("user-groups/7"), and the owners' sizes now.
        self.removals: Counter[str] = Counter()
        self.sizes: dict[str, int] = {}
        #: Reverse requests that are DELETEs (the guard counts them as deletes).
        self.request_deletes = 0

    @property
    def total(self) -> int:
        return len(self._items)

    def input_hash(self) -> str:
        return ""

    def render_plan(self) -> None:
        return None

    async def prepare(self, client: SynapClient, memory: CursorStore) -> None:
        """Read the current members of every relationship the runs wrote to."""
        for _, images in self._items:
            for im in images:
                if im.op in _ADDS or im.op in _REMOVES:
                    self._links.setdefault(_link_key(im), None)
        for key in list(self._links):
            path, rid, rel = key
            try:
                found = await client.get_members(path, rid, rel)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self._links[key] = set()
                continue
            self._links[key] = {r.id for r in found}
            self.sizes[f"{path}/{rid}"] = len(found)

    async def check_rows(self) -> AsyncIterator[Item | InvalidRow]:
        """Nothing: the items come from the ledger, not from an input file."""
        for _ in ():
            yield _

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        for n, ((run, key), images) in enumerate(self._items, start=1):
            ordered = sorted(images, key=lambda i: -i.seq)
            writes = ", ".join(dict.fromkeys(i.op for i in ordered))
            yield Item(
                key=f"undo:{run}:{key}",
                line=n,
                row={"run": str(run), "item": key, "writes": writes},
                payload={"images": ordered},
            )

    async def plan(self, item: Item, client: SynapClient) -> PlanRow:
        steps = await self._steps(item.payload["images"], client, write=False)
        return self._row(item, steps)

    async def execute(self, item: Item, client: SynapClient) -> Outcome:
        steps = await self._steps(item.payload["images"], client, write=True)
        row = self._row(item, steps)
        conflicts = [s.conflict for s in steps if s.conflict]
        if conflicts:
            error = ItemError(status="conflict", code="conflict", detail="; ".join(conflicts))
            return Outcome(status="failed", action="conflict", error=error)
        return Outcome(status="done", action=row.action)

    async def reconcile(self, item: Item, client: SynapClient) -> Outcome | None:
        return None  # idempotent: never asked

    def column_for_pointer(self, pointer: str) -> str:
        return ""

    def absent_means_done(self, item: Item) -> str:
        return "already undone"

    def summary(self) -> dict[str, Any]:
        return {"steps": dict(self.steps)}

    def _row(self, item: Item, steps: list[_Step]) -> PlanRow:
        for s in steps:
            self.steps[s.action] += s.count
            if s.action in ("remove", "unassign") and s.group:
                self.removals[s.group] += 1
        actions = [s.action for s in steps if s.action != "already undone"] or ["already undone"]
        action = "+".join(dict.fromkeys(actions))
        detail = "; ".join(s.conflict or s.detail for s in steps if s.conflict or s.detail)
        label = item.row.get("item", "")
        return PlanRow(key=item.key, line=item.line, action=action, detail=detail, label=label)

    # -- the steps --------------------------------------------------------------------------

    async def _steps(
        self, images: Sequence[BeforeImage], client: SynapClient, *, write: bool
    ) -> list[_Step]:
        """One item's steps, newest write first. A membership the run gave a user it created
        goes with the user: it is removed on its own only when the user is kept (a conflict)."""
        created = {im.resource_id for im in images if im.op == "create" and im.resource_id}
        steps: list[_Step] = []
        deferred: list[BeforeImage] = []
        for im in images:
            if im.op == "add-member" and im.member_id in created:
                deferred.append(im)
                continue
            step = await self._step(im, client, write=write)
            steps.append(step)
            if im.op == "create" and step.action not in ("delete", "already undone"):
                for link in deferred:
                    steps.append(await self._step(link, client, write=write))
                deferred = []
        for link in deferred:  # gone with the deleted user: nothing to send
            self._forget_link(link)
        return steps

    def _forget_link(self, im: BeforeImage) -> None:
        links = self._links.get(_link_key(im))
        if links is not None:
            links.discard(im.member_id)

    async def _step(self, im: BeforeImage, client: SynapClient, *, write: bool) -> _Step:
        if im.op == "create":
            return await self._uncreate(im, client, write)
        if im.op == "patch":
            return await self._unpatch(im, client, write)
        if im.op in _ADDS or im.op in _REMOVES:
            return await self._unlink(im, client, write)
        if not im.undo:
            return _Step("not reversible", "the job's request has no undo: template")
        if im.undo.get("pending"):
            return _Step(
                "not reversible", "the run stopped before the answer its undo: template needs"
            )
        method, path = str(im.undo.get("method", "")), str(im.undo.get("path", ""))
        if method == "DELETE":
            self.request_deletes += 1
        if write:
            try:
                subject = str(im.undo.get("subject_user") or "")
                headers = {self.profile.subject_user_header: subject} if subject else None
                await client.request(
                    method, path, body=im.undo.get("body"), idempotent=True, headers=headers
                )
            except ApiError as exc:
                if exc.status != 404 or method != "DELETE":
                    raise
                return _Step("already undone", f"{method} {path}: gone")
        return _Step("request", f"{method} {path}")

    async def _user(self, im: BeforeImage, client: SynapClient) -> User | None:
        if im.resource_id:
            try:
                return await client.get(im.path, im.resource_id, User)
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise
        m = im.match
        if not m:
            return None
        async for user in client.paginate(im.path, {m["filter"]: m["value"]}, User):
            if _same(m["attribute"], getattr(user.attributes, m["attribute"], None), m["value"]):
                return user
        return None

    async def _uncreate(self, im: BeforeImage, client: SynapClient, write: bool) -> _Step:
        user = await self._user(im, client)
        if user is None:
            return _Step("already undone", "the created user is gone")
        changed = [
            f"{a}: the run wrote {v!r}, the server now has {now!r}"
            for a, v in im.after.items()
            for now in (getattr(user.attributes, a, None),)
            if hasattr(user.attributes, a) and not _same(a, now, v)
        ]
        if changed:
            return _Step(
                "conflict", conflict=f"user {user.id} changed since the run: {'; '.join(changed)}"
            )
        if write:
            try:
                await client.delete(im.path, user.id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        return _Step("delete", f"user {user.id}")

    async def _unpatch(self, im: BeforeImage, client: SynapClient, write: bool) -> _Step:
        try:
            user = await client.get(im.path, im.resource_id, User)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return _Step("conflict", conflict=f"user {im.resource_id} is gone")
        restore: dict[str, Any] = {}
        conflicts: list[str] = []
        for a, wrote in im.after.items():
            now = getattr(user.attributes, a, None)
            was = im.before.get(a)
            if _same(a, now, wrote) and not _same(a, now, was):
                if was is None and not self.profile.patch_null_clears:
                    conflicts.append(
                        f"{a}: had no value before the run, and the API profile says a PATCH "
                        "cannot clear it (patch_null_clears)"
                    )
                    continue
                restore[a] = was
            elif not _same(a, now, was):
                conflicts.append(f"{a}: the run wrote {wrote!r}, the server now has {now!r}")
        if restore and write:
            patch = ResourcePatch(type=im.resource_type, id=im.resource_id, attributes=restore)
            await client.update(im.path, patch, User)
        conflict = f"user {im.resource_id}: {'; '.join(conflicts)}" if conflicts else ""
        if conflict:
            return _Step("conflict", conflict=conflict, count=len(conflicts))
        if not restore:
            return _Step("already undone")
        return _Step("restore", f"{', '.join(sorted(restore))}", count=len(restore))

    async def _send_link(
        self,
        im: BeforeImage,
        client: SynapClient,
        target: list[ResourceIdentifier],
        *,
        remove: bool,
    ) -> None:
        """Remove or add one link: a marker assignment with the profile's marker verbs (as
        assign-markers sends them), a group membership as a relationship POST / DELETE."""
        p = self.profile
        if im.op in ("assign", "unassign"):
            method = p.marker_unassign_method if remove else p.marker_assign_method
            path = f"{im.path}/{quote(im.resource_id, safe='')}/relationships/{im.relationship}"
            body = RelationshipDocument(data=target)
            await client.request(method, path, body=body, idempotent=True)
        elif remove:
            await client.remove_members(im.path, im.resource_id, im.relationship, target)
        else:
            await client.add_members(im.path, im.resource_id, im.relationship, target)

    async def _unlink(self, im: BeforeImage, client: SynapClient, write: bool) -> _Step:
        owner = f"{im.path}/{im.resource_id}"
        what = f"{im.member_id} in {owner}/{im.relationship}"
        links = self._links.get(_link_key(im))
        current = links if links is not None else set()
        added = im.op in _ADDS
        if added and im.existed_before is not False:
            return _Step("kept", f"{what}: there before the run (or not known), kept")
        if not added and not im.existed_before:
            return _Step("already undone", f"{what}: was not there before the run")
        there = im.member_id in current
        if added != there:
            return _Step("already undone")
        target = [ResourceIdentifier(type=im.member_type, id=im.member_id)]
        if write:
            await self._send_link(im, client, target, remove=added)
            if added:
                current.discard(im.member_id)
            else:
                current.add(im.member_id)
        if im.op == "assign":
            return _Step("unassign", what, group=owner)
        if im.op == "unassign":
            return _Step("reassign", what)
        return _Step("remove" if added else "re-add", what, group=owner)
