"""The sandbox's in-memory portal: seeded deterministically, mutated only by the app's handlers.

The records (:mod:`.records`) cache their encoded resources until they change. All mutation
happens synchronously inside one handler (no ``await`` in between), so the event loop makes
every write atomic. With a state file (``SandboxConfig.state``) every change is also noted
(:meth:`Store.changed`) and written to the file's journal by :meth:`Store.commit` before the
answer leaves (:mod:`.persist`).
"""

from __future__ import annotations

import bisect
import gc
import itertools
import random
import string
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..resources import (
    TYPE_ATTEMPT,
    TYPE_ATTEMPT_TIMER_RESET,
    TYPE_BACKGROUND_JOB,
    TYPE_EXAM,
    TYPE_PORTAL,
    TYPE_USER,
    TYPE_USER_GROUP,
)
from .config import SHAPE_FIELDS, SandboxConfig
from .persist import SandboxStateError, StateFile, Tombstone, encode_changes, restore
from .records import (
    ATTEMPT_ROLE_RELATIONSHIPS,
    EXAM_POOL_RELATIONSHIPS,
    AttemptRec,
    DocRec,
    ExamRec,
    GroupRec,
    JobRec,
    PortalRec,
    TimerResetRec,
    UserRec,
    iso,
    parse_iso,
)

__all__ = [
    "ATTEMPT_ROLE_RELATIONSHIPS",
    "EXAM_POOL_RELATIONSHIPS",
    "AttemptRec",
    "ExamRec",
    "GroupRec",
    "JobRec",
    "PortalRec",
    "Store",
    "TimerResetRec",
    "UserRec",
    "iso",
    "parse_iso",
]


_ALPHABET = string.ascii_letters + string.digits

#: 2026-01-05T00:00:00Z: seeded timestamps fall in the weeks after it.
_EPOCH0 = 1767571200.0

#: (examStatus, weight) of seeded attempts of a published exam.
_STATUS_WEIGHTS = (
    ("enrolled", 15),
    ("notified", 10),
    ("inProgress", 15),
    ("submitted", 45),
    ("expired", 10),
    ("revoked", 5),
)

_FIRST = (
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko",
    "Liam", "Maya", "Nils", "Olu", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Viktor",
    "Wen", "Xavi", "Yara", "Zoe",
)  # fmt: skip
_LAST = (
    "Abara", "Brennan", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito",
    "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Okafor", "Petrov", "Quispe", "Rossi",
    "Silva", "Tanaka", "Usman", "Varga", "Weber", "Xu", "Yilmaz", "Zhang",
)  # fmt: skip


