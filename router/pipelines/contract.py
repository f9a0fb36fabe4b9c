"""The tensor contract every image model in ``model_repository/`` implements.

Inputs: ``PROMPT`` (BYTES, required), ``SEED`` (INT64), ``STEPS`` / ``WIDTH`` /
``HEIGHT`` (INT32), all optional and all ``[batch, 1]``. Output: ``IMAGE`` (UINT8,
``[batch, H, W, 3]``).

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
    """One image to make."""

    prompt: str
    seed: int
    steps: int
    width: int
    height: int


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
    out = []
    for i, prompt in enumerate(prompts):
        if not 0 <= seeds[i] < 2**63:
            raise InvalidInput(f"SEED: {seeds[i]} must be a non-negative 64-bit integer")
        if not 1 <= steps[i] <= limits.max_steps:
            raise InvalidInput(f"STEPS: {steps[i]} is outside [1, {limits.max_steps}]")
        width = _check_side("WIDTH", widths[i], limits)
        height = _check_side("HEIGHT", heights[i], limits)
        out.append(Generation(prompt, seeds[i], steps[i], width, height))
    return out
