"""Attempt export: resumable paging with no duplicate and no missing row, and server mode."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from synap_bulk.client import PageCursor
from synap_bulk.clock import FakeClock
from synap_bulk.errors import NotFound
from synap_bulk.jsonapi import ListDocument
from synap_bulk.profile import DEFAULT_PROFILE
from synap_bulk.tasks import export_attempts as ex
from synap_bulk.tasks.export_attempts import ExportProgress, ExportSettings, run_export


def make_attempts(n: int, exams: int = 2) -> list[dict[str, Any]]:
    return [
        {
            "type": "Attempt",
            "id": f"a{i:05d}",
            "attributes": {
                "title": "=evil()" if i == 3 else f"Attempt {i}",
                "examStatus": "submitted" if i % 3 else "inProgress",
                "score": -1.5 if i == 4 else float(i % 10),
                "updatedAt": f"2026-05-{1 + i % 28:02d}T10:00:00Z",
            },
            "relationships": {
                "user": {"data": {"type": "User", "id": f"u{i}"}},
                "examV2": {"data": {"type": "Exam-V-2", "id": f"e{i % exams + 1}"}},
            },
        }
        for i in range(n)
    ]


class Crash(Exception):
    """Stands for the process dying at a chosen point."""


class FakeLedger:
    """The ledger's cursor and run API in memory; can "die" on a chosen set_cursor call."""

    def __init__(self) -> None:
        self.cursors: dict[str, str] = {}
        self.set_calls = 0
        self.crash_on: int | None = None
        self.last_run: str | None = None

    async def set_cursor(self, name: str, value: str) -> None:
        self.set_calls += 1
        if self.crash_on is not None and self.set_calls == self.crash_on:
            raise Crash(name)
        self.cursors[name] = value

    async def get_cursor(self, name: str) -> str | None:
        return self.cursors.get(name)

    async def last_completed_run_started_at(self) -> str | None:
        return self.last_run


