"""The sandbox's state file (``SandboxConfig.state``): a snapshot and an append-only journal.

``FILE`` is a JSON snapshot of the whole store: every record a client can observe, the id
generator's random state, the ids of deleted records (never handed out again) and the shape
(seed, users, ...) the data was seeded with. ``FILE.journal`` beside it holds the changes since
that snapshot, one JSON line per changed record with its whole state after the write (a
tombstone for a delete, a join/leave line for a group membership, so that a join costs one line
and not the group's member list). :meth:`Store.commit <synap_bulk.sandbox.store.Store.commit>`
appends a write's lines and flushes them to the operating system before the answer leaves: a
killed process (SIGKILL included) loses nothing it answered. (No fsync per write: that guards
against a power cut, which is not the sandbox's failure mode.) Cost per write: the size of the
change, whatever the size of the store.

Loading reads the snapshot, replays the journal over it, and compacts: a new snapshot is written
to ``FILE.tmp``, fsynced and renamed over ``FILE`` (atomic), then the journal is truncated. The
journal's first line names the snapshot it follows (an epoch), so a journal left behind by a
compaction that died between rename and truncation is recognised and skipped. A last journal line
cut short (the process died inside that write, before answering) is dropped. Clean shutdown, and
a journal grown past four times the snapshot (and 64 MiB), compact too.

The journal is locked (``flock``) while a sandbox has it open, so two sandboxes cannot share one
state file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import msgspec
from msgspec import Struct

from ..errors import SynapBulkError
from .config import SHAPE_FIELDS
from .records import AttemptRec, DocRec, ExamRec, GroupRec, JobRec, TimerResetRec, UserRec

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no lock
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "SandboxStateError",
    "StateFile",
    "Tombstone",
    "encode_changes",
    "restore",
]

FORMAT: Literal["synap-bulk-sandbox-state"] = "synap-bulk-sandbox-state"
VERSION: Literal[1] = 1
_COMPACT_MIN_BYTES = 64 * 1024 * 1024


class SandboxStateError(SynapBulkError):
    """The state file cannot be used: unreadable, corrupt, or in use by another sandbox."""


class Tombstone:
    """A deleted record, as the journal notes it."""

    __slots__ = ("id", "kind")

    def __init__(self, kind: str, id_: str) -> None:
        self.kind = kind
        self.id = id_


# --------------------------------------------------------------------------- the file's shapes


class _Rec(Struct, tag_field="t", omit_defaults=True, forbid_unknown_fields=True):
    pass


class PortalState(Struct, forbid_unknown_fields=True):
    id: str
    name: str
    subdomain: str
    time_zone: str


class UserState(_Rec, tag="User"):
    id: str
    name: str
    email: str
    role: str
    created_at: float
    updated_at: float
    external_id: str | None = None
    time_zone: str | None = None
    locale: str | None = None
    attr: dict[str, Any] = {}
    preferences: dict[str, Any] = {}
    #: snapshot only: (group id, joined at) in order; the journal has join/leave lines instead
    groups: list[tuple[str, float]] | None = None


class GroupState(_Rec, tag="UserGroup"):
    id: str
    name: str
    created_at: float
    default_type: str | None = None
    internal: bool = False
    description: str = ""
    attr: dict[str, Any] = {}
    is_archived: bool = False
    #: snapshot only: member ids in order
    members: list[str] | None = None


class ExamState(_Rec, tag="Exam-V-2"):
    id: str
    name: str
    status: str
    group_id: str
    pools: dict[str, str]
    created_at: float


class AttemptState(_Rec, tag="Attempt"):
    id: str
    exam_id: str
    user_id: str
    title: str
    created_at: float
    updated_at: float
    exam_status: str
    score: float | None = None
    marks: dict[str, float] | None = None
    time_started: float | None = None
    time_completed: float | None = None
    resit_count: int = 0
    extra_time_ms: int = 0
    roles: dict[str, list[str]] = {}


class TimerResetState(_Rec, tag="AttemptTimerReset"):
    id: str
    attempt_id: str
    extra_ms: int
    reason: str
    created_at: float


class JobState(_Rec, tag="BackgroundJob"):
    id: str
    filters: dict[str, str]
    steps: int
    signature: str
    created_at: float
    status: str
    polls: int = 0
    completed_at: float | None = None
    items: list[str] | None = None  #: attempt ids (user ids for other kinds), fixed at completion
    file_url: str | None = None
    kind: str = "attempts"


class DocState(_Rec, tag="Doc"):
    """An attempt lock, override or marking entry (``records.DocRec``)."""

    type: str
    id: str
    attributes: dict[str, Any]
    links: dict[str, tuple[str, str]]
    created_at: float
    updated_at: float


class Deleted(_Rec, tag="deleted"):
    kind: str
    id: str


class Joined(_Rec, tag="joined"):
    group: str
    user: str
    at: float


class Left(_Rec, tag="left"):
    group: str
    user: str


class JournalHeader(_Rec, tag="journal"):
    epoch: int  #: the snapshot this journal continues


Change = (
    UserState
    | GroupState
    | ExamState
    | AttemptState
    | TimerResetState
    | JobState
    | DocState
    | Deleted
    | Joined
    | Left
)


class Snapshot(Struct, forbid_unknown_fields=True):
    format: Literal["synap-bulk-sandbox-state"]
    version: Literal[1]
    epoch: int
    config: dict[str, int]
    rng: tuple[int, tuple[int, ...], float | None]
    retired: list[str]
    portal: PortalState
    admin_id: str
    default_groups: dict[str, str]
    marker_ids: list[str]
    student_ids: list[str]
    users: list[UserState]
    groups: list[GroupState]
    exams: list[ExamState]
    attempts: list[AttemptState]
    timer_resets: list[TimerResetState]
    jobs: list[JobState]
    docs: list[DocState] = []


_encoder = msgspec.json.Encoder()
_snapshot_decoder = msgspec.json.Decoder(Snapshot)
_line_decoder = msgspec.json.Decoder(Change | JournalHeader)


# --------------------------------------------------------------------------- records <-> states


def _user_state(u: UserRec, *, with_groups: bool) -> UserState:
    return UserState(
        id=u.id,
        name=u.name,
        email=u.email,
        role=u.role,
        created_at=u.created_at,
        updated_at=u.updated_at,
        external_id=u.external_id,
        time_zone=u.time_zone,
        locale=u.locale,
        attr=u.attr,
        preferences=u.preferences,
        groups=list(u.groups.items()) if with_groups else None,
    )


def _group_state(g: GroupRec, *, with_members: bool) -> GroupState:
    return GroupState(
        id=g.id,
        name=g.name,
        created_at=g.created_at,
        default_type=g.default_type,
        internal=g.internal,
        description=g.description,
        attr=g.attr,
        is_archived=g.is_archived,
        members=list(g.members) if with_members else None,
    )


def _exam_state(e: ExamRec) -> ExamState:
    return ExamState(
        id=e.id,
        name=e.name,
        status=e.status,
        group_id=e.group_id,
        pools=e.pools,
        created_at=e.created_at,
    )


def _attempt_state(a: AttemptRec) -> AttemptState:
    return AttemptState(
        id=a.id,
        exam_id=a.exam_id,
        user_id=a.user_id,
        title=a.title,
        created_at=a.created_at,
        updated_at=a.updated_at,
        exam_status=a.exam_status,
        score=a.score,
        marks=a.marks,
        time_started=a.time_started,
        time_completed=a.time_completed,
        resit_count=a.resit_count,
        extra_time_ms=a.extra_time_ms,
        roles={rel: list(ids) for rel, ids in a.roles.items() if ids},
    )


def _reset_state(r: TimerResetRec) -> TimerResetState:
    return TimerResetState(
        id=r.id,
        attempt_id=r.attempt_id,
        extra_ms=r.extra_ms,
        reason=r.reason,
        created_at=r.created_at,
    )


def _job_state(j: JobRec) -> JobState:
    return JobState(
        id=j.id,
        filters=j.filters,
        steps=j.steps,
        signature=j.signature,
        created_at=j.created_at,
        status=j.status,
        polls=j.polls,
        completed_at=j.completed_at,
        items=[a.id for a in j.items] if j.items is not None else None,
        file_url=j.file_url,
        kind=j.kind,
    )


def _doc_state(d: DocRec) -> DocState:
    return DocState(d.type, d.id, d.attributes, d.links, d.created_at, d.updated_at)


def encode_changes(dirty: dict[str | tuple[str, str], Any]) -> bytes:
    """The journal lines of one commit's changes, in the order they happened."""
    out: list[Change] = []
    for key, value in dirty.items():
        if isinstance(key, tuple):
            group, user = key
            out.append(Left(group, user) if value is None else Joined(group, user, value))
        elif isinstance(value, UserRec):
            out.append(_user_state(value, with_groups=False))
        elif isinstance(value, GroupRec):
            out.append(_group_state(value, with_members=False))
        elif isinstance(value, AttemptRec):
            out.append(_attempt_state(value))
        elif isinstance(value, TimerResetRec):
            out.append(_reset_state(value))
        elif isinstance(value, JobRec):
            out.append(_job_state(value))
        elif isinstance(value, ExamRec):
            out.append(_exam_state(value))
        elif isinstance(value, DocRec):
            out.append(_doc_state(value))
        else:
            assert isinstance(value, Tombstone), value
            out.append(Deleted(value.kind, value.id))
    return _encoder.encode_lines(out)


