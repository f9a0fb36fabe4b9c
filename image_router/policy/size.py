"""Sizes a tier can make: the arithmetic of ``resize: upscale`` (pure)."""

from __future__ import annotations

__all__ = ["MAX_UPSCALED_PIXELS", "MAX_UPSCALED_SIDE", "fitted_size", "upscale_refusal"]

MAX_UPSCALED_SIDE = 2048  # an upscaling route refuses more: past it, memory and time, not pictures
# Output pixels of one upscaled request, all images together: two 2048² images (~8.4 M,
# ~150 ms of Lanczos each and 2 x 12 MiB of RGB out). One n=4 2048² request cost 1.5 s
# of gateway CPU and four at once 549 MiB (issue 30, item 10); n=4 is still fine at
# 1448² and below.
MAX_UPSCALED_PIXELS = 2 * 2048 * 2048


def upscale_refusal(width: int, height: int, n: int) -> str | None:
    """Why ``n`` images of ``width`` x ``height`` are too many output pixels to upscale
    (``None``: they are not); the caller raises it as a 400 naming ``n``."""
    if n * width * height <= MAX_UPSCALED_PIXELS:
        return None
    return (
        f"n x width x height must be at most {MAX_UPSCALED_PIXELS} pixels when upscaled "
        f"({n} x {width}x{height} is {n * width * height})"
    )


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
