"""synap_bulk: safe, fast, resumable bulk operations against the Synap API."""

from __future__ import annotations

from .errors import (
    ApiError,
    BadRequest,
    CheckpointError,
    Conflict,
    ConnectError,
    ConnectionDropped,
    Forbidden,
    MalformedResponse,
    NotFound,
    RateLimited,
    RequestTimeout,
    RetryBudgetExhausted,
    ServerError,
    SourceError,
    SpecError,
    SynapBulkError,
    TransportError,
    Unauthorized,
    UnprocessableEntity,
)
from .profile import DEFAULT_PROFILE, ApiProfile

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PROFILE",
    "ApiError",
    "ApiProfile",
    "BadRequest",
    "CheckpointError",
    "Conflict",
    "ConnectError",
    "ConnectionDropped",
    "Forbidden",
    "MalformedResponse",
    "NotFound",
    "RateLimited",
    "RequestTimeout",
    "RetryBudgetExhausted",
    "ServerError",
    "SourceError",
    "SpecError",
    "SynapBulkError",
    "TransportError",
    "Unauthorized",
    "UnprocessableEntity",
    "__version__",
]
