"""Shared pieces of the benchmarks: a standalone sandbox process, child runs, CPU time."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "p:bench"


@contextlib.contextmanager
def sandbox(*args: str, token: str = TOKEN) -> Iterator[str]:
    """Run ``python -m synap_bulk sandbox --port 0 ARGS`` in its own process; yield its URL."""
    cmd = [sys.executable, "-m", "synap_bulk", "sandbox", "--port", "0", "--token", token, *args]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("sandbox listening on "):
            raise RuntimeError(f"sandbox did not start ({proc.poll()}): {' '.join(cmd)}")
        yield line.split("sandbox listening on ", 1)[1].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def now() -> float:
    return time.perf_counter()
