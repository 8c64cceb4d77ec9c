"""``kind: user-import``: register or update every candidate of a CSV exactly once.

Per row: render the job's field templates, check the row (required values, email format,
duplicate keys within the file), then

- find the user by the match key (one paginated listing of the directory for large inputs,
  a filtered lookup per row for small ones);
- create through ``user-registrations`` with at most one group (the docs' rule), update by PATCH
  only the attributes that differ, and add further groups through batched relationship calls
  (``POST user-groups/{id}/relationships/users`` with many users at once).

A create is *reconcilable*: when its outcome is unknown (timeout, 5xx, dropped connection) the
engine calls :meth:`UserImportTask.reconcile`, which looks the user up by the natural key before
anything is re-sent, so no candidate is ever registered twice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from ..clock import Clock, SystemClock
from ..errors import ConnectError
from ..images import BeforeImage, ImageBook, NullImages
from ..items import CsvStyle, InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from ..jsonapi import NewResource, Relationship, ResourceIdentifier, ResourcePatch
from ..profile import ApiProfile
from ..resources import TYPE_USER, TYPE_USER_GROUP, TYPE_USER_REGISTRATION, User, UserGroup
from ..sources import (
    CsvRow,
    CsvSource,
    DuplicateTracker,
    delimiter_hint,
    is_email,
    normalize_email,
)
from ..templates import render_template, template_fields

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..spec import JobFile, UserImportSpec
    from .base import CursorStore

__all__ = ["GroupBatcher", "UserImportTask"]

#: Attributes the sandbox and the docs let a registration carry besides the templated ones.
_CREATE_ONLY = {"password"}


def _shown(value: Any) -> str:
    """A value in a plan: quoted text, or ``(none)`` for a value the server does not have."""
    if value is None or value == "":
        return "(none)"
    return json.dumps(str(value), ensure_ascii=False)


class _Known:
    """What we know of a server-side user: id, comparable attributes, group ids."""

    __slots__ = ("attributes", "groups", "id")

    def __init__(self, id: str, attributes: dict[str, Any], groups: set[str] | None) -> None:
        self.id = id
        self.attributes = attributes
        self.groups = groups


class GroupBatcher:
    """Collects "add user U to group G" requests and sends them many users per call.

    Each caller awaits its own batch. The caller that opens a batch waits ``linger`` seconds
    for others to join, then sends it; a batch that reaches ``size`` users goes at once. No
    task outlives its caller. Group membership is a set on the server, so a batch re-sent after
    an error changes nothing twice.
    """

    def __init__(
        self,
        client: SynapClient,
        profile: ApiProfile,
        *,
        size: int = 100,
        linger: float = 0.05,
        clock: Clock | None = None,
        remove: bool = False,
    ) -> None:
        """``remove``: the batches remove their users from the group instead (group-sync)."""
        self._remove = remove
        self._client = client
        self._profile = profile
        self._size = size
        self._linger = linger
        self._clock = clock or SystemClock()
        self._pending: dict[str, _Batch] = {}
        self.calls = 0

    async def add(self, group_id: str, user_id: str) -> None:
        batch = self._pending.get(group_id)
        owner = batch is None
        if batch is None:
            batch = self._pending[group_id] = _Batch(group_id)
        batch.users.append(user_id)
        if len(batch.users) >= self._size:
            await self._send(batch)
        elif owner:
            try:
                await self._clock.sleep(self._linger)
                await self._send(batch)
            finally:
                if not batch.sent:
                    # Cancelled before sending: the others must not wait for ever. Nothing
                    # left this process, so their items may safely try again.
                    self._detach(batch)
                    batch.error = ConnectError("group batch was cancelled before it was sent")
                    batch.done.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    def _detach(self, batch: _Batch) -> None:
        if self._pending.get(batch.group_id) is batch:
            del self._pending[batch.group_id]

    async def _send(self, batch: _Batch) -> None:
        if batch.sent:
            return
        batch.sent = True
        self._detach(batch)
        try:
            self.calls += 1
            send = self._client.remove_members if self._remove else self._client.add_members
            await send(
                self._profile.user_groups_path,
                batch.group_id,
                self._profile.group_members_relationship,
                [ResourceIdentifier(type=TYPE_USER, id=u) for u in dict.fromkeys(batch.users)],
            )
        except Exception as exc:
            batch.error = exc
        finally:
            batch.done.set()


class _Batch:
    __slots__ = ("done", "error", "group_id", "sent", "users")

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.users: list[str] = []
        self.done = anyio.Event()
        self.error: Exception | None = None
        self.sent = False


class UserImportTask:
    """Register or update the users of a CSV; see the module docstring."""

    shape: Literal["items"] = "items"
    kind = "user-import"
    safety = Safety.RECONCILABLE
    unit = "row"
    plan_actions = ("create", "update", "unchanged", "invalid", "conflict")

    def __init__(
        self,
        spec: UserImportSpec,
        job: JobFile,
        profile: ApiProfile,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.spec = spec
        self.job = job
        self.profile = profile
        self.clock = clock or SystemClock()
        self.source_path: Path = job.input_file("task.source", spec.source)
        self._fields = dict(spec.fields)
        if spec.match not in self._fields:
            raise job.error(
                "task.match",
                f"the match key {spec.match!r} must be one of the fields "
                f"({', '.join(self._fields) or 'none given'})",
            )
        if spec.mode != "update" and "emailAddress" not in self._fields:
            raise job.error("task.fields", "creating users needs an emailAddress field")
        self._source = CsvSource(self.source_path, delimiter=spec.delimiter)
        self._check_templates()
        self._groups_by_name: dict[str, str] = {}
        self._group_ids: set[str] = set()
        #: Group id -> name, so a plan names the groups beside their ids.
        self._group_names: dict[str, str] = {}
        self._directory: dict[str, _Known] | None = None
        self._batcher: GroupBatcher | None = None
        self._images: ImageBook = NullImages()
        #: Rows in the input, known after prepare() (the progress bar's total).
        self.total: int | None = None

    # -- set-up -------------------------------------------------------------------------

    def _templates(self) -> dict[str, str]:
        """Every template of the task, by its job-file path."""
        out = {f"task.fields.{k}": v for k, v in self._fields.items()}
        out.update({f"task.groups[{i}]": g for i, g in enumerate(self.spec.groups)})
        if self.spec.password is not None:
            out["task.password"] = self.spec.password
        return out

    def _check_templates(self) -> None:
        """Every column the templates use must be in the header; name all that are not."""
        header = set(self._source.header)
        templates = self._templates()
        missing: dict[str, str] = {}  # column -> path of the first template that uses it
        for at, template in templates.items():
            try:
                names = template_fields(template)
            except ValueError as exc:
                raise self.job.error(at, str(exc)) from None
            for name in names:
                if name not in header:
                    missing.setdefault(name, at)
        if not missing:
            return
        (column, at), *more = missing.items()
        has = f"{self._source.display_name} has: {', '.join(self._source.header)}"
        has += delimiter_hint(self._source.header, self._source.delimiter)
        if not more:
            raise self.job.error(
                at, f"unknown column {{{column}}} in template {templates[at]!r}; {has}"
            )
        others = ", ".join(
            f"{{{c}}} ({where}, line {self.job.line_of(where)})" for c, where in more
        )
        raise self.job.error(at, f"unknown columns {{{column}}}, {others}; {has}")

    @property
    def source(self) -> CsvSource:
        return self._source

    @property
    def csv_style(self) -> CsvStyle:
        return CsvStyle(delimiter=self._source.delimiter, bom=self._source.has_bom)

    def render_plan(self) -> None:
        return None

    def bind_images(self, book: ImageBook) -> None:
        """Where the writes' before-images go (the engine binds the run's ledger)."""
        self._images = book

    def source_rows(self) -> CsvSource:
        """The input's records: one item each, with its line and values (see RowsByLine)."""
        return self._source

    def input_hash(self) -> str:
        return self._source.sha256()

    @property
    def input_columns(self) -> list[str]:
        return list(self._source.header)

    def _match_value(self, attrs: Mapping[str, Any]) -> str:
        value = str(attrs.get(self.spec.match) or "").strip()
        return normalize_email(value) if self.spec.match == "emailAddress" else value

    async def prepare(self, client: SynapClient, memory: CursorStore) -> None:
        """Read the groups and the users already there; nothing is kept in ``memory``."""
        p = self.profile
        async for group in client.paginate(p.user_groups_path, None, UserGroup):
            self._group_ids.add(group.id)
            self._group_names[group.id] = (group.attributes.name or "").strip()
            if group.attributes.name:
                self._groups_by_name.setdefault(group.attributes.name.strip().lower(), group.id)
        # Counting the rows up front gives the progress bar its total (and "auto" its choice).
        self.total = sum(1 for _ in self._source)
        mode = self.spec.lookup
        if mode == "auto":
            mode = "listing" if self.total > self.spec.listing_threshold else "per-row"
        if mode == "listing":
            directory: dict[str, _Known] = {}
            params = {p.page_size_param: str(p.max_page_size)}
            async for user in client.paginate(p.users_path, params, User):
                known = self._known(user)
                key = self._match_value(known.attributes)
                if key:
                    directory[key] = known
            self._directory = directory
        self._batcher = GroupBatcher(client, p, clock=self.clock)

    def _known(self, user: User) -> _Known:
        a = user.attributes
        attrs: dict[str, Any] = {
            "name": a.name,
            "emailAddress": a.emailAddress,
            "externalId": a.externalId,
            "timeZone": a.timeZone,
            "locale": a.locale,
        }
        groups = set(a.userGroupsMetadata) if a.userGroupsMetadata is not None else None
        return _Known(user.id, attrs, groups)

    # -- items --------------------------------------------------------------------------

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        async for entry in self._rows(offline=False):
            yield entry

    def check_rows(self) -> AsyncIterator[Item | InvalidRow]:
        """Every row's checks but the group names, which only the server knows."""
        return self._rows(offline=True)

    async def _rows(self, *, offline: bool) -> AsyncIterator[Item | InvalidRow]:
        seen = DuplicateTracker()
        for row in self._source:
            result = self._item(row, seen, offline=offline)
            if isinstance(result, ItemError):
                yield InvalidRow(
                    key=f"line:{row.line}", line=row.line, row=row.values, error=result
                )
            else:
                yield result

    def _item(self, row: CsvRow, seen: DuplicateTracker, *, offline: bool) -> Item | ItemError:
        """The row as an item, or what is wrong with it (checked before any request);
        ``offline``: group names are not resolved (the server is not read)."""
        values = row.values
        if row.problem:
            return ItemError(status="invalid", code="row", detail=row.problem)
        attrs = {a: render_template(t, values).strip() for a, t in self._fields.items()}
        problem = self._row_problem(attrs)
        if problem is not None:
            return problem
        match = self._match_value(attrs)
        earlier = seen.seen(match, row.line)
        if earlier is not None:
            return ItemError(
                status="invalid",
                code="duplicate",
                field=self._column_of(self.spec.match),
                detail=f"duplicate {self.spec.match} {match!r}: already on line {earlier}",
            )
        groups: list[str] = []
        for template in self.spec.groups:
            name = render_template(template, values).strip()
            if not name or offline:
                continue
            gid = self._resolve_group(name)
            if gid is None:
                return ItemError(
                    status="invalid",
                    code="unknown-group",
                    field=self._column_of_groups(),
                    detail=f"user group {name!r} does not exist",
                )
            if gid not in groups:
                groups.append(gid)
        payload: dict[str, Any] = {"attributes": attrs, "groups": groups}
        if self.spec.password is not None:
            payload["password"] = render_template(self.spec.password, values)
        return Item(key=f"{self.spec.match}:{match}", line=row.line, row=values, payload=payload)

    def _resolve_group(self, name: str) -> str | None:
        if name in self._group_ids:
            return name
        return self._groups_by_name.get(name.lower())

    def _row_problem(self, attrs: Mapping[str, str]) -> ItemError | None:
        required: list[str] = [self.spec.match]
        if self.spec.mode != "update":
            required += [a for a in ("name", "emailAddress") if a in attrs]
        for attr in dict.fromkeys(required):
            if not attrs.get(attr):
                return ItemError(
                    status="invalid",
                    code="required",
                    field=self._column_of(attr),
                    detail=f"{attr} is required",
                )
        email = attrs.get("emailAddress")
        if email and not is_email(email):
            return ItemError(
                status="invalid",
                code="email",
                field=self._column_of("emailAddress"),
                detail=f"not an email address: {email!r}",
            )
        return None

    def _column_of(self, attr: str) -> str:
        template = self._fields.get(attr)
        if template is None:
            return ""
        names = template_fields(template)
        return names[0] if names else ""

    def _column_of_groups(self) -> str:
        for template in self.spec.groups:
            names = template_fields(template)
            if names:
                return names[0]
        return ""

    def absent_means_done(self, item: Item) -> str:
        return ""  # registrations and updates: a 404 is a real failure

    def column_for_pointer(self, pointer: str) -> str:
        parts = pointer.strip("/").split("/")
        if len(parts) >= 3 and parts[1] == "attributes":
            return self._column_of(parts[2])
        if len(parts) >= 3 and parts[1] == "relationships" and parts[2] == "userGroups":
            return self._column_of_groups()
        return ""

    # -- lookups ------------------------------------------------------------------------

    async def _lookup(self, item: Item, client: SynapClient, *, fresh: bool) -> _Known | None:
        key = item.key.split(":", 1)[1]
        if self._directory is not None and not fresh:
            return self._directory.get(key)
        p = self.profile
        name = p.filter_email if self.spec.match == "emailAddress" else p.filter_external_id
        found: _Known | None = None
        async for user in client.paginate(p.users_path, {name: key}, User):
            known = self._known(user)
            if self._match_value(known.attributes) == key:
                found = known
                break
        return found

    def _changes(self, item: Item, known: _Known) -> dict[str, Any]:
        attrs: Mapping[str, str] = item.payload["attributes"]
        changes: dict[str, Any] = {}
        for attr, value in attrs.items():
            if attr in _CREATE_ONLY:
                continue
            current = known.attributes.get(attr)
            if attr == "emailAddress":
                if normalize_email(str(current or "")) == normalize_email(value):
                    continue
            elif (current or "") == value:
                continue
            changes[attr] = value
        return changes

    def _missing_groups(self, item: Item, known: _Known | None) -> list[str]:
        groups: list[str] = list(item.payload["groups"])
        if known is None or known.groups is None:
            return groups
        return [g for g in groups if g not in known.groups]

    # -- plan / execute / reconcile -------------------------------------------------------

    async def plan(self, item: Item, client: SynapClient) -> PlanRow:
        """The intended action, for a person: who (name and email), the old -> new value of
        each attribute that changes and the groups joined, by name beside their ids."""
        known = await self._lookup(item, client, fresh=False)
        mode = self.spec.mode
        label = self._label(item)
        if known is None:
            if mode == "update":
                return PlanRow(
                    key=item.key, line=item.line, action="conflict", detail="not found", label=label
                )
            attrs: Mapping[str, str] = item.payload["attributes"]
            shown = [f"{a} {_shown(v)}" for a, v in attrs.items() if a not in _CREATE_ONLY and v]
            groups = [f"+group {self._group_text(g)}" for g in item.payload["groups"]]
            detail = "; ".join([*shown, *groups])
            return PlanRow(
                key=item.key, line=item.line, action="create", detail=detail, label=label
            )
        if mode == "create":
            return PlanRow(
                key=item.key,
                line=item.line,
                action="conflict",
                detail="already exists",
                remote_id=known.id,
                label=label,
            )
        changes = self._changes(item, known)
        groups = self._missing_groups(item, known)
        if not changes and not groups:
            return PlanRow(
                key=item.key, line=item.line, action="unchanged", remote_id=known.id, label=label
            )
        shown = [
            f"{a}: {_shown(known.attributes.get(a))} -> {_shown(changes[a])}"
            for a in sorted(changes)
        ]
        detail = "; ".join([*shown, *(f"+group {self._group_text(g)}" for g in groups)])
        return PlanRow(
            key=item.key,
            line=item.line,
            action="update",
            detail=detail,
            remote_id=known.id,
            label=label,
        )

    def _label(self, item: Item) -> str:
        """The user as a person reads it: ``Ada Lovelace <ada@example.edu>``."""
        attrs: Mapping[str, str] = item.payload.get("attributes", {})
        name, email = attrs.get("name", ""), attrs.get("emailAddress", "")
        if name and email:
            return f"{name} <{email}>"
        return name or email or item.key.split(":", 1)[-1]

    def _group_text(self, gid: str) -> str:
        """A group by name beside its id: ``"Cohort 01" (kn86Dh3Jaf)``."""
        name = self._group_names.get(gid, "")
        return f"{_shown(name)} ({gid})" if name else gid

    async def execute(self, item: Item, client: SynapClient) -> Outcome:
        known = await self._lookup(item, client, fresh=False)
        mode = self.spec.mode
        if known is None:
            if mode == "update":
                return Outcome(
                    status="failed",
                    error=ItemError(
                        status="404",
                        code="not-found",
                        field=self._column_of(self.spec.match),
                        detail=f"no user with {self.spec.match} {item.key.split(':', 1)[1]!r}",
                    ),
                )
            return await self._create(item, client)
        if mode == "create":
            return Outcome(
                status="failed",
                remote_id=known.id,
                error=ItemError(
                    status="409",
                    code="exists",
                    field=self._column_of(self.spec.match),
                    detail=f"a user with this {self.spec.match} already exists ({known.id})",
                ),
            )
        return await self._update(item, client, known)

    async def reconcile(self, item: Item, client: SynapClient) -> Outcome | None:
        known = await self._lookup(item, client, fresh=True)
        if known is None:
            return None
        # The create (or an update) took effect: keep the id with its before-image, then
        # finish the idempotent follow-ups.
        await self._images.created(f"create:{item.key}", known.id)
        outcome = await self._update(item, client, known)
        action = "created" if outcome.action in ("unchanged", "updated") else outcome.action
        return Outcome(status=outcome.status, action=action, remote_id=known.id)

    async def _create(self, item: Item, client: SynapClient) -> Outcome:
        p = self.profile
        attrs = dict(item.payload["attributes"])
        if not p.registration_accepts_external_id:
            attrs.pop("externalId", None)
        if "password" in item.payload:
            attrs["password"] = item.payload["password"]
        if not self.spec.welcome_email:
            attrs["welcomeEmailDisabled"] = True
        groups: list[str] = list(item.payload["groups"])
        first, rest = groups[: p.registration_max_groups], groups[p.registration_max_groups :]
        rels: dict[str, Relationship] = {}
        if first:
            rels["userGroups"] = Relationship(
                data=[ResourceIdentifier(type=TYPE_USER_GROUP, id=g) for g in first]
            )
        body = NewResource(type=TYPE_USER_REGISTRATION, attributes=attrs, relationships=rels)
        ref = f"create:{item.key}"
        # What the undo compares with the server (never a password).
        written = {a: v for a, v in item.payload["attributes"].items() if a not in _CREATE_ONLY}
        filter_name = p.filter_email if self.spec.match == "emailAddress" else p.filter_external_id
        value = item.key.split(":", 1)[1]
        match = {"filter": filter_name, "attribute": self.spec.match, "value": value}
        image = BeforeImage(
            op="create",
            ref=ref,
            path=p.users_path,
            resource_type=TYPE_USER,
            after=written,
            match=match,
        )
        await self._images.before(item.key, [image])
        created = await client.create(p.registrations_path, body, User)
        user_id = created.id
        if not p.registration_id_is_user_id:
            # The registration's id is not the user's: find the new user by its match key.
            known = await self._lookup(item, client, fresh=True)
            if known is None:
                raise ConnectError(
                    f"registered {item.key}, but no user with that key is found yet "
                    "(registration_id_is_user_id: false)"
                )
            user_id = known.id
        await self._images.created(ref, user_id)
        if not p.registration_accepts_external_id and "externalId" in item.payload["attributes"]:
            patch = ResourcePatch(
                type=TYPE_USER,
                id=user_id,
                attributes={"externalId": item.payload["attributes"]["externalId"]},
            )
            await client.update(p.users_path, patch, User)
        await self._add_groups(item, user_id, rest, known_before=True)
        return Outcome(status="done", action="created", remote_id=user_id)

    async def _update(self, item: Item, client: SynapClient, known: _Known) -> Outcome:
        changes = self._changes(item, known)
        if changes:
            users = self.profile.users_path
            before = {a: known.attributes.get(a) for a in changes}
            image = BeforeImage(
                op="patch",
                ref=f"{users}/{known.id}",
                path=users,
                resource_type=TYPE_USER,
                resource_id=known.id,
                before=before,
                after=dict(changes),
            )
            await self._images.before(item.key, [image])
            patch = ResourcePatch(type=TYPE_USER, id=known.id, attributes=changes)
            await client.update(users, patch, User)
        groups = self._missing_groups(item, known)
        await self._add_groups(item, known.id, groups, known_before=known.groups is not None)
        action = "updated" if changes or groups else "unchanged"
        return Outcome(status="done", action=action, remote_id=known.id)

    async def _add_groups(
        self, item: Item, user_id: str, groups: list[str], *, known_before: bool
    ) -> None:
        """Add the user to ``groups``; ``known_before``: the user was in none of them before
        the run (otherwise an undo keeps these memberships, not knowing)."""
        if not groups:
            return
        p = self.profile
        await self._images.before(
            item.key,
            [
                BeforeImage(
                    op="add-member",
                    ref=f"{p.user_groups_path}/{gid}/{p.group_members_relationship}/{user_id}",
                    path=p.user_groups_path,
                    resource_type=TYPE_USER_GROUP,
                    resource_id=gid,
                    relationship=p.group_members_relationship,
                    member_type=TYPE_USER,
                    member_id=user_id,
                    existed_before=False if known_before else None,
                )
                for gid in groups
            ],
        )
        assert self._batcher is not None, "prepare() runs before execute()"
        batcher = self._batcher
        async with anyio.create_task_group() as tg:
            for gid in groups:
                tg.start_soon(batcher.add, gid, user_id)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._batcher is not None:
            out["group_batch_calls"] = self._batcher.calls
        out["lookup"] = "listing" if self._directory is not None else "per-row"
        return out
