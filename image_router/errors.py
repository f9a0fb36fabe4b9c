"""The one error tree of the gateway.

Every error a client can see is a :class:`RouterError` with an HTTP ``status`` and a
stable snake_case ``code`` (class attributes, so they are documented and tested in one
place). Foreign exceptions (tritonclient, sockets, pydantic, YAML) are translated once,
where they enter — the backends and the config loader — so everything above them only
ever handles these::

    RouterError                      500 internal_error
    ├── ConfigError                  500 config_invalid      (routes.yaml; carries every issue)
    ├── TritonStartupError           500 triton_startup      (launcher; never reaches a client)
    ├── CacheStoreError              500 cache_store_unusable (startup/reload; never reaches a client)
    ├── StateStoreError              500 state_store_unusable (startup/reload: a state store that could lose state)
    ├── ClientError                  400 bad_request
    │   ├── InvalidRequest           400 invalid_request     (names the field)
    │   ├── Unauthorized             401 unauthorized
    │   ├── NotFound                 404 not_found
    │   │   ├── ImageNotFound        404 image_not_found     (an image URL unknown, expired or purged)
    │   │   └── JobNotFound          404 job_not_found       (a job unknown, expired, deleted or another tenant's)
    │   ├── UnknownModel             404 model_not_found
    │   ├── MethodNotAllowed         405 method_not_allowed
    │   ├── PayloadTooLarge          413 payload_too_large
    │   ├── UnsupportedMediaType     415 unsupported_media_type
    │   ├── Conflict                 409 conflict            (an admin action the state does not allow)
    │   │   ├── JobNotFinished       409 job_not_finished    (a job's result asked before it ended)
    │   │   └── JobCancelled         409 job_cancelled       (the result of a cancelled job)
    │   ├── IdempotencyKeyReused     422 idempotency_key_reused (one Idempotency-Key, another request)
    │   ├── InvalidWebhookUrl        400 invalid_webhook_url (scheme, port, userinfo, length)
    │   ├── WebhookUrlForbidden      400 webhook_url_forbidden (resolves to a non-public address)
    │   └── WebhookSecretMissing     400 webhook_secret_missing (a webhook asked, no secret to sign it)
    │   └── ClientGone               499 client_closed_request (the client left first: nginx's 499)
    ├── BackendError                 502 backend_error       (one attempt failed)
    │   ├── BackendRejected          400 backend_rejected    (the model refused the input)
    │   ├── BackendUnavailable       503 backend_unavailable (refused, 5xx, queue full)
    │   └── BackendTimeout           504 backend_timeout     (attempt ran out of time)
    ├── Overloaded                   429 overloaded          (every tier at its concurrency limit)
    ├── RateLimited                  429 rate_limited        (a tenant's rate, daily images or concurrency)
    │   ├── JobQueueFull             429 job_queue_full      (the tenant's or every tenant's queued jobs at their cap)
    │   └── InsufficientQuota        429 insufficient_quota  (a tenant's spend budget pays for no tier)
    ├── Forbidden                    403 forbidden           (a tenant asked for a route it may not use)
    ├── AllTiersFailed               503 all_tiers_failed    (every tier of the chain failed)
    ├── StoreUnavailable             503 store_unavailable   (an admin action needs the shared store)
    ├── BudgetExhausted              504 budget_exhausted    (the route's budget ran out)
    └── DeadlineExceeded             504 deadline_exceeded   (a job's deadline passed before it finished)
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AllTiersFailed",
    "BackendError",
    "BackendRejected",
    "BackendTimeout",
    "BackendUnavailable",
    "BudgetExhausted",
    "CacheStoreError",
    "ClientError",
    "ConfigError",
    "ConfigIssue",
    "Conflict",
    "DeadlineExceeded",
    "IdempotencyKeyReused",
    "ImageNotFound",
    "InsufficientQuota",
    "InvalidRequest",
    "InvalidWebhookUrl",
    "JobCancelled",
    "JobNotFinished",
    "JobNotFound",
    "JobQueueFull",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RouterError",
    "StateStoreError",
    "StoreUnavailable",
    "TritonStartupError",
    "Unauthorized",
    "UnknownModel",
    "UnsupportedMediaType",
    "WebhookSecretMissing",
    "WebhookUrlForbidden",
]


class RouterError(Exception):
    """Base of every error the gateway raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of a JSON error body (without the request id)."""
        return {"code": self.code, "message": self.message, **self.details}


class ConfigIssue:
    """One problem in a config file, located as ``file:line:col path: message``."""

    __slots__ = ("column", "file", "line", "message", "path")

    def __init__(self, file: str, line: int, column: int, path: str, message: str) -> None:
        self.file, self.line, self.column = file, line, column
        self.path, self.message = path, message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where} {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class ConfigError(RouterError):
    """A config file that cannot be used; ``issues`` lists every problem found."""

    code = "config_invalid"

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(issue) for issue in issues) or "invalid config")
        self.issues = issues


class CacheStoreError(RouterError):
    """The configured cache store cannot be used (an unwritable directory)."""

    code = "cache_store_unusable"


class StateStoreError(RouterError):
    """The configured state store cannot be trusted to keep what it is given: an
    unusable SQLite path, a bad URL, or a Redis whose eviction policy may drop keys."""

    code = "state_store_unusable"


class TritonStartupError(RouterError):
    """The Triton server could not be started or did not become ready."""

    code = "triton_startup"


class ClientError(RouterError):
    status = 400
    code = "bad_request"


class InvalidRequest(ClientError):
    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None, **details: Any) -> None:
        if field is not None:
            details["field"] = field
        super().__init__(message, **details)


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class ImageNotFound(NotFound):
    """An image URL whose id is malformed, unknown, expired or purged."""

    code = "image_not_found"


class UnknownModel(ClientError):
    status = 404
    code = "model_not_found"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ClientError):
    status = 415
    code = "unsupported_media_type"


class Conflict(ClientError):
    """An admin action that the current state does not allow (resume a running rollout)."""

    status = 409
    code = "conflict"


class ClientGone(ClientError):
    """The client closed the connection (or cancelled the call) before its answer: the
    work for it was cancelled. Only logs and metrics see this; nobody reads the answer."""

    status = 499
    code = "client_closed_request"


class BackendError(RouterError):
    """One attempt at one backend failed; the dispatcher decides what the client sees.

    ``retryable`` marks failures that are safe to send again (the request cannot have
    been processed: connection refused, closed before any answer, queue full).
    """

    status = 502
    code = "backend_error"
    retryable: bool = False


class BackendRejected(BackendError):
    """The model refused the input: retrying elsewhere would not help."""

    status = 400
    code = "backend_rejected"


class BackendUnavailable(BackendError):
    status = 503
    code = "backend_unavailable"


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"


class Overloaded(RouterError):
    """Every tier that could serve is at its concurrency limit; ``Retry-After`` says when."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