class FakeClient:
    """Serves attempts by page like the API (filters, sort by id), with the client's cursors,
    and the exams they belong to (exam ``e1`` is named "Exam e1")."""

    def __init__(self, attempts: list[dict[str, Any]]) -> None:
        self.attempts = attempts
        self.profile = DEFAULT_PROFILE
        self.page_requests: list[tuple[str, int]] = []
        self.probes: list[dict[str, str]] = []
        self.jobs: dict[str, int] = {}
        self.posts: list[Any] = []
        self.fail_after_pages: int | None = None
        self.exams = {
            r["relationships"]["examV2"]["data"]["id"]: "Exam "
            + (r["relationships"]["examV2"]["data"]["id"])
            for r in attempts
        }

    def _exam(self, id: str, tp: Any) -> Any:
        return msgspec.convert(
            {"type": "Exam-V-2", "id": id, "attributes": {"name": self.exams[id]}}, tp
        )

    async def paginate(
        self, path: str, params: Any, tp: Any, page_size: int | None = None
    ) -> AsyncIterator[Any]:
        assert path == self.profile.exams_path
        for id in sorted(self.exams):
            yield self._exam(id, tp)

    async def get_page(self, path: str, params: dict[str, str], tp: Any) -> Any:
        """The first page of a filtered listing, as the exporter's probe reads it."""
        assert path == "attempts"
        self.probes.append(params)
        rows = self._select(params)
        size = int(params[self.profile.page_size_param])
        body = msgspec.json.encode({"data": rows[:size], "meta": {"total": len(rows)}})
        return msgspec.json.decode(body, type=ListDocument[tp])

    def _select(self, params: dict[str, str]) -> list[dict[str, Any]]:
        p = self.profile
        rows = self.attempts
        exam = params.get(p.filter_exam)
        if exam:
            rows = [r for r in rows if r["relationships"]["examV2"]["data"]["id"] == exam]
        status = params.get(p.filter_status)
        if status:
            wanted = set(status.split(","))
            rows = [r for r in rows if r["attributes"]["examStatus"] in wanted]
        since = params.get(p.filter_updated_since)
        if since:
            rows = [r for r in rows if r["attributes"]["updatedAt"] >= since]
        assert params[p.sort_param] == "id"
        return sorted(rows, key=lambda r: r["id"])

    async def pages(
        self, path: str, params: dict[str, str], tp: Any, *, start: Any = None, parallel: int = 1
    ) -> AsyncIterator[tuple[Any, ListDocument[Any]]]:
        assert path == "attempts"
        rows = self._select(params)
        size = int(params[self.profile.page_size_param])
        number = start.number if start is not None else 1
        while True:
            chunk = rows[(number - 1) * size : number * size]
            if not chunk and number > 1:
                return
            if self.fail_after_pages is not None and len(self.page_requests) >= (
                self.fail_after_pages
            ):
                raise Crash("connection lost")
            self.page_requests.append((params.get(self.profile.filter_exam, ""), number))
            last = number * size >= len(rows)
            body = msgspec.json.encode({"data": chunk, "meta": {"total": len(rows)}})
            cursor = None if last else PageCursor(number=number + 1, size=size)
            yield cursor, msgspec.json.decode(body, type=ListDocument[tp])
            if last:
                return
            number += 1

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        assert (method, path) == ("POST", "export-enriched-attempts")
        body = kw["body"]
        self.posts.append(body)
        exam = body["data"].relationships["examV2"].data.id
        job_id = f"job-{exam}-{len(self.posts)}"
        self.jobs[job_id] = 0
        doc = {"data": {"type": "BackgroundJob", "id": job_id, "attributes": {"status": "pending"}}}
        return _Resp(201, msgspec.json.encode(doc))

    async def get(self, path: str, id: str, tp: Any) -> Any:
        if path == self.profile.exams_path:
            if id not in self.exams:
                raise NotFound(method="GET", path=f"{path}/{id}", status=404)
            return self._exam(id, tp)
        assert path == "background-jobs"
        self.jobs[id] += 1
        polls = self.jobs[id]
        exam = id.split("-")[1]
        attrs: dict[str, Any] = {"status": "running", "progress": polls / 3}
        if polls >= 3:
            attrs = {"status": "completed", "progress": 1.0, "fileUrl": f"http://files/{exam}"}
        return msgspec.convert({"type": "BackgroundJob", "id": id, "attributes": attrs}, tp)

    async def stream_lines(self, url: str) -> AsyncIterator[bytes]:
        exam = url.rsplit("/", 1)[1]
        for r in self.attempts:
            if r["relationships"]["examV2"]["data"]["id"] == exam:
                yield json.dumps(r).encode() + b"\n"


class _Resp:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


def settings(tmp_path: Path, **kw: Any) -> ExportSettings:
    base: dict[str, Any] = {
        "exams": ("e1", "e2"),
        "statuses": (),
        "format": "ndjson",
        "output": tmp_path / "attempts.ndjson",
        "columns": None,
        "since": None,
        "mode": "pages",
        "page_size": 7,
        "parallel": 2,
    }
    base.update(kw)
    return ExportSettings(**base)