class Store:
    """The seeded portal: users, groups, exams, attempts, timer resets, export jobs.

    Lookups that the handlers need on the hot path are dict indexes (email, externalId, attempts
    by exam and by user); collections keep insertion order, which is the default list order.
    """

    def __init__(
        self,
        config: SandboxConfig,
        wall: Callable[[], float] = time.time,
        *,
        state_file: StateFile | None = None,
        reseed: bool = False,
    ) -> None:
        """Seed the portal from ``config``, or load it from its state file.

        With ``config.state`` set (or an open ``state_file`` given) the data comes from that
        file when it holds a snapshot (unless ``reseed``), else from seeding; either way the file
        is compacted into a fresh snapshot before the store is used, and every later change is
        journaled by :meth:`commit`. A loaded file's shape (seed, users, ...) wins over
        ``config``'s: :attr:`config` then carries the file's shape.
        """
        self.config = config
        self.wall = wall
        self._rng = random.Random(f"sandbox-ids:{config.seed}")
        self._used_ids: set[str] = set()
        #: ids of deleted records: never handed out again, even after a reload
        self.retired: set[str] = set()
        #: the shape fields the data was seeded with (a state file's, when loaded from one)
        self.shape: dict[str, int] = {name: getattr(config, name) for name in sorted(SHAPE_FIELDS)}
        self.users: dict[str, UserRec] = {}
        self.by_email: dict[str, str] = {}
        self.by_external_id: dict[str, str] = {}
        self.groups: dict[str, GroupRec] = {}
        self.exams: dict[str, ExamRec] = {}
        self.attempts: dict[str, AttemptRec] = {}
        self.attempts_by_exam: dict[str, list[AttemptRec]] = {}
        #: (exam id, sort) -> (the exam's list, its length then, that list sorted): an export
        #: asks for the same sorted exam page after page; its list only grows (appended), and
        #: the cached sort keys (id, createdAt) never change, so a length check keeps it exact.
        self.sorted_attempts: dict[
            tuple[str, str], tuple[list[AttemptRec], int, list[AttemptRec]]
        ] = {}
        self.attempts_by_user: dict[str, list[AttemptRec]] = {}
        self.timer_resets: dict[str, TimerResetRec] = {}
        self.jobs: dict[str, JobRec] = {}
        #: attempt locks, overrides and marking entries (``attempt_ops.py``), by id
        self.docs: dict[str, DocRec] = {}
        self._user_list: list[UserRec] | None = None
        self._group_list: list[GroupRec] | None = None
        self._attempt_list: list[AttemptRec] | None = None
        self.portal = PortalRec("", "Sandbox Academy", "sandbox")
        self.admin_id = ""
        self.default_groups: dict[str, str] = {}  # defaultGroupType -> group id
        self.marker_ids: list[str] = []
        self.student_ids: list[str] = []
        #: changes not yet journaled (None without a state file): record id -> the record or
        #: a Tombstone, (group id, user id) -> joined at (None: left); in the order they happened
        self._dirty: dict[str | tuple[str, str], Any] | None = None
        opened = state_file is None and config.state is not None
        if state_file is None and config.state is not None:
            state_file = StateFile(config.state)
        self.state_file = state_file
        # Seeding allocates millions of objects that all live on: the cyclic GC's passes over
        # them would only cost time (half of a big seed), so it pauses meanwhile.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            loaded = state_file.read() if state_file is not None and not reseed else None
            if state_file is not None and loaded is not None:
                restore(self, state_file, *loaded)  # the file's shape replaces the config's
            else:
                self.portal.id = self.new_id()
                self._seed()
            if state_file is not None:
                state_file.write_snapshot(self)
                self._dirty = {}
        except BaseException:
            if opened and state_file is not None:
                state_file.close()
            raise
        finally:
            if gc_was_enabled:
                gc.enable()

    # ----------------------------------------------------------------- persistence

    def changed(
        self, rec: UserRec | GroupRec | AttemptRec | TimerResetRec | JobRec | DocRec
    ) -> None:
        """Note that ``rec`` is new or changed: :meth:`commit` journals its whole state."""
        dirty = self._dirty
        if dirty is not None and rec.id not in dirty:
            dirty[rec.id] = rec

    def _gone(self, kind: str, id_: str) -> None:
        self.retired.add(id_)
        if self._dirty is not None:
            self._dirty[id_] = Tombstone(kind, id_)

    def _membership(self, group_id: str, user_id: str, at: float | None) -> None:
        dirty = self._dirty
        if dirty is not None:
            key = (group_id, user_id)
            dirty.pop(key, None)  # the latest change goes last: the journal keeps their order
            dirty[key] = at

    def commit(self) -> None:
        """Journal every change since the last commit and flush it to the OS (a no-op without a
        state file). The app calls it after each handler, before the answer leaves; test code
        that changes the store directly calls it to make its changes durable."""
        dirty = self._dirty
        if dirty:
            assert self.state_file is not None
            state_file = self.state_file
            state_file.append(encode_changes(dirty))
            dirty.clear()
            if state_file.wants_compaction():
                try:
                    state_file.write_snapshot(self)
                except SandboxStateError:
                    if not state_file.is_open:
                        raise  # the journal is unusable: later writes must fail
                    state_file.postpone_compaction()  # the journal still holds every change

    def close(self) -> None:
        """Commit, fold the journal into a fresh snapshot and release the state file."""
        if self.state_file is not None and self.state_file.is_open:
            self.commit()
            if self.state_file.journal_bytes:
                self.state_file.write_snapshot(self)
            self.state_file.close()

    # ----------------------------------------------------------------- ids and lists

    def new_id(self) -> str:
        """A fresh 10-character alphanumeric id (like Synap's objectIds), deterministic per seed.

        The sequence is part of the seed's contract (demo files name seeded ids): keep it.
        """
        rnd = self._rng.random
        alphabet = _ALPHABET
        while True:
            # Same draws as ``"".join(rng.choices(_ALPHABET, k=10))``, without its overhead.
            candidate = "".join([alphabet[int(rnd() * 62)] for _ in range(10)])
            if candidate not in self._used_ids:
                self._used_ids.add(candidate)
                return candidate

    def user_list(self) -> list[UserRec]:
        if self._user_list is None:
            self._user_list = list(self.users.values())
        return self._user_list

    def group_list(self) -> list[GroupRec]:
        if self._group_list is None:
            self._group_list = list(self.groups.values())
        return self._group_list

    def attempt_list(self) -> list[AttemptRec]:
        if self._attempt_list is None:
            self._attempt_list = list(self.attempts.values())
        return self._attempt_list

    # ----------------------------------------------------------------- seeding

    def _seed(self) -> None:
        cfg = self.config
        rng = random.Random(f"sandbox-data:{cfg.seed}")
        t = _EPOCH0

        def group(name: str, **kw: Any) -> GroupRec:
            g = GroupRec(self.new_id(), name, t, **kw)
            self.groups[g.id] = g
            return g

        students = group("Students", default_type="student", description="Default students")
        educators = group("Educators", default_type="educator", description="Default educators")
        admins = group("Administrators", default_type="admin", description="Administrators")
        self.default_groups = {"student": students.id, "educator": educators.id}
        self.default_groups["admin"] = admins.id
        cohorts = [
            group(f"Cohort {i + 1:02d}", description="Candidates") for i in range(cfg.groups)
        ]
        pool_names = {
            "markers": "Markers pool",
            "moderatingMarkers": "Moderating markers pool",
            "escalatingMarkers": "Escalating markers pool",
            "auditingMarkers": "Auditing markers pool",
            "backReadingMarkers": "Back-reading markers pool",
        }
        pools = {rel: group(pool_names[rel], internal=True) for rel in EXAM_POOL_RELATIONSHIPS}

        admin = UserRec(self.new_id(), "Sandbox Admin", "admin@sandbox.example", None, "admin", t)
        self._insert_user(admin)
        self._join(admins, admin, t)
        self.admin_id = admin.id

        # Markers: marker i is in pool k when i % (k + 1) == 0, so marker 0 is in every pool
        # and every pool is non-empty.
        for i in range(cfg.markers):
            first, last = _FIRST[i % len(_FIRST)], _LAST[(i * 7 + 3) % len(_LAST)]
            at = t + 60.0 * (i + 1)
            m = UserRec(
                self.new_id(),
                f"{first} {last}",
                f"marker{i + 1:04d}@sandbox.example",
                f"M{i + 1:05d}",
                "educator",
                at,
            )
            self._insert_user(m)
            self._join(educators, m, at)
            for k, rel in enumerate(EXAM_POOL_RELATIONSHIPS):
                if i % (k + 1) == 0:
                    self._join(pools[rel], m, at)
            self.marker_ids.append(m.id)

        for i in range(cfg.users):
            first = _FIRST[rng.randrange(len(_FIRST))]
            last = _LAST[rng.randrange(len(_LAST))]
            at = t + 3600.0 + 30.0 * i + rng.random() * 30.0
            s = UserRec(
                self.new_id(),
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}.{i + 1}@students.example",
                f"S{i + 1:06d}",
                "student",
                at,
            )
            self._insert_user(s)
            self._join(students, s, at)
            self._join(cohorts[i % len(cohorts)], s, at)
            self.student_ids.append(s.id)

        statuses = [s for s, _ in _STATUS_WEIGHTS]
        cumulative = list(itertools.accumulate(w for _, w in _STATUS_WEIGHTS))
        total_weight = cumulative[-1]
        exam_t = t + 86400.0 * 7
        for e in range(cfg.exams):
            draft = cfg.exams >= 2 and e == cfg.exams - 1
            cohort = cohorts[e % len(cohorts)]
            exam = ExamRec(
                self.new_id(),
                f"Sandbox Exam {e + 1}",
                "draft" if draft else "published",
                cohort.id,
                {rel: pools[rel].id for rel in EXAM_POOL_RELATIONSHIPS},
                exam_t + 3600.0 * e,
            )
            self.exams[exam.id] = exam
            self.attempts_by_exam[exam.id] = []
            candidates = list(cohort.members) or self.student_ids
            if not candidates:
                continue
            n = len(candidates)
            for j in range(cfg.attempts_per_exam):
                uid = candidates[j % n]
                created = exam.created_at + 60.0 + j * 2.0 + rng.random()
                a = AttemptRec(self.new_id(), exam.id, uid, exam.name, created)
                a.resit_count = j // n
                if not draft:
                    status = statuses[bisect.bisect(cumulative, rng.random() * total_weight)]
                    a.exam_status = status
                    if status in ("inProgress", "submitted", "expired"):
                        a.time_started = created + 86400.0 + rng.random() * 3600.0
                    if status == "submitted":
                        assert a.time_started is not None
                        a.time_completed = a.time_started + 1800.0 + rng.random() * 3600.0
                        score = round(rng.random() * 100.0, 1)
                        a.score = score
                        a.marks = {
                            "points": round(score / 2.0, 1),
                            "maxPoints": 50.0,
                            "credits": round(score / 2.0, 1),
                            "penalties": 0.0,
                        }
                    last_change = a.time_completed or a.time_started or created
                    a.updated_at = last_change + rng.random() * 600.0
                self._insert_attempt(a)

    # ----------------------------------------------------------------- mutation helpers

    def _insert_user(self, u: UserRec) -> None:
        self.users[u.id] = u
        self.by_email[u.email.lower()] = u.id
        if u.external_id:
            self.by_external_id[u.external_id] = u.id
        self._user_list = None
        self.changed(u)

    def _insert_attempt(self, a: AttemptRec) -> None:
        self.attempts[a.id] = a
        self.attempts_by_exam.setdefault(a.exam_id, []).append(a)
        self.attempts_by_user.setdefault(a.user_id, []).append(a)
        self._attempt_list = None
        self.changed(a)

    def _join(self, g: GroupRec, u: UserRec, at: float) -> bool:
        if u.id in g.members:
            return False
        g.members[u.id] = None
        u.groups[g.id] = at
        g.raw = None
        u.raw = None
        self._membership(g.id, u.id, at)
        return True

    def add_user(
        self, name: str, email: str, external_id: str | None, group_id: str | None
    ) -> UserRec:
        """Register a user (validation is the caller's job) into one group or Students."""
        now = self.wall()
        u = UserRec(self.new_id(), name, email, external_id, "student", now)
        gid = group_id or self.default_groups["student"]
        g = self.groups[gid]
        if g.default_type in ("educator", "admin"):
            u.role = g.default_type
        self._insert_user(u)
        self._join(g, u, now)
        return u

    def update_user_keys(self, u: UserRec, email: str | None, external_id: str | None) -> None:
        """Move the email/externalId indexes when a PATCH changes them."""
        self.changed(u)
        if email is not None and email != u.email:
            self.by_email.pop(u.email.lower(), None)
            u.email = email
            self.by_email[email.lower()] = u.id
        if external_id != u.external_id:
            if u.external_id:
                self.by_external_id.pop(u.external_id, None)
            u.external_id = external_id
            if external_id:
                self.by_external_id[external_id] = u.id

    def delete_user(self, u: UserRec) -> None:
        del self.users[u.id]
        self.by_email.pop(u.email.lower(), None)
        if u.external_id:
            self.by_external_id.pop(u.external_id, None)
        for gid in u.groups:
            g = self.groups.get(gid)
            if g is not None:
                g.members.pop(u.id, None)
                g.raw = None
        self._user_list = None
        self._gone(TYPE_USER, u.id)

    def add_group(self, name: str, description: str, attr: dict[str, Any]) -> GroupRec:
        g = GroupRec(self.new_id(), name, self.wall(), description=description)
        g.attr = attr
        self.groups[g.id] = g
        self._group_list = None
        self.changed(g)
        return g

    def delete_group(self, g: GroupRec) -> None:
        for uid in g.members:
            u = self.users.get(uid)
            if u is not None:
                u.groups.pop(g.id, None)
                u.raw = None
        del self.groups[g.id]
        self._group_list = None
        self._gone(TYPE_USER_GROUP, g.id)

    def add_members(self, g: GroupRec, user_ids: Iterable[str]) -> int:
        """Set union; returns how many users actually joined."""
        now = self.wall()
        return sum(self._join(g, self.users[uid], now) for uid in user_ids)

    def remove_members(self, g: GroupRec, user_ids: Iterable[str]) -> int:
        """Set difference; returns how many users actually left."""
        left = 0
        for uid in user_ids:
            if uid in g.members:
                del g.members[uid]
                u = self.users.get(uid)
                if u is not None:
                    u.groups.pop(g.id, None)
                    u.raw = None
                self._membership(g.id, uid, None)
                left += 1
        if left:
            g.raw = None
        return left

    def add_timer_reset(self, a: AttemptRec, extra_ms: int, reason: str) -> TimerResetRec:
        now = self.wall()
        r = TimerResetRec(self.new_id(), a.id, extra_ms, reason, now)
        self.timer_resets[r.id] = r
        a.extra_time_ms += extra_ms
        if a.exam_status == "expired":
            a.exam_status = "inProgress"
        a.touch(now)
        self.changed(r)
        self.changed(a)
        return r

    def add_doc(
        self, type_: str, attributes: dict[str, Any], links: dict[str, tuple[str, str]]
    ) -> DocRec:
        """A new lock, override or marking entry (see ``attempt_ops.py``)."""
        doc = DocRec(type_, self.new_id(), attributes, links, self.wall())
        self.docs[doc.id] = doc
        self.changed(doc)
        return doc

    def delete_doc(self, doc: DocRec) -> None:
        self.docs.pop(doc.id, None)
        self._gone("Doc", doc.id)

    def add_job(self, filters: dict[str, str]) -> JobRec:
        signature = f"{self._rng.getrandbits(128):032x}"
        job = JobRec(self.new_id(), filters, self.config.export_job_steps, signature, self.wall())
        self.jobs[job.id] = job
        self.changed(job)
        return job

    # ----------------------------------------------------------------- queries

    def user_by_email(self, email: str) -> UserRec | None:
        """The user with this email (case-insensitive), for test assertions."""
        uid = self.by_email.get(email.lower())
        return self.users.get(uid) if uid else None

    def user_by_external_id(self, external_id: str) -> UserRec | None:
        uid = self.by_external_id.get(external_id)
        return self.users.get(uid) if uid else None

    def groups_named(self, name: str) -> list[GroupRec]:
        return [g for g in self.groups.values() if g.name == name]

    def counts(self) -> dict[str, int]:
        """Resource type -> how many exist now."""
        return {
            TYPE_PORTAL: 1,
            TYPE_USER: len(self.users),
            TYPE_USER_GROUP: len(self.groups),
            TYPE_EXAM: len(self.exams),
            TYPE_ATTEMPT: len(self.attempts),
            TYPE_ATTEMPT_TIMER_RESET: len(self.timer_resets),
            TYPE_BACKGROUND_JOB: len(self.jobs),
            **self._doc_counts(),
        }

    def _doc_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for doc in self.docs.values():
            out[doc.type] = out.get(doc.type, 0) + 1
        return out
