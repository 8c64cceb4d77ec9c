"""The sandbox's extra collections: enriched attempts, action logs, compound documents
(include, sparse fieldsets), and the user-group and exam-candidate exports, which a state file
keeps across a restart."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from synap_bulk.client import SynapClient
from synap_bulk.errors import BadRequest, NotFound
from synap_bulk.jsonapi import AnyResource, Document
from synap_bulk.resources import BackgroundJob
from synap_bulk.sandbox import Sandbox, SandboxConfig

CONFIG = SandboxConfig(seed=9, users=40, exams=2, attempts_per_exam=30)


async def test_enriched_attempts_carry_the_candidate_and_exam_names() -> None:
    """GET enriched-attempts: type EnrichedAttempt, filtered by exam, with names joined."""
    async with Sandbox(CONFIG) as sb, SynapClient(sb.url, token=sb.token) as client:
        exam = next(iter(sb.store.exams.values()))
        page = await client.get_page(
            "enriched-attempts",
            {"filter[examV2]": exam.id, "page[size]": "100"},
            AnyResource,
        )
        assert page.meta["total"] == len(sb.store.attempts_by_exam[exam.id])
        for res in page.data:
            attempt = sb.store.attempts[res.id]
            user = sb.store.users[attempt.user_id]
            assert res.type == "EnrichedAttempt"
            assert res.attributes["candidateEmailAddress"] == user.email
            assert res.attributes["examName"] == exam.name
            assert res.rel_id("user") == user.id


async def test_action_logs_list_what_happened_and_filter_by_action_and_time() -> None:
    """GET action-logs: registrations, joins, attempts; filter[action], filter[createdSince];
    an unknown action is a 400 naming the parameter."""
    async with Sandbox(CONFIG) as sb, SynapClient(sb.url, token=sb.token) as client:
        regs = [
            r
            async for r in client.paginate(
                "action-logs", {"filter[action]": "user.registered"}, AnyResource
            )
        ]
        assert {r.rel_id("user") for r in regs} == set(sb.store.users)
        assert all(r.type == "ActionLog" for r in regs)
        times = sorted(r.attributes["createdAt"] for r in regs)
        cutoff = times[len(times) // 2]
        later = [
            r
            async for r in client.paginate(
                "action-logs",
                {"filter[action]": "user.registered", "filter[createdSince]": cutoff},
                AnyResource,
            )
        ]
        assert {r.id for r in later} == {r.id for r in regs if r.attributes["createdAt"] >= cutoff}
        with pytest.raises(BadRequest) as info:
            await client.get_page("action-logs", {"filter[action]": "user.sneezed"}, AnyResource)
        source = info.value.errors[0].source
        assert source is not None and source.parameter == "filter[action]"


async def test_include_and_sparse_fieldsets_shape_a_listing() -> None:
    """include=user puts each attempt's candidate in `included` once; fields[User] trims
    attributes; an include the resource does not have is a 400 at the include parameter."""
    async with Sandbox(CONFIG) as sb, SynapClient(sb.url, token=sb.token) as client:
        page = await client.get_page(
            "attempts",
            {"include": "user", "fields[User]": "emailAddress", "page[size]": "20"},
            AnyResource,
        )
        linked = {res.rel_id("user") for res in page.data}
        assert sorted(r.id for r in page.included) == sorted(linked)
        assert all(set(r.attributes) == {"emailAddress"} for r in page.included)
        with pytest.raises(BadRequest) as info:
            await client.get_page("users", {"include": "examV2"}, AnyResource)
        source = info.value.errors[0].source
        assert source is not None and source.parameter == "include"
        with pytest.raises(BadRequest):
            await client.get_page("users", {"filter[colour]": "blue"}, AnyResource)


async def test_a_user_group_export_survives_a_restart_from_the_state_file(
    tmp_path: Path,
) -> None:
    """A completed user-group export's job (kind and users) is in the state file: a restarted
    sandbox still serves its file with the group's members."""
    config = msgspec.structs.replace(CONFIG, state=str(tmp_path / "state.json"))
    async with Sandbox(config) as sb, SynapClient(sb.url, token=sb.token) as client:
        group = next(g for g in sb.store.groups.values() if g.default_type is None and g.members)
        members = list(group.members)
        body = {
            "data": {
                "type": "UserGroupExport",
                "relationships": {"userGroup": {"data": {"type": "UserGroup", "id": group.id}}},
            }
        }
        resp = await client.request("POST", "user-group-exports", body=body)
        job_id = msgspec.json.decode(resp.body, type=Document[AnyResource]).data.id
        while True:
            job = await client.get("background-jobs", job_id, BackgroundJob)
            if job.attributes.status == "completed":
                break
    async with Sandbox(config) as sb2, SynapClient(sb2.url, token=sb2.token) as client:
        job = await client.get("background-jobs", job_id, BackgroundJob)
        assert job.attributes.status == "completed" and job.attributes.fileUrl
        lines = [line async for line in client.stream_lines(job.attributes.fileUrl)]
        got = [msgspec.json.decode(line)["id"] for line in lines if line.strip()]
        assert got == members


async def test_an_exam_candidate_export_needs_an_existing_exam() -> None:
    """exam-candidate-exports without examV2 is a 400; with an unknown exam a 404."""
    async with Sandbox(CONFIG) as sb, SynapClient(sb.url, token=sb.token) as client:
        with pytest.raises(BadRequest):
            await client.request(
                "POST", "exam-candidate-exports", body={"data": {"type": "ExamCandidateExport"}}
            )

        body = {
            "data": {
                "type": "ExamCandidateExport",
                "relationships": {"examV2": {"data": {"type": "Exam-V-2", "id": "nope"}}},
            }
        }
        with pytest.raises(NotFound):
            await client.request("POST", "exam-candidate-exports", body=body)
        assert sb.store.jobs == {}
