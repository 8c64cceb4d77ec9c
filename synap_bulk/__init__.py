"""synap_bulk: safe, fast, resumable bulk operations against the Synap API."""

from __future__ import annotations

from ._version import __version__
from .client import ClientStatistics, PageCursor, Response, SynapClient
from .errors import (
    ApiError,
    BadRequest,
    CheckpointError,
    Conflict,
    ConnectError,
    ConnectionDropped,
    Forbidden,
    InsecureURL,
    MalformedResponse,
    MissingToken,
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
from .ratecontrol import RateSettings
from .retry import RetryPolicy
from .spec import JobFile, load_job
from .transport import Timeouts

__all__ = [
    "DEFAULT_PROFILE",
    "ApiError",
    "ApiProfile",
    "BadRequest",
    "CheckpointError",
    "ClientStatistics",
    "Conflict",
    "ConnectError",
    "ConnectionDropped",
    "Forbidden",
    "InsecureURL",
    "JobFile",
    "MalformedResponse",
    "MissingToken",
    "NotFound",
    "PageCursor",
    "RateLimited",
    "RateSettings",
    "RequestTimeout",
    "Response",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "ServerError",
    "SourceError",
    "SpecError",
    "SynapBulkError",
    "SynapClient",
    "Timeouts",
    "TransportError",
    "Unauthorized",
    "UnprocessableEntity",
    "__version__",
    "load_job",
]
