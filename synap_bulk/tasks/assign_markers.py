"""``kind: assign-markers``: give every attempt its markers for one role, fairly and once.

Two inputs:

- a **strategy** (``round-robin``, ``balanced``, ``random``) over the attempts of the job's exams
  in the given statuses: :meth:`AssignMarkersTask.prepare` reads the exams, their pool group for
  the role, the pool's members, the attempts with the markers already on them, the exclusions,
  and computes the allocation once (:func:`synap_bulk.allocation.allocate`), so ``plan`` shows
  and ``run`` applies exactly the same allocation. One item per attempt. The allocation is kept
  in the job's ledger before any item runs, and a resume finishes that stored allocation rather
  than computing a new one from the server's load, which by then counts the markers the
  interrupted run already assigned (see :class:`_StoredAllocation`).
- a **mapping** CSV (attempt id, or candidate email/externalId + exam, -> marker email or id):
  one item per row, checked against the pool, the exclusions and ``max_per_marker`` before any
  request, so the failures file lists the rows to fix with their line numbers.

``action: unassign`` removes the mapped pairs, or, without a mapping, every marker of the role
from the attempts in scope (only those of the ``markers`` CSV when one is given).

Relationship POST/DELETE are sets on the server (adding a member twice changes nothing), so the
task is *idempotent*: a resumed or repeated run sends only what is still missing.

The task composes two helpers: :class:`~.assign_scope.ExamScope` reads (and caches) the exams,
pools, attempts, exclusions and users from the server; :mod:`.assign_mapping` reads and checks
the mapping CSV. This module decides the items, runs them and reports the allocation.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import msgspec
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
from ..errors import SpecError
from ..guards import Destructive
from ..images import ImageBook, NullImages
from ..items import CsvStyle, InvalidRow, Item, ItemError, Outcome, PlanRow, Safety
from ..jsonapi import RelationshipDocument, ResourceIdentifier
from ..profile import ApiProfile
from ..resources import MARKER_ROLES, TYPE_USER, Exam, MarkerRole
from .assign_images import marker_images, unassignments
from .assign_mapping import (
    MAPPING_DEFAULTS,
    check_mapping,
    check_mapping_columns,
    check_mapping_offline,
    mapping_result_columns,
    name_mapping_rows,
)
from .assign_scope import AttemptInfo, ExamScope, Pool, SideTable

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..spec import AssignMarkersSpec, JobFile
    from .base import CursorStore

__all__ = [
    "AssignMarkersTask",
    "MarkerLoad",
    "render_allocation_table",
]

#: Columns of the success/failures files in strategy mode (one row per attempt).
STRATEGY_COLUMNS = [
    "attempt",
    "exam",
    "exam_name",
    "candidate",
    "candidate_email",
    "markers",
    "marker_ids",
]
_EXCLUSION_DEFAULTS = {"marker": "marker", "candidate": "candidate"}
_MARKER_COLUMNS = ("marker", "email", "emailAddress", "id", "marker_id")
#: Rows of the "cannot be satisfied" table printed by ``plan`` (all are in plan.csv).
_MAX_SHORT_ROWS = 50
#: The cursor (in the job's ledger) holding a strategy run's allocation, per role.
ALLOCATION_CURSOR = "assign-markers:allocation:{role}"

log = logging.getLogger(__name__)


class _Fingerprint(Struct, frozen=True, kw_only=True):
    """What an allocation was computed from: when any of it changes, the stored one is stale."""

    strategy: str
    seed: int
    per_attempt: int
    max_per_marker: int | None
    exams: list[str]
    statuses: list[str]
    #: The markers that may be chosen, and the role's pool members of the exams, in id order.
    candidates: list[str]
    pool: list[str]
    #: The attempts in scope, in id order.
    attempts: list[str]


class _StoredAllocation(Struct, frozen=True, kw_only=True):
    """A strategy run's allocation as kept in the ledger: a resume finishes exactly this one."""

    version: int = 1
    fingerprint: _Fingerprint
    allocation: Allocation


