"""Settling doubt: a person says which in-doubt items took effect on the server.

An unsafe request whose outcome is unknown (the server may have carried it out and then failed,
or the connection dropped) is recorded ``in_doubt`` and never re-sent blindly: sending it again
could do it twice. Someone checks on the server and then settles each one here:

- *applied*: it took effect, so the item is done (action ``settled``) and is never sent again;
- *not applied*: it did not, so the item is forgotten and the next run sends it, once.

The answers come from the command line (item keys) or from a CSV: normally the job's own
failures file fed back with a column ``applied`` added, holding yes or no (also true/false,
1/0, y/n; blank leaves the row alone, so the failed rows around the in-doubt ones need no
answer). A CSV row names its item by ``_key`` when it has that column, else by ``_line`` (the
input line the failures file gives), and then the row's input values must equal those the
ledger kept for that item: a file of another job or of an older run cannot settle the wrong
item. The whole input is checked before anything changes. Nothing here contacts the server.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import anyio
from msgspec import Struct
from rich.console import Console

from .errors import CheckpointError, SourceError, SynapBulkError
from .ledger import FailedItem, Ledger
from .report import RESERVED_COLUMNS
from .runner import EXIT_FAILED, EXIT_INVALID, EXIT_OK, invoked_as, ledger_path
from .sources import is_result_file, unescape_formula
from .spec import JobFile

__all__ = ["APPLIED_COLUMN", "parse_applied", "settle_job"]

#: The CSV column holding the person's answer.
APPLIED_COLUMN = "applied"
#: A column naming the item by its ledger key (used when present and non-empty).
KEY_COLUMN = "_key"
LINE_COLUMN = "_line"

_YES = frozenset({"yes", "y", "true", "1"})
_NO = frozenset({"no", "n", "false", "0"})
_DELIMITERS = (",", ";", "\t", "|")


def parse_applied(value: str) -> bool | None:
    """``True`` for yes/true/1/y, ``False`` for no/false/0/n (any case), ``None`` for blank.

    Anything else raises ValueError.
    """
    text = value.strip().lower()
    if not text:
        return None
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise ValueError(f"expected yes or no (or true/false, 1/0, y/n), got {_show(value)}")


class _Answer(Struct, frozen=True, kw_only=True):
    """One answered CSV row: the item it names (by key, or by input line and values)."""

    where: str  # "file.csv:3"
    applied: bool
    key: str = ""
    line: int = 0
    values: dict[str, str] = {}


class _Decision(Struct, frozen=True):
    applied: bool
    where: str  # "" for a key given on the command line


async def settle_job(
    job: JobFile,
    *,
    applied: list[str],
    not_applied: list[str],
    csv_path: Path | None,
    console: Console,
) -> int:
    """Settle the job's in-doubt items as the answers say; returns the exit code.

    0: every answer settled an item; 1: some did not (unknown key, item not in doubt, CSV row
    matching no item), each printed with the reason; 2: bad input (nothing changed), no ledger,
    or a ledger that refuses this job (its task section changed, another run holds it).
    """

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    if job.spec.api.base_url == "sandbox" and not (job.spec.sandbox or {}).get("state"):
        say(
            f"error: {job.path}: this job runs against the embedded sandbox without a state "
            "file, which starts afresh every run: nothing is left in doubt to settle"
        )
        return EXIT_INVALID
    path = ledger_path(job)
    if not await _has_progress(path):
        say(f"error: {job.path}: no ledger at {path}: the job has not run, nothing is in doubt")
        return EXIT_INVALID

    answers: list[_Answer] = []
    blank = 0
    if csv_path is not None:
        try:
            answers, blank, errors = _read_answers(csv_path, _job_delimiter(job))
        except SynapBulkError as exc:
            errors = [str(exc)]
        if errors:
            for error in errors:
                say(f"error: {error}")
            say("Nothing was settled.")
            return EXIT_INVALID
        if not answers:
            say(f"error: {csv_path}: no row has an answer in its {APPLIED_COLUMN} column")
            return EXIT_INVALID
    elif not applied and not not_applied:
        say("error: nothing to settle: give keys (--applied, --not-applied) or --csv FILE")
        return EXIT_INVALID

    decisions: dict[str, _Decision] = {}
    conflicts: list[str] = []
    for keys, answer in ((applied, True), (not_applied, False)):
        for key in keys:
            _decide(decisions, conflicts, key, _Decision(answer, ""))
    if conflicts:
        for conflict in conflicts:
            say(f"error: {conflict}")
        say("Nothing was settled.")
        return EXIT_INVALID

    try:
        ledger = await Ledger.open(
            path,
            job_name=job.spec.name,
            task_hash=job.task_hash(),
            input_hash="",
            check_input=False,
        )
    except CheckpointError as exc:
        say(f"error: cannot settle: {exc}")
        return EXIT_INVALID
    async with ledger:
        unmatched: list[str] = []
        if answers:
            found = _match(answers, await ledger.failed_items(), unmatched)
            for key, decision in found:
                _decide(decisions, conflicts, key, decision)
        if conflicts:
            for conflict in conflicts:
                say(f"error: {conflict}")
            say("Nothing was settled.")
            return EXIT_INVALID
        results: dict[str, str] = {}
        for answer in (True, False):
            keys = [k for k, d in decisions.items() if d.applied is answer]
            if keys:
                results.update(await ledger.settle(keys, applied=answer))
        left = (await ledger.counts()).get("in_doubt", 0)

    settled = {True: 0, False: 0}
    not_in_doubt = unknown = 0
    for key, decision in decisions.items():
        result = results[key]
        if result == "settled":
            settled[decision.applied] += 1
            continue
        if result == "unknown":
            unknown += 1
            why = "unknown: the ledger has no item with this key"
        else:
            not_in_doubt += 1
            why = result.replace("not in doubt: ", "not in doubt (it is ") + ")"
        named = f"{decision.where} ({key})" if decision.where else key
        say(f"not settled: {named}: {why}")
    for line in unmatched:
        say(f"not settled: {line}")

    total = f"{settled[True]} settled as applied, {settled[False]} as not applied"
    extras = [
        _count(not_in_doubt, "not in doubt", "not in doubt"),
        _count(unknown, "unknown key", "unknown keys"),
        _count(len(unmatched), "row matching no item", "rows matching no item"),
        _count(blank, "row without an answer", "rows without an answer"),
    ]
    say("; ".join([total, *(e for e in extras if e)]))
    if settled[False]:
        say(
            f"Run the job again to send the {settled[False]} not applied: "
            f"{invoked_as()} run {job.path}"
        )
    if left:
        say(f"{left} still in doubt.")
    if not_in_doubt or unknown or unmatched:
        return EXIT_FAILED
    return EXIT_OK


# -- the answers -------------------------------------------------------------------------------


async def _has_progress(path: Path) -> bool:
    """Whether ``path`` is a ledger some run has written (opening one that is not would make
    it look started for another input)."""
    if not await anyio.Path(path).is_file():
        return False
    try:
        async with await Ledger.open_readonly(path) as reader:
            return await reader.get_meta("task_hash") is not None
    except CheckpointError:
        return True  # let the real open say what is wrong with it


def _job_delimiter(job: JobFile) -> str:
    delimiter = getattr(job.spec.task, "delimiter", ",")
    return delimiter if isinstance(delimiter, str) else ","


def _sniff_delimiter(header: str, preferred: str) -> str:
    """The delimiter whose split of the header gives an ``applied`` column: the job's own
    (a failures file is written with it) or a common one (a CSV written by hand)."""
    for delimiter in dict.fromkeys((preferred, *_DELIMITERS)):
        names = {name.strip().strip('"').strip() for name in header.split(delimiter)}
        if APPLIED_COLUMN in names:
            return delimiter
    return preferred


def _read_table(path: Path, preferred: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and every non-blank record with the physical line it starts on.

    Not :class:`~synap_bulk.sources.CsvSource`: that one gives a failures file's rows the
    lines of the original input (their ``_line``), and an answer's error must name the line of
    this file.
    """
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise SourceError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"{name}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    first = next((line for line in io.StringIO(text, newline="") if line.strip()), "")
    delimiter = _sniff_delimiter(first, preferred)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    records: list[tuple[int, list[str]]] = []
    last = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise SourceError(f"{name}:{last + 1}: cannot be read: {exc}") from None
        start, last = last + 1, reader.line_num
        if not "".join(record).strip():
            continue
        if header is None:
            header = [c.strip() for c in record]
        else:
            records.append((start, record))
    if header is None:
        raise SourceError(f"{name}: empty file (no header row)")
    if APPLIED_COLUMN not in header:
        raise SourceError(
            f"{name}: no {APPLIED_COLUMN} column (header: {', '.join(header[:12])}); add one "
            "holding yes or no for each row you checked"
        )
    return header, records


