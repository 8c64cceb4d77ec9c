"""``kind: assign-markers``: give every attempt its markers for one role, fairly and once.

Two inputs:

- a **strategy** (``round-robin``, ``balanced``, ``random``) over the attempts of the job's exams
  in the given statuses: :meth:`AssignMarkersTask.prepare` reads the exams, their pool group for
  the role, the pool's members, the attempts with the markers already on them, the exclusions,
  and computes the allocation once (:func:`synap_bulk.allocation.allocate`), so ``plan`` shows
  and ``run`` applies exactly the same allocation. One item per attempt.
- a **mapping** CSV (attempt id, or candidate email/externalId + exam, -> marker email or id):
  one item per row, checked against the pool, the exclusions and ``max_per_marker`` before any
  request, so the failures file lists the rows to fix with their line numbers.

``action: unassign`` removes the mapped pairs, or, without a mapping, every marker of the role
from the attempts in scope (only those of the ``markers`` CSV when one is given).

Relationship POST/DELETE are sets on the server (adding a member twice changes nothing), so the
task is *idempotent*: a resumed or repeated run sends only what is still missing.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from msgspec import Struct
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..allocation import (
    STRATEGIES,
    Allocation,
    AttemptSlot,
    MarkerInfo,
    allocate,
    id_sort_key,
)
from ..errors import NotFound, SourceError, SpecError
from ..items import CsvStyle, InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from ..jsonapi import UNSET, Resource, ResourceIdentifier
from ..profile import ApiProfile
from ..resources import MARKER_ROLES, TYPE_USER, Attempt, Exam, MarkerRole, User, UserGroup
from ..sources import CsvRow, CsvSource, normalize_email

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..spec import AssignMarkersSpec, JobFile

__all__ = [
    "AssignMarkersTask",
    "MarkerLoad",
    "render_allocation_table",
]

#: Columns of the success/failures files in strategy mode (one row per attempt).
STRATEGY_COLUMNS = ["attempt", "exam", "candidate", "markers"]
_MAPPING_DEFAULTS = {
    "attempt": "attempt",
    "candidate": "candidate",
    "exam": "exam",
    "marker": "marker",
}
_EXCLUSION_DEFAULTS = {"marker": "marker", "candidate": "candidate"}
_MARKER_COLUMNS = ("marker", "email", "emailAddress", "id", "marker_id")
#: Above this many users to resolve, one directory listing replaces per-value lookups.
_LISTING_THRESHOLD = 200
_PARALLEL_READS = 16
#: Rows of the "cannot be satisfied" table printed by ``plan`` (all are in plan.csv).
_MAX_SHORT_ROWS = 50


class MarkerLoad(Struct, frozen=True, kw_only=True):
    """One line of the allocation table: a marker's load before and after the run."""

    marker_id: str
    label: str
    before: int
    after: int
    in_pool: bool = True


class _Table:
    """A small side CSV read whole (sources.CsvSource): good rows as (line, values), bad apart."""

    def __init__(self, path: Path) -> None:
        source = CsvSource(path)
        self.name = source.display_name
        self.header = list(source.header)
        self.sha256 = source.sha256()
        self.records: list[CsvRow] = list(source)
        self.rows = [(r.line, r.values) for r in self.records if r.problem is None]
        self.bad = [r for r in self.records if r.problem is not None]
        self._source = source

    def require(self, columns: Iterable[str]) -> None:
        self._source.check_columns(columns)


def _columns(given: Mapping[str, str] | None, defaults: Mapping[str, str]) -> dict[str, str]:
    """The job file's column names over the defaults (spec.py checks the keys)."""
    out = dict(defaults)
    out.update({k: v for k, v in (given or {}).items() if v})
    return out


def _is_email(value: str) -> bool:
    return "@" in value


def _norm_email(value: str) -> str:
    return normalize_email(value)


class _AttemptInfo:
    __slots__ = ("candidate", "exam", "id", "markers", "status")

    def __init__(self, id: str, exam: str, candidate: str, markers: set[str] | None, status: str):
        self.id = id
        self.exam = exam
        self.candidate = candidate
        self.markers = markers
        self.status = status


class _Pool:
    """An exam's pool group for the role: its id, name and members (id -> email)."""

    __slots__ = ("id", "members", "name")

    def __init__(self, id: str, name: str, members: dict[str, str]) -> None:
        self.id = id
        self.name = name
        self.members = members

    def describe(self) -> str:
        return f"group {self.id} ({self.name!r})" if self.name else f"group {self.id}"


