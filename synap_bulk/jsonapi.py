"""JSON:API 1.1 documents as msgspec Structs, with reusable encoders and decoders.

Responses tolerate unknown members (the Synap API is beta and grows); request bodies are built
from the ``New*`` / ``*Patch`` Structs so that a create never carries an ``id`` and a PATCH keeps
"absent" (``msgspec.UNSET``, omitted) apart from ``None`` (sent as ``null``).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Generic, TypeVar

import msgspec
from msgspec import UNSET, Struct, UnsetType

__all__ = [
    "MEDIA_TYPE",
    "UNSET",
    "AnyResource",
    "Document",
    "ErrorDocument",
    "ErrorObject",
    "ErrorSource",
    "ListDocument",
    "NewResource",
    "Relationship",
    "RelationshipDocument",
    "Resource",
    "ResourceIdentifier",
    "ResourcePatch",
    "decode",
    "decode_errors",
    "encode",
    "error_document",
    "linkage",
]

MEDIA_TYPE = "application/vnd.api+json"

A = TypeVar("A")
D = TypeVar("D")
T = TypeVar("T")


class ResourceIdentifier(Struct, frozen=True, omit_defaults=True):
    """Linkage: ``{"type": ..., "id": ...}``."""

    type: str
    id: str
    meta: dict[str, Any] | UnsetType = UNSET


class Relationship(Struct, omit_defaults=True):
    """A relationship object: to-one (identifier or null) or to-many (list) linkage."""

    data: ResourceIdentifier | list[ResourceIdentifier] | UnsetType | None = UNSET
    links: dict[str, Any] | UnsetType = UNSET
    meta: dict[str, Any] | UnsetType = UNSET

    def ids(self) -> list[str]:
        """The ids this relationship points at, whatever its cardinality."""
        d = self.data
        if d is None or d is UNSET:
            return []
        if isinstance(d, list):
            return [x.id for x in d]
        assert isinstance(d, ResourceIdentifier)
        return [d.id]

    def id(self) -> str | None:
        """The id of a to-one relationship, or None."""
        ids = self.ids()
        return ids[0] if ids else None


class Resource(Struct, Generic[A], kw_only=True, omit_defaults=True):
    """A resource object as the server returns it; ``attributes`` typed by ``A``."""

    type: str
    id: str
    attributes: A
    relationships: dict[str, Relationship] = {}
    links: dict[str, Any] = {}
    meta: dict[str, Any] = {}

    def rel_id(self, name: str) -> str | None:
        rel = self.relationships.get(name)
        return rel.id() if rel is not None else None

    def rel_ids(self, name: str) -> list[str]:
        rel = self.relationships.get(name)
        return rel.ids() if rel is not None else []


AnyResource = Resource[dict[str, Any]]


class Document(Struct, Generic[D], kw_only=True, omit_defaults=True):
    """A top-level document whose primary data is ``D``."""

    data: D
    included: list[AnyResource] = []
    links: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    jsonapi: dict[str, Any] | UnsetType = UNSET


class ListDocument(Struct, Generic[T], kw_only=True, omit_defaults=True):
    """A collection page: ``data`` list, ``links`` (self/first/prev/next/last) and ``meta``."""

    data: list[T]
    included: list[AnyResource] = []
    links: dict[str, str | None] = {}
    meta: dict[str, Any] = {}
    jsonapi: dict[str, Any] | UnsetType = UNSET


class RelationshipDocument(Struct, kw_only=True, omit_defaults=True):
    """Body of ``/relationships/<name>`` requests and responses."""

    data: list[ResourceIdentifier] | ResourceIdentifier | None
    links: dict[str, Any] | UnsetType = UNSET
    meta: dict[str, Any] | UnsetType = UNSET


class ErrorSource(Struct, omit_defaults=True):
    pointer: str | None = None
    parameter: str | None = None
    header: str | None = None


class ErrorObject(Struct, omit_defaults=True):
    """One JSON:API error. ``status`` is a string, as the spec says."""

    status: str | None = None
    code: str | None = None
    title: str | None = None
    detail: str | None = None
    source: ErrorSource | None = None
    meta: dict[str, Any] | None = None
    id: str | None = None
    links: dict[str, Any] | None = None

    @property
    def trace_id(self) -> str | None:
        if self.meta:
            value = self.meta.get("traceId")
            if isinstance(value, str):
                return value
        return None


class ErrorDocument(Struct, kw_only=True, omit_defaults=True):
    errors: list[ErrorObject]
    meta: dict[str, Any] | UnsetType = UNSET
    jsonapi: dict[str, Any] | UnsetType = UNSET


class NewResource(Struct, kw_only=True, omit_defaults=True):
    """Body ``data`` of a create: no ``id`` member at all."""

    type: str
    attributes: Any = UNSET
    relationships: dict[str, Relationship] | UnsetType = UNSET


class ResourcePatch(Struct, kw_only=True, omit_defaults=True):
    """Body ``data`` of a PATCH: ``id`` and ``type``; only the members given are sent."""

    type: str
    id: str
    attributes: Any = UNSET
    relationships: dict[str, Relationship] | UnsetType = UNSET


def linkage(type_: str, ids: str | Iterable[str]) -> list[ResourceIdentifier] | ResourceIdentifier:
    """Linkage for one id (to-one) or an iterable of ids (to-many)."""
    if isinstance(ids, str):
        return ResourceIdentifier(type=type_, id=ids)
    return [ResourceIdentifier(type=type_, id=i) for i in ids]


_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    """Encode a Struct/dict document to JSON bytes (UNSET members omitted)."""
    return _encoder.encode(obj)


@lru_cache(maxsize=128)
def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


def decode(data: bytes | str, tp: type[T]) -> T:
    """Decode with a cached typed decoder; raises ``msgspec.DecodeError`` / ``ValidationError``."""
    key: Any = tp
    result: T = _decoder(key).decode(data)
    return result


def decode_errors(body: bytes) -> list[ErrorObject] | None:
    """The ``errors`` array of an error body, or None when it is not a JSON:API error document."""
    if not body:
        return None
    try:
        return decode(body, ErrorDocument).errors
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def error_document(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    code: str | None = None,
    pointer: str | None = None,
    parameter: str | None = None,
    header: str | None = None,
    meta: dict[str, Any] | None = None,
) -> ErrorDocument:
    """A one-error document; handy for servers and tests alike."""
    source = None
    if pointer is not None or parameter is not None or header is not None:
        source = ErrorSource(pointer=pointer, parameter=parameter, header=header)
    return ErrorDocument(
        errors=[
            ErrorObject(
                status=str(status), code=code, title=title, detail=detail, source=source, meta=meta
            )
        ]
    )