def dump(store: Store, epoch: int) -> Snapshot:
    """The whole store as a snapshot."""
    version, internal, gauss = store._rng.getstate()
    return Snapshot(
        format=FORMAT,
        version=VERSION,
        epoch=epoch,
        config=dict(store.shape),
        rng=(version, internal, gauss),
        retired=sorted(store.retired),
        portal=PortalState(
            store.portal.id, store.portal.name, store.portal.subdomain, store.portal.time_zone
        ),
        admin_id=store.admin_id,
        default_groups=dict(store.default_groups),
        marker_ids=list(store.marker_ids),
        student_ids=list(store.student_ids),
        users=[_user_state(u, with_groups=True) for u in store.users.values()],
        groups=[_group_state(g, with_members=True) for g in store.groups.values()],
        exams=[_exam_state(e) for e in store.exams.values()],
        attempts=[_attempt_state(a) for a in store.attempts.values()],
        timer_resets=[_reset_state(r) for r in store.timer_resets.values()],
        jobs=[_job_state(j) for j in store.jobs.values()],
        docs=[_doc_state(d) for d in store.docs.values()],
    )


def _set_user(u: UserRec, s: UserState) -> None:
    u.name = s.name
    u.role = s.role
    u.created_at = s.created_at
    u.updated_at = s.updated_at
    u.time_zone = s.time_zone
    u.locale = s.locale
    u.attr = s.attr
    u.preferences = s.preferences
    u.raw = None


