"""What every child shares: its config, the input rows, the request body and its report.

A write child reads ``config["csv"]`` (columns ``name,emailAddress,externalId``), registers
every row through ``POST {url}/user-registrations`` and reports which rows it believes it
created (``ok``) and which it reports failed (``failed``), by email. The harness checks those
against the server's own counters. The report also carries the CPU seconds the process had
used before the work started (interpreter start and imports), so the harness can subtract it
from the child's rusage.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import peak_rss_mb

#: Statuses a create may be retried on (the write may or may not have happened).
RETRYABLE = {500, 502, 503, 504}


def config() -> dict[str, Any]:
    """The child's config, the JSON of its first argument."""
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    cfg["_cpu0"] = time.process_time()
    cfg["_t0"] = time.perf_counter()
    return cfg


def rows(cfg: dict[str, Any]) -> list[dict[str, str]]:
    with Path(cfg["csv"]).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def headers(cfg: dict[str, Any]) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {cfg['token']}",
        "Content-Type": "application/vnd.api+json",
        "Accept": "application/vnd.api+json",
    }


def body(row: dict[str, str]) -> bytes:
    """The JSON:API registration document of one row."""
    doc = {"data": {"type": "UserRegistration", "attributes": dict(row)}}
    return json.dumps(doc).encode()


def retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds to wait from a Retry-After header (seconds form; anything else: ``default``)."""
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def report(cfg: dict[str, Any], **figures: Any) -> None:
    """Print the child's result: wall time of the work, CPU before it, and ``figures``."""
    figures.setdefault("wall_s", time.perf_counter() - cfg["_t0"])
    figures["startup_cpu_s"] = cfg["_cpu0"]
    # Its own peak: the harness's ru_maxrss of a child is never below the harness's own.
    figures["own_peak_rss_mb"] = peak_rss_mb()
    for key in ("ok", "failed"):
        if key in figures:
            figures[key] = sorted(e.strip().lower() for e in figures[key])
    print(json.dumps(figures))
