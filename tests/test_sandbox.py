"""The sandbox's routes answer as the contract says: auth, pagination, filters, validation,
membership and marker sets, timer resets, exports, Subject-User, media types, control routes."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from synap_bulk.jsonapi import MEDIA_TYPE
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sandbox.cli import add_arguments, build_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(SandboxConfig(seed=7, users=30, groups=3, attempts_per_exam=12)) as box:
        yield box


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    """A tiny helper: JSON:API requests with the sandbox's token."""

    def __init__(self, sb: Sandbox, http: aiohttp.ClientSession) -> None:
        self.sb = sb
        self.http = http

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = "default",
        content_type: str = MEDIA_TYPE,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        hdrs: dict[str, str] = {}
        if token == "default":
            hdrs["Authorization"] = f"Bearer {self.sb.token}"
        elif token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            hdrs["Content-Type"] = content_type
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.update(headers or {})
        url = path if path.startswith("http") else self.sb.url + path
        async with self.http.request(method, url, data=data, headers=hdrs, params=params) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            is_json = ctype in (MEDIA_TYPE, "application/json")
            doc = json.loads(raw) if raw and is_json else raw
            return r.status, doc, r


@pytest.fixture
def api(sb: Sandbox, http: aiohttp.ClientSession) -> Api:
    return Api(sb, http)


def registration(email: str, name: str = "Test User", **attrs: Any) -> dict[str, Any]:
    return {
        "data": {
            "type": "UserRegistration",
            "attributes": {"name": name, "emailAddress": email, **attrs},
        }
    }


def pointers(doc: dict[str, Any]) -> list[str]:
    return [e["source"]["pointer"] for e in doc["errors"]]


def published_attempt(sb: Sandbox) -> str:
    exam = next(e for e in sb.store.exams.values() if e.status == "published")
    return sb.store.attempts_by_exam[exam.id][0].id


def draft_attempt(sb: Sandbox) -> str:
    exam = next(e for e in sb.store.exams.values() if e.status == "draft")
    return sb.store.attempts_by_exam[exam.id][0].id


# ----------------------------------------------------------------------------- authentication

ALL_ROUTES = [
    ("GET", "/portals/current"),
    ("GET", "/portals/x"),
    ("GET", "/users"),
    ("GET", "/users/me"),
    ("GET", "/users/x"),
    ("PATCH", "/users/x"),
    ("DELETE", "/users/x"),
    ("POST", "/user-registrations"),
    ("GET", "/user-groups"),
    ("POST", "/user-groups"),
    ("GET", "/user-groups/x"),
    ("PATCH", "/user-groups/x"),
    ("DELETE", "/user-groups/x"),
    ("GET", "/user-groups/x/relationships/users"),
    ("POST", "/user-groups/x/relationships/users"),
    ("DELETE", "/user-groups/x/relationships/users"),
    ("GET", "/exam-v-2s"),
    ("GET", "/exam-v-2s/x"),
    ("GET", "/attempts"),
    ("GET", "/attempts/x"),
    ("GET", "/attempts/x/relationships/moderating-markers"),
    ("POST", "/attempts/x/relationships/markers"),
    ("DELETE", "/attempts/x/relationships/back-readers"),
    ("POST", "/attempt-timer-resets"),
    ("POST", "/export-enriched-attempts"),
    ("GET", "/background-jobs/x"),
    ("GET", "/no-such-route"),
]


@pytest.mark.parametrize("token", [None, "p:wrong"])
async def test_every_route_needs_the_token(api: Api, token: str | None) -> None:
    """Without a token or with a wrong one every /v3 and /_sandbox route answers 401 errors."""
    for method, path in ALL_ROUTES:
        status, doc, resp = await api.call(method, path, {"data": {}}, token=token)
        assert status == 401, (method, path)
        assert doc["errors"][0]["status"] == "401"
        assert resp.headers["Content-Type"] == MEDIA_TYPE
    for method, path in [
        ("GET", "/_sandbox/stats"),
        ("POST", "/_sandbox/reset"),
        ("PATCH", "/_sandbox/config"),
        ("GET", "/_sandbox/config"),
    ]:
        status, doc, _ = await api.call(method, api.sb.root + path, {}, token=token)
        assert status == 401, path
        assert doc["errors"][0]["status"] == "401"
    stats = api.sb.statistics()
    assert stats.by_status == {401: len(ALL_ROUTES)}
    assert api.sb.store.user_by_email("admin@sandbox.example") is not None


async def test_misconfigured_pat_variant_answers_404(http: aiohttp.ClientSession) -> None:
    """With bad_token_status=404 a wrong token gets the docs' 404 errors; a missing one 401."""
    async with Sandbox(SandboxConfig(users=2, bad_token_status=404)) as box:
        api = Api(box, http)
        status, doc, _ = await api.call("GET", "/users", token="p:revoked")
        assert status == 404
        assert doc["errors"][0]["status"] == "404"
        status, _, _ = await api.call("GET", "/users", token=None)
        assert status == 401