def _set_group(g: GroupRec, s: GroupState) -> None:
    g.name = s.name
    g.created_at = s.created_at
    g.default_type = s.default_type
    g.internal = s.internal
    g.description = s.description
    g.attr = s.attr
    g.is_archived = s.is_archived
    g.raw = None


def _set_attempt(a: AttemptRec, s: AttemptState) -> None:
    a.title = s.title
    a.created_at = s.created_at
    a.updated_at = s.updated_at
    a.exam_status = s.exam_status
    a.score = s.score
    a.marks = s.marks
    a.time_started = s.time_started
    a.time_completed = s.time_completed
    a.resit_count = s.resit_count
    a.extra_time_ms = s.extra_time_ms
    a.roles = {rel: dict.fromkeys(ids) for rel, ids in s.roles.items()}
    a.raw = None


def _set_job(store: Store, j: JobRec, s: JobState) -> None:
    j.filters = s.filters
    j.steps = s.steps
    j.signature = s.signature
    j.created_at = s.created_at
    j.status = s.status
    j.polls = s.polls
    j.completed_at = s.completed_at
    j.kind = s.kind
    table: dict[str, Any] = store.attempts if s.kind == "attempts" else store.users
    j.items = None if s.items is None else [table[i] for i in s.items if i in table]
    j.file_url = s.file_url


