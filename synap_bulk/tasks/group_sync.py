"""``kind: group-sync``: make a user group's membership exactly the users of a CSV.

``prepare`` reads the group's members and the user directory once; each CSV row is a user to
keep or to add, and each member the CSV does not name is a user to remove. Adds and removes go
in batched relationship calls (``POST`` / ``DELETE user-groups/{id}/relationships/users`` with
many users at once). Membership is a set on the server, so every item is idempotent.

The plan shows both lists; the removals are destructive changes, so the job's ``guard:`` (by
default at most 10% of the group's members) stops a run that would remove more before its
first write, unless ``--yes``. Every add and removal leaves a before-image (``images.py``):
``undo`` removes exactly the users the run added and puts back those it removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.table import Table

from ..clock import Clock, SystemClock
from ..guards import Destructive
from ..images import BeforeImage, ImageBook, NullImages
from ..items import CsvStyle, InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from ..profile import ApiProfile
from ..resources import TYPE_USER, TYPE_USER_GROUP, User, UserGroup
from ..sources import CsvSource, DuplicateTracker, normalize_email
from .user_import import GroupBatcher

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..spec import GroupSyncSpec, JobFile
    from .base import CursorStore

__all__ = ["GroupSyncTask"]

#: How many names of each list the plan shows (the plan file has them all).
_SHOWN = 20


class GroupSyncTask:
    """Make a group exactly a CSV's users; see the module docstring."""

    shape: Literal["items"] = "items"
    kind = "group-sync"
    safety = Safety.IDEMPOTENT
    plan_actions = ("add", "remove", "keep", "invalid")
    unit = "user"

    def __init__(
        self, spec: GroupSyncSpec, job: JobFile, profile: ApiProfile, *, clock: Clock | None = None
    ) -> None:
        self.spec = spec
        self.job = job
        self.profile = profile
        self.clock = clock or SystemClock()
        self.source_path: Path = job.input_file("task.source", spec.source)
        self._source = CsvSource(self.source_path, delimiter=spec.delimiter)
        if spec.column not in self._source.header:
            raise job.error(
                "task.column",
                f"no column {spec.column!r} in {self._source.display_name} "
                f"(it has: {', '.join(self._source.header)})",
            )
        self._images: ImageBook = NullImages()
        self.group_id = ""
        self._members: list[str] = []
        self._ids: dict[str, str] = {}  # the match key's value -> user id
        self._labels: dict[str, str] = {}  # user id -> what the plan shows
        self._wanted: set[str] = set()
        self._adds: list[str] = []
        self._removes: list[str] = []
        self._adder: GroupBatcher | None = None
        self._remover: GroupBatcher | None = None
        self.total: int | None = None

    # -- the Task protocol's set-up ------------------------------------------------------------

    def input_hash(self) -> str:
        return self._source.sha256()

    @property
    def input_columns(self) -> list[str]:
        return list(self._source.header)

    @property
    def csv_style(self) -> CsvStyle:
        return CsvStyle(delimiter=self._source.delimiter, bom=self._source.has_bom)

    def bind_images(self, book: ImageBook) -> None:
        self._images = book

    def _key_of(self, value: str) -> str:
        value = value.strip()
        return normalize_email(value) if self.spec.match == "emailAddress" else value

    async def prepare(self, client: SynapClient, memory: CursorStore) -> None:
        """Find the group, read its members and the user directory, and work out both lists."""
        p = self.profile
        wanted = self.spec.group.strip()
        async for group in client.paginate(p.user_groups_path, None, UserGroup):
            name = (group.attributes.name or "").strip()
            if group.id == wanted or name.lower() == wanted.lower():
                self.group_id = group.id
                break
        if not self.group_id:
            raise self.job.error("task.group", f"user group {wanted!r} does not exist")
        found = await client.get_members(
            p.user_groups_path, self.group_id, p.group_members_relationship
        )
        self._members = [r.id for r in found]
        params = {p.page_size_param: str(p.max_page_size)}
        async for user in client.paginate(p.users_path, params, User):
            a = user.attributes
            value = user.id if self.spec.match == "id" else getattr(a, self.spec.match, None)
            if value:
                self._ids.setdefault(self._key_of(str(value)), user.id)
            self._labels[user.id] = a.emailAddress or a.externalId or a.name or user.id
        self._wanted = set()
        rows = 0
        for row in self._source:
            rows += 1
            uid = self._ids.get(self._key_of(row.values.get(self.spec.column, "")))
            if uid is not None and not row.problem:
                self._wanted.add(uid)
        members = set(self._members)
        self._adds = sorted(u for u in self._wanted if u not in members)
        self._removes = [u for u in self._members if u not in self._wanted]
        self.total = rows + len(self._removes)
        self._adder = GroupBatcher(client, p, size=self.spec.batch_size, clock=self.clock)
        self._remover = GroupBatcher(
            client, p, size=self.spec.batch_size, clock=self.clock, remove=True
        )

    async def destructive(self, client: SynapClient) -> Destructive:
        """What the run would remove, for the guard (after prepare)."""
        owner = f"{self.profile.user_groups_path}/{self.group_id}"
        return Destructive(
            removals={owner: len(self._removes)} if self._removes else {},
            sizes={owner: len(self._members)},
        )

    def render_plan(self) -> Table:
        table = Table(title=f"Group {self.spec.group} ({self.group_id}): {len(self._members)} now")
        table.add_column(f"add ({len(self._adds)})")
        table.add_column(f"remove ({len(self._removes)})")
        adds = [self._labels.get(u, u) for u in self._adds]
        removes = [self._labels.get(u, u) for u in self._removes]
        for lst in (adds, removes):
            if len(lst) > _SHOWN:
                lst[_SHOWN:] = [f"... and {len(lst) - _SHOWN} more (see the plan file)"]
        for i in range(max(len(adds), len(removes))):
            table.add_row(adds[i] if i < len(adds) else "", removes[i] if i < len(removes) else "")
        return table

    # -- items ------------------------------------------------------------------------------

    async def check_rows(self) -> AsyncIterator[Item | InvalidRow]:
        """The checks that need no server: a malformed row, an empty key, a duplicate."""
        seen = DuplicateTracker()
        column = self.spec.column
        for row in self._source:
            value = row.values.get(column, "")
            key = self._key_of(value)
            problem = row.problem or ("" if key else f"{column} is empty")
            if not problem and (earlier := seen.seen(key, row.line)) is not None:
                problem = (
                    f"duplicate {self.spec.match} {value.strip()!r}: already on line {earlier}"
                )
            if problem:
                error = ItemError(status="invalid", code="row", field=column, detail=problem)
                yield InvalidRow(key=f"line:{row.line}", line=row.line, row=row.values, error=error)
            else:
                yield Item(key=f"{self.spec.match}:{key}", line=row.line, row=row.values)

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        seen = DuplicateTracker()
        members = set(self._members)
        column = self.spec.column
        for row in self._source:
            value = row.values.get(column, "")
            key = self._key_of(value)
            problem = ""
            if row.problem:
                problem = row.problem
            elif not key:
                problem = f"{column} is empty"
            uid = self._ids.get(key)
            if not problem and uid is None:
                problem = f"no user with {self.spec.match} {value.strip()!r}"
            if not problem and (earlier := seen.seen(key, row.line)) is not None:
                problem = (
                    f"duplicate {self.spec.match} {value.strip()!r}: already on line {earlier}"
                )
            if problem or uid is None:
                error = ItemError(status="invalid", code="row", field=column, detail=problem)
                yield InvalidRow(key=f"line:{row.line}", line=row.line, row=row.values, error=error)
                continue
            op = "keep" if uid in members else "add"
            yield Item(
                key=f"member:{uid}", line=row.line, row=row.values, payload={"op": op, "user": uid}
            )
        for uid in self._removes:
            values = {c: "" for c in self._source.header}
            values[column] = self._labels.get(uid, uid)
            yield Item(
                key=f"remove:{uid}", line=0, row=values, payload={"op": "remove", "user": uid}
            )

    async def plan(self, item: Item, client: SynapClient) -> PlanRow:
        uid = item.payload["user"]
        return PlanRow(
            key=item.key,
            line=item.line,
            action=item.payload["op"],
            detail=self._labels.get(uid, uid),
            remote_id=uid,
        )

    async def execute(self, item: Item, client: SynapClient) -> Outcome:
        op, uid = item.payload["op"], item.payload["user"]
        if op == "keep":
            return Outcome(status="done", action="unchanged", remote_id=uid)
        p = self.profile
        rel = p.group_members_relationship
        await self._images.before(
            item.key,
            [
                BeforeImage(
                    op="add-member" if op == "add" else "remove-member",
                    ref=f"{p.user_groups_path}/{self.group_id}/{rel}/{uid}",
                    path=p.user_groups_path,
                    resource_type=TYPE_USER_GROUP,
                    resource_id=self.group_id,
                    relationship=rel,
                    member_type=TYPE_USER,
                    member_id=uid,
                    existed_before=op == "remove",
                )
            ],
        )
        batcher = self._adder if op == "add" else self._remover
        assert batcher is not None, "prepare() runs before execute()"
        await batcher.add(self.group_id, uid)
        return Outcome(status="done", action="added" if op == "add" else "removed", remote_id=uid)

    async def reconcile(self, item: Item, client: SynapClient) -> Outcome | None:
        return None  # idempotent: never asked

    def absent_means_done(self, item: Item) -> str:
        return ""

    def column_for_pointer(self, pointer: str) -> str:
        return self.spec.column

    def summary(self) -> dict[str, Any]:
        calls = sum(b.calls for b in (self._adder, self._remover) if b is not None)
        return {
            "group": self.group_id,
            "members_before": len(self._members),
            "to_add": len(self._adds),
            "to_remove": len(self._removes),
            "relationship_calls": calls,
        }
