"""synap_bulk: safe, fast, resumable bulk operations against the Synap API.

As a library (see README, "Library")::

    from synap_bulk import SynapClient, User

    async with SynapClient("https://api.synap.ac/v3") as client:  # token: SYNAP_TOKEN
        async for user in client.paginate("users", User):
            print(user.id, user.attributes.emailAddress)

Everything a call of :class:`SynapClient` takes or returns is importable from here: the
JSON:API documents (:mod:`.jsonapi`), the Synap resources (:mod:`.resources`) and the errors.
"""

from __future__ import annotations

from ._version import __version__
from .client import ClientStatistics, PageCursor, Response, SynapClient
from .clock import Clock, FakeClock, SystemClock
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
from .identity import Identity, TokenSource
from .jsonapi import (
    UNSET,
    AnyResource,
    Document,
    ErrorDocument,
    ErrorObject,
    ErrorSource,
    ListDocument,
    NewResource,
    Relationship,
    RelationshipDocument,
    Resource,
    ResourceIdentifier,
    ResourcePatch,
    linkage,
)
from .profile import DEFAULT_PROFILE, ApiProfile
from .ratecontrol import RateSettings
from .resources import (
    TYPE_ATTEMPT,
    TYPE_EXAM,
    TYPE_USER,
    TYPE_USER_GROUP,
    TYPE_USER_REGISTRATION,
    Attempt,
    AttemptAttributes,
    Exam,
    ExamAttributes,
    Portal,
    PortalAttributes,
    User,
    UserAttributes,
    UserGroup,
    UserGroupAttributes,
    UserPatchAttributes,
    UserRegistration,
    UserRegistrationAttributes,
)
from .retry import RetryPolicy
from .spec import JobFile, load_job
from .transport import RawResponse, StreamedResponse, Timeouts, Transport

__all__ = [
    "DEFAULT_PROFILE",
    "TYPE_ATTEMPT",
    "TYPE_EXAM",
    "TYPE_USER",
    "TYPE_USER_GROUP",
    "TYPE_USER_REGISTRATION",
    "UNSET",
    "AnyResource",
    "ApiError",
    "ApiProfile",
    "Attempt",
    "AttemptAttributes",
    "BadRequest",
    "CheckpointError",
    "ClientStatistics",
    "Clock",
    "Conflict",
    "ConnectError",
    "ConnectionDropped",
    "Document",
    "ErrorDocument",
    "ErrorObject",
    "ErrorSource",
    "Exam",
    "ExamAttributes",
    "FakeClock",
    "Forbidden",
    "Identity",
    "InsecureURL",
    "JobFile",
    "ListDocument",
    "MalformedResponse",
    "MissingToken",
    "NewResource",
    "NotFound",
    "PageCursor",
    "Portal",
    "PortalAttributes",
    "RateLimited",
    "RateSettings",
    "RawResponse",
    "Relationship",
    "RelationshipDocument",
    "RequestTimeout",
    "Resource",
    "ResourceIdentifier",
    "ResourcePatch",
    "Response",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "ServerError",
    "SourceError",
    "SpecError",
    "StreamedResponse",
    "SynapBulkError",
    "SynapClient",
    "SystemClock",
    "Timeouts",
    "TokenSource",
    "Transport",
    "TransportError",
    "Unauthorized",
    "UnprocessableEntity",
    "User",
    "UserAttributes",
    "UserGroup",
    "UserGroupAttributes",
    "UserPatchAttributes",
    "UserRegistration",
    "UserRegistrationAttributes",
    "__version__",
    "linkage",
    "load_job",
]
