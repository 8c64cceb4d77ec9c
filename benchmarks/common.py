"""Shared pieces of the benchmarks: a standalone sandbox process, child runs, medians.

Each benchmark is a plain script; it imports this module from its own folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "p:bench"


def start_sandbox(*args: str, token: str = TOKEN) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m synap_bulk sandbox --port 0 ARGS``; return it and its URL.

    The token goes through ``$SYNAP_SANDBOX_TOKEN``, not the command line (which ``ps`` shows).
    Returns once the sandbox prints ``sandbox listening on URL`` (seeding a large portal takes a
    while, so there is no timeout of our own).
    """
    cmd = [sys.executable, "-m", "synap_bulk", "sandbox", "--port", "0", *args]
    env = {**os.environ, "SYNAP_SANDBOX_TOKEN": token}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("sandbox listening on "):
        proc.kill()
        proc.wait()
        raise SystemExit(f"the sandbox did not start ({line!r}): {' '.join(cmd)}")
    return proc, line.split("sandbox listening on ", 1)[1].strip()


def stop_sandbox(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def sandbox(*args: str, token: str = TOKEN) -> Iterator[str]:
    """A standalone sandbox for the duration of a ``with`` block; yields its base URL."""
    proc, url = start_sandbox(*args, token=token)
    try:
        yield url
    finally:
        stop_sandbox(proc)


def child(script: Path, args: list[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``script --child ARGS`` in a fresh interpreter; it prints one JSON line last."""
    out = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def peak_rss_mb() -> float:
    """This process's own peak RSS so far, in MB: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: on Linux, exec keeps the larger of it and the RSS high-water mark of the
    image it replaces, and Python starts children with vfork, whose image is the parent's; so a
    child's ``ru_maxrss`` is never below its parent's peak (a benchmark that wrote a 200,000-row
    CSV in memory measured that, ~100 MB, whatever the child did). ``ru_maxrss`` (KiB on Linux)
    only where there is no /proc.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