def ids_in(path: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        return [r["id"] for r in csv.DictReader(io.StringIO(path.read_text()))]
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def expected_ids(attempts: list[dict[str, Any]], exams: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for exam in exams:
        out += sorted(
            r["id"] for r in attempts if r["relationships"]["examV2"]["data"]["id"] == exam
        )
    return out


async def test_export_writes_every_attempt_once_in_order(tmp_path: Path) -> None:
    """A clean export holds exactly the server's attempts, exam by exam, sorted by id."""
    attempts = make_attempts(40)
    client, ledger = FakeClient(attempts), FakeLedger()
    seen: list[ExportProgress] = []
    result = await run_export(settings(tmp_path), None, client, ledger, progress_cb=seen.append)  # type: ignore[arg-type]
    assert result.status == "completed"
    assert ids_in(tmp_path / "attempts.ndjson", "ndjson") == expected_ids(attempts, ("e1", "e2"))
    assert result.rows == 40
    assert result.pages == 6  # 20 per exam in pages of 7
    assert seen[-1].phase == "done" and seen[-1].rows == 40


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize(
    ("crash_on", "refetched"), [(2, 6), (3, 5), (4, 4), (5, 3), (6, 2), (7, 1)]
)
async def test_killed_between_file_commit_and_ledger_and_resumed(
    tmp_path: Path, fmt: str, crash_on: int, refetched: int
) -> None:
    """With a commit after every page, a crash after a page reached the file but before the
    ledger recorded it loses and duplicates nothing: the file is cut back on resume."""
    attempts = make_attempts(40)
    out = tmp_path / f"attempts.{fmt}"
    s = settings(tmp_path, format=fmt, output=out, commit_pages=1)
    ledger = FakeLedger()
    ledger.crash_on = crash_on
    with pytest.raises(Crash):
        await run_export(s, None, FakeClient(attempts), ledger)  # type: ignore[arg-type]
    ledger.crash_on = None
    client = FakeClient(attempts)
    result = await run_export(s, None, client, ledger)  # type: ignore[arg-type]
    assert result.status == "completed" and result.resumed
    assert ids_in(out, fmt) == expected_ids(attempts, ("e1", "e2"))
    assert result.rows == 40
    # The resume fetched only the pages not yet recorded, not the whole export again.
    assert len(client.page_requests) == refetched


class Recording(FakeLedger):
    """A FakeLedger that keeps the committed page count of each ``export:e1`` record."""

    def __init__(self) -> None:
        super().__init__()
        self.e1_pages: list[int] = []

    async def set_cursor(self, name: str, value: str) -> None:
        await super().set_cursor(name, value)
        if name == "export:e1":
            self.e1_pages.append(json.loads(value).get("pages", 0))


class TickingClient(FakeClient):
    """A FakeClient whose every page takes ``tick`` seconds on a FakeClock (no real waiting)."""

    def __init__(self, attempts: list[dict[str, Any]], clock: FakeClock, tick: float) -> None:
        super().__init__(attempts)
        self.clock, self.tick = clock, tick

    async def pages(
        self, path: str, params: dict[str, str], tp: Any, *, start: Any = None, parallel: int = 1
    ) -> AsyncIterator[tuple[Any, ListDocument[Any]]]:
        async for item in super().pages(path, params, tp, start=start, parallel=parallel):
            self.clock.advance(self.tick)
            yield item


@pytest.mark.parametrize(
    ("tick", "commit_pages", "commits"),
    [(0.2, 50, [3, 6, 9, 10]), (0.0, 4, [4, 8, 10]), (0.0, 50, [10])],
)
async def test_commits_come_by_time_or_pages_and_at_the_last_page(
    tmp_path: Path, tick: float, commit_pages: int, commits: list[int]
) -> None:
    """The cursor is recorded once 500 ms (clock time) or ``commit_pages`` pages have passed since
    the last commit (an exam's end joins the next one), and always with the export's last page."""
    clock = FakeClock(auto_advance=False)
    ledger = Recording()
    s = settings(tmp_path, page_size=2, commit_interval_ms=500, commit_pages=commit_pages)
    client = TickingClient(make_attempts(40), clock, tick)
    result = await run_export(s, None, client, ledger, clock=clock)  # type: ignore[arg-type]
    assert result.status == "completed" and result.rows == 40
    assert ledger.e1_pages == commits


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
async def test_crash_between_two_commits_of_the_window_resumes_exactly_once(
    tmp_path: Path, fmt: str
) -> None:
    """A crash with three pages written since the last commit leaves them in the file but not in
    the ledger; the resume cuts them off, fetches them again and yields every attempt once."""
    attempts = make_attempts(40)
    out = tmp_path / f"attempts.{fmt}"
    s = settings(tmp_path, format=fmt, output=out, page_size=2, commit_pages=4)
    ledger, clock = FakeLedger(), FakeClock(auto_advance=False)
    client = FakeClient(attempts)
    client.fail_after_pages = 7  # pages 1-7 of e1 written, committed up to page 4
    with pytest.raises(Crash):
        await run_export(s, None, client, ledger, clock=clock)  # type: ignore[arg-type]
    committed = json.loads(ledger.cursors["export:e1"])
    assert committed["pages"] == 4 and committed["cursor"]["number"] == 5
    assert out.stat().st_size > committed["offset"]
    again = FakeClient(attempts)
    result = await run_export(s, None, again, ledger, clock=clock)  # type: ignore[arg-type]
    assert result.status == "completed" and result.resumed and result.rows == 40
    assert ids_in(out, fmt) == expected_ids(attempts, ("e1", "e2"))
    assert again.page_requests[0] == ("e1", 5) and len(again.page_requests) == 6 + 10


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("crash_on", range(2, 9))
async def test_a_crash_at_any_record_of_a_windowed_export_resumes_exactly_once(
    tmp_path: Path, fmt: str, crash_on: int
) -> None:
    """With a window of 4 pages spanning two exams (e1's end recorded with e2's first pages), a
    crash at any ledger record, even between e1's and e2's of one commit, resumes exactly once."""
    attempts = make_attempts(40)
    out = tmp_path / f"attempts.{fmt}"
    s = settings(tmp_path, format=fmt, output=out, page_size=2, commit_pages=4)
    ledger, clock = FakeLedger(), FakeClock(auto_advance=False)
    ledger.crash_on = crash_on
    with pytest.raises(Crash):
        await run_export(s, None, FakeClient(attempts), ledger, clock=clock)  # type: ignore[arg-type]
    ledger.crash_on = None
    result = await run_export(s, None, FakeClient(attempts), ledger, clock=clock)  # type: ignore[arg-type]
    assert result.status == "completed" and result.rows == 40
    assert ids_in(out, fmt) == expected_ids(attempts, ("e1", "e2"))


async def test_a_stop_request_commits_at_once(tmp_path: Path) -> None:
    """A stop set mid-window commits the next page at once: the ledger covers every page
    written, and the resume fetches only the rest."""
    import anyio

    attempts = make_attempts(40)
    s = settings(tmp_path, page_size=2, commit_pages=50)
    ledger, clock, stop = Recording(), FakeClock(auto_advance=False), anyio.Event()

    def on_progress(p: ExportProgress) -> None:
        if p.rows >= 6:
            stop.set()

    first = FakeClient(attempts)
    stopped = await run_export(
        s, None, first, ledger, clock=clock, stop=stop, progress_cb=on_progress
    )  # type: ignore[arg-type]
    assert stopped.status == "stopped" and stopped.rows == 8 and ledger.e1_pages == [4]
    assert json.loads(ledger.cursors["export:e1"])["offset"] == s.output.stat().st_size
    second = FakeClient(attempts)
    done = await run_export(s, None, second, ledger, clock=clock)  # type: ignore[arg-type]
    assert done.rows == 40 and second.page_requests[0] == ("e1", 5)
    assert ids_in(s.output, "ndjson") == expected_ids(attempts, ("e1", "e2"))


async def test_stop_after_pages_then_resume_fetches_only_the_rest(tmp_path: Path) -> None:
    """A stop after N pages resumes at page N+1: the requests of both runs cover each page once."""
    attempts = make_attempts(40)
    s = settings(tmp_path)
    ledger = FakeLedger()
    first = FakeClient(attempts)
    stopped = await run_export(s, None, first, ledger, max_pages=4)  # type: ignore[arg-type]
    assert stopped.status == "stopped" and stopped.rows == 27
    second = FakeClient(attempts)
    done = await run_export(s, None, second, ledger)  # type: ignore[arg-type]
    assert done.status == "completed" and done.rows == 40
    assert first.page_requests + second.page_requests == [
        ("e1", 1),
        ("e1", 2),
        ("e1", 3),
        ("e2", 1),
        ("e2", 2),
        ("e2", 3),
    ]
    assert ids_in(s.output, "ndjson") == expected_ids(attempts, ("e1", "e2"))


async def test_transport_failure_mid_stream_resumes_cleanly(tmp_path: Path) -> None:
    """An export that dies on a failed page fetch resumes without gaps or repeats."""
    attempts = make_attempts(40)
    s = settings(tmp_path, format="csv", output=tmp_path / "a.csv", exams=())
    ledger = FakeLedger()
    client = FakeClient(attempts)
    client.fail_after_pages = 2
    with pytest.raises(Crash):
        await run_export(s, None, client, ledger)  # type: ignore[arg-type]
    result = await run_export(s, None, FakeClient(attempts), ledger)  # type: ignore[arg-type]
    assert ids_in(tmp_path / "a.csv", "csv") == sorted(r["id"] for r in attempts)
    assert result.rows == 40


async def test_csv_export_neutralises_formula_titles(tmp_path: Path) -> None:
    """The default CSV columns carry the neutralised title and numeric negative scores."""
    attempts = make_attempts(10, exams=1)
    out = tmp_path / "a.csv"
    s = settings(tmp_path, format="csv", output=out, exams=("e1",))
    await run_export(s, None, FakeClient(attempts), FakeLedger())  # type: ignore[arg-type]
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert rows["a00003"]["attributes.title"] == "'=evil()"
    assert rows["a00004"]["attributes.score"] == "-1.5"
    assert rows["a00004"]["relationships.examV2.id"] == "e1"


async def test_filters_and_a_new_generation_after_completion(tmp_path: Path) -> None:
    """Statuses filter the export; running a completed export again writes a fresh file beside
    the first (``attempts.2.ndjson``) and leaves the first as it was."""
    attempts = make_attempts(30)
    s = settings(tmp_path, statuses=("inProgress",))
    ledger = FakeLedger()
    first = await run_export(s, None, FakeClient(attempts), ledger)  # type: ignore[arg-type]
    kept = s.output.read_bytes()
    again = await run_export(s, None, FakeClient(attempts), ledger)  # type: ignore[arg-type]
    want = [i for i in expected_ids(attempts, ("e1", "e2")) if int(i[1:]) % 3 == 0]
    second = tmp_path / "attempts.2.ndjson"
    assert (first.output, again.output) == (str(s.output), str(second))
    assert s.output.read_bytes() == kept and ids_in(second, "ndjson") == want
    assert (first.generation, again.generation) == (1, 2)
    assert not again.resumed


async def test_since_last_run_uses_the_previous_complete_export(tmp_path: Path) -> None:
    """since: last-run filters on updatedSince = the start of the last completed export
    generation; with none recorded it exports everything, whatever runs the ledger lists (the
    last completed run may have been a resume, whose start is too late)."""
    attempts = make_attempts(30)
    s = settings(tmp_path, since="last-run")
    ledger = FakeLedger()
    ledger.last_run = "2026-05-20T00:00:00Z"
    first = await run_export(s, None, FakeClient(attempts), ledger)  # type: ignore[arg-type]
    first_started = json.loads(ledger.cursors["export"])["started_at"]
    assert first.since is None and first.rows == 30
    client = FakeClient(attempts)
    second = await run_export(s, None, client, ledger)  # type: ignore[arg-type]
    assert second.since == first_started
    assert client.probes[0][DEFAULT_PROFILE.filter_updated_since] == first_started


def test_output_names_skip_every_existing_file(tmp_path: Path) -> None:
    """A plain name is numbered by generation, a templated one formatted; a name that is taken
    (for Parquet: its staging files too) moves on to the next free one."""
    plain = settings(tmp_path, output=tmp_path / "a.csv", format="csv")
    assert ex.output_for(plain, 1, 7, "2026-05-01") == tmp_path / "a.csv"
    assert ex.output_for(plain, 3, 7, "2026-05-01") == tmp_path / "a.3.csv"
    (tmp_path / "a.csv").write_text("kept")
    (tmp_path / "a.2.csv").write_text("kept")
    assert ex.output_for(plain, 1, 7, "2026-05-01") == tmp_path / "a.3.csv"
    templated = settings(
        tmp_path,
        output=tmp_path / "d-{date}" / "a-{run:03d}.parquet",
        format="parquet",
        template_parts=2,
        templated=True,
    )
    first = tmp_path / "d-2026-05-01" / "a-007.parquet"
    assert ex.output_for(templated, 4, 7, "2026-05-01") == first
    first.parent.mkdir()
    first.with_name(first.name + ".partial").write_text("someone's export in progress")
    assert ex.output_for(templated, 4, 7, "2026-05-01") == first.with_name("a-007.2.parquet")


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ("out/{day}.csv", "unknown placeholder {day}"),
        ("out/{}.csv", "unknown placeholder {}"),
        ("out/{run.x}.csv", "unknown placeholder {run.x}"),
        ("out/{run.csv", "expected '}'"),
        ("out/{run:%Y}.csv", "bad placeholder"),
    ],
)
def test_a_bad_output_template_is_refused_when_the_task_is_built(output: str, problem: str) -> None:
    """Only {run} and {date} (with a valid format spec) may appear in output."""
    from synap_bulk.errors import SpecError
    from synap_bulk.spec import ExportAttemptsSpec

    with pytest.raises(SpecError) as caught:
        ex.settings_from_spec(ExportAttemptsSpec(output=output), None)
    assert caught.value.path == "task.output" and problem in str(caught.value)
    literal = ex.settings_from_spec(ExportAttemptsSpec(output="out/{{x}}.csv"), None)
    assert ex.output_for(literal, 2, 1, "2026-05-01") == Path("out/{x}.2.csv")