def _read_answers(path: Path, delimiter: str) -> tuple[list[_Answer], int, list[str]]:
    """The answered rows, how many rows had no answer, and every problem (file:line: ...)."""
    header, records = _read_table(path, delimiter)
    name = str(path)
    if KEY_COLUMN not in header and LINE_COLUMN not in header:
        return (
            [],
            0,
            [
                f"{name}: needs a {LINE_COLUMN} column (the failures file has one) or a "
                f"{KEY_COLUMN} column naming each item"
            ],
        )
    skip = RESERVED_COLUMNS | {APPLIED_COLUMN, KEY_COLUMN}
    escaped = is_result_file(header)
    answers: list[_Answer] = []
    errors: list[str] = []
    blank = 0
    for line_no, record in records:
        where = f"{name}:{line_no}"
        if len(record) > len(header):
            errors.append(f"{where}: {len(record)} fields but the header has {len(header)}")
            continue
        values = dict(zip(header, record, strict=False))
        try:
            answer = parse_applied(values.get(APPLIED_COLUMN, ""))
        except ValueError as exc:
            errors.append(f"{where}: {APPLIED_COLUMN}: {exc}")
            continue
        if answer is None:
            blank += 1
            continue
        key = values.get(KEY_COLUMN, "").strip()
        if key:
            answers.append(_Answer(where=where, applied=answer, key=key))
            continue
        raw = values.get(LINE_COLUMN, "")
        line = int(raw.strip()) if raw.strip().isdigit() else 0
        if line < 1:
            errors.append(
                f"{where}: {LINE_COLUMN}: expected the line number the failures file gives, "
                f"got {_show(raw)}"
            )
            continue
        kept = {c: v for c, v in values.items() if c not in skip}
        if escaped:  # values the failures file escaped against formulas compare as the run had
            kept = {c: unescape_formula(v) for c, v in kept.items()}
        answers.append(_Answer(where=where, applied=answer, line=line, values=kept))
    return answers, blank, errors


