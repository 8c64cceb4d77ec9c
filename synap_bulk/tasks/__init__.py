"""The task registry: each job-file ``kind``, its spec and how its task is built.

Adding a kind is one module (its task class, an :class:`~synap_bulk.tasks.base.ItemTask` or a
:class:`~synap_bulk.tasks.base.StreamTask`) plus one line here. The runner never looks at the
kind: it builds the task through :func:`build_task` and drives it by its shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from ..spec import (
    AssignMarkersSpec,
    ExportAttemptsSpec,
    ExportSpec,
    GroupSyncSpec,
    RequestSpec,
    UserImportSpec,
)

if TYPE_CHECKING:
    from ..profile import ApiProfile
    from ..spec import JobFile
    from .base import Task

__all__ = ["KINDS", "TaskKind", "build_task", "input_files"]


class TaskKind(NamedTuple):
    """A job-file kind: the spec Struct its ``task:`` section decodes to, its task's maker, and
    the spec field naming its input CSV (``run --source`` replaces it; None: no input CSV)."""

    spec: type[Any]
    build: Callable[[Any, JobFile, ApiProfile], Task]
    source_field: str | None = None


# The makers import their module when called, so a job loads only the task it runs.


def _user_import(spec: UserImportSpec, job: JobFile, profile: ApiProfile) -> Task:
    from .user_import import UserImportTask

    return UserImportTask(spec, job, profile)


def _assign_markers(spec: AssignMarkersSpec, job: JobFile, profile: ApiProfile) -> Task:
    from .assign_markers import AssignMarkersTask

    return AssignMarkersTask(spec, job, profile)


def _export_attempts(spec: ExportAttemptsSpec, job: JobFile, profile: ApiProfile) -> Task:
    from .export_attempts import ExportAttemptsTask

    return ExportAttemptsTask(spec, job, profile)


def _export(spec: ExportSpec, job: JobFile, profile: ApiProfile) -> Task:
    from .export_collection import ExportTask

    return ExportTask(spec, job, profile)


def _request(spec: RequestSpec, job: JobFile, profile: ApiProfile) -> Task:
    from .request import RequestTask

    return RequestTask(spec, job, profile)


def _group_sync(spec: GroupSyncSpec, job: JobFile, profile: ApiProfile) -> Task:
    from .group_sync import GroupSyncTask

    return GroupSyncTask(spec, job, profile)


KINDS: dict[str, TaskKind] = {
    UserImportSpec.kind: TaskKind(UserImportSpec, _user_import, "source"),
    AssignMarkersSpec.kind: TaskKind(AssignMarkersSpec, _assign_markers, "mapping"),
    ExportAttemptsSpec.kind: TaskKind(ExportAttemptsSpec, _export_attempts),
    ExportSpec.kind: TaskKind(ExportSpec, _export),
    RequestSpec.kind: TaskKind(RequestSpec, _request, "source"),
    GroupSyncSpec.kind: TaskKind(GroupSyncSpec, _group_sync, "source"),
}


def build_task(job: JobFile, profile: ApiProfile, *, source: Path | None = None) -> Task:
    """The task for the job's ``task:`` section; its checks raise SpecError at their line.

    ``source`` reads another input CSV in place of the job's own (fixed rows fed back).
    """
    spec = job.spec.task
    entry = KINDS.get(spec.kind)
    if entry is None or not isinstance(spec, entry.spec):
        raise job.error("task.kind", f"unknown task kind {spec.kind!r}")
    if source is not None:
        field = entry.source_field
        if field is None or getattr(spec, field) is None:
            raise job.error("task.kind", f"a {spec.kind} job reads no input CSV to replace")
        spec = msgspec.structs.replace(spec, **{field: str(source.resolve())})
    return entry.build(spec, job, profile)


def input_files(job: JobFile, source: Path | None = None) -> list[Path]:
    """The input CSV a run of the job reads (for never writing a result file over it)."""
    spec = job.spec.task
    entry = KINDS.get(spec.kind)
    field = entry.source_field if entry is not None else None
    written = getattr(spec, field) if field else None
    files = [job.resolve(written)] if isinstance(written, str) else []
    return files + ([source] if source is not None else [])
