"""The mapping CSV of an assign-markers job: its columns, and every row checked before a request.

A row names an attempt (its id, or a candidate's email/externalId with an exam) and a marker
(email or id). :func:`check_mapping_columns` refuses a file whose header cannot name both, when
the task is built; :func:`check_mapping` resolves all rows in bulk through the
:class:`~.assign_scope.ExamScope`, then checks each one against the exam (published, with a
pool), the pool's members, the candidate, the exclusions and ``max_per_marker``. A row that
fails is an :class:`~synap_bulk.items.InvalidRow` with its line, so the failures file lists the
rows to fix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import NotFound, SourceError
from ..items import InvalidRow, Item, ItemError
from ..jsonapi import Resource
from ..resources import Attempt
from .assign_scope import AttemptInfo, ExamScope, SideTable, gather_reads

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..client import SynapClient
    from ..spec import AssignMarkersSpec

__all__ = [
    "MAPPING_DEFAULTS",
    "MAPPING_NAME_COLUMNS",
    "MappingCheck",
    "check_mapping",
    "check_mapping_columns",
    "check_mapping_offline",
    "mapping_result_columns",
    "name_mapping_rows",
]

#: The mapping's column names unless the job file's ``mapping_columns`` renames them.
MAPPING_DEFAULTS = {
    "attempt": "attempt",
    "candidate": "candidate",
    "exam": "exam",
    "marker": "marker",
}


#: Columns a mapping's result files add beside its own: what its ids name.
MAPPING_NAME_COLUMNS = ("exam_name", "candidate_email", "marker_email")


def mapping_result_columns(header: Sequence[str]) -> list[str]:
    """The mapping's columns, then the naming columns it does not have already (a failures
    file fed back has them: they are filled afresh, not added twice)."""
    return [*header, *(c for c in MAPPING_NAME_COLUMNS if c not in header)]


def name_mapping_rows(
    entries: Sequence[Item | InvalidRow], scope: ExamScope
) -> list[Item | InvalidRow]:
    """Each row with its exam's name, its candidate's and its marker's email (blank when the
    row names nothing the server has), for the result files."""
    out: list[Item | InvalidRow] = []
    for entry in entries:
        names = dict.fromkeys(MAPPING_NAME_COLUMNS, "")
        if isinstance(entry, Item):
            p = entry.payload
            names["exam_name"] = scope.exam_names.get(str(p.get("exam", "")), "")
            names["candidate_email"] = scope.labels.get(str(p.get("candidate", "")), "")
            names["marker_email"] = scope.labels.get(str(p.get("marker", "")), "")
        out.append(msgspec.structs.replace(entry, row={**entry.row, **names}))
    return out


def check_mapping_columns(
    table: SideTable, columns: Mapping[str, str], exams: Sequence[str]
) -> None:
    """Refuse a header without a marker column, or with no way to name the attempt."""
    table.require([columns["marker"]])
    if columns["attempt"] not in table.header:
        if columns["candidate"] not in table.header:
            raise SourceError(
                f"{table.name}: missing column(s): {columns['attempt']} "
                f"(or {columns['candidate']} with {columns['exam']}) "
                f"(header: {', '.join(table.header)})"
            )
        if columns["exam"] not in table.header and len(exams) != 1:
            raise SourceError(
                f"{table.name}: rows naming a candidate need an "
                f"{columns['exam']!r} column, or exactly one exam in task.exams"
            )


def check_mapping_offline(
    table: SideTable, columns: Mapping[str, str], exams: Sequence[str]
) -> list[Item | InvalidRow]:
    """The mapping's rows checked with no server (``validate``): readable, naming an attempt
    (or a candidate with an exam) and a marker, and no row repeating an earlier one. Who the
    values name is checked by :func:`check_mapping`."""
    cols = columns
    default_exam = str(exams[0]) if len(exams) == 1 else ""
    seen: dict[tuple[str, ...], int] = {}
    entries: list[Item | InvalidRow] = []

    def invalid(line: int, row: Mapping[str, str], code: str, column: str, detail: str) -> None:
        error = ItemError(status="invalid", code=code, field=column, detail=detail)
        entries.append(InvalidRow(key=f"line:{line}", line=line, row=row, error=error))

    for record in table.records:
        line, row = record.line, record.values
        if record.problem is not None:
            invalid(line, row, "row", "", record.problem)
            continue
        aid = row.get(cols["attempt"], "").strip()
        cand = row.get(cols["candidate"], "").strip()
        exam = row.get(cols["exam"], "").strip() or default_exam
        marker = row.get(cols["marker"], "").strip()
        if not aid and not cand:
            invalid(line, row, "required", cols["attempt"], "give an attempt id or a candidate")
        elif not aid and not exam:
            invalid(line, row, "required", cols["exam"], "which exam? (no exam given)")
        elif not marker:
            invalid(line, row, "required", cols["marker"], "marker is required")
        else:
            what = (aid,) if aid else (cand.lower(), exam)
            earlier = seen.setdefault((*what, marker.lower()), line)
            if earlier != line:
                invalid(
                    line,
                    row,
                    "duplicate",
                    cols["marker"],
                    f"same attempt and marker as line {earlier}",
                )
            else:
                entries.append(Item(key=f"line:{line}", line=line, row=row))
    return entries


class MappingCheck:
    """What :func:`check_mapping` decided: one entry per row in line order, and prior loads.

    ``before`` counts, per marker, the attempts of the mapping that already had them.
    """

    __slots__ = ("before", "entries")

    def __init__(self, entries: list[Item | InvalidRow], before: Counter[str]) -> None:
        self.entries = entries
        self.before = before


async def check_mapping(
    client: SynapClient,
    scope: ExamScope,
    table: SideTable,
    columns: Mapping[str, str],
    spec: AssignMarkersSpec,
    *,
    assign: bool,
    notes: list[str],
) -> MappingCheck:
    """Every row of the mapping as an item or an invalid row (see the module docstring)."""
    cols = columns
    rows = table.rows
    header = table.header
    has_attempt = cols["attempt"] in header
    has_exam = cols["exam"] in header
    default_exam = str(spec.exams[0]) if len(spec.exams) == 1 else ""

    # Resolve in bulk first: emails of markers and candidates, then attempts.
    await scope.resolve_values(client, [r.get(cols["marker"], "") for _, r in rows])
    await scope.resolve_values(
        client, [r.get(cols["candidate"], "") for _, r in rows], external=True
    )
    attempt_ids = [r[cols["attempt"]].strip() for _, r in rows if has_attempt]
    attempts: dict[str, AttemptInfo | None] = {}

    async def fetch(aid: str) -> None:
        try:
            res = await client.get(scope.profile.attempts_path, aid, Attempt)
            attempts[aid] = scope.attempt_info(res)
        except NotFound:
            attempts[aid] = None

    await gather_reads(fetch, [a for a in dict.fromkeys(attempt_ids) if a])
    # Candidate rows: one listing of each exam's attempts, indexed by candidate.
    by_exam: dict[str, dict[str, list[AttemptInfo]]] = {}
    for _, r in rows:
        if has_attempt and r[cols["attempt"]].strip():
            continue
        exam_id = (r.get(cols["exam"], "") if has_exam else "").strip() or default_exam
        if exam_id and exam_id not in by_exam:
            index: dict[str, list[AttemptInfo]] = {}
            exam = await scope.find_exam(client, exam_id)
            listed = [] if isinstance(exam, str) else await scope.attempts_of(client, exam.id, [])
            for info in listed:
                index.setdefault(info.candidate, []).append(info)
            by_exam[exam_id] = index
    exclusions = await scope.read_exclusions(client, notes)
    infos = [i for i in attempts.values() if i is not None]
    infos += [i for idx in by_exam.values() for lst in idx.values() for i in lst]
    await scope.fill_markers(client, infos)

    checker = _RowChecker(scope, cols, spec, assign, attempts, by_exam, default_exam, exclusions)
    entries: list[Item | InvalidRow] = []
    for line, row in rows:
        entries.append(await checker.check(client, line, row))
    for bad in table.bad:
        entries.append(
            InvalidRow(
                key=f"line:{bad.line}",
                line=bad.line,
                row=bad.values,
                error=ItemError(status="invalid", code="row", detail=bad.problem or ""),
            )
        )
    entries.sort(key=lambda e: e.line)
    return MappingCheck(entries, checker.before)


class _RowChecker:
    """One mapping row at a time, against what was resolved and what earlier rows took."""

    def __init__(
        self,
        scope: ExamScope,
        columns: Mapping[str, str],
        spec: AssignMarkersSpec,
        assign: bool,
        attempts: dict[str, AttemptInfo | None],
        by_exam: dict[str, dict[str, list[AttemptInfo]]],
        default_exam: str,
        exclusions: set[tuple[str, str]],
    ) -> None:
        self.scope = scope
        self.cols = columns
        self.spec = spec
        self.assign = assign
        self.attempts = attempts
        self.by_exam = by_exam
        self.default_exam = default_exam
        self.exclusions = exclusions
        self.before: Counter[str] = Counter()
        self.load: Counter[str] = Counter()
        self.counted: set[str] = set()
        self.seen: dict[tuple[str, str], int] = {}

    async def check(self, client: SynapClient, line: int, row: dict[str, str]) -> Item | InvalidRow:
        scope = self.scope
        cols = self.cols
        role = scope.role
        labels = scope.labels

        def invalid(code: str, column: str, detail: str) -> InvalidRow:
            return InvalidRow(
                key=f"line:{line}",
                line=line,
                row=row,
                error=ItemError(status="invalid", code=code, field=column, detail=detail),
            )

        # Which attempt.
        aid = row.get(cols["attempt"], "").strip()
        info: AttemptInfo | None
        if aid:
            info = self.attempts.get(aid)
            if info is None:
                return invalid("not-found", cols["attempt"], f"no attempt with id {aid!r}")
        else:
            cand_value = row.get(cols["candidate"], "").strip()
            if not cand_value:
                return invalid(
                    "required", cols["attempt"], "give an attempt id or a candidate and exam"
                )
            exam_id = row.get(cols["exam"], "").strip() or self.default_exam
            if not exam_id:
                return invalid("required", cols["exam"], "which exam? (no exam given)")
            exam_or_why = scope.cached_exam(exam_id)
            if not isinstance(exam_or_why, Resource):
                why = exam_or_why or f"no exam with id or name {exam_id!r}"
                return invalid("not-found", cols["exam"], why)
            cand = scope.user_id(cand_value, external=True)
            if cand is None:
                return invalid("not-found", cols["candidate"], f"no user {cand_value!r}")
            found = self.by_exam.get(exam_id, {}).get(cand, [])
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
        if info.id not in self.counted:
            self.counted.add(info.id)
            self.load.update(info.markers or ())
            self.before.update(info.markers or ())
        # Which marker.
        marker_value = row.get(cols["marker"], "").strip()
        if not marker_value:
            return invalid("required", cols["marker"], "marker is required")
        mid = scope.user_id(marker_value)
        if mid is None:
            return invalid("not-found", cols["marker"], f"no user {marker_value!r}")
        label = labels.get(mid, marker_value)
        key = f"attempt:{info.id}:{role.name}:{mid}"
        earlier = self.seen.get((info.id, mid))
        if earlier is not None:
            return invalid(
                "duplicate", cols["marker"], f"same attempt and marker as line {earlier}"
            )
        self.seen[(info.id, mid)] = line
        payload: dict[str, Any] = {
            "attempt": info.id,
            "markers": [],
            "exam": info.exam,
            "candidate": info.candidate,
            "marker": mid,
        }
        current = info.markers or set()
        if not self.assign:
            if mid in current:
                payload["markers"] = [mid]
            return Item(key=key, line=line, row=row, payload=payload)
        exam = await scope.exam(client, info.exam)
        problem = scope.exam_problem(exam)
        if problem is not None:
            return invalid("exam", cols["attempt"] if aid else cols["exam"], problem)
        pool = await scope.pool(client, exam)
        if mid not in pool.members:
            return invalid(
                "not-in-pool",
                cols["marker"],
                f"{label} is not in the {role.pool} pool of exam {exam.id} "
                f"({pool.describe()}); the server refuses markers outside it",
            )
        if mid == info.candidate:
            return invalid(
                "own-attempt", cols["marker"], f"{label} is the candidate of this attempt"
            )
        if (mid, info.candidate) in self.exclusions:
            who = labels.get(info.candidate, info.candidate)
            return invalid("excluded", cols["marker"], f"{label} is excluded for candidate {who}")
        if mid in current:
            return Item(key=key, line=line, row=row, payload=payload)
        cap = self.spec.max_per_marker
        if cap is not None and self.load[mid] >= cap:
            return invalid(
                "max-per-marker",
                cols["marker"],
                f"{label} already has {self.load[mid]} attempts (max_per_marker {cap})",
            )
        self.load[mid] += 1
        payload["markers"] = [mid]
        return Item(key=key, line=line, row=row, payload=payload)