def _apply(store: Store, change: Change) -> None:
    """One snapshot record or journal line, applied over what is there."""
    if isinstance(change, UserState):
        user = store.users.get(change.id)
        if user is None:
            user = UserRec(
                change.id, change.name, change.email, change.external_id, change.role, 0.0
            )
            store._insert_user(user)
        else:
            store.update_user_keys(user, change.email, change.external_id)
        _set_user(user, change)
        if change.groups is not None:
            user.groups = dict(change.groups)
    elif isinstance(change, GroupState):
        group = store.groups.get(change.id)
        if group is None:
            group = store.groups[change.id] = GroupRec(change.id, change.name, 0.0)
            store._group_list = None
        _set_group(group, change)
        if change.members is not None:
            group.members = dict.fromkeys(change.members)
    elif isinstance(change, AttemptState):
        attempt = store.attempts.get(change.id)
        if attempt is None:
            attempt = AttemptRec(change.id, change.exam_id, change.user_id, change.title, 0.0)
            store._insert_attempt(attempt)
        _set_attempt(attempt, change)
    elif isinstance(change, ExamState):
        store.exams[change.id] = ExamRec(
            change.id,
            change.name,
            change.status,
            change.group_id,
            change.pools,
            change.created_at,
        )
        store.attempts_by_exam.setdefault(change.id, [])
    elif isinstance(change, TimerResetState):
        store.timer_resets[change.id] = TimerResetRec(
            change.id, change.attempt_id, change.extra_ms, change.reason, change.created_at
        )
    elif isinstance(change, JobState):
        job = store.jobs.get(change.id)
        if job is None:
            job = store.jobs[change.id] = JobRec(
                change.id, change.filters, change.steps, change.signature, change.created_at
            )
        _set_job(store, job, change)
    elif isinstance(change, DocState):
        doc = DocRec(change.type, change.id, change.attributes, dict(change.links), 0.0)
        doc.created_at, doc.updated_at = change.created_at, change.updated_at
        store.docs[doc.id] = doc
    elif isinstance(change, Deleted):
        store.retired.add(change.id)
        if change.kind == "Doc":
            store.docs.pop(change.id, None)
        if change.kind == "User" and change.id in store.users:
            store.delete_user(store.users[change.id])
        elif change.kind == "UserGroup" and change.id in store.groups:
            store.delete_group(store.groups[change.id])
    elif isinstance(change, Joined):
        g, u = store.groups.get(change.group), store.users.get(change.user)
        if g is not None and u is not None:  # else deleted later in the same commit
            store._join(g, u, change.at)
    else:
        g = store.groups.get(change.group)
        if g is not None:
            store.remove_members(g, [change.user])


def restore(store: Store, source: StateFile, snap: Snapshot, changes: list[Change]) -> None:
    """Fill an empty store from a snapshot and the journal's changes after it."""
    try:
        _restore(store, snap, changes)
    except (KeyError, TypeError, ValueError) as exc:
        raise source.error("does not hold a consistent store", exc) from None


def _restore(store: Store, snap: Snapshot, changes: list[Change]) -> None:
    store.shape = {k: v for k, v in snap.config.items() if k in SHAPE_FIELDS}
    store.config = msgspec.structs.replace(store.config, **store.shape)
    version, internal, gauss = snap.rng
    store._rng.setstate((version, tuple(internal), gauss))
    store.retired = set(snap.retired)
    p = snap.portal
    store.portal.id, store.portal.name, store.portal.subdomain = p.id, p.name, p.subdomain
    store.portal.time_zone = p.time_zone
    store.admin_id = snap.admin_id
    store.default_groups = dict(snap.default_groups)
    store.marker_ids = list(snap.marker_ids)
    store.student_ids = list(snap.student_ids)
    records: list[list[Any]] = [
        snap.groups,
        snap.users,
        snap.exams,
        snap.attempts,
        snap.timer_resets,
        snap.jobs,
        snap.docs,
    ]
    for kind in records:
        for rec in kind:
            _apply(store, rec)
    for change in changes:
        _apply(store, change)
    used = store._used_ids
    used.update(store.retired)
    used.add(store.portal.id)
    for collection in (
        store.users,
        store.groups,
        store.exams,
        store.attempts,
        store.timer_resets,
        store.jobs,
        store.docs,
    ):
        used.update(collection)


# --------------------------------------------------------------------------- the files


