"""``python -m benchmarks`` works: its smallest scenario end to end, and the arithmetic it
judges runs by. No timing is asserted (speed is what the harness measures, not what tests do)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.blind_limiter import LeakyBucket
from benchmarks.scenarios import judge_write

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("wall_s", "cpu_s", "peak_rss_mb", "requests", "429s", "duplicates", "missing")
FIELDS += ("misreported", "server_cpu_s", "cpu_x_bare")


def test_smallest_scenario_writes_every_field(tmp_path: Path) -> None:
    args = ["--only", "cpu", "--size", "20", "--repeats", "1", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [json_file] = tmp_path.glob("*.json")
    [md_file] = tmp_path.glob("*.md")
    doc = json.loads(json_file.read_text())
    assert doc["repeats"] == 1
    assert {"nproc", "python", "load_average_start", "load_average_end"} <= set(doc["machine"])
    [scn] = doc["scenarios"]
    assert scn["name"] == "cpu" and scn["size"] == 20
    labels = [v["label"] for v in scn["variants"]]
    # ours and the bare loop need nothing beyond the runtime deps; the peers may be skipped
    assert "synap_bulk" in labels and "bare aiohttp loop (floor)" in labels
    assert len(labels) + len(scn["skipped"]) == 6
    for v in scn["variants"]:
        assert v["runs"] == 1 and v["errors"] == []
        for key in FIELDS:
            assert set(v[key]) == {"median", "min", "max"}, (v["label"], key)
        assert v["requests"]["median"] >= 20  # every row was sent, counted by the server
        assert v["missing"]["median"] == 0 and v["misreported"]["median"] == 0
    assert "| synap_bulk |" in md_file.read_text()


def test_judge_counts_resent_missing_and_misreported_rows() -> None:
    emails = ["a@x.org", "b@x.org", "c@x.org", "d@x.org"]
    stats = {
        "requests": 7,
        "throttled": 1,
        "duplicate_creates": 2,  # two re-sends refused as taken
        "creates_by_key": {"a@x.org": 1, "b@x.org": 1, "c@x.org": 1},
    }
    # b exists but was reported failed; d was reported created but does not exist; c: no word
    res = {"ok": ["a@x.org", "d@x.org"], "failed": ["b@x.org"]}
    got = judge_write(res, stats, emails)
    assert got == {
        "requests": 7,
        "429s": 1,
        "duplicates": 2,
        "missing": 1,
        "misreported": 2,
        "in_doubt": 1,
    }


def test_blind_limiter_admits_like_nginx_limit_req() -> None:
    now = [0.0]
    bucket = LeakyBucket(rate=100, burst=10, clock=lambda: now[0])
    admitted = [bucket.admit() for _ in range(12)]
    assert admitted == [True] * 11 + [False]  # one at the rate, then burst=10 of excess
    now[0] += 0.01  # one request's worth drains
    assert bucket.admit() is True
    assert bucket.admit() is False
    now[0] += 1.0  # all drained: a burst again
    assert sum(bucket.admit() for _ in range(20)) == 11


def test_a_peer_whose_package_is_missing_is_skipped_and_said_so() -> None:
    from dataclasses import replace

    from benchmarks.run import available
    from benchmarks.scenarios import BY_NAME, Variant

    missing = Variant("peer of a missing package", "bare_aiohttp", needs="no_such_package_xyz")
    present = Variant("bare", "bare_aiohttp")
    scn = replace(BY_NAME["cpu"], variants=(missing, present))
    keep, skipped = available(scn)
    assert keep == [present]
    assert skipped == [
        "cpu: skipped 'peer of a missing package' (no_such_package_xyz is not installed)"
    ]
