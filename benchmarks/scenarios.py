"""The scenarios of ``python -m benchmarks``: what each runs, against which server, and how
its runs are judged.

Write scenarios register the same rows (``bench.<i>@example.edu``) with every variant, against
one standalone sandbox process per scenario that is reset (``POST /_sandbox/reset``: the same
seed, zero counters, full buckets, the fault schedule from request 1) before each run, so its
counters are that run's alone. Export scenarios read one seeded sandbox, every variant in turn.
Sizes are the full run's; ``--quick`` takes the ``quick`` size and ``--scale`` multiplies the
full one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RATE = 100.0
CONCURRENCY = 16


@dataclass(frozen=True)
class Variant:
    label: str
    module: str  # benchmarks.peers.<module>, or "export:<variant>" for export_attempts.py
    rate: float | str | None = None
    needs: str | None = None  # an importable package it needs (the bench extra)
    format: str | None = None  # exports


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    kind: str  # "write" | "export"
    size: int
    quick: int
    sandbox: tuple[str, ...]
    variants: tuple[Variant, ...]
    ideal: str = ""  # what x_ideal divides by, in words
    blind: tuple[float, float] | None = None  # a blind limiter (rate, burst) in front
    notes: list[str] = field(default_factory=list)

    def ideal_s(self, n: int) -> float | None:
        if self.ideal.startswith("rate"):
            return n / RATE  # the ideal; a bucket's burst lets a client beat it a little
        if self.ideal.startswith("concurrency"):
            return n / (CONCURRENCY / 0.050)
        return None


OURS = Variant("synap_bulk (rate told)", "ours", RATE)
OURS_AUTO = Variant("synap_bulk (rate: auto)", "ours", "auto")
OURS_FREE = Variant("synap_bulk", "ours", None)
REQUESTS = Variant("requests loop, sleeps on Retry-After", "requests_loop", None, "requests")
TENACITY = Variant("httpx + gather + tenacity", "httpx_tenacity", None, "tenacity")
AIOMETER = Variant("aiometer max_per_second=100", "aiometer_peer", RATE, "aiometer")
AIOLIMITER = Variant("aiohttp + aiolimiter 100/s", "aiolimiter_peer", RATE, "aiolimiter")
AIOMETER_FREE = Variant("aiometer max_at_once=16", "aiometer_peer", None, "aiometer")
AIOLIMITER_FREE = Variant("aiohttp workers (no limiter)", "aiolimiter_peer", None, "aiolimiter")
BARE = Variant("bare aiohttp loop (floor)", "bare_aiohttp", None)

LIMITED = ("--rate", "100", "--retry-after", "seconds")
UNKNOWN_PEERS = (OURS_AUTO, OURS, AIOMETER, AIOLIMITER)

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "known-limit",
        "Known limit: creates against a 100/s token bucket (burst 100), rate told",
        "write",
        3000,
        100,
        (*LIMITED, "--burst", "100"),
        (OURS, AIOLIMITER, AIOMETER, TENACITY, REQUESTS),
        ideal="rate: rows / 100 per s",
    ),
    Scenario(
        "unknown-retry-after",
        "Unknown limit: 100/s bucket, burst 10, Retry-After in whole seconds, X-RateLimit-*",
        "write",
        3000,
        100,
        (*LIMITED, "--burst", "10"),
        UNKNOWN_PEERS,
        ideal="rate: rows / 100 per s",
        notes=["synap_bulk (rate: auto) starts from no knowledge; the others are told 100/s."],
    ),
    Scenario(
        "unknown-no-headers",
        "Unknown limit: 100/s bucket, burst 10, Retry-After seconds, no rate-limit headers",
        "write",
        3000,
        100,
        (*LIMITED, "--burst", "10", "--no-ratelimit-headers"),
        UNKNOWN_PEERS,
        ideal="rate: rows / 100 per s",
    ),
    Scenario(
        "unknown-blind",
        "Unknown limit, blind: nginx-style limit_req 100 r/s burst 10, HTML 429, no Retry-After",
        "write",
        3000,
        100,
        ("--rate", "0"),
        UNKNOWN_PEERS,
        ideal="rate: rows / 100 per s",
        blind=(RATE, 10.0),
        notes=[
            "nginx limit_req (burst=10 nodelay, limit_req_status 429) in front of an unlimited "
            "sandbox where nginx is installed; elsewhere benchmarks/blind_limiter.py, a leaky "
            "bucket with limit_req's arithmetic answering nginx's HTML 429 page."
        ],
    ),
    Scenario(
        "latency",
        "Latency-bound writes: 50 ms per answer, no limit, 16 in flight",
        "write",
        3000,
        160,
        ("--rate", "0", "--latency-ms", "50"),
        (OURS_FREE, AIOLIMITER_FREE, AIOMETER_FREE, TENACITY, BARE),
        ideal="concurrency / latency: rows / 320 per s",
    ),
    Scenario(
        "cpu",
        "CPU per create: no limit, no latency, 16 in flight (bare aiohttp loop as the floor)",
        "write",
        5000,
        300,
        ("--rate", "0"),
        (OURS_FREE, AIOLIMITER_FREE, AIOMETER_FREE, TENACITY, REQUESTS, BARE),
    ),
    Scenario(
        "export",
        "Export of attempts (exams of 20,000 each; NDJSON and CSV), no limit, no latency",
        "export",
        200_000,
        5_000,
        ("--rate", "0"),
        tuple(
            v
            for fmt in ("ndjson", "csv")
            for v in (
                Variant(f"synap_bulk export ({fmt})", "export:windowed", format=fmt),
                Variant(f"bare aiohttp, 8 pages in flight ({fmt})", "export:bare", format=fmt),
                Variant(f"dlt rest_api -> filesystem ({fmt})", "dlt_export", None, "dlt", fmt),
            )
        ),
        ideal="the bare loop of the same format",
    ),
    Scenario(
        "faults",
        "Writes under 5% commit-then-fail (half 500, half dropped), 100/s bucket, rate told",
        "write",
        3000,
        100,
        (*LIMITED, "--burst", "100", "--fault-rate", "0.05"),
        (OURS, AIOLIMITER, AIOMETER, TENACITY, REQUESTS),
        ideal="rate: rows / 100 per s",
        notes=[
            "duplicates: creates re-sent after they had been applied (the server refused them as "
            "taken); misreported: rows reported failed that exist, or created that do not."
        ],
    ),
)

FAULTS = ("--faults", "commit-then-500=1,commit-then-drop=1")
BY_NAME = {s.name: s for s in SCENARIOS}


def sandbox_args(scn: Scenario, n: int) -> list[str]:
    args = ["--seed", "1"]
    if scn.kind == "export":
        per_exam = min(n, 20_000)
        args += ["--users", "1000", "--exams", str(max(1, n // per_exam))]
        args += ["--attempts-per-exam", str(per_exam), "--markers", "10"]
    else:
        args += ["--users", "0", "--groups", "1", "--markers", "1", "--exams", "1"]
        args += ["--attempts-per-exam", "0"]
    args += list(scn.sandbox)
    if scn.name == "faults":
        args += list(FAULTS)
    return args


def write_rows(path: Path, n: int) -> list[str]:
    """The input of every write variant; returns the emails, lowercased."""
    emails = [f"bench.{i}@example.edu" for i in range(n)]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "emailAddress", "externalId"])
        for i, e in enumerate(emails):
            w.writerow([f"Bench User {i}", e, f"B{i:06d}"])
    return emails


def judge_write(res: dict[str, Any], stats: dict[str, Any], emails: list[str]) -> dict[str, Any]:
    """Counts from the server beside what the client said it did."""
    created = set(stats.get("creates_by_key", {}))
    by_key = stats.get("creates_by_key", {})
    ok, failed = set(res.get("ok", [])), set(res.get("failed", []))
    want = set(emails)
    return {
        "requests": stats["requests"],
        "429s": stats["throttled"],
        "duplicates": stats.get("duplicate_creates", 0)
        + sum(c - 1 for c in by_key.values() if c > 1),
        "missing": len(want - created),
        "misreported": len(failed & created) + len(ok - created),
        "in_doubt": len(want - ok - failed),
    }


def export_ids(paths: list[Path], fmt: str) -> list[str]:
    """The attempt ids in an export's output file(s), in order."""
    ids: list[str] = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as f:
            if fmt == "ndjson":
                ids += [json.loads(line)["id"] for line in f if line.strip()]
            else:
                ids += [r["id"] for r in csv.DictReader(f)]
    return ids
