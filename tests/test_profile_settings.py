"""The assumptions the docs leave open are profile settings, and the tasks read them: marker
relationships, pools and verbs, the BackgroundJob's fields, "registration id = user id"."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from rich.console import Console

from synap_bulk.profile import DEFAULT_PROFILE, load_profile
from synap_bulk.resources import MARKER_ROLES
from synap_bulk.runner import run_job
from synap_bulk.sandbox import Sandbox, SandboxConfig
from synap_bulk.spec import load_job

DEMO = Path(__file__).resolve().parent.parent / "jobs" / "demo"


def test_the_defaults_are_the_roles_the_sandbox_models() -> None:
    """Each role's relationship and pool default to what the sandbox (and resources) model."""
    p = DEFAULT_PROFILE
    assert set(p.marker_role_relationships) == set(MARKER_ROLES) == set(p.marker_role_pools)
    for name, role in MARKER_ROLES.items():
        assert p.marker_role_relationships[name] == role.relationship
        assert p.marker_role_pools[name] == role.pool
    assert (p.marker_assign_method, p.marker_unassign_method) == ("POST", "DELETE")
    assert p.job_completed_statuses == ["completed"] and p.job_file_attribute == "fileUrl"
    assert p.registration_id_is_user_id is True


async def test_assign_markers_uses_the_profiles_verb(tmp_path: Path) -> None:
    """With marker_assign_method PATCH the demo assigns by replacing each role set: the same
    allocation, sent as PATCH (never POST) to the role relationship."""
    for name in ("assign-markers.yaml", "markers-exclusions.csv"):
        shutil.copy(DEMO / name, tmp_path / name)
    config = SandboxConfig(seed=1, users=500, exams=2, attempts_per_exam=120, markers=8)
    async with Sandbox(config) as sb:
        path = tmp_path / "assign-markers.yaml"
        text = path.read_text().replace(
            "  base_url: sandbox\n",
            f"  base_url: {sb.url}\n  token: {sb.token}\n"
            "  profile: {marker_assign_method: PATCH}\n",
        )
        path.write_text("\n".join(x for x in text.splitlines() if not x.startswith("sandbox:")))
        job = load_job(path)
        console = Console(file=io.StringIO(), width=120)
        assert await run_job(job, console=console, handle_signals=False) == 0
        routes = sb.statistics().by_route
        held = sum(len(a.roles.get("provisionalMarkers", {})) for a in sb.store.attempts.values())
    summary = json.loads((tmp_path / "out" / job.spec.name / "summary.json").read_text())
    applied = summary["task"]["applied"]
    assert applied > 0 and held == applied
    assert routes.get("attempts.markers.replace", 0) > 0
    assert routes.get("attempts.markers.add", 0) == 0


async def test_a_registration_id_that_is_not_the_user_id_is_looked_up(tmp_path: Path) -> None:
    """registration_id_is_user_id false: each create looks its user up by the match key, and
    the success file names the user's id."""
    (tmp_path / "c.csv").write_text(
        "id,name,email\nN1,Ada One,ada.one@example.org\nN2,Bo Two,bo.two@example.org\n"
    )
    (tmp_path / "job.yaml").write_text(
        "version: 1\nname: imp\napi:\n  base_url: sandbox\n"
        "  profile: {registration_id_is_user_id: false}\n"
        "sandbox: {users: 10, state: s.json}\n"
        "task:\n  kind: user-import\n  source: c.csv\n  match: externalId\n"
        '  fields: {name: "{name}", emailAddress: "{email}", externalId: "{id}"}\n'
    )
    job = load_job(tmp_path / "job.yaml")
    assert job.profile.registration_id_is_user_id is False
    console = Console(file=io.StringIO(), width=120)
    assert await run_job(job, console=console, handle_signals=False) == 0
    success = (tmp_path / "out" / "imp" / "success.csv").read_text().splitlines()[1:]
    async with Sandbox(SandboxConfig(state=str(tmp_path / "s.json"))) as sb:
        ids = {sb.store.user_by_external_id(x).id for x in ("N1", "N2")}  # type: ignore[union-attr]
    assert {line.rsplit(",", 1)[1] for line in success} == ids


def test_profile_settings_are_checked() -> None:
    """An unknown verb is refused by the profile, not sent to a server."""
    import msgspec
    import pytest

    with pytest.raises(msgspec.ValidationError, match="marker_assign_method"):
        load_profile({"marker_assign_method": "GET"})
