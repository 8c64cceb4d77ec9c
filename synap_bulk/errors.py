"""One exception tree for everything synap_bulk raises on purpose.

::

    SynapBulkError
    ├── TransportError                 (retryable; the request may not have reached the server)
    │   ├── ConnectError               (never reached the server: safe to resend)
    │   ├── RequestTimeout             (outcome unknown)
    │   └── ConnectionDropped          (outcome unknown: the server may have committed)
    ├── ApiError                       (the server answered with a status >= 400)
    │   ├── BadRequest           400   (validation; carries the JSON:API error objects)
    │   ├── Unauthorized         401   (fatal for a run)
    │   ├── Forbidden            403
    │   ├── NotFound             404
    │   ├── Conflict             409
    │   ├── UnprocessableEntity  422
    │   ├── RateLimited          429   (carries Retry-After)
    │   └── ServerError          5xx   (carries the traceId when the server gave one)
    ├── MalformedResponse              (a 2xx whose body is not the JSON:API document expected)
    ├── RetryBudgetExhausted           (the client stopped retrying to spare a sick server)
    ├── InsecureURL                    (also a ValueError: the token would go in clear text,
    │                                   or to another origin than the API's)
    ├── MissingToken                   (also a ValueError: no token given, none in SYNAP_TOKEN,
    │                                   the token file unreadable)
    ├── SpecError                      (a job file is wrong: names file, line and field)
    ├── SourceError                    (an input file cannot be read as a whole)
    └── CheckpointError                (the ledger is unusable or belongs to another job)

An :class:`ApiError` carries the method, the path (never the query string's secrets, never
headers, never the token), the status, Retry-After and the decoded error objects, and prints like
``400 Bad Request for POST /v3/user-registrations: email already registered
(source: /data/attributes/emailAddress)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .jsonapi import ErrorObject

__all__ = [
    "ApiError",
    "BadRequest",
    "CheckpointError",
    "Conflict",
    "ConnectError",
    "ConnectionDropped",
    "Forbidden",
    "InsecureURL",
    "MalformedResponse",
    "MissingToken",
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
    "api_error_for",
]


class SynapBulkError(Exception):
    """Root of every error synap_bulk raises on purpose."""


class TransportError(SynapBulkError):
    """The exchange failed below HTTP; ``method`` and ``path`` say which request."""

    #: True when the request certainly never reached the server (safe to resend any method).
    never_sent: bool = False

    def __init__(self, message: str, *, method: str = "", path: str = "") -> None:
        self.method = method
        self.path = path
        where = f" for {method} {path}" if method else ""
        super().__init__(f"{message}{where}")


class ConnectError(TransportError):
    """The connection could not be opened: the request never left."""

    never_sent = True


class RequestTimeout(TransportError):
    """No complete answer in time: the server may or may not have acted."""


class ConnectionDropped(TransportError):
    """The connection closed mid-exchange or the body was cut short: outcome unknown."""


class ApiError(SynapBulkError):
    """The server answered with an error status.

    ``after_unknown`` is True when the client got this answer on a retry of a request whose
    earlier attempt may have taken effect (a 5xx, a dropped connection): a 404 to a repeated
    DELETE then means the first one did its work.
    """

    after_unknown: bool = False

    def __init__(
        self,
        *,
        method: str,
        path: str,
        status: int,
        errors: Sequence[ErrorObject] = (),
        retry_after: float | None = None,
        trace_id: str | None = None,
        body_excerpt: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.errors = tuple(errors)
        self.retry_after = retry_after
        self.trace_id = trace_id
        self.body_excerpt = body_excerpt
        super().__init__(self._message())

    @property
    def reason(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Error"

    @property
    def first_pointer(self) -> str | None:
        """The ``source.pointer`` of the first error object that has one."""
        for err in self.errors:
            if err.source is not None and err.source.pointer:
                return err.source.pointer
        return None

    @property
    def code(self) -> str | None:
        for err in self.errors:
            if err.code:
                return err.code
        return None

    def details(self) -> list[str]:
        """One readable line per JSON:API error object."""
        out: list[str] = []
        for err in self.errors:
            text = err.detail or err.title or err.code or "error"
            src = err.source
            if src is not None:
                where = src.pointer or (src.parameter and f"?{src.parameter}") or src.header
                if where:
                    text = f"{text} (source: {where})"
            out.append(text)
        return out

    def _message(self) -> str:
        head = f"{self.status} {self.reason} for {self.method} {self.path}"
        lines = self.details()
        if lines:
            head = f"{head}: {'; '.join(lines)}"
        elif self.body_excerpt:
            head = f"{head}: non-JSON:API body: {self.body_excerpt!r}"
        if self.trace_id:
            head = f"{head} [traceId {self.trace_id}]"
        return head


class BadRequest(ApiError):
    """400: the server refused the input; one error object per problem."""


class Unauthorized(ApiError):
    """401: the token is missing, wrong or revoked. Fatal for a run."""


class Forbidden(ApiError):
    """403: authorised, but not allowed (e.g. acting on a draft exam)."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409."""


class UnprocessableEntity(ApiError):
    """422."""


class RateLimited(ApiError):
    """429: the server asked us to slow down; ``retry_after`` in seconds when it said."""


class ServerError(ApiError):
    """5xx: transient or a server bug; quote ``trace_id`` to support."""


class MalformedResponse(SynapBulkError):
    """A success status whose body is not the document expected."""

    def __init__(self, message: str, *, method: str = "", path: str = "", status: int = 0) -> None:
        self.method = method
        self.path = path
        self.status = status
        super().__init__(f"{message} ({status} for {method} {path})" if method else message)


class RetryBudgetExhausted(SynapBulkError):
    """Retries were refused because too many recent requests were already retries."""

    def __init__(self, last: SynapBulkError) -> None:
        self.last = last
        super().__init__(f"retry budget exhausted; last error: {last}")


class InsecureURL(SynapBulkError, ValueError):
    """A URL the token must not be sent to.

    A base URL that breaks the rule of :func:`synap_bulk.urls.check_base_url` (plain http to a
    host other than the loopback, no http(s) URL with a host, a query string or fragment), or an
    absolute URL on another origin than the client's (a ``links.next`` pointing elsewhere).
    """


class MissingToken(SynapBulkError, ValueError):
    """No token was given, in SYNAP_TOKEN, or in the token file."""


class SpecError(SynapBulkError):
    """A job file is invalid. ``str()`` is ``file:line: path: message``."""

    def __init__(
        self, message: str, *, file: str = "", line: int | None = None, path: str = ""
    ) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.message = message
        prefix = file
        if line is not None:
            prefix = f"{prefix}:{line}"
        parts = [p for p in (prefix, path) if p]
        super().__init__(": ".join([*parts, message]))


class SourceError(SynapBulkError):
    """An input file cannot be used at all (missing, not UTF-8, header lacks columns)."""


class CheckpointError(SynapBulkError):
    """The ledger cannot be used (belongs to a changed job, corrupt, locked)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: UnprocessableEntity,
    429: RateLimited,
}


def api_error_for(status: int) -> type[ApiError]:
    """The ApiError subclass for an HTTP status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, ApiError)