def _match(
    answers: list[_Answer], kept: list[FailedItem], unmatched: list[str]
) -> list[tuple[str, _Decision]]:
    """The ledger key each answer names; rows naming none are described in ``unmatched``."""
    by_line: dict[int, list[FailedItem]] = {}
    for item in kept:
        by_line.setdefault(item.line, []).append(item)
    found: list[tuple[str, _Decision]] = []
    for answer in answers:
        decision = _Decision(answer.applied, answer.where)
        if answer.key:
            found.append((answer.key, decision))
            continue
        candidates = by_line.get(answer.line, [])
        same = [c for c in candidates if not _differences(c.row, answer.values)]
        if len(same) == 1:
            found.append((same[0].key, decision))
        elif not candidates:
            unmatched.append(
                f"{answer.where}: the ledger has no failed or in-doubt item at line "
                f"{answer.line} (settled already?)"
            )
        elif not same and len(candidates) == 1:
            only = candidates[0]
            column, there = _differences(only.row, answer.values)[0]
            unmatched.append(
                f"{answer.where}: line {answer.line} is item {only.key!r} in the ledger, but "
                f"its {column} there is {_show(there)}, here {_show(answer.values[column])}; "
                "if it is the same row, settle it by key"
            )
        else:
            keys = ", ".join(repr(c.key) for c in (same or candidates))
            unmatched.append(
                f"{answer.where}: line {answer.line} matches several items ({keys}); settle "
                "them by key"
            )
    return found


def _differences(kept: Mapping[str, str], values: Mapping[str, str]) -> list[tuple[str, str]]:
    """The columns (with the ledger's value) where a CSV row differs from the row kept."""
    return [(c, kept[c]) for c, v in values.items() if c in kept and kept[c] != v]


def _decide(
    decisions: dict[str, _Decision], conflicts: list[str], key: str, decision: _Decision
) -> None:
    earlier = decisions.get(key)
    if earlier is None:
        decisions[key] = decision
    elif earlier.applied != decision.applied:
        first, second = (earlier, decision) if earlier.applied else (decision, earlier)
        conflicts.append(
            f"{key!r} is given both as applied{_at(first.where)} and as not "
            f"applied{_at(second.where)}"
        )


def _at(where: str) -> str:
    return f" ({where})" if where else " (command line)"


def _count(n: int, one: str, many: str) -> str:
    if not n:
        return ""
    return f"{n} {one if n == 1 else many}"


def _show(value: str) -> str:
    """A value from the CSV, quoted and cut short for a message."""
    return repr(value if len(value) <= 40 else value[:37] + "...")