async def test_exams_by_name_resolve_to_ids_and_an_ambiguous_name_is_refused(
    tmp_path: Path,
) -> None:
    """Exams are taken by id or exact name, each once; the ids are kept for a resume; a name
    two exams share is an error at its task.exams line."""
    from synap_bulk.errors import SpecError

    attempts = make_attempts(30)
    client, ledger = FakeClient(attempts), FakeLedger()
    s = settings(tmp_path, exams=("Exam e2", " e2 ", "e1"))
    result = await run_export(s, None, client, ledger, max_pages=1)  # type: ignore[arg-type]
    assert result.exams == ["e2", "e1"]
    assert json.loads(ledger.cursors["export"])["exams"] == ["e2", "e1"]
    client.exams["e1"] = "Exam e2"  # renamed meanwhile: the resume keeps the ids it had
    done = await run_export(s, None, client, ledger)  # type: ignore[arg-type]
    assert done.resumed and ids_in(s.output, "ndjson") == expected_ids(attempts, ("e2", "e1"))
    with pytest.raises(SpecError) as caught:
        await run_export(s, None, client, ledger)  # type: ignore[arg-type]
    assert caught.value.path == "task.exams[0]"
    assert "2 exams are named 'Exam e2' (e1, e2); give the id" in str(caught.value)


