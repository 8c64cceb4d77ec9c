"""The sandbox's attempt locks, attempt overrides and marking entries: shapes, errors, state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from synap_bulk.jsonapi import MEDIA_TYPE
from synap_bulk.resources import MARKER_ROLES
from synap_bulk.sandbox import Sandbox, SandboxConfig


@pytest.fixture
async def sb(tmp_path: Path) -> AsyncIterator[Sandbox]:
    config = SandboxConfig(
        seed=7, users=30, groups=3, attempts_per_exam=12, state=str(tmp_path / "s.json")
    )
    async with Sandbox(config) as box:
        yield box


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    sb: Sandbox,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    hdrs = {"Authorization": f"Bearer {sb.token}", **(headers or {})}
    data = None
    if body is not None:
        hdrs["Content-Type"] = MEDIA_TYPE
        data = json.dumps(body).encode()
    async with http.request(method, sb.url + path, data=data, headers=hdrs, params=params) as r:
        raw = await r.read()
        return r.status, (json.loads(raw) if raw else None)


def _rel(kind: str, id_: str | None) -> dict[str, Any]:
    return {"data": {"type": kind, "id": id_}}


def lock(attempt: str | None, reason: str = "suspected breach") -> dict[str, Any]:
    rels = {"attempt": _rel("Attempt", attempt)} if attempt else {}
    return {
        "data": {"type": "AttemptLock", "attributes": {"reason": reason}, "relationships": rels}
    }


def override(attempt: str, **attrs: Any) -> dict[str, Any]:
    return {
        "data": {
            "type": "AttemptOverride",
            "attributes": attrs,
            "relationships": {"attempt": _rel("Attempt", attempt)},
        }
    }


def entry(attempt: str, owner: str | None = None, **attrs: Any) -> dict[str, Any]:
    rels: dict[str, Any] = {"attempt": _rel("Attempt", attempt)}
    if owner:
        rels["owner"] = _rel("User", owner)
    return {"data": {"type": "MarkingEntry", "attributes": attrs, "relationships": rels}}


def published_attempt(sb: Sandbox, status: str | None = None) -> str:
    exam = next(e for e in sb.store.exams.values() if e.status != "draft")
    for a in sb.store.attempts_by_exam[exam.id]:
        if status is None or a.exam_status == status:
            return a.id
    raise AssertionError(f"no attempt with status {status}")


async def test_a_lock_is_created_listed_refused_twice_and_deleted(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """POST locks (201, AttemptLock linked to its attempt); a second lock 409; DELETE unlocks."""
    aid = published_attempt(sb)
    status, doc = await call(sb, http, "POST", "/attempt-locks", lock(aid))
    assert status == 201
    data = doc["data"]
    assert data["type"] == "AttemptLock" and data["attributes"]["reason"] == "suspected breach"
    assert data["relationships"]["attempt"]["data"] == {"type": "Attempt", "id": aid}
    status, doc = await call(sb, http, "POST", "/attempt-locks", lock(aid))
    assert status == 409 and doc["errors"][0]["code"] == "already_locked"
    status, doc = await call(sb, http, "GET", "/attempt-locks", params={"filter[attempt]": aid})
    assert status == 200 and [d["id"] for d in doc["data"]] == [data["id"]]
    status, _ = await call(sb, http, "DELETE", f"/attempt-locks/{data['id']}")
    assert status == 204
    status, doc = await call(sb, http, "GET", f"/attempt-locks/{data['id']}")
    assert status == 404
    assert sb.store.counts().get("AttemptLock", 0) == 0


async def test_lock_errors_point_at_the_field(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """No attempt: 400 at /data/relationships/attempt; an unknown one: 404; wrong type: 409."""
    status, doc = await call(sb, http, "POST", "/attempt-locks", lock(None))
    assert status == 400
    assert doc["errors"][0]["source"]["pointer"].startswith("/data/relationships/attempt")
    status, doc = await call(sb, http, "POST", "/attempt-locks", lock("ghost"))
    assert status == 404 and doc["errors"][0]["source"]["pointer"] == "/data/relationships/attempt"
    wrong = lock(published_attempt(sb))
    wrong["data"]["type"] = "Attempt"
    status, _ = await call(sb, http, "POST", "/attempt-locks", wrong)
    assert status == 409


async def test_overrides_validate_and_revert(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """An override needs one of its settings, checks each, and DELETE reverts it."""
    aid = published_attempt(sb)
    status, doc = await call(
        sb, http, "POST", "/attempt-overrides", override(aid, extraTimeInMs=900_000, reason="AA")
    )
    assert status == 201 and doc["data"]["attributes"]["extraTimeInMs"] == 900_000
    oid = doc["data"]["id"]
    status, doc = await call(sb, http, "POST", "/attempt-overrides", override(aid, reason="x"))
    assert status == 400 and doc["errors"][0]["source"]["pointer"] == "/data/attributes"
    status, doc = await call(
        sb,
        http,
        "POST",
        "/attempt-overrides",
        override(aid, extraTimeInMs=-1, deactivateAt="soon", attemptsAllowed=0),
    )
    pointers = sorted(e["source"]["pointer"] for e in doc["errors"])
    assert status == 400 and pointers == [
        "/data/attributes/attemptsAllowed",
        "/data/attributes/deactivateAt",
        "/data/attributes/extraTimeInMs",
    ]
    status, _ = await call(sb, http, "DELETE", f"/attempt-overrides/{oid}")
    assert status == 204
    status, doc = await call(sb, http, "GET", "/attempt-overrides")
    assert doc["data"] == []


async def test_marking_entries_need_a_marker_a_submitted_attempt_and_a_published_exam(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """A marker of the attempt (as Subject-User) records marks; others are refused by code."""
    aid = published_attempt(sb, "submitted")
    attempt = sb.store.attempts[aid]
    exam = sb.store.exams[attempt.exam_id]
    pool = sb.store.groups[exam.pools[MARKER_ROLES["moderating"].pool]]
    marker = next(iter(pool.members))
    status, doc = await call(sb, http, "POST", "/marking-entries", entry(aid, credits=7))
    assert status == 403 and doc["errors"][0]["code"] == "not_a_marker"
    role = f"/attempts/{aid}/relationships/moderating-markers"
    status, _ = await call(sb, http, "POST", role, {"data": [{"type": "User", "id": marker}]})
    assert status == 204
    as_marker = {"Subject-User": marker}
    body = entry(aid, credits=7, penalties=1, status="pending")
    status, doc = await call(sb, http, "POST", "/marking-entries", body, headers=as_marker)
    assert status == 201, doc
    attrs = doc["data"]["attributes"]
    assert (attrs["role"], attrs["points"], attrs["status"]) == ("moderating", 6, "pending")
    rels = doc["data"]["relationships"]
    assert rels["owner"]["data"]["id"] == marker
    assert rels["candidate"]["data"]["id"] == attempt.user_id
    eid = doc["data"]["id"]
    patch = {"data": {"type": "MarkingEntry", "id": eid, "attributes": {"status": "submitted"}}}
    status, doc = await call(sb, http, "PATCH", f"/marking-entries/{eid}", patch)
    assert status == 200 and doc["data"]["attributes"]["status"] == "submitted"
    status, doc = await call(sb, http, "PATCH", f"/marking-entries/{eid}", patch)
    assert status == 409 and doc["errors"][0]["code"] == "entry_submitted"
    status, doc = await call(sb, http, "GET", "/marking-entries", params={"filter[owner]": marker})
    assert [d["id"] for d in doc["data"]] == [eid]
    open_one = next(
        a.id for a in sb.store.attempts_by_exam[exam.id] if a.exam_status != "submitted"
    )
    role = f"/attempts/{open_one}/relationships/moderating-markers"
    status, _ = await call(sb, http, "POST", role, {"data": [{"type": "User", "id": marker}]})
    assert status == 204
    status, doc = await call(sb, http, "POST", "/marking-entries", entry(open_one, marker))
    assert status == 409 and doc["errors"][0]["code"] == "not_submitted"
    draft_exam = next(e for e in sb.store.exams.values() if e.status == "draft")
    draft = sb.store.attempts_by_exam[draft_exam.id][0].id
    status, doc = await call(sb, http, "POST", "/marking-entries", entry(draft, marker))
    assert status == 403 and doc["errors"][0]["code"] == "exam_draft"


async def test_locks_overrides_and_entries_survive_a_restart(tmp_path: Path) -> None:
    """The records are kept in the state file: a restarted sandbox still has them."""
    state = str(tmp_path / "state.json")
    async with (
        Sandbox(SandboxConfig(seed=3, users=20, state=state)) as box,
        aiohttp.ClientSession() as http,
    ):
        aid = published_attempt(box)
        status, doc = await call(box, http, "POST", "/attempt-locks", lock(aid))
        assert status == 201
        lock_id = doc["data"]["id"]
        status, _ = await call(
            box, http, "POST", "/attempt-overrides", override(aid, attemptsAllowed=2)
        )
        assert status == 201
        status, _ = await call(box, http, "DELETE", f"/attempt-locks/{lock_id}")
        status, doc = await call(box, http, "POST", "/attempt-locks", lock(aid, "again"))
        second = doc["data"]["id"]
    async with Sandbox(SandboxConfig(state=state)) as box:
        kinds = sorted((d.type, d.link("attempt")) for d in box.store.docs.values())
        assert kinds == [("AttemptLock", aid), ("AttemptOverride", aid)]
        assert second in box.store.docs and lock_id not in box.store.docs
        assert box.store.docs[second].attributes["reason"] == "again"
