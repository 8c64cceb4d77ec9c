"""What undo and the guard need of a ``request`` job: a row's reverse request rendered from its
``undo:`` template, and the deletes and relationship removals its rows would make."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from ..errors import NotFound
from ..guards import Destructive
from ..items import Item
from ..sources import CsvSource
from ..templates import Template, compile_template

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..client import SynapClient
    from ..spec import JobFile
    from ..spec_undo import UndoTemplateSpec
    from .request import RequestTask

__all__ = ["RESPONSE_ID", "RowUndo", "count_destructive"]

#: The placeholder of the id in the row's response (``{response.id}``).
RESPONSE_ID = "response.id"


class RowUndo:
    """A request job's ``undo:`` template, checked against the input's header at load time."""

    def __init__(self, spec: UndoTemplateSpec, job: JobFile, source: CsvSource) -> None:
        self.method = spec.method
        self._path = compile_template(spec.path, job=job, at="task.undo.path")
        self._body: Template | None = None
        if spec.body is not None:
            self._body = compile_template(spec.body, job=job, at="task.undo.body")
        header = [*source.header, RESPONSE_ID]
        for t in (self._path, self._body):
            if t is not None:
                t.validate(header, source=source.display_name, delimiter=source.delimiter)
        used = [*self._path.columns, *(self._body.columns if self._body else [])]
        self.needs_response = RESPONSE_ID in used

    def render(self, row: Mapping[str, str], response_id: str) -> dict[str, Any]:
        values = {**row, RESPONSE_ID: response_id}
        quoted = {k: quote(v.strip(), safe="") for k, v in values.items()}
        out: dict[str, Any] = {
            "method": self.method,
            "path": str(self._path.render(quoted)).strip().lstrip("/"),
        }
        if self._body is not None:
            out["body"] = self._body.render(values)
        return out


class _Linkage(msgspec.Struct):
    data: Any = None


async def count_destructive(task: RequestTask, client: SynapClient) -> Destructive:
    """DELETE rows: a delete each, or, to a ``/relationships/`` path, the members their bodies
    remove (with each relationship's current size, read from the server)."""
    found = Destructive()
    if task.method != "DELETE":
        return found
    removals: Counter[str] = Counter()
    async for it in task.items():
        if not isinstance(it, Item):
            continue
        path: str = it.payload["path"]
        if "/relationships/" not in path:
            found.deletes += 1
            continue
        data = (it.payload.get("body") or {}).get("data")
        removals[path] += len(data) if isinstance(data, list) else 1
    for path in removals:
        try:
            resp = await client.request("GET", path, idempotent=True)
        except NotFound:
            continue
        data = msgspec.json.decode(resp.body, type=_Linkage).data
        found.sizes[path] = len(data) if isinstance(data, list) else 0
    found.removals = dict(removals)
    return found