class RateLimited(RouterError):
    """A tenant is over its limit; ``Retry-After`` and the ``x-ratelimit-*`` headers say
    which and until when (the openai SDK retries on them)."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int = 1, headers: dict[str, str] | None = None, **details: Any):
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s
        self.headers = headers or {}


class InsufficientQuota(RateLimited):
    """A tenant's spend budget cannot pay for any tier of its request (OpenAI's own code
    for an account out of quota). ``x-should-retry: false``: the openai SDK does not
    retry it, since no retry before the window resets could succeed."""

    code = "insufficient_quota"


class Forbidden(RouterError):
    status = 403
    code = "forbidden"


class AllTiersFailed(RouterError):
    status = 503
    code = "all_tiers_failed"


class StoreUnavailable(RouterError):
    """The shared store did not answer an admin action that must be recorded there."""

    status = 503
    code = "store_unavailable"


class BudgetExhausted(RouterError):
    status = 504
    code = "budget_exhausted"


class JobNotFound(NotFound):
    """Unknown, expired, deleted — or another tenant's: a client cannot tell which."""

    code = "job_not_found"


class JobNotFinished(Conflict):
    code = "job_not_finished"


class JobCancelled(Conflict):
    code = "job_cancelled"


class IdempotencyKeyReused(ClientError):
    """An ``Idempotency-Key`` sent again with another request (the IETF draft's 422)."""

    status = 422
    code = "idempotency_key_reused"


class JobQueueFull(RateLimited):
    code = "job_queue_full"


class DeadlineExceeded(RouterError):
    status = 504
    code = "deadline_exceeded"


class InvalidWebhookUrl(ClientError):
    code = "invalid_webhook_url"


class WebhookUrlForbidden(ClientError):
    code = "webhook_url_forbidden"


class WebhookSecretMissing(ClientError):
    code = "webhook_secret_missing"
