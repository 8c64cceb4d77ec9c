"""The sandbox follows the API profile it is started with, so a profile written for the real API
can be rehearsed: jobs run end to end under a non-default profile (offset pagination, other
filter, page and relationship names), and the default names are then refused."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from synap_bulk.cli import main
from synap_bulk.runner import run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.sandbox.cli import read_profile_file
from synap_bulk.spec import load_job

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo"

OTHER = {
    "pagination": "offset",
    "page_offset_param": "offset",
    "page_limit_param": "limit",
    "filter_email": "filter[email]",
    "filter_external_id": "filter[external_id]",
    "filter_user": "filter[candidate]",
    "filter_exam": "filter[exam]",
    "group_members_relationship": "members",
    "subject_user_header": "X-Act-As",
}
PROFILE_YAML = "  profile:\n" + "".join(f"    {k}: '{v}'\n" for k, v in OTHER.items())


async def _get(sb: Sandbox, path: str, params: dict[str, str]) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {sb.token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(sb.url + path, params=params, headers=headers) as r,
    ):
        return r.status, json.loads(await r.read())


async def test_the_sandbox_answers_in_its_profile_and_refuses_the_default_names() -> None:
    """Offset links, renamed filters and relationship segments; the default names are 400/404."""
    async with Sandbox(SandboxConfig(users=30, profile=OTHER)) as sb:
        status, doc = await _get(sb, "/users", {"limit": "5"})
        assert status == 200 and "offset=5" in doc["links"]["next"]
        status, doc = await _get(sb, "/users", {})
        assert "offset=0" in doc["links"]["first"] and "limit=" in doc["links"]["first"]
        user = next(u for u in sb.store.users.values() if u.external_id)
        status, doc = await _get(sb, "/users", {"filter[external_id]": user.external_id or ""})
        assert [d["id"] for d in doc["data"]] == [user.id]
        status, doc = await _get(sb, "/users", {"filter[externalId]": user.external_id or ""})
        assert status == 400 and doc["errors"][0]["source"]["parameter"] == "filter[externalId]"
        status, doc = await _get(sb, "/users", {"page[offset]": "5"})  # renamed "offset"
        assert status == 400
        group = next(iter(sb.store.groups))
        status, _ = await _get(sb, f"/user-groups/{group}/relationships/members", {})
        assert status == 200
        status, _ = await _get(sb, f"/user-groups/{group}/relationships/users", {})
        assert status == 404
    async with Sandbox(SandboxConfig(users=30)) as sb:  # another sandbox: the defaults again
        status, doc = await _get(sb, "/users", {"page[size]": "5"})
        assert status == 200 and "page[number]=2" in doc["links"]["next"]


async def test_the_lookup_demo_runs_under_a_non_default_profile(tmp_path: Path) -> None:
    """extra-time-sheet.yaml with offset pagination and renamed filters: the same 3 resets."""
    for name in ("extra-time-sheet.yaml", "extra-time-sheet.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    path = tmp_path / "extra-time-sheet.yaml"
    text = path.read_text().replace("  concurrency: 4\n", "  concurrency: 4\n" + PROFILE_YAML)
    text = text.replace("lookups:\n", "lookups:\n").replace(
        '{externalId: "{candidate_number}"}}',
        '{externalId: "{candidate_number}"}, strategy: per-row}',
    )
    path.write_text(text)
    job = load_job(path)
    assert job.profile.pagination == "offset"
    console = Console(file=io.StringIO(), width=120)
    assert await run_job(job, console=console, handle_signals=False) == 1
    out = tmp_path / "out" / job.spec.name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["created"] == 3
    assert summary["task"]["lookups"]["user"]["strategy"] == "per-row"
    failures = (out / "failures.csv").read_text().splitlines()[1:]
    assert [f.split(",")[4] for f in failures] == ["5", "6", "7"]


def test_a_user_import_runs_and_doctor_passes_under_the_profile(
    tmp_path: Path, capsys: Any
) -> None:
    """A reconcilable import (filter[external_id], offset pages) runs; doctor sees the profile."""
    (tmp_path / "c.csv").write_text("id,name,email\nX1,Ada One,ada.one@example.org\n")
    (tmp_path / "job.yaml").write_text(
        "version: 1\nname: imp\napi:\n  base_url: sandbox\n"
        + PROFILE_YAML
        + "sandbox: {users: 20}\n"
        "task:\n  kind: user-import\n  source: c.csv\n  match: externalId\n"
        '  fields: {name: "{name}", emailAddress: "{email}", externalId: "{id}"}\n'
    )
    assert main(["run", str(tmp_path / "job.yaml")]) == 0
    assert main(["doctor", str(tmp_path / "job.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ok    pagination offset (offset, limit): links.next uses offset" in out
    assert "ok    filter[external_id] on users" in out


def test_the_standalone_sandbox_reads_a_profile_file(tmp_path: Path) -> None:
    """--profile FILE is a YAML mapping of overrides; a wrong setting is one clear error."""
    import pytest

    good = tmp_path / "p.yaml"
    good.write_text("pagination: offset\nfilter_email: 'filter[email]'\n")
    assert read_profile_file(str(good)) == {"pagination": "offset", "filter_email": "filter[email]"}
    import argparse

    from synap_bulk.sandbox.cli import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = build_config(parser.parse_args(["--profile", str(good)]))
    assert config.profile == {"pagination": "offset", "filter_email": "filter[email]"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: a profile is a mapping"):
        build_config(parser.parse_args(["--profile", str(bad)]))
    with pytest.raises(ValueError, match="profile"):
        SandboxConfig(profile={"no_such_setting": 1})
