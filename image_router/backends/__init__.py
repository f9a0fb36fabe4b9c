"""Upstreams: the only package that imports tritonclient (the CLI's admin commands use httpx)."""

from __future__ import annotations

from image_router.backends.base import ImageBackend, ImageRequest, ImageResult
from image_router.config.table import Backend

__all__ = ["ImageBackend", "ImageRequest", "ImageResult", "make_backend"]


def make_backend(spec: Backend) -> ImageBackend:
    """Build the client for one configured backend."""
    if spec.kind == "triton":
        from image_router.backends.triton import TritonBackend

        return TritonBackend(spec)
    if spec.kind == "openai":
        from image_router.backends.openai import OpenAIImagesBackend

        return OpenAIImagesBackend(spec)
    raise ValueError(f"unknown backend kind {spec.kind!r}")