async def test_server_mode_polls_the_job_and_downloads_the_file(tmp_path: Path) -> None:
    """mode server creates one export per exam, polls with the clock, and converts the file."""
    attempts = make_attempts(2500, exams=2)
    clock = FakeClock()
    out = tmp_path / "a.csv"
    s = settings(tmp_path, mode="server", format="csv", output=out)
    seen: list[ExportProgress] = []
    ledger = FakeLedger()
    client = FakeClient(attempts)
    stopped = await run_export(
        s, None, client, ledger, clock=clock, progress_cb=seen.append, max_pages=1
    )  # type: ignore[arg-type]
    assert stopped.status == "stopped" and stopped.rows == 1000
    result = await run_export(s, None, client, ledger, clock=clock, progress_cb=seen.append)  # type: ignore[arg-type]
    assert result.status == "completed" and result.rows == 2500
    got = ids_in(out, "csv")
    assert sorted(got) == sorted(r["id"] for r in attempts) and len(set(got)) == 2500
    assert len(client.posts) == 2  # the resume re-polled exam e1's job instead of a new one
    assert clock.slept == [1.0, 1.0, 1.0, 1.0]
    waits = [p.job_progress for p in seen if p.phase == "waiting"]
    assert waits[:3] == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]


# --- against the sandbox, with the real client and ledger ----------------------------------

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import os, sys
import anyio
from pathlib import Path
from synap_bulk import sinks
from synap_bulk.ledger import Ledger
from synap_bulk.client import SynapClient
from synap_bulk.tasks.export_attempts import ExportSettings, run_export