async def test_extra_tokens_are_valid_and_counted_by_label(http: aiohttp.ClientSession) -> None:
    """Extra PATs work and are reported by label, never by value."""
    async with Sandbox(SandboxConfig(users=2, extra_tokens=["p:second"])) as box:
        api = Api(box, http)
        assert (await api.call("GET", "/portals/current", token="p:second"))[0] == 200
        assert (await api.call("GET", "/portals/current"))[0] == 200
        stats = box.statistics()
        assert stats.by_token == {"token": 1, "token-1": 1}
        _, raw, _ = await api.call("GET", box.root + "/_sandbox/stats")
        assert b"p:second" not in json.dumps(raw).encode()


# ----------------------------------------------------------------------------- reads


async def test_portal_current_and_by_id(api: Api) -> None:
    """The token's portal is served at /portals/current and by its id; other ids are 404."""
    status, doc, _ = await api.call("GET", "/portals/current")
    assert status == 200 and doc["data"]["type"] == "Portal"
    pid = doc["data"]["id"]
    assert (await api.call("GET", f"/portals/{pid}"))[1]["data"]["id"] == pid
    status, doc, _ = await api.call("GET", "/portals/nope")
    assert status == 404 and doc["errors"][0]["code"] == "not_found"


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/users", "User"), ("/user-groups", "UserGroup"), ("/attempts", "Attempt"),
     ("/exam-v-2s", "Exam-V-2")],
)  # fmt: skip
async def test_pagination_links_walk_each_collection_once(api: Api, path: str, kind: str) -> None:
    """Following links.next from the first page visits every resource exactly once."""
    status, first, _ = await api.call("GET", path, params={"page[size]": "7"})
    assert status == 200
    total = first["meta"]["total"]
    assert first["links"]["prev"] is None
    seen: list[str] = []
    doc = first
    pages = 0
    while True:
        pages += 1
        assert all(r["type"] == kind for r in doc["data"])
        seen += [r["id"] for r in doc["data"]]
        if doc["links"]["next"] is None:
            assert doc["links"]["self"] == doc["links"]["last"]
            break
        assert doc["links"]["next"].startswith(api.sb.url)
        _, doc, _ = await api.call("GET", doc["links"]["next"])
        assert doc["links"]["prev"] is not None
    assert len(seen) == len(set(seen)) == total
    assert pages == max(1, -(-total // 7))


async def test_offset_pagination_and_bounds(api: Api) -> None:
    """page[offset]/page[limit] work too; a page size beyond the maximum is a 400."""
    _, doc, _ = await api.call("GET", "/users", params={"page[offset]": "5", "page[limit]": "3"})
    ids = [u.id for u in api.sb.store.user_list()]
    assert [u["id"] for u in doc["data"]] == ids[5:8]
    status, doc, _ = await api.call("GET", "/users", params={"page[size]": "501"})
    assert status == 400
    assert doc["errors"][0]["source"] == {"parameter": "page[size]"}
    status, doc, _ = await api.call("GET", "/users", params={"page[number]": "x"})
    assert status == 400


async def test_user_filters(api: Api, sb: Sandbox) -> None:
    """filter[emailAddress] is case-insensitive exact; externalId and userGroup filter too."""
    user = sb.store.user_list()[-1]
    _, doc, _ = await api.call("GET", "/users", params={"filter[emailAddress]": user.email.upper()})
    assert [u["id"] for u in doc["data"]] == [user.id]
    _, doc, _ = await api.call("GET", "/users", params={"filter[emailAddress]": "x" + user.email})
    assert doc["data"] == [] and doc["meta"]["total"] == 0
    assert user.external_id is not None
    _, doc, _ = await api.call("GET", "/users", params={"filter[externalId]": user.external_id})
    assert [u["id"] for u in doc["data"]] == [user.id]
    cohort = next(g for g in sb.store.groups.values() if g.name == "Cohort 01")
    _, doc, _ = await api.call(
        "GET", "/users", params={"filter[userGroup]": cohort.id, "page[size]": "500"}
    )
    assert {u["id"] for u in doc["data"]} == set(cohort.members) and len(cohort.members) == 10
    status, doc, _ = await api.call("GET", "/users", params={"filter[email]": "a@b.c"})
    assert status == 400 and doc["errors"][0]["source"]["parameter"] == "filter[email]"


async def test_attempt_filters_and_sort(api: Api, sb: Sandbox) -> None:
    """Attempts filter by exam, user, examStatus and updatedSince, and sort by -updatedAt."""
    exam_id = next(iter(sb.store.exams))
    p = {"page[size]": "500"}
    _, doc, _ = await api.call("GET", "/attempts", params={**p, "filter[examV2]": exam_id})
    assert {a["id"] for a in doc["data"]} == {a.id for a in sb.store.attempts_by_exam[exam_id]}
    one = sb.store.attempts_by_exam[exam_id][0]
    _, doc, _ = await api.call("GET", "/attempts", params={**p, "filter[user]": one.user_id})
    assert {a["relationships"]["user"]["data"]["id"] for a in doc["data"]} == {one.user_id}
    _, doc, _ = await api.call("GET", "/attempts", params={**p, "filter[status]": "submitted"})
    expected = [a.id for a in sb.store.attempt_list() if a.exam_status == "submitted"]
    assert [a["id"] for a in doc["data"]] == expected and expected
    assert all(a["attributes"]["score"] is not None for a in doc["data"])
    stamps = sorted(a.updated_at for a in sb.store.attempt_list())
    cutoff = stamps[len(stamps) // 2]
    since = doc_iso(cutoff)
    _, doc, _ = await api.call("GET", "/attempts", params={**p, "filter[updatedSince]": since})
    assert doc["meta"]["total"] == sum(1 for s in stamps if round(s, 3) >= round(cutoff, 3))
    _, doc, _ = await api.call("GET", "/attempts", params={**p, "sort": "-updatedAt"})
    got = [a["attributes"]["updatedAt"] for a in doc["data"]]
    assert got == sorted(got, reverse=True)
    status, doc, _ = await api.call("GET", "/attempts", params={"filter[status]": "done"})
    assert status == 400 and doc["errors"][0]["source"]["parameter"] == "filter[status]"
    status, doc, _ = await api.call("GET", "/attempts", params={"filter[updatedSince]": "soon"})
    assert status == 400
    status, doc, _ = await api.call("GET", "/attempts", params={"sort": "colour"})
    assert status == 400 and doc["errors"][0]["code"] == "invalid_sort"


async def test_an_exams_sorted_pages_stay_exact_when_it_gains_an_attempt(
    api: Api, sb: Sandbox
) -> None:
    """An exam's attempts sorted by id, page after page (the sandbox keeps that sort between
    pages), come out as a fresh sort would, and an attempt added later is in the next listing."""
    exam_id = next(iter(sb.store.exams))
    attempts = sb.store.attempts_by_exam[exam_id]

    async def listing(sort: str) -> list[str]:
        ids: list[str] = []
        for page in range(1, 100):
            params = {"filter[examV2]": exam_id, "sort": sort, "page[size]": "3"}
            _, doc, _ = await api.call(
                "GET", "/attempts", params={**params, "page[number]": str(page)}
            )
            ids += [a["id"] for a in doc["data"]]
            if not doc["data"]:
                return ids
        raise AssertionError("more pages than attempts")

    assert await listing("-id") == sorted((a.id for a in attempts), reverse=True)
    assert await listing("id") == sorted(a.id for a in attempts)
    twin = copy.copy(attempts[0])
    twin.id, twin.raw = "zz-late-attempt", None  # (raw: its cached rendering)
    sb.store._insert_attempt(twin)
    assert (await listing("-id"))[0] == "zz-late-attempt"
    assert await listing("id") == sorted(a.id for a in attempts) and len(attempts) >= 4


def doc_iso(epoch: float) -> str:
    from synap_bulk.sandbox.store import iso

    return iso(epoch)


async def test_groups_and_exams(api: Api, sb: Sandbox) -> None:
    """Groups filter by name; exams carry status and the candidate and five pool groups."""
    _, doc, _ = await api.call("GET", "/user-groups", params={"filter[name]": "Students"})
    assert [g["attributes"]["name"] for g in doc["data"]] == ["Students"]
    _, doc, _ = await api.call("GET", "/exam-v-2s")
    statuses = [e["attributes"]["status"] for e in doc["data"]]
    assert statuses == ["published", "draft"]
    rels = doc["data"][0]["relationships"]
    for name in ("userGroup", "markers", "moderatingMarkers", "escalatingMarkers",
                 "auditingMarkers", "backReadingMarkers"):  # fmt: skip
        assert rels[name]["data"]["type"] == "UserGroup"
    _, doc, _ = await api.call("GET", "/exam-v-2s", params={"filter[status]": "draft"})
    assert len(doc["data"]) == 1
    status, _, _ = await api.call("GET", "/exam-v-2s/nope")
    assert status == 404


# ----------------------------------------------------------------------------- registrations


async def test_registration_creates_a_user_in_one_group(api: Api, sb: Sandbox) -> None:
    """A registration answers 201 with the new user's id and puts it into the one group given."""
    cohort = next(g for g in sb.store.groups.values() if g.name == "Cohort 02")
    body = registration("New.Person@Example.org", externalId="EXT-1", password="s3cret-pass")
    body["data"]["relationships"] = {
        "userGroups": {"data": [{"type": "UserGroup", "id": cohort.id}]}
    }
    status, doc, resp = await api.call("POST", "/user-registrations", body)
    assert status == 201
    uid = doc["data"]["id"]
    assert resp.headers["Location"].endswith(f"/v3/users/{uid}")
    assert "password" not in doc["data"]["attributes"]
    user = sb.store.user_by_email("new.person@example.org")
    assert user is not None and user.id == uid and list(user.groups) == [cohort.id]
    _, got, _ = await api.call("GET", f"/users/{uid}")
    assert got["data"]["attributes"]["externalId"] == "EXT-1"
    status, _, _ = await api.call("POST", "/user-registrations", registration("other@example.org"))
    default = sb.store.user_by_email("other@example.org")
    assert status == 201 and default is not None
    assert [sb.store.groups[g].name for g in default.groups] == ["Students"]
    assert sb.statistics().creates_by_key == {"new.person@example.org": 1, "other@example.org": 1}


async def test_registration_reports_each_invalid_field(api: Api) -> None:
    """Each invalid field is its own error object, with its pointer, in one 400."""
    body = registration("not-an-email", name="", password="short", externalId=7, locale=5)
    status, doc, _ = await api.call("POST", "/user-registrations", body)
    assert status == 400
    assert pointers(doc) == [
        "/data/attributes/name",
        "/data/attributes/emailAddress",
        "/data/attributes/password",
        "/data/attributes/externalId",
        "/data/attributes/locale",
    ]
    status, doc, _ = await api.call(
        "POST", "/user-registrations", {"data": {"type": "UserRegistration", "attributes": {}}}
    )
    assert [e["code"] for e in doc["errors"]] == ["required", "required"]


async def test_duplicates_are_refused_and_counted(api: Api, sb: Sandbox) -> None:
    """A taken email (any case) or externalId is a 400 'taken' and counts in duplicate_creates."""
    seeded = sb.store.user_list()[-1]
    assert seeded.external_id is not None
    status, doc, _ = await api.call(
        "POST", "/user-registrations", registration(seeded.email.upper())
    )
    assert status == 400 and doc["errors"][0]["code"] == "taken"
    assert pointers(doc) == ["/data/attributes/emailAddress"]
    status, doc, _ = await api.call(
        "POST",
        "/user-registrations",
        registration("fresh@example.org", externalId=seeded.external_id),
    )
    assert status == 400 and pointers(doc) == ["/data/attributes/externalId"]
    stats = sb.statistics()
    assert stats.duplicate_creates == 2
    assert stats.creates_by_key == {}
    assert sb.store.user_by_email("fresh@example.org") is None


async def test_registration_allows_one_group_only(api: Api, sb: Sandbox) -> None:
    """Two userGroups in one registration are refused (the docs' one-group rule)."""
    gids = list(sb.store.groups)[:2]
    body = registration("two@example.org")
    body["data"]["relationships"] = {
        "userGroups": {"data": [{"type": "UserGroup", "id": g} for g in gids]}
    }
    status, doc, _ = await api.call("POST", "/user-registrations", body)
    assert status == 400
    assert doc["errors"][0]["code"] == "too_many_groups"
    assert pointers(doc) == ["/data/relationships/userGroups/data"]


# ----------------------------------------------------------------------------- users


async def test_user_patch_and_delete(api: Api, sb: Sandbox) -> None:
    """PATCH changes writable fields (taken email refused, read-only refused); DELETE is 204."""
    a, b = sb.store.user_list()[-2:]
    body = {
        "data": {"type": "User", "id": a.id, "attributes": {"name": "Renamed", "externalId": None}}
    }
    status, doc, _ = await api.call("PATCH", f"/users/{a.id}", body)
    assert status == 200 and doc["data"]["attributes"]["name"] == "Renamed"
    assert doc["data"]["attributes"]["externalId"] is None
    body["data"]["attributes"] = {"emailAddress": b.email, "createdAt": "2020-01-01T00:00:00Z"}
    status, doc, _ = await api.call("PATCH", f"/users/{a.id}", body)
    assert status == 400
    assert [e["code"] for e in doc["errors"]] == ["read_only", "taken"]
    status, _, _ = await api.call("DELETE", f"/users/{a.id}")
    assert status == 204
    assert (await api.call("GET", f"/users/{a.id}"))[0] == 404
    assert sb.store.user_by_email(a.email) is None


# ----------------------------------------------------------------------------- groups


async def test_group_crud(api: Api, sb: Sandbox) -> None:
    """Groups are created (201), renamed (200) and deleted (204); default groups stay."""
    status, doc, _ = await api.call(
        "POST", "/user-groups", {"data": {"type": "UserGroup", "attributes": {"name": "Resits"}}}
    )
    assert status == 201
    gid = doc["data"]["id"]
    patch = {"data": {"type": "UserGroup", "id": gid, "attributes": {"name": "Resits 2026"}}}
    status, doc, _ = await api.call("PATCH", f"/user-groups/{gid}", patch)
    assert status == 200 and doc["data"]["attributes"]["name"] == "Resits 2026"
    assert (await api.call("DELETE", f"/user-groups/{gid}"))[0] == 204
    students = sb.store.default_groups["student"]
    status, doc, _ = await api.call("DELETE", f"/user-groups/{students}")
    assert status == 403
    assert sb.statistics().creates_by_key == {"UserGroup:Resits": 1}


async def test_group_membership_has_set_semantics(api: Api, sb: Sandbox) -> None:
    """Adding a member twice changes nothing; removing a non-member is fine; PATCH replaces."""
    status, doc, _ = await api.call(
        "POST", "/user-groups", {"data": {"type": "UserGroup", "attributes": {"name": "Set"}}}
    )
    gid = doc["data"]["id"]
    u1, u2, u3 = (u.id for u in sb.store.user_list()[-3:])
    path = f"/user-groups/{gid}/relationships/users"

    def link(*ids: str) -> dict[str, Any]:
        return {"data": [{"type": "User", "id": i} for i in ids]}

    assert (await api.call("POST", path, link(u1, u2)))[0] == 204
    assert (await api.call("POST", path, link(u1, u2, u1)))[0] == 204
    _, doc, _ = await api.call("GET", path)
    assert [r["id"] for r in doc["data"]] == [u1, u2]
    assert (await api.call("DELETE", path, link(u2, u3)))[0] == 204
    assert list(sb.store.groups[gid].members) == [u1]
    assert (await api.call("PATCH", path, link(u3)))[0] == 204
    assert list(sb.store.groups[gid].members) == [u3]
    assert gid in sb.store.users[u3].groups and gid not in sb.store.users[u1].groups
    status, doc, _ = await api.call("POST", path, link(u1, "ghost"))
    assert status == 404 and pointers(doc) == ["/data/1"]
    assert list(sb.store.groups[gid].members) == [u3]
    status, doc, _ = await api.call("POST", path, {"data": [{"type": "UserGroup", "id": u1}]})
    assert status == 409


# ----------------------------------------------------------------------------- markers


async def test_marker_assignment_checks_the_pool(api: Api, sb: Sandbox) -> None:
    """A pool member is assigned (as a set); a non-member is a 400 with its pointer."""
    aid = published_attempt(sb)
    marker0, marker1 = sb.store.marker_ids[:2]
    path = f"/attempts/{aid}/relationships/moderating-markers"
    body = {"data": [{"type": "User", "id": marker0}]}
    assert (await api.call("POST", path, body))[0] == 204
    assert (await api.call("POST", path, body))[0] == 204
    _, doc, _ = await api.call("GET", path)
    assert [r["id"] for r in doc["data"]] == [marker0]
    _, doc, _ = await api.call("GET", f"/attempts/{aid}")
    assert doc["data"]["relationships"]["moderatingMarkers"]["data"] == [
        {"type": "User", "id": marker0}
    ]
    student = sb.store.student_ids[0]
    bad = {"data": [{"type": "User", "id": marker0}, {"type": "User", "id": marker1},
                    {"type": "User", "id": student}]}  # fmt: skip
    status, doc, _ = await api.call("POST", path, bad)
    assert status == 400
    assert [e["code"] for e in doc["errors"]] == ["not_in_pool", "not_in_pool"]
    assert pointers(doc) == ["/data/1", "/data/2"]
    assert (await api.call("POST", f"/attempts/{aid}/relationships/markers", {"data": [
        {"type": "User", "id": marker1}]}))[0] == 204  # fmt: skip
    assert (await api.call("DELETE", path, body))[0] == 204
    assert list(sb.store.attempts[aid].role_members("moderatingMarkers")) == []
    replace = {"data": [{"type": "User", "id": marker1}, {"type": "User", "id": marker0}]}
    markers = f"/attempts/{aid}/relationships/markers"
    assert (await api.call("PATCH", markers, replace))[0] == 204
    assert list(sb.store.attempts[aid].role_members("markers")) == [marker1, marker0]
    assert (await api.call("PATCH", markers, {"data": []}))[0] == 204
    assert list(sb.store.attempts[aid].role_members("markers")) == []
    assert (await api.call("GET", f"/attempts/{aid}/relationships/graders"))[0] == 404


async def test_draft_exam_attempts_are_forbidden(api: Api, sb: Sandbox) -> None:
    """Assigning markers on an attempt of a draft exam is a 403, as the docs' example says."""
    aid = draft_attempt(sb)
    body = {"data": [{"type": "User", "id": sb.store.marker_ids[0]}]}
    status, doc, _ = await api.call("POST", f"/attempts/{aid}/relationships/markers", body)
    assert status == 403 and doc["errors"][0]["code"] == "exam_draft"
    assert (await api.call("GET", f"/attempts/{aid}/relationships/markers"))[0] == 200


async def test_timer_reset(api: Api, sb: Sandbox) -> None:
    """A timer reset gives the attempt extra time (201); bad input has pointers; drafts 403."""
    aid = published_attempt(sb)
    before = sb.store.attempts[aid].extra_time_ms

    def body(ms: Any, attempt: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "AttemptTimerReset",
            "attributes": {"extraTimeInMs": ms, "reason": "fire alarm"},
        }
        if attempt:
            data["relationships"] = {"attempt": {"data": {"type": "Attempt", "id": attempt}}}
        return {"data": data}

    status, doc, _ = await api.call("POST", "/attempt-timer-resets", body(600_000, aid))
    assert status == 201 and doc["data"]["type"] == "AttemptTimerReset"
    assert sb.store.attempts[aid].extra_time_ms == before + 600_000
    _, doc, _ = await api.call("GET", f"/attempts/{aid}")
    assert doc["data"]["attributes"]["extraTimeInMs"] == before + 600_000
    status, doc, _ = await api.call("POST", "/attempt-timer-resets", body(-5, None))
    assert status == 400
    assert pointers(doc) == ["/data/attributes/extraTimeInMs", "/data/relationships/attempt"]
    status, _, _ = await api.call("POST", "/attempt-timer-resets", body(1000, "ghost"))
    assert status == 404
    status, _, _ = await api.call("POST", "/attempt-timer-resets", body(1000, draft_attempt(sb)))
    assert status == 403


# ----------------------------------------------------------------------------- exports


async def test_export_job_lifecycle_and_file(api: Api, sb: Sandbox) -> None:
    """An export job goes pending -> running -> completed over polls; its file is NDJSON."""
    exam_id = next(iter(sb.store.exams))
    body = {
        "data": {
            "type": "ExportEnrichedAttempt",
            "attributes": {"filter": {"status": "submitted"}},
            "relationships": {"examV2": {"data": {"type": "Exam-V-2", "id": exam_id}}},
        }
    }
    status, doc, resp = await api.call("POST", "/export-enriched-attempts", body)
    assert status == 201 and doc["data"]["type"] == "BackgroundJob"
    assert doc["data"]["attributes"]["status"] == "pending"
    job = f"/background-jobs/{doc['data']['id']}"
    assert resp.headers["Location"].endswith("/v3" + job)
    seen = []
    for _ in range(3):
        _, doc, _ = await api.call("GET", job)
        seen.append((doc["data"]["attributes"]["status"], doc["data"]["attributes"]["progress"]))
    assert [s for s, _ in seen] == ["running", "running", "completed"]
    assert [p for _, p in seen] == sorted(p for _, p in seen) and seen[-1][1] == 1.0
    url = doc["data"]["attributes"]["fileUrl"]
    status, raw, resp = await api.call("GET", url, token=None)
    assert status == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in raw.splitlines()]
    expected = [a.id for a in sb.store.attempts_by_exam[exam_id] if a.exam_status == "submitted"]
    assert [a["id"] for a in lines] == expected and expected
    assert all(a["type"] == "Attempt" and "emailAddress" in a["meta"]["user"] for a in lines)
    status, _, _ = await api.call("GET", url.split("?")[0] + "?signature=forged", token=None)
    assert status == 403
    bad = {"data": {"type": "ExportEnrichedAttempt", "attributes": {"filter": {"colour": "x"}}}}
    status, doc, _ = await api.call("POST", "/export-enriched-attempts", bad)
    assert status == 400 and pointers(doc) == ["/data/attributes/filter/colour"]


# ----------------------------------------------------------------------------- Subject-User


async def test_subject_user_acts_with_that_users_permissions(api: Api, sb: Sandbox) -> None:
    """A Subject-User header makes the request act as that user: students and educators can
    do less than the admin the PAT stands for."""
    student = sb.store.student_ids[0]
    other = sb.store.student_ids[1]
    educator = sb.store.marker_ids[0]
    group = {"data": {"type": "UserGroup", "attributes": {"name": "Nope"}}}
    as_student = {"Subject-User": student}
    as_educator = {"Subject-User": educator}
    status, doc, _ = await api.call("POST", "/user-groups", group, headers=as_student)
    assert status == 403 and doc["errors"][0]["code"] == "forbidden"
    assert (await api.call("POST", "/user-groups", group, headers=as_educator))[0] == 403
    assert (await api.call("GET", f"/users/{student}", headers=as_student))[0] == 200
    assert (await api.call("GET", f"/users/{other}", headers=as_student))[0] == 403
    assert (await api.call("GET", "/attempts", headers=as_student))[0] == 403
    assert (await api.call("GET", "/attempts", headers=as_educator))[0] == 200
    patch = {"data": {"type": "User", "id": student, "attributes": {"timeZone": "Europe/Rome"}}}
    assert (await api.call("PATCH", f"/users/{student}", patch, headers=as_student))[0] == 200
    assert sb.store.users[student].time_zone == "Europe/Rome"
    status, doc, _ = await api.call("GET", "/users", headers={"Subject-User": "ghost"})
    assert status == 400 and doc["errors"][0]["source"] == {"header": "Subject-User"}
    assert not sb.store.groups_named("Nope")


async def test_subject_user_header_name_is_a_setting(http: aiohttp.ClientSession) -> None:
    """The Subject-User header's name comes from the config (it is undocumented)."""
    async with Sandbox(SandboxConfig(users=3, subject_user_header="X-Act-As")) as box:
        api = Api(box, http)
        student = box.store.student_ids[0]
        assert (await api.call("GET", "/attempts", headers={"X-Act-As": student}))[0] == 403
        assert (await api.call("GET", "/attempts", headers={"Subject-User": student}))[0] == 200


# ----------------------------------------------------------------------------- media types


async def test_request_body_media_type_and_resource_type(api: Api, sb: Sandbox) -> None:
    """Bodies must be application/vnd.api+json (415), carry the endpoint's data.type (409), no
    client id on create (403), valid JSON (400); Accept with only a modified media type is 406."""
    body = registration("mt@example.org")
    status, doc, _ = await api.call(
        "POST", "/user-registrations", body, content_type="application/json"
    )
    assert status == 415 and doc["errors"][0]["source"] == {"header": "Content-Type"}
    status, _, _ = await api.call(
        "POST", "/user-registrations", body, content_type=MEDIA_TYPE + "; charset=utf-8"
    )
    assert status == 415
    wrong = {
        "data": {"type": "User", "attributes": {"name": "x", "emailAddress": "mt@example.org"}}
    }
    status, doc, _ = await api.call("POST", "/user-registrations", wrong)
    assert status == 409 and pointers(doc) == ["/data/type"]
    with_id = registration("mt@example.org")
    with_id["data"]["id"] = "mine"
    assert (await api.call("POST", "/user-registrations", with_id))[0] == 403
    status, doc, _ = await api.call("POST", "/user-registrations", b"{not json")
    assert status == 400 and doc["errors"][0]["code"] == "invalid_json"
    uid = sb.store.student_ids[0]
    patch = {"data": {"type": "User", "id": "other", "attributes": {"name": "x"}}}
    assert (await api.call("PATCH", f"/users/{uid}", patch))[0] == 409
    assert sb.store.user_by_email("mt@example.org") is None
    status, doc, resp = await api.call("PUT", "/users")
    assert status == 405 and resp.headers["Allow"] == "GET"
    accept = {"Accept": MEDIA_TYPE + "; version=2"}
    status, doc, _ = await api.call("GET", "/users", headers=accept)
    assert status == 406 and doc["errors"][0]["source"] == {"header": "Accept"}
    accept = {"Accept": f"{MEDIA_TYPE}; version=2, {MEDIA_TYPE}"}
    assert (await api.call("GET", "/users", headers=accept))[0] == 200


# ----------------------------------------------------------------------------- control


async def test_stats_count_what_was_sent(api: Api, sb: Sandbox) -> None:
    """requests == sum(by_status) == sum(by_route); /_sandbox/stats agrees with statistics()."""
    await api.call("GET", "/users")
    await api.call("GET", "/users/nope")
    await api.call("GET", "/users", token=None)
    await api.call("POST", "/user-registrations", registration("count@example.org"))
    stats = sb.statistics()
    assert stats.requests == 4
    assert stats.by_status == {200: 1, 404: 1, 401: 1, 201: 1}
    assert stats.by_route == {"users.list": 2, "users.get": 1, "user-registrations.create": 1}
    assert sum(stats.by_token.values()) == 3
    assert stats.resources["User"] == len(sb.store.users)
    _, doc, _ = await api.call("GET", sb.root + "/_sandbox/stats")
    assert doc["requests"] == 4 and doc["by_status"]["201"] == 1
    assert doc["creates_by_key"] == {"count@example.org": 1}
    assert sb.statistics().control_requests == 1


async def test_reset_and_config_routes(api: Api, sb: Sandbox) -> None:
    """PATCH /_sandbox/config changes behaviour live; POST /_sandbox/reset reseeds and zeroes."""
    await api.call("POST", "/user-registrations", registration("gone@example.org"))
    status, doc, _ = await api.call(
        "PATCH", sb.root + "/_sandbox/config", {"rate": 1, "burst": 1},
        content_type="application/json",
    )  # fmt: skip
    assert status == 200 and doc["rate"] == 1 and "token" not in doc
    assert sb.config.rate == 1
    statuses = [(await api.call("GET", "/portals/current"))[0] for _ in range(3)]
    assert statuses[0] == 200 and 429 in statuses
    status, doc, _ = await api.call("PATCH", sb.root + "/_sandbox/config", {"rate": -1})
    assert status == 400 and doc["errors"][0]["code"] == "invalid_config"
    status, doc, _ = await api.call("PATCH", sb.root + "/_sandbox/config", {"colour": 1})
    assert status == 400
    _, doc, _ = await api.call("GET", sb.root + "/_sandbox/config")
    assert doc["rate"] == 1
    assert (await api.call("POST", sb.root + "/_sandbox/reset"))[0] == 204
    assert sb.store.user_by_email("gone@example.org") is None
    assert sb.statistics().requests == 0
    sb.configure(rate=0)
    assert (await api.call("GET", "/portals/current"))[0] == 200


async def test_seeded_data_is_deterministic() -> None:
    """The same seed gives the same ids, emails and attempts; another seed does not."""

    def fingerprint(seed: int) -> list[tuple[str, ...]]:
        from synap_bulk.sandbox.store import Store

        store = Store(SandboxConfig(seed=seed, users=20, attempts_per_exam=10))
        users = [(u.id, u.email, u.external_id or "") for u in store.user_list()]
        attempts = [(a.id, a.user_id, a.exam_status) for a in store.attempt_list()]
        return users + attempts

    assert fingerprint(3) == fingerprint(3)
    assert fingerprint(3) != fingerprint(4)


def test_route_names_are_the_documented_ones(sb: Sandbox) -> None:
    """Every route's counter name is in ROUTE_NAMES (route_latency_ms keys are checked too)."""
    from synap_bulk.sandbox.config import ROUTE_NAMES

    names = {r.name for r in sb._app.routes} | {"unmatched"}
    assert names == set(ROUTE_NAMES)
    with pytest.raises(ValueError, match="unknown route 'users/get'"):
        SandboxConfig(route_latency_ms={"users/get": 5})


def test_seed_one_ids_are_stable() -> None:
    """Seed 1's ids never change: demo job files (jobs/demo) name seeded attempts."""
    from synap_bulk.sandbox.store import Store

    store = Store(SandboxConfig(seed=1, users=200, exams=2, attempts_per_exam=60))
    published, draft = store.attempts["sy0zQkLKMX"], store.attempts["aZDzucgT0A"]
    assert store.users[published.user_id].external_id == "S000001"
    assert store.exams[published.exam_id].status == "published"
    assert store.exams[draft.exam_id].status == "draft"


# ----------------------------------------------------------------------------- CLI


def test_cli_flags_build_the_config() -> None:
    """The documented command line maps onto SandboxConfig fields."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--port", "8080", "--seed", "1", "--users", "1000", "--exams", "5"),
            *("--attempts-per-exam", "200", "--markers", "40", "--rate", "50", "--burst", "50"),
            *("--latency-ms", "20", "--jitter-ms", "10", "--fault-rate", "0.02", "--token", "p:x"),
            *("--faults", "500=2,drop=1", "--route-latency", "users.list=5"),
            *("--retry-after", "http-date"),
        ]
    )
    cfg = build_config(args)
    assert (cfg.port, cfg.users, cfg.exams, cfg.attempts_per_exam, cfg.markers) == (
        8080, 1000, 5, 200, 40,
    )  # fmt: skip
    assert (cfg.rate, cfg.burst, cfg.latency_ms, cfg.jitter_ms) == (50, 50, 20, 10)
    assert cfg.fault_rate == 0.02 and cfg.faults == {"500": 2.0, "drop": 1.0}
    assert cfg.route_latency_ms == {"users.list": 5.0} and cfg.retry_after == "http-date"
    assert cfg.token == "p:x"


def test_standalone_sandbox_serves() -> None:
    """`python -m synap_bulk sandbox --port 0` prints its URL and answers with the token."""
    import os
    import urllib.request

    env = {**os.environ, "SYNAP_SANDBOX_TOKEN": "p:standalone", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "synap_bulk", "sandbox", "--port", "0", "--users", "3"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("sandbox listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert url.endswith("/v3")
        req = urllib.request.Request(
            url + "/users", headers={"Authorization": "Bearer p:standalone"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.load(resp)["meta"]["total"] == 3 + 1 + 10
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
