"""The shadow stage: a canary at weight 0 makes again a share of the baseline's seeded
requests, on idle capacity only, and each pair is compared (latency, errors, image
health, pixel difference). Users never see a shadow's image.

A mirror is sent only when :meth:`~image_router.dispatch.Dispatcher.idle` says the canary has
nothing ahead of it, a free admission slot and nobody waiting for one, at the lowest
priority and at most :data:`MAX_SHADOWS` at once: it never takes a slot a live request
was waiting for.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from image_router.backends import ImageRequest
from image_router.config.table import Arm, Route, RoutingTable
from image_router.decide import background
from image_router.dispatch import Dispatcher, Served
from image_router.errors import RouterError
from image_router.policy.rollout import ArmCounts
from image_router.rollouts.health import difference
from image_router.rollouts.live import LiveRollout, count_images

__all__ = ["MAX_SHADOWS", "Shadows"]

LOWEST_PRIORITY = 3
MAX_SHADOWS = 4  # mirrored requests in flight at once, per rollout
Keep = Callable[[LiveRollout, str, str, Served, Any, str, Any], None]


class Shadows:
    def __init__(
        self,
        dispatcher: Dispatcher,
        table: Callable[[], RoutingTable],
        rng: random.Random,
        spawn: Callable[[Any], None],
        keep: Keep,
    ) -> None:
        self.dispatcher = dispatcher
        self.table = table
        self.rng = rng
        self.spawn = spawn  # runs a coroutine in the background
        self.keep = keep  # adds a pair to the rollout's gallery

    def mirror(self, live: LiveRollout, route: Route, arm: Arm, request: ImageRequest, served: Served) -> None:
        """In the shadow stage: send ``fraction`` of the baseline's seeded answers to the
        canary too, only while the canary has an idle slot (never ahead of live work)."""
        arm_rollout = route.rollout_arm
        if (
            live.state is None
            or live.state.status != "shadow"
            or arm_rollout is None
            or arm_rollout.rollout is None
            or arm_rollout.rollout.shadow is None
            or arm.model != live.baseline
            or served.model.name != live.baseline
            or served.stored
            or request.seeds is None
            or self.rng.random() >= arm_rollout.rollout.shadow.fraction
        ):
            return
        table = self.table()
        model = table.models.get(live.canary)
        if model is None or live.shadows_running >= MAX_SHADOWS or not self.dispatcher.idle(model, whole_backend=False):
            live.shadow["skipped_busy"] += 1
            return
        live.shadows_running += 1
        self.spawn(self._shadow(live, table, route, request, served))

    async def _shadow(
        self, live: LiveRollout, table: RoutingTable, route: Route, request: ImageRequest, base: Served
    ) -> None:
        alone = route.alone(live.canary)
        window = live.state.window if live.state is not None else -1
        try:
            served = await self.dispatcher.serve(background(table, alone, request, LOWEST_PRIORITY))
        except RouterError as exc:
            live.shadow["failed"] += 1
            counts = live.pending.setdefault((window, "s"), ArmCounts())  # after the await: a flush may have run
            counts.requests += 1
            if exc.status >= 500:
                counts.errors += 1
            return
        finally:
            live.shadows_running -= 1
        live.shadow["mirrored"] += 1
        images, theirs = await served.result.pixels(), await base.result.pixels()
        counts = live.pending.setdefault((window, "s"), ArmCounts())
        counts.requests += 1
        counts.add_latency(served.total_s)
        count_images(counts, images)
        diff = difference(images[0], theirs[0])
        counts.pairs += 1
        counts.diff_millionths += round(diff * 1e6)
        self.keep(live, "pair", live.canary, served, images[0], request.prompts[0], (theirs[0], live.baseline, diff))
