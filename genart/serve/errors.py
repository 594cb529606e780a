"""The API's error types. Each maps to one HTTP status and a JSON body in exactly one place (``api.py``).

Anything raised from bad input must be one of these, so that bad input never becomes a 5xx.
"""

from __future__ import annotations

__all__ = [
    "APIError",
    "BadRequest",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "URLFetchFailed",
    "URLRefused",
    "Unauthorized",
    "UnprocessableImage",
    "UnsupportedMediaType",
]


class APIError(Exception):
    """An error the client can act on: ``status`` is the HTTP code, ``code`` a stable name for programs."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


class BadRequest(APIError):
    status, code = 400, "bad_request"


class Unauthorized(APIError):
    status, code = 401, "unauthorized"


class NotFound(APIError):
    status, code = 404, "not_found"


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(APIError):
    status, code = 415, "unsupported_media_type"


class UnprocessableImage(APIError):
    """The bytes arrived but are not a usable image: not an image, truncated, empty, a decompression bomb."""

    status, code = 422, "invalid_image"


class URLRefused(APIError):
    """The URL is not allowed: not http(s), or it resolves to a loopback, private, link-local or reserved
    address."""

    status, code = 400, "url_refused"


class URLFetchFailed(APIError):
    """The URL was allowed but fetching it failed: unreachable, timeout, error status, too many redirects."""

    status, code = 422, "url_fetch_failed"


class ServiceUnavailable(APIError):
    status, code = 503, "unavailable"


class Overloaded(APIError):
    """More requests in the ingress than it takes at once: retry after a moment (``Retry-After``)."""

    status, code = 503, "overloaded"


class DeadlineExceeded(APIError):
    """The request ran past the app's deadline, which ends before Serve's own ``request_timeout_s``."""

    status, code = 504, "deadline_exceeded"
