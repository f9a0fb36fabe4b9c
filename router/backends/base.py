"""The one seam between the gateway and an image-serving upstream.

Every upstream (a Triton server, a hosted OpenAI-compatible API) implements
:class:`ImageBackend`. Implementations translate their library's exceptions into the
:mod:`router.errors` backend errors *here*, once, so the dispatcher above sees only
:class:`~router.errors.BackendRejected`, :class:`~router.errors.BackendUnavailable`,
:class:`~router.errors.BackendTimeout` or :class:`~router.errors.BackendError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from numpy.typing import NDArray

from router.config.table import Model
from router.policy.forecast import Forecast

__all__ = ["ImageBackend", "ImageRequest", "ImageResult", "consecutive_seeds"]


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One generation call: one image per prompt (``seeds`` align with ``prompts``)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None


def consecutive_seeds(base: int, n: int) -> tuple[int, ...]:
    """The seeds of a request for ``n`` images: ``base``, ``base + 1``, …, so the images
    differ and any one of them can be asked for again by its seed."""
    return tuple(base + i for i in range(n))


@dataclass(frozen=True, slots=True)
class ImageResult:
    """``images`` is ``uint8[batch, height, width, 3]``."""

    images: NDArray[Any]
    model_version: str
    stored_at: float | None = None  # wall time it was made, when it comes from the result cache
    # what the HTTP edge worked out about these pixels (their ids): shared with the cached
    # entry in memory, so a hot hit does not hash them again
    memo: dict[str, Any] = field(default_factory=dict)


class ImageBackend(Protocol):
    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        """Make the images; ``timeout_s`` is propagated upstream (queue timeout)."""
        ...

    async def ready(self) -> bool: ...

    async def model_ready(self, model: Model) -> bool: ...

    async def model_metadata(self, model: Model) -> dict[str, Any]: ...

    def available(self, model: Model) -> bool:
        """False while every endpoint that could serve ``model`` has an open circuit."""
        ...

    def forecast(self, model: Model, extra_ahead: int = 0) -> Forecast | None:
        """When a request for ``model`` sent now would finish on the best usable
        endpoint, with ``extra_ahead`` more requests before it (``None``: no endpoint).
        Each backend keeps this from its own sends and answers, per endpoint, so the
        budget policy decides on live queues rather than on a stale quantile."""
        ...

    def snapshot(self) -> list[dict[str, Any]]:
        """Per endpoint state for the admin API (health, circuit, load)."""
        ...

    async def aclose(self) -> None: ...
