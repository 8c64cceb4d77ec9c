"""The sandbox with a state file remembers: across instances, clean stops and SIGKILLs; and it
answers ``GET /v3/users/me`` with the acting user."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from synap_bulk.jsonapi import MEDIA_TYPE
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sandbox.persist import SandboxStateError
from synap_bulk.sandbox.store import Store
from tests.test_sandbox import Api, registration

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"seed": 5, "users": 12, "groups": 3, "attempts_per_exam": 8, "markers": 4}


def cfg(state: Path | None, **kw: Any) -> SandboxConfig:
    return SandboxConfig(**{**SMALL, **kw}, state=str(state) if state is not None else None)


def fingerprint(store: Store) -> dict[str, Any]:
    """Everything a client can observe of a store, plus the indexes the handlers rely on."""

    def rendered(records: Any) -> list[bytes]:
        return [bytes(r.render()) for r in records]

    jobs = [
        (j.id, j.status, j.polls, j.steps, j.signature, j.filters, j.created_at, j.completed_at,
         None if j.items is None else [a.id for a in j.items])
        for j in store.jobs.values()
    ]  # fmt: skip
    return {
        "portal": bytes(store.portal.render()),
        "users": rendered(store.users.values()),
        "groups": rendered(store.groups.values()),
        "members": {g.id: list(g.members) for g in store.groups.values()},
        "exams": rendered(store.exams.values()),
        "attempts": rendered(store.attempts.values()),
        "resets": rendered(store.timer_resets.values()),
        "jobs": jobs,
        "by_exam": {k: [a.id for a in v] for k, v in store.attempts_by_exam.items()},
        "by_user": {k: [a.id for a in v] for k, v in store.attempts_by_user.items() if v},
        "keys": (dict(store.by_email), dict(store.by_external_id)),
        "seeded": (store.admin_id, store.default_groups, store.marker_ids, store.student_ids),
    }


def all_ids(store: Store) -> set[str]:
    ids = {store.portal.id} | store.retired
    for collection in (store.users, store.groups, store.exams, store.attempts):
        ids |= set(collection)
    return ids | set(store.timer_resets) | set(store.jobs)


async def register(api: Api, email: str, group: str | None = None) -> str:
    body = registration(email, externalId=email.split("@")[0])
    if group is not None:
        rel = {"userGroups": {"data": [{"type": "UserGroup", "id": group}]}}
        body["data"]["relationships"] = rel
    status, doc, _ = await api.call("POST", "/user-registrations", body)
    assert status == 201, doc
    user_id: str = doc["data"]["id"]
    return user_id


def users_doc(ids: list[str]) -> dict[str, Any]:
    return {"data": [{"type": "User", "id": i} for i in ids]}


async def many_writes(api: Api) -> None:
    """One write of every kind the sandbox has."""
    sb = api.sb
    store = sb.store
    cohort = next(g.id for g in store.groups.values() if g.name.startswith("Cohort"))
    alice = await register(api, "alice@example.org", cohort)
    bob = await register(api, "bob@example.org")
    gone = await register(api, "gone@example.org")
    attrs = {
        "name": "Alice Renamed",
        "emailAddress": "alice2@example.org",
        "externalId": None,
        "locale": "fr",
        "attr": {"k": [1, 2.5, None]},
    }
    patch = {"data": {"type": "User", "id": alice, "attributes": attrs}}
    assert (await api.call("PATCH", f"/users/{alice}", patch))[0] == 200
    assert (await api.call("DELETE", f"/users/{gone}"))[0] == 204
    status, doc, _ = await api.call(
        "POST", "/user-groups", {"data": {"type": "UserGroup", "attributes": {"name": "Extra"}}}
    )
    assert status == 201
    extra = doc["data"]["id"]
    body = {"data": {"type": "UserGroup", "attributes": {"name": "Doomed"}}}
    doomed = (await api.call("POST", "/user-groups", body))[1]["data"]["id"]
    members = f"/user-groups/{extra}/relationships/users"
    assert (await api.call("POST", members, users_doc([alice, bob])))[0] == 204
    assert (await api.call("DELETE", members, users_doc([alice])))[0] == 204
    assert (await api.call("POST", members, users_doc([alice])))[0] == 204  # rejoins: last
    doomed_members = f"/user-groups/{doomed}/relationships/users"
    assert (await api.call("PATCH", doomed_members, users_doc([bob, alice])))[0] == 204
    assert (await api.call("DELETE", f"/user-groups/{doomed}"))[0] == 204
    gpatch = {"data": {"type": "UserGroup", "id": extra, "attributes": {"isArchived": True}}}
    assert (await api.call("PATCH", f"/user-groups/{extra}", gpatch))[0] == 200
    exam = next(e for e in store.exams.values() if e.status == "published")
    attempt = store.attempts_by_exam[exam.id][0].id
    marker, second = store.marker_ids[0], store.marker_ids[2]
    markers = f"/attempts/{attempt}/relationships/markers"
    assert (await api.call("POST", markers, users_doc([marker, second])))[0] == 204
    assert (await api.call("DELETE", markers, users_doc([second])))[0] == 204
    moderators = f"/attempts/{attempt}/relationships/moderating-markers"
    assert (await api.call("PATCH", moderators, users_doc([marker])))[0] == 204
    reset = {
        "data": {
            "type": "AttemptTimerReset",
            "attributes": {"extraTimeInMs": 60000, "reason": "fire alarm"},
            "relationships": {"attempt": {"data": {"type": "Attempt", "id": attempt}}},
        }
    }
    assert (await api.call("POST", "/attempt-timer-resets", reset))[0] == 201
    export = {"data": {"type": "ExportEnrichedAttempt", "attributes": {}}}
    for _ in range(2):  # one export completed, one left running
        status, doc, _ = await api.call("POST", "/export-enriched-attempts", export)
        assert status == 201
    for _ in range(sb.config.export_job_steps):
        await api.call("GET", f"/background-jobs/{doc['data']['id']}")
    first_job = next(iter(store.jobs))
    await api.call("GET", f"/background-jobs/{first_job}")


def close_like_a_kill(sb: Sandbox) -> None:
    """Drop the state file as a killed process would: the journal as written, no compaction."""
    state_file = sb.store.state_file
    assert state_file is not None and state_file.journal_bytes > 0
    state_file.close()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


# ----------------------------------------------------------------------------- in-process


async def test_a_registered_user_is_there_in_the_next_instance(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A user registered through one sandbox is in the next one on the same file, id, email,
    groups and all."""
    state = tmp_path / "sandbox.json"
    async with Sandbox(cfg(state)) as sb:
        api = Api(sb, http)
        cohort = next(g.id for g in sb.store.groups.values() if g.name == "Cohort 02")
        uid = await register(api, "Kim.Lee@example.org", cohort)
        extra = sb.store.groups_named("Markers pool")[0].id
        path = f"/user-groups/{extra}/relationships/users"
        assert (await api.call("POST", path, users_doc([uid])))[0] == 204
        before = (await api.call("GET", f"/users/{uid}"))[1]
    assert state.exists()
    async with Sandbox(cfg(state)) as sb2:
        api2 = Api(sb2, http)
        user = sb2.store.user_by_email("kim.lee@example.org")
        assert user is not None and user.id == uid and user.email == "Kim.Lee@example.org"
        assert list(user.groups) == [cohort, extra]
        assert uid in sb2.store.groups[cohort].members
        status, after, _ = await api2.call("GET", f"/users/{uid}")
        assert status == 200 and after == before
        status, doc, _ = await api2.call(
            "POST", "/user-registrations", registration("kim.lee@example.org")
        )
        assert status == 400 and doc["errors"][0]["code"] == "taken"


