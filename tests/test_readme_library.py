"""README's "Library" section runs as written: each python block, against the embedded sandbox."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import anyio
import pytest

from synap_bulk.sandbox import Sandbox, SandboxConfig

README = Path(__file__).resolve().parent.parent / "README.md"
#: The address the README's examples use; the test points it at the sandbox.
REAL_URL = "https://api.synap.ac/v3"


def library_blocks() -> list[str]:
    """The ```python blocks of README's '## Library' section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_library_section_has_the_three_examples() -> None:
    """paginate, create and handling a JSON:API error each have their block."""
    blocks = library_blocks()
    assert len(blocks) == 3
    assert 'client.paginate("users", User' in blocks[0]
    assert "client.create(" in blocks[1]
    assert "except ApiError" in blocks[2]
    assert all(REAL_URL in b for b in blocks)


def _run(code: str) -> str:
    """Execute one block as a script (its own event loop, in this worker thread); its output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    return out.getvalue()


async def test_readme_library_blocks_run_against_the_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The blocks list users, create one, then show a 404 and the server's refusal of the same
    email, with the error's status, code and source pointer; the token is printed nowhere."""
    config = SandboxConfig(seed=3, users=12, groups=2, exams=0)
    async with Sandbox(config) as sb:
        monkeypatch.setenv("SYNAP_TOKEN", sb.token)
        said = []
        for block in library_blocks():
            code = block.replace(REAL_URL, sb.url)
            said.append(await anyio.to_thread.run_sync(_run, code))
        created = sb.statistics().creates_by_key
        sb_users = sb.statistics().resources["User"] - 1  # all but the one the example created
    listing, create, error = said
    head, *users = listing.splitlines()
    assert head.startswith("10 groups: Students, ")
    students = [u.removeprefix("student: ") for u in users if u.startswith("student: ")]
    everyone = [u.split()[1] for u in users if not u.startswith("student: ")]
    assert len(everyone) == sb_users and 0 < len(students) < len(everyone)
    assert set(students) <= set(everyone)
    assert create.startswith("created ") and "ada@example.edu" in create
    assert created.get("ada@example.edu") == 1
    lines = error.splitlines()
    assert lines[0] == "not found: /v3/users/no-such-id"
    assert "for POST /v3/user-registrations" in lines[1]
    assert lines[2].endswith("/data/attributes/emailAddress")
    assert all(sb.token not in text for text in said)
