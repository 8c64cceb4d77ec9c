"""kind: request — one templated request per CSV row, with declared safety and lookups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from synap_bulk.errors import NotFound, SpecError
from synap_bulk.items import InvalidRow, Item, Safety
from synap_bulk.profile import DEFAULT_PROFILE
from synap_bulk.spec import JobFile, load_job
from synap_bulk.tasks.request import RequestTask

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo"

CSV = (
    "attempt_id,candidate,extra_ms,ref\n"
    "101,Ada,900000,AA-1\n"
    "102,Alan,ten,AA-2\n"
    "103,Grace,600000,AA-3\n"
    "101,Ada,900000,AA-1\n"
)

JOB = """\
version: 1
name: extra-time
api:
  base_url: sandbox
task:
  kind: request
  source: rows.csv
  method: {method}
  path: {path}
{extra}
"""

BODY = """\
  body:
    data:
      type: AttemptTimerReset
      attributes:
        extraTimeInMs: "{extra_ms:int}"
        reason: "Access arrangement {ref}"
      relationships:
        attempt:
          data: {type: Attempt, id: "{attempt_id}"}
"""


def job(
    tmp_path: Path,
    *,
    method: str = "POST",
    path: str = "attempt-timer-resets",
    extra: str = BODY,
    csv: str = CSV,
) -> JobFile:
    (tmp_path / "rows.csv").write_text(csv)
    text = JOB.replace("{method}", method).replace("{path}", path).replace("{extra}", extra)
    (tmp_path / "job.yaml").write_text(text)
    return load_job(tmp_path / "job.yaml")


def task(j: JobFile) -> RequestTask:
    return RequestTask(j.spec.task, j, DEFAULT_PROFILE)  # type: ignore[arg-type]


class FakeResponse:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


class FakeClient:
    """Records requests; answers creates with an id and lookups from a table."""

    def __init__(self, found: dict[str, list[str]] | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.found = found or {}

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        idempotent: bool | None = None,
    ) -> FakeResponse:
        self.sent.append(
            {"method": method, "path": path, "params": params, "body": body, "idem": idempotent}
        )
        if method == "GET":
            key = f"{path}?{sorted((params or {}).items())}"
            if key not in self.found:
                raise NotFound(method=method, path=f"/v3/{path}", status=404)
            data = [{"type": "X", "id": i} for i in self.found[key]]
            return FakeResponse(200, msgspec.json.encode({"data": data}))
        return FakeResponse(201, msgspec.json.encode({"data": {"type": "X", "id": "r-9"}}))


async def collect(t: RequestTask) -> list[Item | InvalidRow]:
    return [i async for i in t.items()]


async def test_rows_become_rendered_requests_and_bad_rows_are_reported(tmp_path: Path) -> None:
    """Each row renders path and body; an unconvertible value and a repeated row are invalid."""
    t = task(job(tmp_path))
    items = await collect(t)
    assert [type(i).__name__ for i in items] == ["Item", "InvalidRow", "Item", "InvalidRow"]
    first = items[0]
    assert isinstance(first, Item)
    assert first.line == 2
    assert first.payload["path"] == "attempt-timer-resets"
    assert first.payload["body"]["data"]["attributes"] == {
        "extraTimeInMs": 900000,
        "reason": "Access arrangement AA-1",
    }
    assert first.payload["body"]["data"]["relationships"]["attempt"]["data"]["id"] == "101"
    bad = items[1]
    assert isinstance(bad, InvalidRow)
    assert (bad.line, bad.error.field, bad.error.detail) == (
        3,
        "extra_ms",
        "extra_ms: not an integer: 'ten'",
    )
    dup = items[3]
    assert isinstance(dup, InvalidRow)
    assert dup.error.code == "duplicate" and dup.error.detail == "the same request as line 2"


async def test_unknown_placeholder_names_the_job_file_line(tmp_path: Path) -> None:
    """A placeholder for a column the CSV lacks is a SpecError at the line of its string."""
    bad = BODY.replace("{ref}", "{reference}")
    with pytest.raises(SpecError) as info:
        task(job(tmp_path, extra=bad))
    assert str(info.value) == (
        f"{tmp_path / 'job.yaml'}:15: task.body.data.attributes.reason: unknown column "
        "{reference}; rows.csv has: attempt_id, candidate, extra_ms, ref"
    )
    with pytest.raises(SpecError, match=r"job\.yaml:9: task\.path: unknown column \{id\}"):
        task(job(tmp_path, method="DELETE", path='"attempt-locks/{id}"', extra=""))


async def test_safety_defaults_by_method_and_reconcilable_needs_a_lookup(tmp_path: Path) -> None:
    """POST defaults to unsafe and PATCH to idempotent; reconcilable without lookup is refused."""
    assert task(job(tmp_path)).safety is Safety.UNSAFE
    patch = task(job(tmp_path, method="PATCH", path='"attempts/{attempt_id}"', extra=""))
    assert patch.safety is Safety.IDEMPOTENT
    with pytest.raises(
        SpecError, match=r"job\.yaml:19: task\.safety: a reconcilable request needs a lookup"
    ):
        task(job(tmp_path, extra=BODY + "  safety: reconcilable\n"))


async def test_execute_sends_the_rendered_request(tmp_path: Path) -> None:
    """execute sends method, path and body once, marked idempotent only when declared so."""
    t = task(job(tmp_path))
    item = (await collect(t))[0]
    assert isinstance(item, Item)
    client = FakeClient()
    outcome = await t.execute(item, client)  # type: ignore[arg-type]
    assert (outcome.status, outcome.action, outcome.remote_id) == ("done", "created", "r-9")
    sent = client.sent[0]
    assert (sent["method"], sent["path"], sent["idem"]) == ("POST", "attempt-timer-resets", False)
    assert sent["body"] == item.payload["body"]
    plan = await t.plan(item, client)  # type: ignore[arg-type]
    assert (plan.action, plan.detail) == ("post", "POST attempt-timer-resets")
    assert len(client.sent) == 1  # plan sent nothing


async def test_reconcile_looks_up_before_resending(tmp_path: Path) -> None:
    """A reconcilable request found by its lookup is done with that id; not found means resend."""
    lookup = (
        BODY
        + "  safety: reconcilable\n"
        + "  lookup:\n"
        + '    path: "attempts/{attempt_id}/timer-resets"\n'
        + "    params:\n"
        + '      "filter[reason]": "Access arrangement {ref}"\n'
    )
    t = task(job(tmp_path, extra=lookup))
    items = [i for i in await collect(t) if isinstance(i, Item)]
    found_key = f"attempts/101/timer-resets?{[('filter[reason]', 'Access arrangement AA-1')]}"
    client = FakeClient({found_key: ["tr-1"]})
    done = await t.reconcile(items[0], client)  # type: ignore[arg-type]
    assert done is not None and (done.action, done.remote_id) == ("found", "tr-1")
    assert await t.reconcile(items[1], client) is None  # type: ignore[arg-type]
    plan = await t.plan(items[0], client)  # type: ignore[arg-type]
    assert plan.action == "unchanged" and plan.remote_id == "tr-1"
    assert all(s["method"] == "GET" for s in client.sent)


async def test_server_pointer_maps_to_the_feeding_column(tmp_path: Path) -> None:
    """A 400's source.pointer maps to the CSV column whose placeholder fills that place."""
    t = task(job(tmp_path))
    assert t.column_for_pointer("/data/attributes/extraTimeInMs") == "extra_ms"
    assert t.column_for_pointer("/data/relationships/attempt") == "attempt_id"
    assert t.column_for_pointer("/data/type") == ""


