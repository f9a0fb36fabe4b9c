"""Ordered observers around one request's walk (httpx's event hooks, here).

What happens *around* serving — the canary metric, background work's pacing, a
rollout's counting and shadow, the cache's accounting, hot prompts, upgrade jobs — is
not part of deciding or walking, and each of them reads only the request's
:class:`~image_router.decide.Decision` and its answer: never the live table (a reload may
have landed while the request ran; the decision holds the table it was served on).
"""

from __future__ import annotations

from image_router.cache import ResultCache
from image_router.cache.hitters import HeavyHitters
from image_router.decide import Decision
from image_router.dispatch import Dispatcher
from image_router.errors import RouterError
from image_router.fill import UPGRADE_REASONS, Filler, FillJob
from image_router.rollouts import RolloutController
from image_router.served import Served
from image_router.telemetry import Metrics

__all__ = ["Hooks"]


class Hooks:
    def __init__(
        self,
        dispatcher: Dispatcher,
        fill: Filler,
        rollouts: RolloutController,
        hitters: HeavyHitters,
        metrics: Metrics | None,
    ) -> None:
        self.dispatcher = dispatcher
        self.fill = fill
        self.rollouts = rollouts
        self.hitters = hitters
        self.metrics = metrics

    def before(self, decision: Decision, cache: ResultCache | None) -> None:
        """The canary split's metric; live traffic noted for background work's pacing
        (background work exists only with a cache)."""
        route, arm = decision.route, decision.choice.arm
        if self.metrics is not None and route.is_split:
            self.metrics.canary.labels(route.name, arm.model, "true" if arm.canary else "false").inc()
        if cache is not None:
            self.fill.note_live(arm.model, *route.fallback)

    def failed(self, decision: Decision, error: RouterError) -> None:
        if decision.rollout:
            self.rollouts.observe(decision.route, decision.choice.arm, None, error, decision.request.prompts[0])

    def after(self, decision: Decision, served: Served, cache: ResultCache | None) -> None:
        route, arm, request = decision.route, decision.choice.arm, decision.request
        if decision.rollout:
            self.rollouts.observe(route, arm, served, prompt=request.prompts[0])
            self.rollouts.mirror(route, arm, request, served)
        plan = decision.cache
        if plan is None or cache is None:
            return
        cache.stats.count(route.name, served.model_tag, served.cache or "MISS")
        self.hitters.add(route.name, request.prompts[0])
        # an upgrade only pays if an identical request can come: not for random seeds
        if plan.store and plan.repeatable and route.cache is not None and route.cache.upgrade:
            self._upgrade(decision, served)

    def _upgrade(self, decision: Decision, served: Served) -> None:
        """Served below the intended tier because it was slow, busy or full: make the
        intended tier's image on idle capacity, for the next identical request."""
        intended = decision.intended
        if served.model.name == intended or not any(
            model == intended and why in UPGRADE_REASONS for model, why in served.fallback
        ):
            return
        model = decision.table.models[intended]  # the request's table: a reload may have removed it since
        scope = decision.cache.scope if decision.cache is not None else ""
        key = self.dispatcher.cache_key(decision.route, model, decision.request, scope)
        self.fill.submit(FillJob("upgrade", decision.route, intended, decision.request, str(key)))