@pytest.mark.parametrize("ending", ["clean stop", "kill"])
async def test_every_kind_of_write_survives_unchanged(
    tmp_path: Path, http: aiohttp.ClientSession, ending: str
) -> None:
    """Registrations, patches, deletes, groups, memberships, markers, timer resets and export
    jobs come back identical, from the compacted snapshot or from the journal alone."""
    state = tmp_path / "sandbox.json"
    sb = Sandbox(cfg(state))
    await sb.start()
    await many_writes(Api(sb, http))
    expected = fingerprint(sb.store)
    if ending == "kill":
        close_like_a_kill(sb)
    await sb.stop()
    async with Sandbox(cfg(state)) as sb2:
        assert fingerprint(sb2.store) == expected
        api2 = Api(sb2, http)
        done = next(j for j in sb2.store.jobs.values() if j.status == "completed")
        status, doc, _ = await api2.call("GET", f"/background-jobs/{done.id}")
        url = doc["data"]["attributes"]["fileUrl"]
        assert status == 200 and url.startswith(sb2.root + "/files/exports/")
        status, body, _ = await api2.call("GET", url, token=None)
        assert status == 200 and len(body.splitlines()) == len(sb2.store.attempts)
        running = next(j for j in sb2.store.jobs.values() if j.status != "completed")
        polls = running.polls
        await api2.call("GET", f"/background-jobs/{running.id}")
        assert sb2.store.jobs[running.id].polls == polls + 1


