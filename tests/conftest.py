"""Shared fixtures: every test starts from an environment without the developer's Synap settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_synap_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every ``SYNAP_*`` variable (a real SYNAP_TOKEN must never reach a test or its output).

    Tests that need one set it themselves with ``monkeypatch.setenv``; the variables come back
    after each test.
    """
    for name in [k for k in os.environ if k.startswith("SYNAP_")]:
        monkeypatch.delenv(name)
