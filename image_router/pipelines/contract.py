"""The tensor contract every image model in ``model_repository/`` implements.

Inputs: ``PROMPT`` (BYTES, required), ``SEED`` (INT64), ``STEPS`` / ``WIDTH`` /
``HEIGHT`` (INT32), all optional and all ``[batch, 1]``; for image-to-image, optional
``INIT_IMAGE`` (UINT8 ``[batch, h, w, 3]``: the picture to start from), ``MASK`` (UINT8
``[batch, h, w]``: non-zero where to repaint; inpainting) and ``STRENGTH`` (FP32
``[batch, 1]``, in (0, 1]: how far from the picture). Output: ``IMAGE`` (UINT8,
``[batch, H, W, 3]``) and ``COMPUTE_NS`` (INT64 ``[batch, 1]``: nanoseconds each row took
in the model, what the gateway bills). ``COMPUTE_NS`` is optional in the contract: the
gateway reads it when a model sends it and falls back to its own observed time (labelled
``gateway``) for a model that does not, so older models keep working.

Triton does not enforce required inputs once a model has optional ones, and it cannot
know a model's sensible sizes, so the model validates here. Parsing is a pure function
over numpy arrays, so it is unit-tested without a server; any violation raises
:class:`InvalidInput`, which the Triton adapter turns into a 400 for that request only.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_PROMPT_BYTES", "Generation", "InvalidInput", "Limits", "parse_request"]

MAX_PROMPT_BYTES = 4096


class Cancelled(Exception):
    """The client (or the gateway) gave up on this request: stop, answer CANCELLED."""


class InvalidInput(ValueError):
    """A request that breaks the contract; the message names the tensor."""


@dataclass(frozen=True)
class Limits:
    """Defaults and bounds of one model; sizes are pixels."""

    width: int
    height: int
    steps: int
    max_side: int
    max_steps: int
    size_multiple: int = 8
    min_side: int = 8


@dataclass(frozen=True)
class Generation:
    """One image to make: from noise, or from ``init_image`` (image-to-image; with
    ``mask``, only where the mask is set: inpainting) at ``strength``."""

    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    init_image: NDArray[Any] | None = None  # uint8[h, w, 3]
    mask: NDArray[Any] | None = None  # uint8[h, w]: non-zero = paint here
    strength: float = 0.75  # how far from the init image: 0 keeps it, 1 ignores it


def _column(inputs: Mapping[str, NDArray[Any] | None], name: str, batch: int) -> list[int] | None:
    array = inputs.get(name)
    if array is None:
        return None
    if array.dtype.kind not in "iu":
        raise InvalidInput(f"{name}: expected an integer tensor, got {array.dtype}")
    flat = array.reshape(-1)
    if flat.size == 1:
        return [int(flat[0])] * batch
    if flat.size != batch:
        raise InvalidInput(f"{name}: expected {batch} values (one per prompt), got {flat.size}")
    return [int(v) for v in flat]


def _prompts(inputs: Mapping[str, NDArray[Any] | None]) -> list[str]:
    array = inputs.get("PROMPT")
    if array is None:
        raise InvalidInput("PROMPT: required input is missing")
    flat = array.reshape(-1)
    if flat.size == 0:
        raise InvalidInput("PROMPT: tensor is empty")
    prompts = []
    for value in flat:
        raw = value if isinstance(value, bytes) else str(value).encode()
        if len(raw) > MAX_PROMPT_BYTES:
            raise InvalidInput(f"PROMPT: longer than {MAX_PROMPT_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput("PROMPT: not valid UTF-8") from exc
        if not text.strip():
            raise InvalidInput("PROMPT: must not be empty")
        prompts.append(text)
    return prompts


def _check_side(name: str, value: int, limits: Limits) -> int:
    if not limits.min_side <= value <= limits.max_side:
        raise InvalidInput(f"{name}: {value} is outside [{limits.min_side}, {limits.max_side}]")
    if value % limits.size_multiple:
        raise InvalidInput(f"{name}: {value} is not a multiple of {limits.size_multiple}")
    return value


MAX_IMAGE_SIDE = 4096


def _row(array: NDArray[Any], i: int) -> NDArray[Any]:
    """Row ``i`` of a batched tensor, or its only row (one image for every prompt)."""
    row: NDArray[Any] = array[i] if array.shape[0] > 1 else array[0]
    return row


def _images(
    inputs: Mapping[str, NDArray[Any] | None], batch: int
) -> tuple[NDArray[Any] | None, NDArray[Any] | None, list[float]]:
    """``INIT_IMAGE`` (uint8[batch, h, w, 3]), ``MASK`` (uint8[batch, h, w], same h and
    w) and ``STRENGTH`` (float[batch, 1], in (0, 1]), checked."""
    image, mask, strength = inputs.get("INIT_IMAGE"), inputs.get("MASK"), inputs.get("STRENGTH")
    if image is not None:
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[3] != 3 or image.shape[0] not in (1, batch):
            raise InvalidInput(
                f"INIT_IMAGE: expected uint8[{batch}, height, width, 3], got {image.dtype}{list(image.shape)}"
            )
        if not (8 <= image.shape[1] <= MAX_IMAGE_SIDE and 8 <= image.shape[2] <= MAX_IMAGE_SIDE):
            raise InvalidInput(f"INIT_IMAGE: sides must be within [8, {MAX_IMAGE_SIDE}]")
    if mask is not None:
        if image is None:
            raise InvalidInput("MASK: needs INIT_IMAGE")
        if (
            mask.dtype != np.uint8
            or mask.ndim != 3
            or mask.shape[1:] != image.shape[1:3]
            or mask.shape[0] not in (1, batch)
        ):
            raise InvalidInput(
                f"MASK: expected uint8[{batch}, {image.shape[1]}, {image.shape[2]}], got {list(mask.shape)}"
            )
    values = [0.75] * batch
    if strength is not None:
        if image is None:
            raise InvalidInput("STRENGTH: needs INIT_IMAGE")
        flat = strength.reshape(-1).astype(float)
        if flat.size not in (1, batch) or not all(0.0 < v <= 1.0 for v in flat):
            raise InvalidInput("STRENGTH: one value per prompt, each in (0, 1]")
        values = [float(flat[0])] * batch if flat.size == 1 else [float(v) for v in flat]
    return image, mask, values


def parse_request(inputs: Mapping[str, NDArray[Any] | None], limits: Limits) -> list[Generation]:
    """Validate one Triton request's tensors; return one :class:`Generation` per row.

    A missing ``SEED`` draws a fresh random seed per row (callers that want
    repeatable images send one); other missing inputs take the model's defaults.
    """
    prompts = _prompts(inputs)
    batch = len(prompts)
    seeds = _column(inputs, "SEED", batch) or [secrets.randbelow(2**31) for _ in prompts]
    steps = _column(inputs, "STEPS", batch) or [limits.steps] * batch
    widths = _column(inputs, "WIDTH", batch) or [limits.width] * batch
    heights = _column(inputs, "HEIGHT", batch) or [limits.height] * batch
    images, masks, strengths = _images(inputs, batch)
    out = []
    for i, prompt in enumerate(prompts):
        if not 0 <= seeds[i] < 2**63:
            raise InvalidInput(f"SEED: {seeds[i]} must be a non-negative 64-bit integer")
        if not 1 <= steps[i] <= limits.max_steps:
            raise InvalidInput(f"STEPS: {steps[i]} is outside [1, {limits.max_steps}]")
        width = _check_side("WIDTH", widths[i], limits)
        height = _check_side("HEIGHT", heights[i], limits)
        image = _row(images, i) if images is not None else None
        mask = _row(masks, i) if masks is not None else None
        out.append(Generation(prompt, seeds[i], steps[i], width, height, image, mask, strengths[i]))
    return out