@pytest.mark.parametrize("ending", ["clean stop", "kill"])
async def test_ids_created_after_a_reload_never_collide(
    tmp_path: Path, http: aiohttp.ClientSession, ending: str
) -> None:
    """New ids after a reload differ from every earlier one, a deleted record's included."""
    state = tmp_path / "sandbox.json"
    sb = Sandbox(cfg(state))
    await sb.start()
    await many_writes(Api(sb, http))
    earlier = all_ids(sb.store)
    deleted = set(sb.store.retired)
    assert len(deleted) == 2  # a user and a group
    if ending == "kill":
        close_like_a_kill(sb)
    await sb.stop()
    async with Sandbox(cfg(state)) as sb2:
        api2 = Api(sb2, http)
        assert deleted <= sb2.store.retired
        new = [await register(api2, f"new{i}@example.org") for i in range(30)]
        body = {"data": {"type": "UserGroup", "attributes": {"name": "After"}}}
        new.append((await api2.call("POST", "/user-groups", body))[1]["data"]["id"])
        export = {"data": {"type": "ExportEnrichedAttempt", "attributes": {}}}
        new.append((await api2.call("POST", "/export-enriched-attempts", export))[1]["data"]["id"])
        assert len(set(new)) == len(new)
        assert not set(new) & earlier


