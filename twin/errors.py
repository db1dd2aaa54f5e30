"""Errors raised by the twin package's queries, traces and state; the HTTP layer maps them."""


class TwinError(Exception):
    """Root of every error the twin package raises on purpose."""


class InvalidParameter(TwinError):
    """A request parameter or body that cannot be used, with what was wrong."""


class GravityNetwork(InvalidParameter):
    """An isolation asked of a gravity pipe (sewer, storm): no valves isolate it; the upstream
    and downstream traces say what drains into it and where it drains."""


class LimitExceeded(TwinError):
    """A request over a configured limit (radius, result count, vertices, body size)."""


class NotAcceptable(TwinError):
    """A requested representation (CRS, format) the server cannot produce."""


class BodyTooLarge(LimitExceeded):
    """A request body over the configured size."""


class TimeLimitExceeded(LimitExceeded):
    """A request that ran past its wall-clock budget (`TWIN_REQUEST_TIMEOUT_S`) and was stopped."""


class Overloaded(TwinError):
    """The worker holds as many requests as it may (`TWIN_MAX_IN_FLIGHT`): answered 503 with
    `Retry-After`, at once, instead of queueing."""


class RateLimited(TwinError):
    """A caller over its request rate (`TWIN_RATE_*`): answered 429 with `Retry-After`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        """Whole seconds (at least 1) until the caller may ask again."""


class Forbidden(TwinError):
    """The caller is known but may not do this (a viewer changing data, an engineer outside its
    area, a key other than an admin's asking for keys or the audit log): 403."""