async def test_unsafe_paths_are_refused_per_row(tmp_path: Path) -> None:
    """Values are quoted into one path segment; an empty or dot segment is an invalid row."""
    csv = "attempt_id\n7\n..\n\na/b?x=1\n"
    t = task(job(tmp_path, method="DELETE", path='"attempt-locks/{attempt_id}"', extra="", csv=csv))
    items = await collect(t)
    assert isinstance(items[0], Item) and items[0].payload["path"] == "attempt-locks/7"
    assert isinstance(items[1], InvalidRow) and items[1].error.code == "path"
    assert isinstance(items[2], Item) and items[2].payload["path"] == "attempt-locks/a%2Fb%3Fx%3D1"


async def test_demo_extra_time_job_runs_as_documented(tmp_path: Path) -> None:
    """The demo job sends its six good rows once and reports lines 6 and 8 as its comment says."""
    import csv
    import io
    import json
    import shutil

    from rich.console import Console

    from synap_bulk.runner import EXIT_FAILED, run_job

    for name in ("extra-time.yaml", "access-arrangements.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    console = Console(file=io.StringIO())
    out = tmp_path / "out" / "demo-extra-time"
    code = await run_job(
        load_job(tmp_path / "extra-time.yaml"), console=console, handle_signals=False
    )
    assert code == EXIT_FAILED
    failures = list(csv.DictReader(io.StringIO((out / "failures.csv").read_text())))
    assert [(f["_line"], f["_error_status"], f["_error_field"]) for f in failures] == [
        ("6", "invalid", "extra_ms"),
        ("8", "403", ""),
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["done"] == 6
    # Who the token is (portal, user), six resets and the refused one; nothing sent twice.
    assert summary["requests"] == 2 + 7
    assert summary["task"]["created"] == 6