async def test_after_a_clean_stop_ids_continue_the_same_sequence(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Stopping and reloading between two registrations gives the ids one process would."""
    async with Sandbox(cfg(None)) as plain:
        api = Api(plain, http)
        one_process = [await register(api, f"u{i}@example.org") for i in range(4)]
    state = tmp_path / "sandbox.json"
    ids = []
    for half in (range(2), range(2, 4)):
        async with Sandbox(cfg(state)) as sb:
            ids += [await register(Api(sb, http), f"u{i}@example.org") for i in half]
    assert ids == one_process


async def test_a_fresh_state_file_seeds_what_no_state_file_seeds(tmp_path: Path) -> None:
    """The data a new state file starts with equals the same config's seed without one."""
    state = tmp_path / "new" / "sandbox.json"
    plain = Store(cfg(None))
    with_state = Store(cfg(state))
    assert fingerprint(with_state) == fingerprint(plain)
    assert with_state.new_id() == plain.new_id()  # and the id sequence goes on alike
    with_state.close()
    reloaded = Store(cfg(state))
    assert state.exists() and fingerprint(reloaded) == fingerprint(plain)
    reloaded.close()


async def test_the_state_files_shape_wins_over_the_config(tmp_path: Path) -> None:
    """Reopened with another seed and size, the sandbox serves the file's data and says so."""
    state = tmp_path / "sandbox.json"
    first = Store(cfg(state, users=3))
    expected = fingerprint(first)
    first.close()
    async with Sandbox(cfg(state, users=40, seed=9, latency_ms=1.0)) as sb:
        assert fingerprint(sb.store) == expected
        assert (sb.config.users, sb.config.seed) == (3, SMALL["seed"])
        assert sb.config.latency_ms == 1.0  # behaviour still comes from the config given


async def test_reset_clears_the_state_file(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """POST /_sandbox/reset reseeds the file too: the next instance starts from the seed."""
    state = tmp_path / "sandbox.json"
    fresh = fingerprint(Store(cfg(None)))
    async with Sandbox(cfg(state)) as sb:
        api = Api(sb, http)
        await register(api, "forgotten@example.org")
        assert (await api.call("POST", sb.root + "/_sandbox/reset"))[0] == 204
        assert fingerprint(sb.store) == fresh
    async with Sandbox(cfg(state)) as sb2:
        assert fingerprint(sb2.store) == fresh
        kept = await register(Api(sb2, http), "kept@example.org")  # a write after a reset
    async with Sandbox(cfg(state)) as sb3:
        user = sb3.store.user_by_email("kept@example.org")
        assert user is not None and user.id == kept
        assert sb3.store.user_by_email("forgotten@example.org") is None


async def test_a_stale_journal_behind_a_newer_snapshot_is_skipped(tmp_path: Path) -> None:
    """A journal a compaction did not get to truncate is not applied twice."""
    state = tmp_path / "sandbox.json"
    store = Store(cfg(state))
    cohort = next(g for g in store.groups.values() if g.name.startswith("Cohort"))
    user = store.add_user("Re Join", "rejoin@example.org", None, None)
    store.add_members(cohort, [store.student_ids[0]])
    store.remove_members(cohort, [user.id])
    store.add_members(cohort, [user.id])
    store.commit()
    journal = state.with_name(state.name + ".journal")
    stale = journal.read_bytes()
    expected = fingerprint(store)
    store.close()  # compacts: a new snapshot, an empty journal
    journal.write_bytes(stale)  # as if the compaction died before truncating it
    reloaded = Store(cfg(state))
    assert fingerprint(reloaded) == expected
    reloaded.close()


async def test_a_write_journals_only_what_it_changed(tmp_path: Path) -> None:
    """A registration appends the same few bytes to the journal whether the store is small or
    large (a write costs the size of the change, not of the store)."""
    sizes = []
    for users in (10, 5000):
        state = tmp_path / f"{users}.json"
        store = Store(cfg(state, users=users), wall=lambda: 1_800_000_000.25)  # same timestamps
        assert store.state_file is not None
        store.add_user("Same Size", "same@example.org", "X1", None)
        store.commit()
        sizes.append(store.state_file.journal_bytes)
        store.close()
    assert sizes[0] == sizes[1] < 1000


async def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    """A state file that is not one, or a journal with a bad line, fails naming the file; a
    last journal line cut short by a kill is dropped."""
    state = tmp_path / "sandbox.json"
    journal = state.with_name(state.name + ".journal")
    state.write_bytes(b'{"format": "synap-bulk-sandbox-state", "users": [tr')
    with pytest.raises(SandboxStateError, match=rf"^sandbox state file {re.escape(str(state))}: "):
        Sandbox(cfg(state))
    state.write_bytes(b'{"some": "other json"}')
    with pytest.raises(SandboxStateError, match="is corrupt or not a sandbox state file"):
        Sandbox(cfg(state))
    state.unlink()
    journal.unlink()
    store = Store(cfg(state))
    store.add_user("Torn Tail", "torn@example.org", None, None)
    store.commit()
    assert store.state_file is not None
    store.state_file.close()  # as a kill leaves it
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"t":"User","id":"abc')  # a write cut short by the kill
    reloaded = Store(cfg(state))
    assert reloaded.user_by_email("torn@example.org") is not None
    reloaded.close()
    epoch = msgspec.json.decode(state.read_bytes())["epoch"]
    header = b'{"t":"journal","epoch":%d}\n' % epoch
    journal.write_bytes(header + b"not json\n" + good.split(b"\n", 1)[1])
    with pytest.raises(SandboxStateError, match=r"\.journal is corrupt at line 2"):
        Store(cfg(state))


async def test_a_state_file_in_use_is_refused(tmp_path: Path) -> None:
    """Two live sandboxes cannot share one state file, nor can a live one change its file;
    after the first stops, the next one can open it."""
    state = tmp_path / "sandbox.json"
    async with Sandbox(cfg(state)) as sb:
        with pytest.raises(SandboxStateError, match="in use by another sandbox"):
            Sandbox(cfg(state))
        with pytest.raises(ValueError, match="fixed when the sandbox starts"):
            sb.configure(state=str(tmp_path / "other.json"))
    async with Sandbox(cfg(state)) as sb2:
        assert sb2.store.state_file is not None and sb2.store.state_file.is_open


async def test_a_write_that_cannot_be_saved_is_not_answered_as_done(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """When the journal cannot be written the client gets 500s, never a 201 or a read of the
    unsaved change."""
    async with Sandbox(cfg(tmp_path / "sandbox.json")) as sb:
        assert sb.store.state_file is not None
        sb.store.state_file.close()  # the journal is gone from under the server
        api = Api(sb, http)
        status, doc, _ = await api.call(
            "POST", "/user-registrations", registration("x@example.org")
        )
        assert status == 500 and doc["errors"][0]["code"] == "state_write_failed"
        # The unsaved change is still in memory: nothing is answered as if it were kept.
        status, doc, _ = await api.call(
            "GET", "/users", params={"filter[emailAddress]": "x@example.org"}
        )
        assert status == 500 and doc["errors"][0]["code"] == "state_write_failed"


# ----------------------------------------------------------------------------- a real kill


def _start_standalone(state: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m synap_bulk sandbox --state``; its URL once it accepts connections."""
    env = {**os.environ, "SYNAP_SANDBOX_TOKEN": "p:killme", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "synap_bulk", "sandbox", "--port", "0", "--state", str(state),
           *("--users", "5", "--seed", "3")]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
    assert ready, "the sandbox did not announce itself"
    line = proc.stdout.readline()
    assert line.startswith("sandbox listening on http://127.0.0.1:"), line
    url = line.split()[-1]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for _ in range(100):  # bounded: it prints the line after binding, so the first one connects
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline
    else:
        raise AssertionError("the sandbox does not accept connections")
    return proc, url


async def _register_remote(http: aiohttp.ClientSession, url: str, email: str) -> str:
    headers = {"Authorization": "Bearer p:killme", "Content-Type": MEDIA_TYPE}
    body = msgspec.json.encode(registration(email))
    async with http.post(f"{url}/user-registrations", data=body, headers=headers) as r:
        doc = await r.json(content_type=None)
        assert r.status == 201, doc
        uid: str = doc["data"]["id"]
        return uid


async def test_a_standalone_sandbox_killed_keeps_every_answered_registration(
    tmp_path: Path,
) -> None:
    """SIGKILL right after N answered registrations: after a restart all N are there, with
    their ids, and new ids do not collide with them."""
    state = tmp_path / "standalone.json"
    n = 60
    proc, url = _start_standalone(state)
    try:
        async with aiohttp.ClientSession() as http:
            emails = [f"killed{i}@example.org" for i in range(n)]
            ids = await asyncio.gather(*(_register_remote(http, url, e) for e in emails))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    proc, url = _start_standalone(state)
    try:
        headers = {"Authorization": "Bearer p:killme"}
        async with aiohttp.ClientSession() as http:
            for email, uid in zip(emails, ids, strict=True):
                params = {"filter[emailAddress]": email}
                async with http.get(f"{url}/users", params=params, headers=headers) as r:
                    doc = await r.json(content_type=None)
                assert [u["id"] for u in doc["data"]] == [uid], email
            more = [await _register_remote(http, url, f"after{i}@example.org") for i in range(20)]
            assert not set(more) & set(ids)
            async with http.get(f"{url}/users", headers=headers) as r:
                assert (await r.json(content_type=None))["meta"]["total"] == 5 + 1 + 10 + n + 20
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0  # a clean stop: compacted
        assert proc.stdout is not None
        proc.stdout.close()
    journal = state.with_name(state.name + ".journal")
    assert journal.read_bytes().count(b"\n") == 1  # only the header: all in the snapshot


# ----------------------------------------------------------------------------- users/me


async def test_users_me_answers_the_acting_user(http: aiohttp.ClientSession) -> None:
    """GET /users/me is the token's user, or the Subject-User, as GET /users/{id} shows it."""
    async with Sandbox(cfg(None)) as sb:
        api = Api(sb, http)
        status, me, _ = await api.call("GET", "/users/me")
        assert status == 200 and me["data"]["type"] == "User"
        assert me["data"]["id"] == sb.store.admin_id
        assert me == (await api.call("GET", f"/users/{sb.store.admin_id}"))[1]
        student = sb.store.student_ids[3]
        status, doc, _ = await api.call("GET", "/users/me", headers={"Subject-User": student})
        assert status == 200 and doc["data"]["id"] == student
        assert doc == (await api.call("GET", f"/users/{student}"))[1]
        status, doc, _ = await api.call("GET", "/users/me", headers={"Subject-User": "nobody"})
        assert status == 400 and doc["errors"][0]["source"]["header"] == "Subject-User"
        assert sb.statistics().by_route["users.me"] == 3


@pytest.mark.parametrize("bad_status", [401, 404])
async def test_users_me_with_a_bad_token(http: aiohttp.ClientSession, bad_status: int) -> None:
    """With a wrong token users/me and portals/current answer 401 (or 404 when so set)."""
    async with Sandbox(cfg(None, bad_token_status=bad_status)) as sb:
        api = Api(sb, http)
        for path in ("/users/me", "/portals/current"):
            status, doc, _ = await api.call("GET", path, token="p:wrong")
            assert status == bad_status and doc["errors"][0]["status"] == str(bad_status)
            assert (await api.call("GET", path, token=None))[0] == 401
