"""The rows of one request in fixed chunks: a model's opt-in ``batch_rows``.

A request for ``n`` images is cut into chunks of ``batch_rows`` rows by position
(rows ``0..k-1``, ``k..2k-1``, …, the last one shorter), and each chunk runs in one
pipeline pass with one generator per row. The chunks depend only on the request, never
on other requests or on load, so the same request runs the same batch shapes and gives
the same bytes every time — the guarantee a batched pass can keep (a row computed at
batch ``b`` is not byte-equal to the same row at batch 1; docs/batching.md). Requests
are never mixed: cross-request batches would make a row's bytes depend on who else was
queued.

A chunk runs in one pass only when its rows can share a pass: text-to-image rows with
the same steps and size. Any other chunk (an edit, mixed sizes) runs row by row, which
is again fixed by the request alone. ``batch_rows: 1`` (the default) is the singleton
path the shipped tiers use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from numpy.typing import NDArray

from image_router.pipelines.contract import Cancelled, Generation

__all__ = ["BatchGenerator", "chunks", "one_pass", "run_rows"]


class RowGenerator(Protocol):
    def __call__(self, job: Generation, cancelled: Callable[[], bool] | None = None) -> NDArray[Any]: ...


class BatchGenerator(RowGenerator, Protocol):
    """A generator that can also run compatible rows in one pass."""

    def batch(self, jobs: Sequence[Generation], cancelled: Callable[[], bool] | None = None) -> list[NDArray[Any]]: ...


def chunks(jobs: Sequence[Generation], batch_rows: int) -> list[list[Generation]]:
    """``jobs`` cut by position into chunks of ``batch_rows`` (the last may be shorter)."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    return [list(jobs[i : i + batch_rows]) for i in range(0, len(jobs), batch_rows)]


def one_pass(chunk: Sequence[Generation]) -> bool:
    """Whether the rows of ``chunk`` can share one pipeline pass: more than one row, all
    text-to-image, one steps count and one size."""
    if len(chunk) < 2 or any(job.init_image is not None for job in chunk):
        return False
    return len({(job.steps, job.width, job.height) for job in chunk}) == 1


def run_rows(
    generator: RowGenerator, jobs: Sequence[Generation], cancelled: Callable[[], bool], batch_rows: int = 1
) -> tuple[list[NDArray[Any]], list[int]]:
    """Each row's image and the nanoseconds it took in the model.

    Row by row, a row's time is its own call (``perf_counter_ns`` around it: denoising
    and decode, nothing of the queue or the transfer). A chunk run in one pass is timed
    as a whole and shared equally among its rows (the remainder to the first), so the
    rows still add up to the model's time that the gateway bills."""
    batch = getattr(generator, "batch", None) if batch_rows > 1 else None
    images: list[NDArray[Any]] = []
    spent: list[int] = []
    for chunk in chunks(jobs, batch_rows):
        if cancelled():  # given up while queued, or between chunks
            raise Cancelled("cancelled before it started")
        if batch is not None and one_pass(chunk):
            t0 = time.perf_counter_ns()
            images.extend(batch(chunk, cancelled))
            took = time.perf_counter_ns() - t0
            share, rest = divmod(took, len(chunk))
            spent.extend([share + rest] + [share] * (len(chunk) - 1))
            continue
        for job in chunk:
            if cancelled():
                raise Cancelled("cancelled before it started")
            t0 = time.perf_counter_ns()
            images.append(generator(job, cancelled))
            spent.append(time.perf_counter_ns() - t0)
    return images, spent
