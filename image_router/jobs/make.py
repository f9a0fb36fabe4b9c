"""Making a claimed group's images: its passes through the dispatcher, then encoded.

The runner (:mod:`image_router.jobs.runner`) owns a job's life — claim, lease, finish;
this module owns one attempt's work: the calls :func:`~image_router.jobs.batch.passes`
cuts, each served as background work on the job's route (its intended tier alone
unless the job allows a downgrade), with what is left of the first job's deadline as
its budget (a mate's deadline is never earlier: :func:`~image_router.jobs.batch.mates`),
and no cache plan — a job's images are its own (docs/batching.md). Seeds were fixed at
submission, so a rerun on another replica makes the same images (on a batching tier:
the same bytes when its pass has the same size, else within one level).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from image_router.backends.base import ImageRequest
from image_router.decide import background
from image_router.jobs.batch import pass_request, passes
from image_router.jobs.model import Job

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from image_router.gateway import Gateway

__all__ = ["PassMaker"]

Encode = Callable[["NDArray[Any]", str, int], bytes]


class PassMaker:
    def __init__(self, gateway: Gateway, encode: Encode, wall: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.encode = encode
        self.wall = wall
        self._row_caps: dict[tuple[str, str, str | None], int | None] = {}  # a model's max_batch_size

    async def make(self, group: list[Job], priority: int) -> list[tuple[Job, list[bytes]]]:
        """Each job of ``group`` finished ``completed`` and its encoded images."""
        table = self.gateway.table
        first = group[0]
        rows = await self.batch_rows(first.tier)
        route = table.route_named(first.route) or table.default
        if not first.allow_downgrade or first.tier not in {a.model for a in route.arms}:
            route = route.alone(first.tier)
        route = dataclasses.replace(route, hedge_after_ms=None, hedge_p95=False)
        pixels: list[list[Any]] = [[] for _ in group]
        model_tag, dims = "", None
        for cut in passes(group, rows):
            # each pass gets what is left of the first job's time (at least 1 s)
            budget_ms = max(1.0, first.deadline_at - self.wall()) * 1000
            route = dataclasses.replace(route, budget_ms=budget_ms)
            request: ImageRequest = pass_request(group, cut, rows, upscale=route.resize == "upscale")
            served = await self.gateway.dispatcher.serve(background(table, route, request, priority))
            for (i, _), image in zip(cut, await served.result.pixels(), strict=True):
                pixels[i].append(image)
            model_tag, dims = served.model_tag, served.result.dimensions() or dims
        size = f"{dims[0]}x{dims[1]}" if dims is not None else None
        made = []
        for job, images in zip(group, pixels, strict=True):
            fmt = str(job.request.get("output_format") or "png")
            quality = int(job.request.get("output_compression") or 90)
            blobs = await asyncio.to_thread(self._encode_all, images, fmt, quality)
            new = job.finished("completed", self.wall(), images=len(blobs), size=size, model_version=model_tag)
            made.append((new, blobs))
        return made

    def _encode_all(self, images: list[Any], fmt: str, quality: int) -> list[bytes]:
        """A job's images in its output format (in a worker thread: CPU-bound)."""
        return [self.encode(image, fmt, quality) for image in images]

    async def batch_rows(self, tier: str) -> int:
        """The tier's ``batch_rows`` as the table now says (1 once jobs are reloaded away),
        at most what the Triton model takes in one request (its ``max_batch_size``, read
        once per model): a pass Triton refuses would fail every job in it."""
        table = self.gateway.table
        rows = 1 if table.jobs is None else table.jobs.tier(tier).batch_rows
        model = table.models.get(tier)
        if rows <= 1 or model is None:
            return 1
        key = (model.backend, model.remote_name, model.version)
        if key not in self._row_caps:
            try:
                config = await self.gateway.pool.get(model.backend).model_config(model)
                self._row_caps[key] = int(config.get("max_batch_size") or 0) or None
            except Exception:  # noqa: BLE001 - unknown this time: asked again next pass
                return 1
        cap = self._row_caps[key]
        return rows if cap is None else min(rows, cap)