class StateFile:
    """The snapshot ``path`` and its journal ``path.journal``, locked while open."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".journal")
        self.epoch = 0
        #: bytes journaled since the last snapshot (0: the snapshot is the whole state)
        self.journal_bytes = 0
        self.snapshot_bytes = 0
        #: journal size past which :meth:`wants_compaction` says yes
        self._compact_at = _COMPACT_MIN_BYTES
        self._journal: IO[bytes] | None = None
        self.open()

    @property
    def is_open(self) -> bool:
        return self._journal is not None

    def error(self, what: str, exc: BaseException | None = None) -> SandboxStateError:
        detail = f": {exc.strerror or exc}" if isinstance(exc, OSError) else ""
        if exc is not None and not isinstance(exc, OSError):
            detail = f": {exc}"
        return SandboxStateError(f"sandbox state file {self.path}: {what}{detail}")

    def open(self) -> None:
        """Open and lock the journal (creating the directory and the file if need be)."""
        if self._journal is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            journal = open(self.journal_path, "ab")  # noqa: SIM115 - held open until close()
        except OSError as exc:
            raise self.error("cannot open its journal", exc) from None
        if fcntl is not None:
            try:
                fcntl.flock(journal.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                journal.close()
                raise self.error(
                    f"in use by another sandbox (its journal {self.journal_path} is locked)"
                ) from None
        self._journal = journal

    def close(self) -> None:
        """Close the journal (which releases the lock); :meth:`open` opens it again."""
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()

    def read(self) -> tuple[Snapshot, list[Change]] | None:
        """The snapshot and the journal's changes after it; None when there is no snapshot."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self.journal_path.exists() and self.journal_path.stat().st_size:
                raise self.error(
                    f"missing, but its journal {self.journal_path} has changes; restore the "
                    "file or delete the journal to start afresh"
                ) from None
            return None
        except OSError as exc:
            raise self.error("cannot be read", exc) from None
        try:
            snap = _snapshot_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self.error("is corrupt or not a sandbox state file", exc) from None
        self.epoch = snap.epoch
        self.snapshot_bytes = len(raw)
        return snap, self._read_journal(snap.epoch)

    def _read_journal(self, epoch: int) -> list[Change]:
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self.error("its journal cannot be read", exc) from None
        lines = data.split(b"\n")
        # The last piece is b"" after a complete line; otherwise a write cut short by the
        # process's death, before its answer was sent: dropped either way.
        lines.pop()
        if not lines:
            return []
        where = f"its journal {self.journal_path}"
        try:
            header = _line_decoder.decode(lines[0])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise self.error(f"{where} is corrupt at line 1", exc) from None
        if not isinstance(header, JournalHeader):
            raise self.error(f"{where} does not start with its header line")
        if header.epoch < epoch:
            return []  # left behind by a compaction: already in the snapshot
        if header.epoch > epoch:
            raise self.error(
                f"{where} continues a newer snapshot (epoch {header.epoch}, the file has "
                f"{epoch}): was the file replaced by an older copy?"
            )
        changes: list[Change] = []
        for number, line in enumerate(lines[1:], start=2):
            try:
                change = _line_decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise self.error(f"{where} is corrupt at line {number}", exc) from None
            if isinstance(change, JournalHeader):
                raise self.error(f"{where} is corrupt at line {number}: a second header")
            changes.append(change)
        return changes

    def write_snapshot(self, store: Store) -> None:
        """Compact: the whole store into a new snapshot (atomically), then an empty journal."""
        journal = self._journal
        if journal is None:
            raise self.error("is closed")
        epoch = self.epoch + 1
        data = _encoder.encode(dump(store, epoch))
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise self.error("cannot be written", exc) from None
        # From here the snapshot holds everything; a death before the truncation leaves the
        # old journal behind it, which its epoch marks as stale.
        self.epoch = epoch
        self.snapshot_bytes = len(data)
        try:
            journal.flush()
            os.ftruncate(journal.fileno(), 0)
            journal.write(_encoder.encode(JournalHeader(epoch)) + b"\n")
            journal.flush()
        except OSError as exc:
            # Appending to the stale journal would lose those writes at the next load: close,
            # so that every later write fails loudly instead.
            self.close()
            raise self.error(
                "its journal cannot be written (the file is now closed)", exc
            ) from None
        self.journal_bytes = 0
        self._compact_at = max(_COMPACT_MIN_BYTES, 4 * len(data))

    def append(self, lines: bytes) -> None:
        """Append journal lines and flush them to the OS (a process kill cannot lose them)."""
        journal = self._journal
        if journal is None:
            raise self.error("is closed")
        try:
            journal.write(lines)
            journal.flush()
        except OSError as exc:
            raise self.error("its journal cannot be written", exc) from None
        self.journal_bytes += len(lines)

    def wants_compaction(self) -> bool:
        """True once the journal outgrows the snapshot four times (and 64 MiB)."""
        return self.journal_bytes > self._compact_at

    def postpone_compaction(self) -> None:
        """After a failed compaction: try again when the journal has doubled."""
        self._compact_at = 2 * max(self.journal_bytes, self._compact_at)
