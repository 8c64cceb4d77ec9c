"""What an assign-markers job reads before it decides anything: the exam scope on the server.

:class:`ExamScope` reads, for one marker role, the exams (by id or exact name), each exam's
pool group and its members, the attempts with the markers already on them, the exclusions and
the markers CSV, and looks users up by email or externalId. Every answer is cached for the
task's lifetime, so the mapping checks (:mod:`.assign_mapping`) and the allocation
(:mod:`.assign_markers`) ask freely. It only reads; the task writes.

Side CSVs (exclusions, markers, mapping) are read whole into a :class:`SideTable`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ..allocation import id_sort_key
from ..errors import NotFound
from ..jsonapi import UNSET
from ..profile import ApiProfile
from ..resources import Attempt, Exam, MarkerRole, User, UserGroup
from ..sources import CsvRow, CsvSource, is_email, normalize_email

if TYPE_CHECKING:
    from ..client import SynapClient

__all__ = ["AttemptInfo", "ExamScope", "Pool", "SideTable", "gather_reads"]

#: Above this many users to resolve, one directory listing replaces per-value lookups.
_LISTING_THRESHOLD = 200
_PARALLEL_READS = 16


class SideTable:
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


class AttemptInfo:
    """What the task needs of an attempt: its exam, candidate, the role's markers and status."""

    __slots__ = ("candidate", "exam", "id", "markers", "status")

    def __init__(self, id: str, exam: str, candidate: str, markers: set[str] | None, status: str):
        self.id = id
        self.exam = exam
        self.candidate = candidate
        self.markers = markers
        self.status = status

    def whose(self) -> dict[str, str]:
        """The exam and candidate ids, kept in the attempt's item for the plan's names."""
        return {"exam": self.exam, "candidate": self.candidate}


class Pool:
    """An exam's pool group for the role: its id, name and members (id -> email)."""

    __slots__ = ("id", "members", "name")

    def __init__(self, id: str, name: str, members: dict[str, str]) -> None:
        self.id = id
        self.name = name
        self.members = members

    def describe(self) -> str:
        return f"group {self.id} ({self.name!r})" if self.name else f"group {self.id}"


