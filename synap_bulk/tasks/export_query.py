"""What the export asks the server: exams by id or name, the attempt listing's query, and the
filters the server refuses (as a SpecError at their job-file line)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import ApiError, BadRequest, NotFound, SynapBulkError
from ..resources import Exam
from ..templates import spec_error
from .export_records import ALL_EXAMS, ExportSettings

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..profile import ApiProfile
    from ..spec import JobFile


async def resolve_exams(
    client: SynapClient, profile: ApiProfile, refs: Sequence[str], job: JobFile | None
) -> tuple[list[str], dict[str, int]]:
    """The exam ids of ``task.exams`` (each an id or an exact, case-sensitive name), in order
    and without repeats, and the index in ``refs`` of each id; an unknown or ambiguous name is
    a SpecError at its ``task.exams[i]`` line.

    Like assign-markers: a value without spaces is first read as an id (``GET exams/<id>``);
    otherwise, or when there is none, the exams listing (read once) is searched by name.
    """
    ids: list[str] = []
    index: dict[str, int] = {}
    listing: list[Exam] | None = None

    async def by_id(ref: str) -> str | None:
        if not ref or any(c.isspace() for c in ref):
            return None
        try:
            return (await client.get(profile.exams_path, ref, Exam)).id
        except (NotFound, BadRequest):
            return None

    # The id reads at once (an export of hundreds of exams waited on each in turn); the first
    # other failure, in the order written, is raised as it is.
    got = await asyncio.gather(*(by_id(r.strip()) for r in refs), return_exceptions=True)
    for result in got:
        if isinstance(result, BaseException):
            raise result
    for i, raw in enumerate(refs):
        ref = raw.strip()
        found = got[i]
        assert not isinstance(found, BaseException)
        if found is None:
            if listing is None:
                pages = client.paginate(
                    profile.exams_path, None, Exam, page_size=profile.max_page_size
                )
                listing = [e async for e in pages]
            named = [e for e in listing if e.id == ref] or [
                e for e in listing if (e.attributes.name or "").strip() == ref
            ]
            if not named:
                raise spec_error(job, f"task.exams[{i}]", f"no exam with id or name {ref!r}")
            if len(named) > 1:
                which = ", ".join(e.id for e in named)
                raise spec_error(
                    job,
                    f"task.exams[{i}]",
                    f"{len(named)} exams are named {ref!r} ({which}); give the id",
                )
            found = named[0].id
        if found not in index:
            index[found] = i
            ids.append(found)
    return ids, index


def _index_of_ids(refs: Sequence[str], ids: Sequence[str]) -> dict[str, int]:
    """For a resume (ids from the ledger): the ``task.exams`` index of each exam given by id."""
    index: dict[str, int] = {}
    for i, ref in enumerate(refs):
        if ref.strip() in ids:
            index.setdefault(ref.strip(), i)
    return index


def _refused(
    exc: ApiError, job: JobFile | None, profile: ApiProfile, exam_at: str
) -> SynapBulkError:
    """A 400 about a filter as a SpecError at the job-file line of the value (else ``exc``)."""
    for err in exc.errors:
        src = err.source
        where = (src.parameter or src.pointer or "") if src is not None else ""
        at = ""
        if where == profile.filter_status or where.endswith("/status"):
            at = "task.statuses"
        elif where == profile.filter_updated_since or where.endswith("/updatedSince"):
            at = "task.since"
        elif where == profile.filter_exam or where.endswith("/examV2"):
            at = exam_at
        if at:
            why = err.detail or err.title or str(exc)
            return spec_error(
                job, at, f"the server refused this filter: {why} ({exc.method} {exc.path})"
            )
    return exc


def _attempt_params(
    p: ApiProfile, s: ExportSettings, exam: str, since: str | None
) -> dict[str, str]:
    """Query parameters of the attempt listing: filters, sorted by id for stable paging."""
    params: dict[str, str] = {
        p.sort_param: "id",
        p.page_size_param: str(s.page_size or p.max_page_size),
    }
    if exam != ALL_EXAMS:
        params[p.filter_exam] = exam
    if s.statuses:
        params[p.filter_status] = ",".join(s.statuses)
    if since:
        params[p.filter_updated_since] = since
    return params