class MarkerLoad(Struct, frozen=True, kw_only=True):
    """One line of the allocation table: a marker's load before and after the run."""

    marker_id: str
    label: str
    before: int
    after: int
    in_pool: bool = True


def _load_stored(value: str | None) -> _StoredAllocation | None:
    """The stored allocation, None when there is none (or it is unreadable: computed anew)."""
    if not value:
        return None
    try:
        return msgspec.json.decode(value, type=_StoredAllocation)
    except msgspec.DecodeError:  # ValidationError is one too
        log.warning("assign-markers: the stored allocation is unreadable; computing it anew")
        return None


def _columns(given: Mapping[str, str] | None, defaults: Mapping[str, str]) -> dict[str, str]:
    """The job file's column names over the defaults (spec.py checks the keys)."""
    out = dict(defaults)
    out.update({k: v for k, v in (given or {}).items() if v})
    return out


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

    def __init__(self, spec: AssignMarkersSpec, job: JobFile, profile: ApiProfile) -> None:
        self.spec = spec
        self.job = job
        self.profile = profile
        if spec.role not in MARKER_ROLES:
            raise self._error(
                f"unknown role {spec.role!r} (expected one of {', '.join(MARKER_ROLES)})",
                "task.role",
            )
        # The attempt relationship and the exam's pool of a role are profile settings.
        rel = profile.marker_role_relationships.get(spec.role)
        pool = profile.marker_role_pools.get(spec.role)
        if rel is None or pool is None:
            raise self._error(
                f"the API profile has no marker_role_relationships/marker_role_pools entry for "
                f"{spec.role!r}",
                "task.role",
            )
        self.role: MarkerRole = MarkerRole(spec.role, rel, pool)
        role_path = profile.marker_role_paths.get(spec.role)
        if role_path is None:
            raise self._error(
                f"the API profile has no marker_role_paths entry for {spec.role!r}", "task.role"
            )
        self.role_path = role_path
        self._images: ImageBook = NullImages()
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
        self.mapping_columns = _columns(spec.mapping_columns, MAPPING_DEFAULTS)
        self.exclusion_columns = _columns(spec.exclusion_columns, _EXCLUSION_DEFAULTS)
        self._mapping = self._table("task.mapping", spec.mapping)
        self._exclusions = self._table("task.exclusions", spec.exclusions)
        self._markers_csv = self._table("task.markers", spec.markers)
        if self._mapping is not None:
            check_mapping_columns(self._mapping, self.mapping_columns, spec.exams)
        if self._exclusions is not None:
            ec = self.exclusion_columns
            self._exclusions.require([ec["marker"], ec["candidate"]])
        marker_column = ""
        if self._markers_csv is not None:
            marker_column = next(
                (c for c in _MARKER_COLUMNS if c in self._markers_csv.header),
                self._markers_csv.header[0],
            )
        #: The exams, pools, attempts and users on the server, read once and cached.
        self.scope = ExamScope(
            profile,
            self.role,
            role_path,
            exclusions=self._exclusions,
            exclusion_columns=self.exclusion_columns,
            markers=self._markers_csv,
            marker_column=marker_column,
        )
        self._labels = self.scope.labels
        # Filled by prepare().
        self._prepared: list[Item | InvalidRow] = []
        self._loads: list[MarkerLoad] = []
        self._unsatisfied: list[tuple[str, int, str]] = []
        self._notes: list[str] = []
        self._allocation: Allocation | None = None
        #: Where the allocation came from: computed, stored (a resume), or stored+recomputed.
        self._allocation_source = ""
        self._applied: Counter[str] = Counter()

    # -- job-file plumbing ----------------------------------------------------------------

    def _table(self, at: str, written: str | None) -> SideTable | None:
        return SideTable(self.job.input_file(at, written)) if written else None

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
            return mapping_result_columns(self._mapping.header)
        return list(STRATEGY_COLUMNS)

    @property
    def unit(self) -> str:
        """A mapping's items are its rows; by strategy (or unassigning all), attempts."""
        return "row" if self._mapping is not None else "attempt"

    @property
    def csv_style(self) -> CsvStyle:
        """Result files are plain comma-separated CSV without a BOM, whatever the inputs."""
        return CsvStyle()

    @property
    def allocation(self) -> Allocation | None:
        """The allocation computed by prepare() (strategy mode), for tests and reports."""
        return self._allocation

    # -- prepare ----------------------------------------------------------------------------

    async def prepare(self, client: SynapClient, memory: CursorStore) -> None:
        """Read the exams, pools, attempts and inputs, and decide every item's change.

        In strategy mode the allocation is kept in ``memory`` before any item is yielded, and
        one found there (a resume) is used as it is; see :meth:`_decide`."""
        self._prepared = []
        self._notes = []
        self._unsatisfied = []
        self._loads = []
        self._allocation_source = ""
        if self._mapping is not None:
            await self._prepare_mapping(client)
        else:
            await self._prepare_scope(client, memory)

    async def _scope_exams(self, client: SynapClient) -> list[tuple[Exam, Pool | None]]:
        out: list[tuple[Exam, Pool | None]] = []
        for i, exam_id in enumerate(self.spec.exams):
            at = f"task.exams[{i}]"
            exam = await self.scope.find_exam(client, str(exam_id))
            if isinstance(exam, str):
                raise self._error(exam, at)
            problem = self.scope.exam_problem(exam)
            if problem is not None and (self.assign or exam.attributes.status == "draft"):
                raise self._error(problem, at)
            pool = await self.scope.pool(client, exam) if problem is None else None
            out.append((exam, pool))
        return out

    async def _prepare_scope(self, client: SynapClient, memory: CursorStore) -> None:
        exams = await self._scope_exams(client)
        attempts: list[AttemptInfo] = []
        for exam, _pool in exams:
            attempts.extend(await self.scope.attempts_of(client, exam.id, self.spec.statuses))
        await self.scope.fill_markers(client, attempts)
        await self.scope.name_users(client, [a.candidate for a in attempts])
        attempts.sort(key=lambda a: id_sort_key(a.id))
        only = await self.scope.allowed_markers(client, self._notes)
        if self.assign:
            await self._allocate(client, memory, exams, attempts, only)
        else:
            self._unassign_all(attempts, only)

    async def _allocate(
        self,
        client: SynapClient,
        memory: CursorStore,
        exams: list[tuple[Exam, Pool | None]],
        attempts: list[AttemptInfo],
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
        exclusions = await self.scope.read_exclusions(client, self._notes)
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
        fingerprint = _Fingerprint(
            strategy=self.spec.strategy,
            seed=self.spec.seed,
            per_attempt=self.spec.per_attempt,
            max_per_marker=self.spec.max_per_marker,
            exams=[str(e.id) for e, _ in exams],
            statuses=list(self.spec.statuses),
            candidates=sorted(candidates, key=id_sort_key),
            pool=sorted(in_pool, key=id_sort_key),
            attempts=[a.id for a in attempts],
        )
        result = await self._decide(memory, fingerprint, attempts, slots, markers, exclusions)
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
            payload = {"attempt": a.id, "markers": new.get(a.id, []), **a.whose()}
            self._prepared.append(Item(key=key, row=row, payload=payload))
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

    async def _decide(
        self,
        memory: CursorStore,
        fingerprint: _Fingerprint,
        attempts: list[AttemptInfo],
        slots: list[AttemptSlot],
        markers: list[MarkerInfo],
        exclusions: set[tuple[str, str]],
    ) -> Allocation:
        """The allocation this run applies: the stored one when the job's inputs are unchanged.

        A first run computes it and keeps it in ``memory`` (durably, before any item runs). A
        resume with the same fingerprint takes the stored allocation as it is: recomputing would
        count the markers the interrupted run already assigned as existing load and, with
        ``balanced``, choose differently. When the attempts in scope (or the pool) changed, the
        attempts already in the stored allocation keep their markers and only the others are
        allocated now, counting the stored assignments not yet on the server as load."""
        cursor = ALLOCATION_CURSOR.format(role=self.role.name)
        stored = _load_stored(await memory.get_cursor(cursor))
        if stored is not None and stored.fingerprint == fingerprint:
            self._allocation_source = "stored"
            return stored.allocation
        assert self.spec.strategy is not None
        options: dict[str, Any] = {
            "strategy": self.spec.strategy,
            "per_attempt": self.spec.per_attempt,
            "max_per_marker": self.spec.max_per_marker,
            "exclusions": exclusions,
            "seed": self.spec.seed,
        }
        if stored is None:
            result = allocate(slots, markers, **options)
            self._allocation_source = "computed"
        else:
            result = self._complete(stored, fingerprint, attempts, slots, markers, options)
            self._allocation_source = "stored+recomputed"
        value = msgspec.json.encode(_StoredAllocation(fingerprint=fingerprint, allocation=result))
        await memory.set_cursor(cursor, value.decode())
        return result

    def _complete(
        self,
        stored: _StoredAllocation,
        fingerprint: _Fingerprint,
        attempts: list[AttemptInfo],
        slots: list[AttemptSlot],
        markers: list[MarkerInfo],
        options: dict[str, Any],
    ) -> Allocation:
        """The stored allocation for the attempts it covers, a new one for the attempts added."""
        old = stored.allocation
        known = set(stored.fingerprint.attempts)
        current = {a.id for a in attempts}
        added = [s for s in slots if s.attempt_id not in known]
        gone = known - current
        # Load: what is on the server now, plus what the stored allocation still has to add.
        on_server = {a.id: a.markers or set() for a in attempts}
        pending: Counter[str] = Counter(
            m for aid, m in old.assignments if aid in current and m not in on_server[aid]
        )
        fresh = allocate(
            added,
            [
                MarkerInfo(
                    marker_id=m.marker_id,
                    label=m.label,
                    current_load=m.current_load + pending[m.marker_id],
                    pool=m.pool,
                )
                for m in markers
            ],
            **options,
        )
        assignments = [(a, m) for a, m in old.assignments if a in current] + fresh.assignments
        unsatisfied = [u for u in old.unsatisfied if u.attempt_id in current] + fresh.unsatisfied
        before = {m.marker_id: old.load_before.get(m.marker_id, m.current_load) for m in markers}
        after = dict(before)
        for _, mid in assignments:
            after[mid] = after.get(mid, 0) + 1
        was = stored.fingerprint
        changed = [
            what
            for what, same in (
                ("the pool", was.pool == fingerprint.pool),
                ("the markers allowed", was.candidates == fingerprint.candidates),
            )
            if not same
        ]
        self._notes.append(
            "the job's scope changed since its allocation was stored "
            f"({len(added)} attempt(s) added, {len(gone)} gone"
            + (", " + ", ".join(changed) + " changed" if changed else "")
            + f"): the {len(current & known)} attempts already allocated keep their markers; "
            f"only the {len(added)} added were allocated now"
        )
        log.info("assign-markers: %s", self._notes[-1])
        return Allocation(
            assignments=assignments,
            unsatisfied=unsatisfied,
            load_before=before,
            load_after=after,
        )

    def _strategy_row(self, a: AttemptInfo, markers: Sequence[str]) -> dict[str, str]:
        """An attempt's line in the result files: ids, and beside them names and emails."""
        return {
            "attempt": a.id,
            "exam": a.exam,
            "exam_name": self.scope.exam_names.get(a.exam, ""),
            "candidate": a.candidate,
            "candidate_email": self._labels.get(a.candidate, ""),
            "markers": ";".join(self._labels.get(m, m) for m in markers),
            "marker_ids": ";".join(markers),
        }

    def _unassign_all(self, attempts: list[AttemptInfo], only: dict[str, int] | None) -> None:
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
                    payload={"attempt": a.id, "markers": gone, **a.whose()},
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
        checked = await check_mapping(
            client,
            self.scope,
            self._mapping,
            self.mapping_columns,
            self.spec,
            assign=self.assign,
            notes=self._notes,
        )
        found = [e.payload for e in checked.entries if isinstance(e, Item)]
        await self.scope.name_users(client, [str(p.get("candidate", "")) for p in found])
        await self.scope.name_exams(client, [str(p.get("exam", "")) for p in found])
        self._prepared = name_mapping_rows(checked.entries, self.scope)
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
        before = checked.before
        self._loads = sorted(
            (
                MarkerLoad(
                    marker_id=m,
                    label=self._labels.get(m, m),
                    before=before[m],
                    after=before[m] + sign * changed[m],
                )
                for m in set(before) | set(changed)
            ),
            key=lambda m: (m.label.lower(), m.marker_id),
        )

    # -- the Task protocol -------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """The attempts (or mapping rows) in scope, known once prepare() has read them."""
        return len(self._prepared) or None

    async def items(self) -> AsyncIterator[Item | InvalidRow]:
        for entry in self._prepared:
            yield entry

    async def check_rows(self) -> AsyncIterator[Item | InvalidRow]:
        """The mapping's rows, checked with no server; nothing by strategy (the attempts are
        read from the server)."""
        if self._mapping is None:
            return
        for entry in check_mapping_offline(self._mapping, self.mapping_columns, self.spec.exams):
            yield entry

    def _detail(self, item: Item) -> str:
        """The markers given (or taken), each by email beside its id; a mapping row with
        nothing to do says why."""
        markers: Sequence[str] = item.payload.get("markers", [])
        if not markers and item.payload.get("marker"):
            state = "already assigned" if self.assign else "not assigned"
            return f"{self.scope.named(str(item.payload['marker']))}: {state}"
        return ", ".join(self.scope.named(m) for m in markers)

    async def plan(self, item: Item, client: SynapClient) -> PlanRow:
        markers: Sequence[str] = item.payload.get("markers", [])
        action = ("assign" if self.assign else "unassign") if markers else "unchanged"
        return PlanRow(
            key=item.key,
            line=item.line,
            action=action,
            detail=self._detail(item),
            remote_id=str(item.payload.get("attempt", "")),
            label=self.scope.attempt_label(
                str(item.payload.get("attempt", "")),
                str(item.payload.get("exam", "")),
                str(item.payload.get("candidate", "")),
            ),
        )

    async def execute(self, item: Item, client: SynapClient) -> Outcome:
        aid = str(item.payload["attempt"])
        markers: list[str] = list(item.payload.get("markers", []))
        if not markers:
            return Outcome(status="done", action="unchanged", remote_id=aid)
        body = [ResourceIdentifier(type=TYPE_USER, id=m) for m in markers]
        p = self.profile
        if not isinstance(self._images, NullImages):  # undo needs what was there before
            found = await marker_images(client, p, aid, self.role_path, markers, assign=self.assign)
            await self._images.before(item.key, found)
        method = p.marker_assign_method if self.assign else p.marker_unassign_method
        path = f"{p.attempts_path}/{quote(aid, safe='')}/relationships/{self.role_path}"
        await client.request(method, path, body=RelationshipDocument(data=body), idempotent=True)
        self._applied.update(markers)
        return Outcome(
            status="done", action="assigned" if self.assign else "unassigned", remote_id=aid
        )

    async def destructive(self, client: SynapClient) -> Destructive:
        """For the guard (after prepare)."""
        return unassignments(self._prepared, assign=self.assign)

    def bind_images(self, book: ImageBook) -> None:
        """Where the writes' before-images go (the engine binds the run's ledger)."""
        self._images = book

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

    def absent_means_done(self, item: Item) -> str:
        return ""  # relationship writes have set semantics: a 404 is a missing attempt

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
        if self._allocation_source:
            out["allocation"] = self._allocation_source
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
                "in_pool": m.in_pool,
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
