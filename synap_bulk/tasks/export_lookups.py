"""Named lookups for ``kind: export``: a filter or relationship named by a natural key.

An exam office knows its cohort by name, not by id. An export job may declare the same named
lookups as a ``request`` job (:mod:`synap_bulk.lookups`), with constant keys (there is no row),
and use their fields in ``filters`` and ``relationships``::

    lookups:
      group: {resource: user-groups, by: {name: "Cohort 01"}}
    filters: {userGroup: "{group.id}"}     # or "{group}": a lookup's name alone is its id

They are resolved once, before the first page of every run (a resume too, so the export goes on
with the same records it started with, or stops when the name now finds another one). A lookup
that finds nothing, or more than one record, is an error at its job-file line and nothing is
written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from ..lookups import LOOKUP_KEYS, LookupDef, LookupResolver, lookup_fields, problem
from ..templates import render_template, spec_error, template_fields

if TYPE_CHECKING:
    from ..client import SynapClient
    from ..profile import ApiProfile
    from ..spec import JobFile, NamedLookupSpec
    from .export_collection import CollectionQuery

__all__ = ["compile_export_lookups", "resolve_query"]


def compile_export_lookups(
    lookups: Mapping[str, NamedLookupSpec],
    templated: Mapping[str, str],
    job: JobFile | None,
) -> list[LookupDef]:
    """Check the lookups and the placeholders of ``templated`` (job path -> text) against them.

    A lookup's keys may use the fields of the lookups declared before it; a filter or
    relationship value may use any lookup's fields (``{group.id}``, ``{group.name}``) or its
    name alone (its id). Anything else in braces is an error at its line.
    """
    out: list[LookupDef] = []
    known: set[str] = set()
    for name, lk in lookups.items():
        at = f"task.lookups.{name}"
        if not name.replace("_", "").replace("-", "").isalnum():
            raise spec_error(job, at, "a lookup's name is letters, digits, '_' and '-'")
        if not lk.by:
            raise spec_error(job, f"{at}.by", "name at least one key to look up by")
        for key, text in lk.by.items():
            if key not in LOOKUP_KEYS[lk.resource]:
                raise spec_error(
                    job,
                    f"{at}.by.{key}",
                    f"{lk.resource} can be looked up by {', '.join(LOOKUP_KEYS[lk.resource])}",
                )
            _check_fields(text, known, job, f"{at}.by.{key}", "an earlier lookup's field")
        if "id" in lk.by and len(lk.by) > 1:
            raise spec_error(job, f"{at}.by", "look up by id alone")
        out.append(LookupDef(name, lk.resource, dict(lk.by), lk.strategy))
        known.add(name)
    for at, text in templated.items():
        _check_fields(text, known, job, at, "a lookup's field, e.g. {group.id}")
    return out


def _check_fields(text: str, known: set[str], job: JobFile | None, at: str, hint: str) -> None:
    try:
        fields = template_fields(text)
    except ValueError as exc:
        raise spec_error(job, at, str(exc)) from None
    for field in fields:
        if field.split(".", 1)[0] not in known:
            names = ", ".join(sorted(known)) or "none declared"
            raise spec_error(
                job,
                at,
                f"{{{field}}} is not {hint} (an export has no rows; lookups: {names})",
            )


async def resolve_query(
    query: CollectionQuery,
    lookups: list[LookupDef],
    client: SynapClient,
    profile: ApiProfile,
    job: JobFile | None,
) -> CollectionQuery:
    """The query with every placeholder of its filters and relationships filled in."""
    if not lookups:
        return query
    resolver = LookupResolver(client, profile)
    values: dict[str, str] = {}
    for lk in lookups:
        keys = lk.render(values)
        found = (await resolver.resolve(lk, [keys]))[keys]
        why = problem(lk, keys, found)
        if why is not None:
            raise spec_error(job, f"task.lookups.{lk.name}", why)
        values |= lookup_fields(lk.name, found[0])
        values[lk.name] = found[0].id

    def fill(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        return tuple((k, render_template(v, values)) for k, v in pairs)

    return msgspec.structs.replace(
        query, filters=fill(query.filters), relationships=fill(query.relationships)
    )