def render_allocation_table(
    loads: Sequence[MarkerLoad],
    unsatisfied: Sequence[tuple[str, int, str]],
    *,
    role: str = "markers",
    width: int = 100,
    max_rows: int = _MAX_SHORT_ROWS,
) -> str:
    """The plan's allocation as text: each marker's load before and after, then what cannot be."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(_allocation_renderable(loads, unsatisfied, role=role, max_rows=max_rows))
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def _allocation_renderable(
    loads: Sequence[MarkerLoad],
    unsatisfied: Sequence[tuple[str, int, str]],
    *,
    role: str,
    max_rows: int = _MAX_SHORT_ROWS,
) -> RenderableType:
    table = Table(title=f"Allocation ({role})", title_justify="left")
    table.add_column("marker")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("new", justify="right")
    for m in loads:
        label = m.label if m.in_pool else f"{m.label} (not in pool)"
        delta = m.after - m.before
        table.add_row(Text(label), str(m.before), str(m.after), f"{delta:+d}")
    if not loads:
        table.add_row("(no markers)", "", "", "")
    parts: list[RenderableType] = [table]
    if unsatisfied:
        short = Table(title="Cannot be satisfied", title_justify="left")
        short.add_column("attempt")
        short.add_column("needs", justify="right")
        short.add_column("why")
        for attempt, needed, reason in unsatisfied[:max_rows]:
            short.add_row(Text(attempt), str(needed), Text(reason))
        parts.append(short)
        if len(unsatisfied) > max_rows:
            parts.append(Text(f"... and {len(unsatisfied) - max_rows} more (see plan.csv)"))
    return Group(*parts)


class AssignMarkersTask:
    """Assign or unassign the markers of one role on many attempts; see the module docstring."""

    shape: Literal["items"] = "items"
    kind = "assign-markers"
    safety = Safety.IDEMPOTENT
    plan_actions: tuple[str, ...] = ()
    #: Not announced up front: the progress bar counts the items as they come.
    total: int | None = None

    def __init__(self, spec: AssignMarkersSpec, job: JobFile, profile: ApiProfile) -> None:
        self.spec = spec
        self.job = job
        self.profile = profile
        role = MARKER_ROLES.get(spec.role)
        if role is None:
            raise self._error(
                f"unknown role {spec.role!r} (expected one of {', '.join(MARKER_ROLES)})",
                "task.role",
            )
        self.role: MarkerRole = role
        role_path = profile.marker_role_paths.get(spec.role)
        if role_path is None:
            raise self._error(
                f"the API profile has no marker_role_paths entry for {spec.role!r}", "task.role"
            )
        self.role_path = role_path
        if spec.action not in ("assign", "unassign"):
            raise self._error(
                f"action must be assign or unassign, got {spec.action!r}", "task.action"
            )
        self.assign = spec.action == "assign"
        if spec.mapping and spec.strategy:
            raise self._error("give either a mapping CSV or a strategy, not both", "task.strategy")
        if spec.strategy is not None and spec.strategy not in STRATEGIES:
            raise self._error(
                f"unknown strategy {spec.strategy!r} (expected one of {', '.join(STRATEGIES)})",
                "task.strategy",
            )
        if self.assign and not spec.mapping and not spec.strategy:
            raise self._error(
                "assigning needs a mapping CSV or a strategy (round-robin, balanced, random)",
                "task.strategy",
            )
        if not self.assign and spec.strategy:
            raise self._error(
                "a strategy allocates new markers; to unassign, give a mapping CSV or none "
                "(then every marker of the role is removed from the attempts in scope)",
                "task.strategy",
            )
        if not spec.mapping and not spec.exams:
            raise self._error("list the exams whose attempts get markers", "task.exams")
        if spec.per_attempt < 1:
            raise self._error("per_attempt must be at least 1", "task.per_attempt")
        if spec.max_per_marker is not None and spec.max_per_marker < 0:
            raise self._error("max_per_marker must not be negative", "task.max_per_marker")
        self.mapping_columns = _columns(spec.mapping_columns, _MAPPING_DEFAULTS)
        self.exclusion_columns = _columns(spec.exclusion_columns, _EXCLUSION_DEFAULTS)
        self._mapping = self._table("task.mapping", spec.mapping)
        self._exclusions = self._table("task.exclusions", spec.exclusions)
        self._markers_csv = self._table("task.markers", spec.markers)
        if self._mapping is not None:
            cols = self.mapping_columns
            self._mapping.require([cols["marker"]])
            if cols["attempt"] not in self._mapping.header:
                if cols["candidate"] not in self._mapping.header:
                    raise SourceError(
                        f"{self._mapping.name}: missing column(s): {cols['attempt']} "
                        f"(or {cols['candidate']} with {cols['exam']}) "
                        f"(header: {', '.join(self._mapping.header)})"
                    )
                if cols["exam"] not in self._mapping.header and len(spec.exams) != 1:
                    raise SourceError(
                        f"{self._mapping.name}: rows naming a candidate need an "
                        f"{cols['exam']!r} column, or exactly one exam in task.exams"
                    )
        if self._exclusions is not None:
            ec = self.exclusion_columns
            self._exclusions.require([ec["marker"], ec["candidate"]])
        if self._markers_csv is not None:
            self._marker_column = next(
                (c for c in _MARKER_COLUMNS if c in self._markers_csv.header),
                self._markers_csv.header[0],
            )
        # Filled by prepare().
        self._prepared: list[Item | InvalidRow] = []
        self._labels: dict[str, str] = {}
        self._loads: list[MarkerLoad] = []
        self._unsatisfied: list[tuple[str, int, str]] = []
        self._notes: list[str] = []
        self._allocation: Allocation | None = None
        self._applied: Counter[str] = Counter()
        self._mapping_before: Counter[str] = Counter()
        self._exams: dict[str, Exam | str] = {}
        self._exam_list: list[Exam] | None = None
        self._pools: dict[str, _Pool] = {}
        self._users_by_email: dict[str, str | None] = {}
        self._users_by_external: dict[str, str | None] = {}

    # -- job-file plumbing ----------------------------------------------------------------

    def _table(self, at: str, written: str | None) -> _Table | None:
        return _Table(self.job.input_file(at, written)) if written else None

    def _error(self, message: str, at: str) -> SpecError:
        return self.job.error(at, message)

    def input_hash(self) -> str:
        """The side files' content: a changed mapping or exclusions file refuses to resume."""
        parts = [
            t.sha256 if t else "-" for t in (self._mapping, self._exclusions, self._markers_csv)
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    @property
    def input_columns(self) -> list[str]:
        if self._mapping is not None:
            return list(self._mapping.header)
        return list(STRATEGY_COLUMNS)

    @property
    def csv_style(self) -> CsvStyle:
        """Result files are plain comma-separated CSV without a BOM, whatever the inputs."""
        return CsvStyle()

    @property
    def allocation(self) -> Allocation | None:
        """The allocation computed by prepare() (strategy mode), for tests and reports."""
        return self._allocation

    # -- reading the server ----------------------------------------------------------------

    async def _find_exam(self, client: SynapClient, ref: str) -> Exam | str:
        """The exam with id (or else exact name) ``ref``; a message when there is none or many."""
        ref = ref.strip()
        found = self._exams.get(ref)
        if found is not None:
            return found
        result: Exam | str
        try:
            if any(c.isspace() for c in ref) or not ref:
                raise LookupError
            result = await client.get(self.profile.exams_path, ref, Exam)
        except (NotFound, LookupError):
            if self._exam_list is None:
                self._exam_list = [
                    e async for e in client.paginate(self.profile.exams_path, None, Exam)
                ]
            named = [e for e in self._exam_list if (e.attributes.name or "").strip() == ref]
            if len(named) == 1:
                result = named[0]
            elif named:
                ids = ", ".join(e.id for e in named)
                result = f"{len(named)} exams are named {ref!r} ({ids}); give the id"
            else:
                result = f"no exam with id or name {ref!r}"
        self._exams[ref] = result
        return result

    async def _exam(self, client: SynapClient, exam_id: str) -> Exam:
        """An exam known to exist (its id came from the server)."""
        found = await self._find_exam(client, exam_id)
        if isinstance(found, str):
            raise LookupError(found)
        return found

    def _exam_problem(self, exam: Exam) -> str | None:
        """Why markers cannot be given on this exam (draft, no pool), or None."""
        name = (
            f"exam {exam.id} ({exam.attributes.name!r})"
            if exam.attributes.name
            else f"exam {exam.id}"
        )
        if exam.attributes.status == "draft":
            return f"{name} is a draft: markers can only be assigned on a published exam"
        if exam.rel_id(self.role.pool) is None:
            return f"{name} has no {self.role.pool} pool group for role {self.role.name!r}"
        return None

    async def _pool(self, client: SynapClient, exam: Exam) -> _Pool:
        gid = exam.rel_id(self.role.pool)
        assert gid is not None
        pool = self._pools.get(gid)
        if pool is None:
            p = self.profile
            name = ""
            try:
                group = await client.get(p.user_groups_path, gid, UserGroup)
                name = group.attributes.name or ""
            except NotFound:
                pass
            members: dict[str, str] = {}
            params = {p.filter_user_group: gid}
            listing = client.paginate(p.users_path, params, User, page_size=p.max_page_size)
            async for user in listing:
                members[user.id] = user.attributes.emailAddress or user.id
                self._remember(user)
            pool = _Pool(gid, name, members)
            self._pools[gid] = pool
        return pool

    def _remember(self, user: User) -> None:
        email = user.attributes.emailAddress
        if email:
            self._users_by_email[_norm_email(email)] = user.id
            self._labels.setdefault(user.id, email)
        if user.attributes.externalId:
            self._users_by_external[user.attributes.externalId.strip()] = user.id

    async def _resolve_users(
        self, client: SynapClient, values: Iterable[str], *, by_email: bool
    ) -> None:
        """Look up users by email (or by externalId), all at once, filling the caches.

        Few values: one filtered lookup each, in parallel. Many: one listing of the directory.
        """
        p = self.profile
        known: Mapping[str, object] = self._users_by_email if by_email else self._users_by_external
        todo: list[str] = []
        for raw in values:
            v = _norm_email(raw) if by_email else raw.strip()
            if v and v not in known:
                todo.append(v)
        todo = list(dict.fromkeys(todo))
        if not todo:
            return
        if len(todo) > _LISTING_THRESHOLD:
            listing = client.paginate(p.users_path, None, User, page_size=p.max_page_size)
            async for user in listing:
                self._remember(user)
        else:
            name = p.filter_email if by_email else p.filter_external_id

            async def one(value: str) -> None:
                async for user in client.paginate(p.users_path, {name: value}, User):
                    self._remember(user)

            await _gather(one, todo)
        cache = self._users_by_email if by_email else self._users_by_external
        for v in todo:
            cache.setdefault(v, None)

    async def _resolve_values(
        self, client: SynapClient, values: Iterable[str], *, external: bool = False
    ) -> None:
        """Resolve the emails among ``values`` (with ``external``, the rest as externalIds)."""
        values = [v for v in values if v.strip()]
        await self._resolve_users(client, [v for v in values if _is_email(v)], by_email=True)
        if external:
            others = [v for v in values if not _is_email(v)]
            await self._resolve_users(client, others, by_email=False)

    def _user_id(self, value: str, *, external: bool = False) -> str | None:
        """The id for an email (None when unknown), an externalId (with ``external``) or an id.

        Call after :meth:`_resolve_values`. Ids are taken as given: an unknown id simply never
        matches an attempt or a pool member, which the caller reports.
        """
        v = value.strip()
        if not v:
            return None
        if _is_email(v):
            return self._users_by_email.get(_norm_email(v))
        if external:
            found = self._users_by_external.get(v)
            if found is not None:
                return found
        return v

    def _attempt_info(self, attempt: Attempt) -> _AttemptInfo:
        rel = attempt.relationships.get(self.role.relationship)
        markers: set[str] | None = None
        if rel is not None and rel.data is not UNSET:
            markers = set(rel.ids())
        a = attempt.attributes
        return _AttemptInfo(
            attempt.id,
            attempt.rel_id("examV2") or "",
            attempt.rel_id("user") or "",
            markers,
            a.examStatus or a.status or "",
        )

    async def _fill_markers(self, client: SynapClient, infos: Iterable[_AttemptInfo]) -> None:
        """Read the role's markers of attempts whose listing did not carry the relationship."""
        missing = [i for i in infos if i.markers is None]

        async def one(info: _AttemptInfo) -> None:
            ids = await client.get_members(self.profile.attempts_path, info.id, self.role_path)
            info.markers = {r.id for r in ids}

        await _gather(one, missing)

    async def _attempts_of(
        self, client: SynapClient, exam_id: str, statuses: Sequence[str]
    ) -> list[_AttemptInfo]:
        p = self.profile
        out: dict[str, _AttemptInfo] = {}
        filters: list[dict[str, str]] = [{p.filter_status: s} for s in statuses] or [{}]
        for extra in filters:
            params = {p.filter_exam: exam_id, **extra}
            listing = client.paginate(
                p.attempts_path, params, Attempt, page_size=p.max_page_size, parallel=4
            )
            async for attempt in listing:
                info = self._attempt_info(attempt)
                if statuses and info.status and info.status not in statuses:
                    continue
                info.exam = info.exam or exam_id
                out[info.id] = info
        return [out[k] for k in sorted(out, key=id_sort_key)]

    async def _read_exclusions(self, client: SynapClient) -> set[tuple[str, str]]:
        if self._exclusions is None:
            return set()
        ec = self.exclusion_columns
        rows = self._exclusions.rows
        for bad in self._exclusions.bad:
            self._notes.append(f"{self._exclusions.name}:{bad.line}: {bad.problem}; row ignored")
        await self._resolve_values(client, [r[ec["marker"]] for _, r in rows])
        await self._resolve_values(client, [r[ec["candidate"]] for _, r in rows], external=True)
        pairs: set[tuple[str, str]] = set()
        for line, row in rows:
            marker = self._user_id(row[ec["marker"]])
            cand = self._user_id(row[ec["candidate"]], external=True)
            if marker is None or cand is None:
                unknown = row[ec["marker"]] if marker is None else row[ec["candidate"]]
                self._notes.append(
                    f"{self._exclusions.name}:{line}: no user {unknown.strip()!r}; "
                    "exclusion ignored"
                )
                continue
            pairs.add((marker, cand))
        return pairs

    async def _restrict_markers(self, client: SynapClient) -> dict[str, int] | None:
        """The markers CSV as ids (-> line), or None when every pool member may mark."""
        if self._markers_csv is None:
            return None
        col = self._marker_column
        for bad in self._markers_csv.bad:
            self._notes.append(f"{self._markers_csv.name}:{bad.line}: {bad.problem}; row ignored")
        await self._resolve_values(client, [r[col] for _, r in self._markers_csv.rows])
        out: dict[str, int] = {}
        for line, row in self._markers_csv.rows:
            mid = self._user_id(row[col])
            if mid is None:
                self._notes.append(
                    f"{self._markers_csv.name}:{line}: no user {row[col].strip()!r}; skipped"
                )
                continue
            out.setdefault(mid, line)
        return out

    # -- prepare ----------------------------------------------------------------------------

    async def prepare(self, client: SynapClient) -> None:
        """Read the exams, pools, attempts and inputs, and decide every item's change."""
        self._prepared = []
        self._notes = []
        self._unsatisfied = []
        self._loads = []
        if self._mapping is not None:
            await self._prepare_mapping(client)
        else:
            await self._prepare_scope(client)

    async def _scope_exams(self, client: SynapClient) -> list[tuple[Exam, _Pool | None]]:
        out: list[tuple[Exam, _Pool | None]] = []
        for i, exam_id in enumerate(self.spec.exams):
            at = f"task.exams[{i}]"
            exam = await self._find_exam(client, str(exam_id))
            if isinstance(exam, str):
                raise self._error(exam, at)
            problem = self._exam_problem(exam)
            if problem is not None and (self.assign or exam.attributes.status == "draft"):
                raise self._error(problem, at)
            pool = await self._pool(client, exam) if problem is None else None
            out.append((exam, pool))
        return out

    async def _prepare_scope(self, client: SynapClient) -> None:
        exams = await self._scope_exams(client)
        attempts: list[_AttemptInfo] = []
        for exam, _pool in exams:
            attempts.extend(await self._attempts_of(client, exam.id, self.spec.statuses))
        await self._fill_markers(client, attempts)
        attempts.sort(key=lambda a: id_sort_key(a.id))
        only = await self._restrict_markers(client)
        if self.assign:
            await self._allocate(client, exams, attempts, only)
        else:
            self._unassign_all(attempts, only)

    async def _allocate(
        self,
        client: SynapClient,
        exams: list[tuple[Exam, _Pool | None]],
        attempts: list[_AttemptInfo],
        only: dict[str, int] | None,
    ) -> None:
        allowed_by_exam: dict[str, frozenset[str]] = {}
        in_pool: dict[str, str] = {}
        for exam, pool in exams:
            assert pool is not None
            allowed_by_exam[exam.id] = frozenset(pool.members)
            in_pool.update(pool.members)
        candidates = set(in_pool) if only is None else set(only)
        if only is not None:
            for mid, line in only.items():
                if mid not in in_pool:
                    label = self._labels.get(mid, mid)
                    self._notes.append(
                        f"{self._markers_csv.name if self._markers_csv else 'markers'}:"
                        f"{line}: {label} is not in the {self.role.pool} pool of "
                        + ", ".join(f"exam {e.id}" for e, _ in exams)
                        + "; never chosen"
                    )
        load: Counter[str] = Counter()
        for a in attempts:
            load.update(a.markers or ())
        markers = [
            MarkerInfo(
                marker_id=mid,
                label=self._labels.get(mid, mid),
                current_load=load[mid],
                pool=mid in in_pool,
            )
            for mid in candidates
        ]
        exclusions = await self._read_exclusions(client)
        single = len(set(allowed_by_exam.values())) <= 1
        slots = [
            AttemptSlot(
                attempt_id=a.id,
                candidate_id=a.candidate,
                already=frozenset(a.markers or ()),
                allowed=None if single else allowed_by_exam.get(a.exam, frozenset()),
            )
            for a in attempts
        ]
        assert self.spec.strategy is not None
        result = allocate(
            slots,
            markers,
            strategy=self.spec.strategy,
            per_attempt=self.spec.per_attempt,
            max_per_marker=self.spec.max_per_marker,
            exclusions=exclusions,
            seed=self.spec.seed,
        )
        self._allocation = result
        new = result.by_attempt()
        short = {u.attempt_id: u for u in result.unsatisfied}
        for a in attempts:
            row = self._strategy_row(a, new.get(a.id, []))
            key = f"attempt:{a.id}:{self.role.name}"
            if a.id in short:
                u = short[a.id]
                self._unsatisfied.append((a.id, u.needed, u.reason))
                self._prepared.append(
                    InvalidRow(
                        key=key,
                        line=0,
                        row=row,
                        error=ItemError(status="invalid", code="unsatisfied", detail=u.reason),
                    )
                )
                continue
            self._prepared.append(
                Item(key=key, row=row, payload={"attempt": a.id, "markers": new.get(a.id, [])})
            )
        self._loads = sorted(
            (
                MarkerLoad(
                    marker_id=m.marker_id,
                    label=m.label,
                    before=result.load_before[m.marker_id],
                    after=result.load_after[m.marker_id],
                    in_pool=m.pool,
                )
                for m in markers
            ),
            key=lambda m: (m.label.lower(), m.marker_id),
        )

    def _strategy_row(self, a: _AttemptInfo, markers: Sequence[str]) -> dict[str, str]:
        return {
            "attempt": a.id,
            "exam": a.exam,
            "candidate": a.candidate,
            "markers": ";".join(self._labels.get(m, m) for m in markers),
        }

    def _unassign_all(self, attempts: list[_AttemptInfo], only: dict[str, int] | None) -> None:
        before: Counter[str] = Counter()
        removed: Counter[str] = Counter()
        for a in attempts:
            current = sorted(a.markers or (), key=id_sort_key)
            before.update(current)
            gone = [m for m in current if only is None or m in only]
            removed.update(gone)
            self._prepared.append(
                Item(
                    key=f"attempt:{a.id}:{self.role.name}",
                    row=self._strategy_row(a, gone),
                    payload={"attempt": a.id, "markers": gone},
                )
            )
        self._loads = sorted(
            (
                MarkerLoad(
                    marker_id=m,
                    label=self._labels.get(m, m),
                    before=n,
                    after=n - removed[m],
                )
                for m, n in before.items()
            ),
            key=lambda m: (m.label.lower(), m.marker_id),
        )

    async def _prepare_mapping(self, client: SynapClient) -> None:
        assert self._mapping is not None
        cols = self.mapping_columns
        rows = self._mapping.rows
        header = self._mapping.header
        has_attempt = cols["attempt"] in header
        has_exam = cols["exam"] in header
        default_exam = str(self.spec.exams[0]) if len(self.spec.exams) == 1 else ""

        # Resolve in bulk first: emails of markers and candidates, then attempts.
        await self._resolve_values(client, [r.get(cols["marker"], "") for _, r in rows])
        await self._resolve_values(
            client, [r.get(cols["candidate"], "") for _, r in rows], external=True
        )
        attempt_ids = [r[cols["attempt"]].strip() for _, r in rows if has_attempt]
        attempts: dict[str, _AttemptInfo | None] = {}

        async def fetch(aid: str) -> None:
            try:
                res = await client.get(self.profile.attempts_path, aid, Attempt)
                attempts[aid] = self._attempt_info(res)
            except NotFound:
                attempts[aid] = None

        await _gather(fetch, [a for a in dict.fromkeys(attempt_ids) if a])
        # Candidate rows: one listing of each exam's attempts, indexed by candidate.
        by_exam: dict[str, dict[str, list[_AttemptInfo]]] = {}
        for _, r in rows:
            if has_attempt and r[cols["attempt"]].strip():
                continue
            exam_id = (r.get(cols["exam"], "") if has_exam else "").strip() or default_exam
            if exam_id and exam_id not in by_exam:
                index: dict[str, list[_AttemptInfo]] = {}
                exam = await self._find_exam(client, exam_id)
                listed = (
                    [] if isinstance(exam, str) else await self._attempts_of(client, exam.id, [])
                )
                for info in listed:
                    index.setdefault(info.candidate, []).append(info)
                by_exam[exam_id] = index
        exclusions = await self._read_exclusions(client)
        infos = [i for i in attempts.values() if i is not None]
        infos += [i for idx in by_exam.values() for lst in idx.values() for i in lst]
        await self._fill_markers(client, infos)

        self._mapping_before = Counter()
        load: Counter[str] = Counter()
        counted: set[str] = set()
        seen: dict[tuple[str, str], int] = {}
        for line, row in rows:
            self._prepared.append(
                await self._mapping_row(
                    client,
                    line,
                    row,
                    attempts,
                    by_exam,
                    default_exam,
                    exclusions,
                    load,
                    counted,
                    seen,
                )
            )
        for bad in self._mapping.bad:
            self._prepared.append(
                InvalidRow(
                    key=f"line:{bad.line}",
                    line=bad.line,
                    row=bad.values,
                    error=ItemError(status="invalid", code="row", detail=bad.problem or ""),
                )
            )
        self._prepared.sort(key=lambda e: e.line)
        self._unsatisfied = [
            (f"line {e.line}", 1, e.error.detail)
            for e in self._prepared
            if isinstance(e, InvalidRow)
        ]
        changed: Counter[str] = Counter()
        for entry in self._prepared:
            if isinstance(entry, Item):
                changed.update(entry.payload["markers"])
        sign = 1 if self.assign else -1
        self._loads = sorted(
            (
                MarkerLoad(
                    marker_id=m,
                    label=self._labels.get(m, m),
                    before=self._mapping_before[m],
                    after=self._mapping_before[m] + sign * changed[m],
                )
                for m in set(self._mapping_before) | set(changed)
            ),
            key=lambda m: (m.label.lower(), m.marker_id),
        )

    async def _mapping_row(
        self,
        client: SynapClient,
        line: int,
        row: dict[str, str],
        attempts: dict[str, _AttemptInfo | None],
        by_exam: dict[str, dict[str, list[_AttemptInfo]]],
        default_exam: str,
        exclusions: set[tuple[str, str]],
        load: Counter[str],
        counted: set[str],
        seen: dict[tuple[str, str], int],
    ) -> Item | InvalidRow:
        cols = self.mapping_columns

        def invalid(code: str, column: str, detail: str) -> InvalidRow:
            return InvalidRow(
                key=f"line:{line}",
                line=line,
                row=row,
                error=ItemError(status="invalid", code=code, field=column, detail=detail),
            )

        # Which attempt.
        aid = row.get(cols["attempt"], "").strip()
        info: _AttemptInfo | None
        if aid:
            info = attempts.get(aid)
            if info is None:
                return invalid("not-found", cols["attempt"], f"no attempt with id {aid!r}")
        else:
            cand_value = row.get(cols["candidate"], "").strip()
            if not cand_value:
                return invalid(
                    "required", cols["attempt"], "give an attempt id or a candidate and exam"
                )
            exam_id = row.get(cols["exam"], "").strip() or default_exam
            if not exam_id:
                return invalid("required", cols["exam"], "which exam? (no exam given)")
            exam_or_why = self._exams.get(exam_id)
            if not isinstance(exam_or_why, Resource):
                why = exam_or_why or f"no exam with id or name {exam_id!r}"
                return invalid("not-found", cols["exam"], why)
            cand = self._user_id(cand_value, external=True)
            if cand is None:
                return invalid("not-found", cols["candidate"], f"no user {cand_value!r}")
            found = by_exam.get(exam_id, {}).get(cand, [])
            if self.spec.statuses and len(found) > 1:
                found = [f for f in found if f.status in self.spec.statuses] or found
            if not found:
                return invalid(
                    "not-found",
                    cols["candidate"],
                    f"{cand_value} has no attempt in exam {exam_id}",
                )
            if len(found) > 1:
                return invalid(
                    "ambiguous",
                    cols["candidate"],
                    f"{cand_value} has {len(found)} attempts in exam {exam_id} "
                    f"({', '.join(f.id for f in found)}); give the attempt id",
                )
            info = found[0]
        if info.id not in counted:
            counted.add(info.id)
            load.update(info.markers or ())
            self._mapping_before.update(info.markers or ())
        # Which marker.
        marker_value = row.get(cols["marker"], "").strip()
        if not marker_value:
            return invalid("required", cols["marker"], "marker is required")
        mid = self._user_id(marker_value)
        if mid is None:
            return invalid("not-found", cols["marker"], f"no user {marker_value!r}")
        label = self._labels.get(mid, marker_value)
        key = f"attempt:{info.id}:{self.role.name}:{mid}"
        earlier = seen.get((info.id, mid))
        if earlier is not None:
            return invalid(
                "duplicate", cols["marker"], f"same attempt and marker as line {earlier}"
            )
        seen[(info.id, mid)] = line
        payload: dict[str, Any] = {"attempt": info.id, "markers": []}
        current = info.markers or set()
        if not self.assign:
            if mid in current:
                payload["markers"] = [mid]
            return Item(key=key, line=line, row=row, payload=payload)
        exam = await self._exam(client, info.exam)
        problem = self._exam_problem(exam)
        if problem is not None:
            return invalid("exam", cols["attempt"] if aid else cols["exam"], problem)
        pool = await self._pool(client, exam)
        if mid not in pool.members:
            return invalid(
                "not-in-pool",
                cols["marker"],
                f"{label} is not in the {self.role.pool} pool of exam {exam.id} "
                f"({pool.describe()}); the server refuses markers outside it",
            )
        if mid == info.candidate:
            return invalid(
                "own-attempt", cols["marker"], f"{label} is the candidate of this attempt"
            )
        if (mid, info.candidate) in exclusions:
            who = self._labels.get(info.candidate, info.candidate)
            return invalid("excluded", cols["marker"], f"{label} is excluded for candidate {who}")
        if mid in current:
            return Item(key=key, line=line, row=row, payload=payload)
        cap = self.spec.max_per_marker
        if cap is not None and load[mid] >= cap:
            return invalid(
                "max-per-marker",
                cols["marker"],
                f"{label} already has {load[mid]} attempts (max_per_marker {cap})",
            )
        load[mid] += 1
        payload["markers"] = [mid]
        return Item(key=key, line=line, row=row, payload=payload)

    # -- the Task protocol -------------------------------------------------------------------

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        for entry in self._prepared:
            yield entry

    def _detail(self, item: Item) -> str:
        markers: Sequence[str] = item.payload.get("markers", [])
        return ", ".join(self._labels.get(m, m) for m in markers)

    async def plan(self, item: Item, client: SynapClient) -> PlanRow:
        markers: Sequence[str] = item.payload.get("markers", [])
        action = ("assign" if self.assign else "unassign") if markers else "unchanged"
        return PlanRow(
            key=item.key,
            line=item.line,
            action=action,
            detail=self._detail(item),
            remote_id=str(item.payload.get("attempt", "")),
        )

    async def execute(self, item: Item, client: SynapClient) -> Outcome:
        aid = str(item.payload["attempt"])
        markers: list[str] = list(item.payload.get("markers", []))
        if not markers:
            return Outcome(status="done", action="unchanged", remote_id=aid)
        body = [ResourceIdentifier(type=TYPE_USER, id=m) for m in markers]
        p = self.profile
        if self.assign:
            await client.add_members(p.attempts_path, aid, self.role_path, body)
        else:
            await client.remove_members(p.attempts_path, aid, self.role_path, body)
        self._applied.update(markers)
        return Outcome(
            status="done", action="assigned" if self.assign else "unassigned", remote_id=aid
        )

    async def reconcile(self, item: Item, client: SynapClient) -> Outcome | None:
        aid = str(item.payload["attempt"])
        markers: list[str] = list(item.payload.get("markers", []))
        if not markers:
            return Outcome(status="done", action="unchanged", remote_id=aid)
        current = {
            r.id for r in await client.get_members(self.profile.attempts_path, aid, self.role_path)
        }
        took = all(m in current for m in markers) if self.assign else not current & set(markers)
        if not took:
            return None
        self._applied.update(markers)
        return Outcome(
            status="done", action="assigned" if self.assign else "unassigned", remote_id=aid
        )

    def column_for_pointer(self, pointer: str) -> str:
        """A relationship body's ``/data/<n>`` is the marker: its column in the input."""
        if pointer.startswith("/data"):
            return self.mapping_columns["marker"] if self._mapping is not None else "markers"
        return ""

    def summary(self) -> dict[str, Any]:
        """Per-marker counts: load before, after (as planned) and changed in this run."""
        counts = Counter(
            "invalid"
            if isinstance(e, InvalidRow)
            else ("changed" if e.payload.get("markers") else "unchanged")
            for e in self._prepared
        )
        applied = sum(self._applied.values())
        out: dict[str, Any] = {
            "role": self.role.name,
            "action": self.spec.action,
            "strategy": self.spec.strategy or ("mapping" if self._mapping is not None else "all"),
            "unsatisfied": len(self._unsatisfied),
            "applied": applied,
        }
        if self._loads:
            before = [m.before for m in self._loads]
            after = [m.after for m in self._loads]
            out["load"] = f"{min(after)}-{max(after)} per marker (was {min(before)}-{max(before)})"
        out["items"] = dict(counts)
        out["markers"] = [
            {
                "marker": m.label,
                "id": m.marker_id,
                "before": m.before,
                "after": m.after,
                "applied": self._applied[m.marker_id],
            }
            for m in self._loads
        ]
        out["notes"] = list(self._notes)
        return out

    # -- plan output ---------------------------------------------------------------------------

    @property
    def loads(self) -> list[MarkerLoad]:
        return list(self._loads)

    @property
    def unsatisfied(self) -> list[tuple[str, int, str]]:
        return list(self._unsatisfied)

    @property
    def notes(self) -> list[str]:
        return list(self._notes)

    def render_plan(self) -> RenderableType:
        """What ``plan`` prints: the load table, the rows that cannot be satisfied, the notes."""
        parts: list[RenderableType] = [
            _allocation_renderable(self._loads, self._unsatisfied, role=self.role.name)
        ]
        parts.extend(Text(f"note: {n}") for n in self._notes)
        return Group(*parts)

    def render_table(self) -> str:
        return render_allocation_table(self._loads, self._unsatisfied, role=self.role.name)


async def _gather(fn: Callable[[Any], Awaitable[None]], values: Sequence[Any]) -> None:
    """Run ``fn`` over ``values`` with bounded parallelism (reads only)."""
    if not values:
        return
    limiter = anyio.CapacityLimiter(_PARALLEL_READS)

    async def run(v: Any) -> None:
        async with limiter:
            await fn(v)

    async with anyio.create_task_group() as tg:
        for v in values:
            tg.start_soon(run, v)
