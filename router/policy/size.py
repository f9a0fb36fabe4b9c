"""Sizes a tier can make: the arithmetic of ``resize: upscale`` (pure)."""

from __future__ import annotations

__all__ = ["MAX_UPSCALED_SIDE", "fitted_size"]

MAX_UPSCALED_SIDE = 2048  # an upscaling route refuses more: past it, memory and time, not pictures


def fitted_size(width: int, height: int, side: int, multiple: int = 8) -> tuple[int, int] | None:
    """The largest size within ``side`` with the aspect ratio of ``width`` x ``height``,
    each side a multiple of ``multiple`` (what the models take); ``None`` when
    ``width`` x ``height`` fits already."""
    if max(width, height) <= side:
        return None
    scale = side / max(width, height)

    def fit(value: int) -> int:
        return max(multiple, int(value * scale) // multiple * multiple)

    return fit(width), fit(height)
