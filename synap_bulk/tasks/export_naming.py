"""The export's output file name: ``{run}`` and ``{date}`` placeholders, generation numbers.

A new generation's file is never one that exists already (see :func:`output_for`).
"""

from __future__ import annotations

import os
import string
from datetime import UTC, datetime
from pathlib import Path

from .export_records import ExportSettings

#: The placeholders ``output`` may hold.
PLACEHOLDERS = ("run", "date")


def _output_template(written: str) -> tuple[int, bool]:
    """(template parts, uses a placeholder) of an ``output`` as written; ValueError if bad."""
    if "{" not in written and "}" not in written:
        return 0, False
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(written) if name is not None]
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise ValueError(
                f"unknown placeholder {{{name}}} (known: {{run}}, the run's number, and "
                "{date}, the run's start date; write {{ and }} for literal braces)"
            )
    try:
        written.format(run=1, date="2000-01-01")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad placeholder: {exc}") from None
    return len(Path(os.path.expanduser(written)).parts), bool(fields)


def _utc_date(at: datetime) -> str:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%d")


class _Shown:
    """Formats as fixed text whatever the format spec (``plan``'s ``{run}`` before the run)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __format__(self, spec: str) -> str:
        return self.text


def _formatted(s: ExportSettings, run: object, date: str) -> Path:
    """``output`` with its placeholders filled (only the written parts are formatted)."""
    k = s.template_parts
    if not k:
        return s.output
    parts = s.output.parts
    tail = [part.format(run=run, date=date) for part in parts[-k:]]
    return Path(*parts[:-k], *tail)


def _numbered(path: Path, k: int) -> Path:
    """``attempts.csv`` for k = 1, else ``attempts.<k>.csv``."""
    return path if k <= 1 else path.with_name(f"{path.stem}.{k}{path.suffix}")


def _taken(path: Path, fmt: str) -> bool:
    """Whether a file of that name exists (for Parquet: or its staging files)."""
    if path.exists():
        return True
    if fmt == "parquet":
        return any(path.with_name(path.name + ext).exists() for ext in (".partial", ".tmp"))
    return False


def output_for(s: ExportSettings, generation: int, run: object, date: str) -> Path:
    """The file a new export generation writes: never one that exists already.

    A plain name gets the generation number from generation 2 on (``attempts.2.csv``); a
    templated one is formatted. A name that is taken moves on to the next free ``.<k>`` name.
    """
    base = _formatted(s, run, date)
    k = 1 if s.templated else generation
    while _taken(_numbered(base, k), s.format):
        k += 1
    return _numbered(base, k)
