"""The sandbox's handlers for export jobs, their background jobs and the export files, as a mixin
of :class:`~synap_bulk.sandbox.app.SandboxApp` (which routes to them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..resources import TYPE_EXAM, TYPE_EXPORT_ENRICHED_ATTEMPT
from .marking import _attempt_filters
from .store import AttemptRec, JobRec
from .wire import (
    _JSON_HEADERS,
    _P,
    Ctx,
    Out,
    RouteHost,
    _doc,
    _encoder,
    _error_body,
    _resource_in,
    _to_one,
    err,
    fail,
    not_found,
)

__all__ = ["ExportRoutes"]


class ExportRoutes(RouteHost):
    """/v3 export-enriched-attempts and background-jobs, and the signed /files/exports/ files."""

    # ------------------------------------------------------------------ exports

    def export_create(self, ctx: Ctx, m: dict[str, str]) -> Out:
        data = _resource_in(ctx.body, TYPE_EXPORT_ENRICHED_ATTEMPT)
        attrs: dict[str, Any] = data.get("attributes", {})
        rels: dict[str, Any] = data.get("relationships", {})
        raw_filter = attrs.get("filter", {})
        if not isinstance(raw_filter, dict) or not all(
            isinstance(v, str) for v in raw_filter.values()
        ):
            raise fail(
                400,
                "Bad Request",
                "filter must be an object of strings",
                code="invalid",
                pointer="/data/attributes/filter",
            )
        names = {
            "examV2": _P.filter_exam,
            "user": _P.filter_user,
            "status": _P.filter_status,
            "updatedSince": _P.filter_updated_since,
        }
        filters: dict[str, str] = {}
        for key, value in raw_filter.items():
            if key not in names:
                raise fail(
                    400,
                    "Bad Request",
                    f"unknown filter {key!r} (known: {', '.join(names)})",
                    code="invalid",
                    pointer=f"/data/attributes/filter/{key}",
                )
            filters[names[key]] = value
        exam_id = _to_one(rels, "examV2", TYPE_EXAM, required=False)
        if exam_id is not None:
            if exam_id not in self.state.store.exams:
                raise not_found(TYPE_EXAM, exam_id, pointer="/data/relationships/examV2")
            filters[_P.filter_exam] = exam_id
        # Validate the filters now (a bad timestamp is the caller's error, not the job's).
        _attempt_filters(self.state.store, filters, "/data/attributes/filter")
        job = self.state.store.add_job(filters)
        location = f"{self.state.root}/v3/{_P.background_jobs_path}/{job.id}"
        return Out(201, _doc(job.render()), {"Location": location})

    def job_get(self, ctx: Ctx, m: dict[str, str]) -> Out:
        store = self.state.store
        job = store.jobs.get(m["id"])
        if job is None:
            raise not_found("BackgroundJob", m["id"])
        if job.status != "completed":
            job.polls += 1
            if job.polls >= job.steps:
                self._complete(job)
            else:
                job.status = "running"
            store.changed(job)
        elif job.file_url is not None and not job.file_url.startswith(self._files_root()):
            # Completed by an earlier process (a state file), maybe on another port.
            job.file_url = self._file_url(job)
        return Out(200, _doc(job.render()))

    def _files_root(self) -> str:
        return f"{self.state.root}/files/exports/"

    def _file_url(self, job: JobRec) -> str:
        return f"{self._files_root()}{job.id}.ndjson?signature={job.signature}"

    def _complete(self, job: JobRec) -> None:
        """Fix which attempts the file holds (a snapshot of the filter's result); the lines are
        rendered while streaming the download, so a big export costs no memory up front."""
        job.items = list(_attempt_filters(self.state.store, job.filters, "/filter"))
        job.status = "completed"
        job.completed_at = self.state.wall()
        job.file_url = self._file_url(job)

    def _job_line(self, job: JobRec) -> Callable[[Any], bytes]:
        """How one record of ``job``'s file is written (a line of NDJSON)."""
        return self._export_line

    def _export_line(self, a: AttemptRec) -> bytes:
        store = self.state.store
        user = store.users.get(a.user_id)
        exam = store.exams.get(a.exam_id)
        meta = {
            "user": {
                "name": user.name if user else None,
                "emailAddress": user.email if user else None,
                "externalId": user.external_id if user else None,
            },
            "exam": {"name": exam.name if exam else None},
        }
        return _encoder.encode(a.resource(meta)) + b"\n"

    async def export_file(self, request: web.Request) -> web.StreamResponse:
        """The export's NDJSON; like a pre-signed URL it needs the signature, not the token."""
        self.state.counters.file_downloads += 1
        name = request.match_info["name"]
        job = self.state.store.jobs.get(name.removesuffix(".ndjson"))
        if job is None or job.items is None or not name.endswith(".ndjson"):
            body = _error_body([err(404, "Not Found", "no such export file", code="not_found")])
            return web.Response(body=body, status=404, headers=_JSON_HEADERS)
        if request.query.get("signature") != job.signature:
            body = _error_body(
                [
                    err(
                        403,
                        "Forbidden",
                        "bad or missing signature",
                        code="bad_signature",
                        parameter="signature",
                    )
                ]
            )
            return web.Response(body=body, status=403, headers=_JSON_HEADERS)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        items = job.items
        line = self._job_line(job)
        for start in range(0, len(items), 1000):
            chunk = b"".join(line(a) for a in items[start : start + 1000])
            await response.write(chunk)
        await response.write_eof()
        return response