url, out, ledger_path, fmt, kill_at, commit_pages = sys.argv[1:7]
calls = 0
real_commit = sinks._FileSink.commit

def commit(self):
    # On the chosen page: the page is in the file but not committed; wait to be killed.
    global calls
    calls += 1
    if calls == int(kill_at):
        self._out().flush()
        print("ready", flush=True)
        sys.stdin.read()
    return real_commit(self)

sinks._FileSink.commit = commit

async def main():
    s = ExportSettings(exams=(), statuses=(), format=fmt, output=Path(out), columns=None,
                       since=None, mode="pages", page_size=40, parallel=3,
                       commit_pages=int(commit_pages), commit_interval_ms=10**9)
    async with SynapClient(url, token=os.environ["SYNAP_TOKEN"]) as client, await Ledger.open(
        ledger_path, job_name="kill", task_hash="t", input_hash=""
    ) as ledger:
        await run_export(s, None, client, ledger)

anyio.run(main)
"""


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize(("commit_pages", "kill_at"), [(1, 5), (4, 2)])
async def test_export_sigkilled_mid_page_and_resumed_matches_the_server(
    tmp_path: Path, fmt: str, commit_pages: int, kill_at: int
) -> None:
    """A process SIGKILLed with uncommitted pages in its file (one, or with a window of 4 pages
    the four written since the last commit), then resumed, leaves exactly the sandbox's
    attempts in the file, each once."""
    import os
    import subprocess
    import sys

    import anyio

    from synap_bulk.client import SynapClient
    from synap_bulk.ledger import Ledger
    from synap_bulk.sandbox import Sandbox, SandboxConfig

    out = tmp_path / f"attempts.{fmt}"
    ledger_path = tmp_path / "ledger.sqlite"
    root = ROOT
    async with Sandbox(SandboxConfig(seed=3, users=50, exams=3, attempts_per_exam=150)) as sb:
        env = dict(os.environ, SYNAP_TOKEN=sb.token, PYTHONPATH=str(root))
        cmd = [sys.executable, "-c", CHILD, sb.url, str(out), str(ledger_path), fmt]
        cmd += [str(kill_at), str(commit_pages)]
        async with await anyio.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        ) as proc:
            assert proc.stdout is not None
            seen = b""
            async for chunk in proc.stdout:
                seen += chunk
                if b"ready" in seen:
                    break
            proc.kill()
            await proc.wait()
        size_at_kill = out.stat().st_size
        s = ExportSettings(
            exams=(),
            statuses=(),
            format=fmt,
            output=out,
            columns=None,
            since=None,
            mode="pages",
            page_size=40,
            parallel=3,
        )
        async with (
            SynapClient(sb.url, token=sb.token) as client,
            await Ledger.open(ledger_path, job_name="kill", task_hash="t", input_hash="") as led,
        ):
            committed = json.loads(await led.get_cursor(f"export:{ex.ALL_EXAMS}") or "{}")
            # Killed on page 5 (per page) or page 8 (window of 4): 4 pages committed either way.
            assert committed["pages"] == 4 and size_at_kill > committed["offset"]
            result = await run_export(s, None, client, led)
        assert result.status == "completed" and result.resumed
        ids = ids_in(out, fmt)
        assert len(ids) == len(set(ids)) == 450
        assert set(ids) == set(sb.store.attempts)


async def test_server_mode_against_the_sandbox_filters_like_pages(tmp_path: Path) -> None:
    """mode server (job, polling, signed file download) yields the same rows as mode pages."""
    from synap_bulk.client import SynapClient
    from synap_bulk.ledger import Ledger
    from synap_bulk.sandbox import Sandbox, SandboxConfig

    async with Sandbox(SandboxConfig(seed=4, users=40, exams=2, attempts_per_exam=120)) as sb:
        exam = next(iter(sb.store.exams))
        results: dict[str, list[str]] = {}
        for mode in ("pages", "server"):
            s = settings(
                tmp_path,
                exams=(exam,),
                statuses=("submitted", "inProgress"),
                format="csv",
                output=tmp_path / f"{mode}.csv",
                mode=mode,
                page_size=25,
            )
            async with (
                SynapClient(sb.url, token=sb.token) as client,
                await Ledger.open(
                    tmp_path / f"{mode}.sqlite", job_name="s", task_hash="t", input_hash=""
                ) as led,
            ):
                await run_export(s, None, client, led, poll_interval=0.0)
            results[mode] = ids_in(tmp_path / f"{mode}.csv", "csv")
        want = {
            a.id
            for a in sb.store.attempts.values()
            if a.exam_id == exam and a.exam_status in ("submitted", "inProgress")
        }
        assert want and set(results["pages"]) == set(results["server"]) == want
        assert len(results["server"]) == len(want)
        assert sb.statistics().file_downloads == 1


async def test_demo_export_job_runs_as_documented(tmp_path: Path) -> None:
    """The demo export job writes every sandbox attempt once to a CSV; run again (a fresh
    ledger: the embedded sandbox forgets), it keeps the first file and writes attempts.2.csv,
    saying so."""
    import io
    import shutil

    from rich.console import Console

    from synap_bulk.runner import EXIT_OK, run_job
    from synap_bulk.spec import load_job

    shutil.copy(ROOT / "jobs" / "demo" / "export-attempts.yaml", tmp_path / "job.yaml")
    out = tmp_path / "out" / "demo-export-attempts"
    kept = b""
    for name in ("attempts.csv", "attempts.2.csv"):
        console = Console(file=io.StringIO(), width=300)
        job = load_job(tmp_path / "job.yaml")
        assert await run_job(job, console=console, handle_signals=False) == EXIT_OK
        ids = ids_in(out / name, "csv")
        assert len(ids) == len(set(ids)) == 6000
        text = console.file.getvalue()  # type: ignore[attr-defined]
        assert f"Export completed: 6000 attempts, {(out / name).stat().st_size} bytes" in text
        assert f"-> {out / name} (csv" in text
        if kept:
            assert (out / "attempts.csv").read_bytes() == kept
        kept = (out / "attempts.csv").read_bytes()
    assert sorted(p.name for p in out.glob("attempts*")) == ["attempts.2.csv", "attempts.csv"]


async def test_parquet_killed_after_conversion_completes_on_resume(tmp_path: Path) -> None:
    """A Parquet export killed between its final conversion and the ledger's "complete" resumes
    to a completed export without touching the finished file."""
    pq = pytest.importorskip("pyarrow.parquet")

    class DiesAtCompletion(FakeLedger):
        async def set_cursor(self, name: str, value: str) -> None:
            if name == "export" and '"complete"' in value and not self.crash_on:
                self.crash_on = -1
                raise Crash(name)
            await super().set_cursor(name, value)

    attempts = make_attempts(30)
    out = tmp_path / "a.parquet"
    s = settings(tmp_path, format="parquet", output=out)
    ledger = DiesAtCompletion()
    with pytest.raises(Crash):
        await run_export(s, None, FakeClient(attempts), ledger)  # type: ignore[arg-type]
    client = FakeClient(attempts)
    result = await run_export(s, None, client, ledger)  # type: ignore[arg-type]
    assert result.status == "completed" and result.resumed and client.page_requests == []
    assert pq.read_table(out).column("id").to_pylist() == expected_ids(attempts, ("e1", "e2"))


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


async def test_plan_export_counts_without_writing(tmp_path: Path) -> None:
    """plan counts the attempts an export would write, per exam, and creates no file or ledger."""
    import io
    import shutil

    from rich.console import Console

    from synap_bulk.planning import plan_job
    from synap_bulk.spec import load_job

    shutil.copy(ROOT / "jobs" / "demo" / "export-attempts.yaml", tmp_path / "job.yaml")
    console = Console(file=io.StringIO(), width=200)
    assert await plan_job(load_job(tmp_path / "job.yaml"), console=console) == 0
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Plan: export 6000 attempts -> " in text and "a new export (new file)" in text
    # Only the demo sandbox's own data file (the server's side) exists: no ledger, no export.
    written = sorted(str(p.relative_to(tmp_path)) for p in _files(tmp_path))
    state = "out/demo-export-attempts/sandbox-state.json"
    assert written == ["job.yaml", state, state + ".journal"]