class ExamScope:
    """The server's side of one role's assignment, read once and cached (see the module doc).

    ``labels`` maps every user id seen to its email, for messages and the plan's tables.
    ``exclusions`` and ``markers`` are the job's side CSVs (or None), read by
    :meth:`read_exclusions` and :meth:`allowed_markers`.
    """

    def __init__(
        self,
        profile: ApiProfile,
        role: MarkerRole,
        role_path: str,
        *,
        exclusions: SideTable | None = None,
        exclusion_columns: Mapping[str, str] | None = None,
        markers: SideTable | None = None,
        marker_column: str = "",
    ) -> None:
        self.profile = profile
        self.role = role
        self.role_path = role_path
        self.exclusions = exclusions
        self.exclusion_columns = dict(exclusion_columns or {})
        self.markers = markers
        self.marker_column = marker_column
        self.labels: dict[str, str] = {}
        #: Exam id -> name, for every exam found (plans and result files name exams).
        self.exam_names: dict[str, str] = {}
        self._exams: dict[str, Exam | str] = {}
        self._exam_list: list[Exam] | None = None
        self._pools: dict[str, Pool] = {}
        self._users_by_email: dict[str, str | None] = {}
        self._users_by_external: dict[str, str | None] = {}

    # -- exams and pools ---------------------------------------------------------------------

    async def find_exam(self, client: SynapClient, ref: str) -> Exam | str:
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
        if not isinstance(result, str):
            self.exam_names[result.id] = (result.attributes.name or "").strip()
        return result

    def cached_exam(self, ref: str) -> Exam | str | None:
        """What :meth:`find_exam` answered for ``ref`` (None when it was not asked)."""
        return self._exams.get(ref)

    async def exam(self, client: SynapClient, exam_id: str) -> Exam:
        """An exam known to exist (its id came from the server)."""
        found = await self.find_exam(client, exam_id)
        if isinstance(found, str):
            raise LookupError(found)
        return found

    def exam_problem(self, exam: Exam) -> str | None:
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

    async def pool(self, client: SynapClient, exam: Exam) -> Pool:
        """The exam's pool group for the role with its members (the exam has one)."""
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
            pool = Pool(gid, name, members)
            self._pools[gid] = pool
        return pool

    # -- users -------------------------------------------------------------------------------

    def _remember(self, user: User) -> None:
        email = user.attributes.emailAddress
        if email:
            self._users_by_email[normalize_email(email)] = user.id
            self.labels.setdefault(user.id, email)
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
            v = normalize_email(raw) if by_email else raw.strip()
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

            await gather_reads(one, todo)
        cache = self._users_by_email if by_email else self._users_by_external
        for v in todo:
            cache.setdefault(v, None)

    def named(self, user_id: str) -> str:
        """A user by email beside the id: ``ada@example.edu (u1)`` (the id alone if unknown)."""
        label = self.labels.get(user_id, "")
        return f"{label} ({user_id})" if label and label != user_id else user_id

    def attempt_label(self, attempt_id: str, exam_id: str, candidate_id: str) -> str:
        """An attempt as a person reads it: ``attempt a1, exam "Maths" (e1), candidate
        ada@example.edu (u1)`` (what is not known is left out)."""
        name = self.exam_names.get(exam_id, "")
        exam = f'exam "{name}" ({exam_id})' if name else f"exam {exam_id}" if exam_id else ""
        who = f"candidate {self.named(candidate_id)}" if candidate_id else ""
        return ", ".join(t for t in (f"attempt {attempt_id}", exam, who) if t)

    async def name_exams(self, client: SynapClient, ids: Iterable[str]) -> None:
        """Learn the name of each exam id not seen yet (one read each: exams are few)."""
        for exam_id in dict.fromkeys(i for i in ids if i and i not in self.exam_names):
            await self.find_exam(client, exam_id)

    async def name_users(self, client: SynapClient, ids: Iterable[str]) -> None:
        """Learn the email of each user id not seen yet (candidates, for plans and result
        files): one read each when few, one listing of the directory when many."""
        p = self.profile
        todo = list(dict.fromkeys(i for i in ids if i and i not in self.labels))
        if not todo:
            return
        if len(todo) > _LISTING_THRESHOLD:
            listing = client.paginate(p.users_path, None, User, page_size=p.max_page_size)
            async for user in listing:
                self._remember(user)
            return

        async def one(uid: str) -> None:
            try:
                self._remember(await client.get(p.users_path, uid, User))
            except NotFound:
                pass

        await gather_reads(one, todo)

    async def resolve_values(
        self, client: SynapClient, values: Iterable[str], *, external: bool = False
    ) -> None:
        """Resolve the emails among ``values`` (with ``external``, the rest as externalIds)."""
        values = [v.strip() for v in values if v.strip()]
        await self._resolve_users(client, [v for v in values if is_email(v)], by_email=True)
        if external:
            others = [v for v in values if not is_email(v)]
            await self._resolve_users(client, others, by_email=False)

    def user_id(self, value: str, *, external: bool = False) -> str | None:
        """The id for an email (None when unknown), an externalId (with ``external``) or an id.

        Call after :meth:`resolve_values`. Ids are taken as given: an unknown id simply never
        matches an attempt or a pool member, which the caller reports.
        """
        v = value.strip()
        if not v:
            return None
        if is_email(v):
            return self._users_by_email.get(normalize_email(v))
        if external:
            found = self._users_by_external.get(v)
            if found is not None:
                return found
        return v

    # -- attempts ----------------------------------------------------------------------------

    def attempt_info(self, attempt: Attempt) -> AttemptInfo:
        rel = attempt.relationships.get(self.role.relationship)
        markers: set[str] | None = None
        if rel is not None and rel.data is not UNSET:
            markers = set(rel.ids())
        a = attempt.attributes
        return AttemptInfo(
            attempt.id,
            attempt.rel_id(self.profile.attempt_exam_relationship) or "",
            attempt.rel_id(self.profile.attempt_user_relationship) or "",
            markers,
            a.examStatus or a.status or "",
        )

    async def fill_markers(self, client: SynapClient, infos: Iterable[AttemptInfo]) -> None:
        """Read the role's markers of attempts whose listing did not carry the relationship."""
        missing = [i for i in infos if i.markers is None]

        async def one(info: AttemptInfo) -> None:
            ids = await client.get_members(self.profile.attempts_path, info.id, self.role_path)
            info.markers = {r.id for r in ids}

        await gather_reads(one, missing)

    async def attempts_of(
        self, client: SynapClient, exam_id: str, statuses: Sequence[str]
    ) -> list[AttemptInfo]:
        """The exam's attempts in ``statuses`` (all when empty), in id order."""
        p = self.profile
        out: dict[str, AttemptInfo] = {}
        filters: list[dict[str, str]] = [{p.filter_status: s} for s in statuses] or [{}]
        for extra in filters:
            params = {p.filter_exam: exam_id, **extra}
            listing = client.paginate(
                p.attempts_path, params, Attempt, page_size=p.max_page_size, parallel=4
            )
            async for attempt in listing:
                info = self.attempt_info(attempt)
                if statuses and info.status and info.status not in statuses:
                    continue
                info.exam = info.exam or exam_id
                out[info.id] = info
        return [out[k] for k in sorted(out, key=id_sort_key)]

    # -- the side lists ----------------------------------------------------------------------

    async def read_exclusions(self, client: SynapClient, notes: list[str]) -> set[tuple[str, str]]:
        """The (marker id, candidate id) pairs of the exclusions CSV; what is skipped, in notes."""
        if self.exclusions is None:
            return set()
        ec = self.exclusion_columns
        rows = self.exclusions.rows
        for bad in self.exclusions.bad:
            notes.append(f"{self.exclusions.name}:{bad.line}: {bad.problem}; row ignored")
        await self.resolve_values(client, [r[ec["marker"]] for _, r in rows])
        await self.resolve_values(client, [r[ec["candidate"]] for _, r in rows], external=True)
        pairs: set[tuple[str, str]] = set()
        for line, row in rows:
            marker = self.user_id(row[ec["marker"]])
            cand = self.user_id(row[ec["candidate"]], external=True)
            if marker is None or cand is None:
                unknown = row[ec["marker"]] if marker is None else row[ec["candidate"]]
                notes.append(
                    f"{self.exclusions.name}:{line}: no user {unknown.strip()!r}; exclusion ignored"
                )
                continue
            pairs.add((marker, cand))
        return pairs

    async def allowed_markers(self, client: SynapClient, notes: list[str]) -> dict[str, int] | None:
        """The markers CSV as ids (-> line), or None when every pool member may mark."""
        if self.markers is None:
            return None
        col = self.marker_column
        for bad in self.markers.bad:
            notes.append(f"{self.markers.name}:{bad.line}: {bad.problem}; row ignored")
        await self.resolve_values(client, [r[col] for _, r in self.markers.rows])
        out: dict[str, int] = {}
        for line, row in self.markers.rows:
            mid = self.user_id(row[col])
            if mid is None:
                notes.append(f"{self.markers.name}:{line}: no user {row[col].strip()!r}; skipped")
                continue
            out.setdefault(mid, line)
        return out


async def gather_reads(fn: Callable[[Any], Awaitable[None]], values: Sequence[Any]) -> None:
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
