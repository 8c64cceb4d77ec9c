"""Deterministic sample inputs (candidate CSVs) for the demo jobs, tests and benchmarks.

The rows are as messy as a student-system export: a BOM, CRLF line ends, mixed-case emails with
stray spaces, a quoted name with a comma, and — when asked — invalid emails, blank required
values and duplicate keys, each at a known line so tests can check the failures file exactly.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

from msgspec import Struct

__all__ = ["CandidateFile", "write_candidates"]

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]

HEADER = ["candidate_no", "first_name", "last_name", "email", "cohort"]


class CandidateFile(Struct, kw_only=True):
    """What was written: the valid keys and the line of every deliberately bad row."""

    path: Path
    rows: int
    valid_ids: list[str]
    invalid_lines: dict[int, str]  # line -> why


def write_candidates(
    path: Path,
    rows: int,
    *,
    cohorts: list[str],
    seed: int = 1,
    bad_every: int = 0,
    id_prefix: str = "C",
) -> CandidateFile:
    """Write ``rows`` candidates; every ``bad_every``-th row is broken in one of three ways."""
    rng = random.Random(seed)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(HEADER)
    valid: list[str] = []
    invalid: dict[int, str] = {}
    line = 1
    for i in range(1, rows + 1):
        line += 1
        cand = f"{id_prefix}{i:06d}"
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        email = f"{first}.{last}.{i}@Example.edu"
        if i % 7 == 0:
            email = f"  {email.upper()} "
        if i % 11 == 0:
            last = f"{last}, Jr"
        cohort = cohorts[i % len(cohorts)] if cohorts else ""
        if bad_every and i % bad_every == 0:
            kind = (i // bad_every) % 3
            if kind == 0:
                email = f"{first}.{last}.at.example.edu"
                invalid[line] = "email"
            elif kind == 1:
                first, last = "", ""
                invalid[line] = "required"
            else:
                cand = f"{id_prefix}{i - 1:06d}"  # the previous row's key again
                invalid[line] = "duplicate"
        if line not in invalid:
            valid.append(cand)
        writer.writerow([cand, first, last, email, cohort])
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    return CandidateFile(path=path, rows=rows, valid_ids=valid, invalid_lines=invalid)
