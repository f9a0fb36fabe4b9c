"""One rollout as a replica knows it: the state it last read, the counts it has not yet
added to the store, what it decided, its gallery, and how one answer counts.

The controller (:mod:`image_router.rollouts.controller`) owns one per rollout route and does
the I/O around them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from image_router.config.table import Arm, Rollout
from image_router.dispatch import Served
from image_router.errors import RouterError
from image_router.policy.rollout import ArmCounts, RolloutState, Verdict
from image_router.rollouts.health import degenerate

__all__ = ["DOWNGRADE_REASONS", "THUMB_EVERY_S", "LiveRollout", "count_images", "switch_s", "tick_s"]

GALLERY_SIZE = 12
THUMB_EVERY_S = 2.0  # per arm: the gallery costs a thumbnail every few seconds, not per request
# a fallback for these reasons is a downgrade (the tier was slow or busy); any other is an error
DOWNGRADE_REASONS = frozenset({"slow", "busy", "full", "timeout", "queue_timeout", "no_room", "cancelled"})
SWITCH_TICKS = 2


def tick_s(rollout: Rollout) -> float:
    """How often a rollout is looked at: a tenth of its shortest stage, 0.2 s to 2 s."""
    stages = [*rollout.intervals_s, *([rollout.shadow.duration_s] if rollout.shadow else [])]
    return min(2.0, max(0.2, min(stages) / 10))


def switch_s(rollout: Rollout) -> float:
    """How long after a decision its weight takes effect, on every replica at once: two
    ticks, by when each has read it (so no sticky user flips between replicas that
    disagree). The replicas' wall clocks must agree to well within this (NTP does)."""
    return SWITCH_TICKS * tick_s(rollout)


def count_images(counts: ArmCounts, images: Any) -> None:
    """The images of one answer an arm made, and how many of them are degenerate."""
    counts.images += len(images)
    counts.degenerate += sum(degenerate(image) for image in images)


@dataclass
class LiveRollout:
    """One rollout as this replica knows it."""

    route: str
    rollout: Rollout
    canary: str
    baseline: str
    state: RolloutState | None = None
    raw: bytes | None = None  # the state's bytes as read: what a swap expects
    store_ok: bool = True
    store_down_since: float | None = None
    pending: dict[tuple[int, str], ArmCounts] = field(default_factory=dict)
    shadow: dict[str, int] = field(default_factory=lambda: {"mirrored": 0, "skipped_busy": 0, "failed": 0})
    shadows_running: int = 0
    decided: dict[str, int] = field(default_factory=dict)  # by this replica, per action
    gallery: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=GALLERY_SIZE))
    last_thumb: dict[str, float] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None  # the latest analysis this replica made
    looks: dict[int, tuple[int, Verdict]] = field(default_factory=dict)  # window -> the last look, its verdict

    @property
    def key(self) -> str:
        return f"ro:{self.route}:{self.rollout.digest}"

    def weight(self, wall: float) -> float:
        """The weight served at ``wall`` (0 before the state was ever read)."""
        return self.state.weight_at(wall) if self.state is not None else 0.0

    def count(self, arm: str) -> ArmCounts | None:
        """This window's counts of ``arm`` (``None`` when nothing is being judged)."""
        if self.state is None or not self.state.active:
            return None
        return self.pending.setdefault((self.state.window, arm), ArmCounts())

    def observe(self, arm: Arm, served: Served | None, error: RouterError | None = None) -> tuple[str, Any] | None:
        """Count one answer (or failure) against the arm chosen; the gallery side
        (``canary`` or ``baseline``) and first image when it is one for the gallery to
        consider (the arm's own fresh answer)."""
        if arm.canary and arm.model != self.canary:
            return None
        if served is not None and served.stored:
            return None  # a stored image says nothing about the model now
        if error is not None and error.status < 500:
            return None  # the client's error, not the arm's
        canary = arm.model == self.canary and arm.canary
        counts = self.count("c" if canary else "b")
        if counts is None:
            return None
        counts.requests += 1
        if served is None:
            counts.errors += 1
            return None
        if served.model.name != arm.model:
            reasons = {why for model, why in served.fallback if model == arm.model}
            if reasons and reasons <= DOWNGRADE_REASONS:
                counts.downgrades += 1
            else:
                counts.errors += 1
            return None
        counts.add_latency(served.total_s)
        if served.result.encoded is not None:
            return None  # a hosted answer is not decoded for this
        images = served.result.images
        count_images(counts, images)
        return ("canary" if canary else "baseline"), images[0]

    def describe(self, wall: float) -> dict[str, Any]:
        """What the admin API and the status page show."""
        state = self.state
        return {
            "route": self.route,
            "canary": self.canary,
            "baseline": self.baseline,
            "digest": self.rollout.digest,
            "steps": list(self.rollout.steps),
            "status": state.status if state is not None else "unknown",
            "weight": self.weight(wall),
            "effective_at": state.effective_at if state is not None else None,
            "next_weight": state.weight if state is not None else None,
            "step": state.step if state is not None else None,
            "started": state.started if state is not None else None,
            "step_started": state.step_started if state is not None else None,
            "store": "ok" if self.store_ok else "unavailable",
            "paused_by_store": not self.store_ok,
            "store_down_since": self.store_down_since,
            "decisions": list(state.decisions) if state is not None else [],
            "analysis": self.verdict,
            "shadow": dict(self.shadow) if self.rollout.shadow else None,
            "decided_here": dict(self.decided),
            "gallery": list(self.gallery),
        }

    def metrics(self, wall: float) -> dict[str, Any]:
        """What the metrics collector reads (no images)."""
        return {"route": self.route, "canary": self.canary, "weight": self.weight(wall),
                "status": self.state.status if self.state else "unknown", "store_ok": self.store_ok,
                "decided": dict(self.decided), "shadow": dict(self.shadow)}  # fmt: skip
