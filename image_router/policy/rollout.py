"""A canary's rollout as pure data: what each arm did in a step, whether the canary is
worse (:func:`analyse`), and where the rollout goes next (:func:`decide`, and
:func:`command` for an operator).

The controller (:mod:`image_router.rollouts`) does the I/O: it sums every replica's
:class:`ArmCounts` for the current window in the shared store, and writes the state
this module returns. Here nothing reads a clock (``now`` is wall time, passed in), so
every transition is tested without a server.

States: ``shadow`` (weight 0, mirrored requests only) → ``running`` at each step →
``promoted`` (weight 100) or ``held`` (stays at the last step); ``rolled_back``
(weight 0) on a failed analysis or an operator's abort; ``paused`` by an operator or by
``on_failure: pause``. Every change opens a new *window* (the counters start again), so a
step is judged only on the answers it served.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from image_router.config.table import Analysis, Arm, Rollout, Route
from image_router.policy.significance import binomial_tail, newcombe_lower, z_for

__all__ = [
    "LATENCY_BOUNDS",
    "ArmCounts",
    "Check",
    "RolloutState",
    "Verdict",
    "analyse",
    "command",
    "decide",
    "initial",
    "look",
    "look_alpha",
    "reweighted",
    "started",
]

# latency histogram buckets: upper bounds from 5 ms, 10 % apart, to ~3 minutes
LATENCY_BOUNDS = tuple(0.005 * 1.1**i for i in range(111))
MAX_DECISIONS = 200  # kept in the state (the newest); the webhook and metrics see all
QUANTILE_TAIL = 0.05  # the p95's tail share, for the sign test
MIN_P95_SAMPLES = 20  # baseline latencies before its p95 is a bound to test against
CHECKS = 4  # error, downgrade and degenerate rates, p95: one step's error rate is shared by them
_COUNTERS = ("requests", "errors", "downgrades", "images", "degenerate", "diff_millionths", "pairs")


@dataclass
class ArmCounts:
    """What one arm did in one window (one replica's, or every replica's summed)."""

    requests: int = 0
    errors: int = 0
    downgrades: int = 0
    images: int = 0
    degenerate: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    diff_millionths: int = 0  # shadow: summed mean pixel difference to the baseline's image
    pairs: int = 0

    def add_latency(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def fields(self) -> dict[str, int]:
        """Non-zero counters as store hash fields (``h{i}``: latency bucket ``i``)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "latency" and v}
        out.update({f"h{i}": n for i, n in enumerate(self.latency) if n})
        return out

    @classmethod
    def from_fields(cls, values: dict[str, int]) -> ArmCounts:
        counts = cls()
        for key, value in values.items():
            if key.startswith("h") and key[1:].isdigit() and int(key[1:]) < len(counts.latency):
                counts.latency[int(key[1:])] = int(value)
            elif key in _COUNTERS:
                setattr(counts, key, int(value))
        return counts

    def merge(self, other: ArmCounts) -> None:
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]

    @property
    def timed(self) -> int:
        return sum(self.latency)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, interpolated within its bucket (``None``: no samples)."""
        total = self.timed
        if total == 0:
            return None
        rank, seen = max(1, math.ceil(q * total)), 0
        for i, n in enumerate(self.latency):
            if n and seen + n >= rank:
                low = LATENCY_BOUNDS[i - 1] if i else 0.0
                high = LATENCY_BOUNDS[min(i, len(LATENCY_BOUNDS) - 1)]
                return low + (high - low) * (rank - seen) / n
            seen += n
        return LATENCY_BOUNDS[-1]

    def surely_above(self, bound_s: float) -> int:
        """Samples whose bucket starts at or above ``bound_s``."""
        first = bisect.bisect_left(LATENCY_BOUNDS, bound_s) + 1  # bucket i starts at LATENCY_BOUNDS[i-1]
        return sum(self.latency[first:])

    def summary(self) -> dict[str, Any]:
        p95 = self.quantile(0.95)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "downgrades": self.downgrades,
            "images": self.images,
            "degenerate": self.degenerate,
            "p95_ms": None if p95 is None else round(p95 * 1000, 1),
            "pixel_difference": round(self.diff_millionths / 1e6 / self.pairs, 4) if self.pairs else None,
        }


@dataclass(frozen=True)
class Check:
    name: str
    canary: float
    baseline: float
    threshold: float
    statistic: float  # the lower bound of the increase, or the tail probability (p95)
    failed: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Verdict:
    outcome: str  # "pass" | "fail" | "wait"
    reason: str
    checks: tuple[Check, ...] = ()
    samples: tuple[int, int] = (0, 0)  # baseline, canary

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "samples": {"baseline": self.samples[0], "canary": self.samples[1]},
            "checks": [c.as_dict() for c in self.checks],
        }


def _rate_check(name: str, k_c: int, n_c: int, k_b: int, n_b: int, margin: float, z: float) -> Check:
    lower = newcombe_lower(k_c, n_c, k_b, n_b, z)
    return Check(name, k_c / n_c if n_c else 0.0, k_b / n_b if n_b else 0.0, margin, lower, lower > margin)


def look(analysis: Analysis, base: ArmCounts, canary: ArmCounts) -> int | None:
    """Which look at the data the counts so far make: 0 once the smaller arm has
    ``min_samples``, 1 at twice that, ``k`` at 2**k times (``None`` before the first).
    A step is judged at these looks only, however often the controller ticks."""
    n = min(base.requests, canary.requests)
    if n < analysis.min_samples:
        return None
    return int(math.log2(n / analysis.min_samples))


def look_alpha(analysis: Analysis, k: int) -> float:
    """What one check may spend at look ``k``: ``(1 - confidence) / 2**(k+1) / CHECKS``.
    Summed over every look and check of a step that is at most ``1 - confidence``
    (Bonferroni), so a healthy canary is wrongly failed in a step at most that often,
    whether the step lasts a minute or a week."""
    return (1 - analysis.confidence) / float(2 ** (k + 1)) / CHECKS


def analyse(analysis: Analysis, base: ArmCounts, canary: ArmCounts, k: int | None = None) -> Verdict:
    """Whether ``canary`` is worse than ``base`` by any of the analysis' thresholds at
    look ``k`` (default: the look the counts make; see :mod:`image_router.policy.significance`
    for the tests); ``wait`` below ``min_samples`` requests on either arm."""
    samples = (base.requests, canary.requests)
    k = look(analysis, base, canary) if k is None else k
    if k is None:
        return Verdict("wait", f"{min(samples)} of {analysis.min_samples} samples on the smaller arm", (), samples)
    alpha = look_alpha(analysis, k)
    z = z_for(1 - alpha)
    checks = [
        _rate_check("error_rate", canary.errors, canary.requests, base.errors, base.requests,
                    analysis.max_error_rate_increase, z),
        _rate_check("downgrade_rate", canary.downgrades, canary.requests, base.downgrades, base.requests,
                    analysis.max_downgrade_rate_increase, z),
    ]  # fmt: skip
    if canary.images and base.images:
        checks.append(_rate_check("degenerate_rate", canary.degenerate, canary.images, base.degenerate, base.images,
                                  analysis.max_degenerate_rate_increase, z))  # fmt: skip
    base_p95 = base.quantile(0.95)
    # the sign test is exact at any canary sample size; the baseline's p95 needs a few
    if base_p95 is not None and canary.timed and base.timed >= min(MIN_P95_SAMPLES, analysis.min_samples):
        bound = analysis.max_p95_ratio * base_p95
        above = canary.surely_above(bound)
        tail = binomial_tail(above, canary.timed, QUANTILE_TAIL)
        p95 = canary.quantile(0.95) or 0.0
        checks.append(Check("p95_ratio", p95 / base_p95, 1.0, analysis.max_p95_ratio, tail, tail < alpha))
    failed = [c.name for c in checks if c.failed]
    reason = f"look {k} at alpha {alpha:.2g} per check: "
    if failed:
        return Verdict("fail", reason + "worse than the baseline: " + ", ".join(failed), tuple(checks), samples)
    return Verdict("pass", reason + "no check failed", tuple(checks), samples)


@dataclass
class RolloutState:
    """What the shared store holds for one rollout (JSON), the same for every replica."""

    digest: str
    status: str  # shadow | running | paused | promoted | held | rolled_back
    step: int  # index into steps; -1 in the shadow stage
    weight: float  # the canary's live percentage
    started: float  # wall time the rollout began
    step_started: float  # wall time the current window opened
    window: int = 0  # the counters' epoch: a new one for every change
    paused_from: str | None = None  # the status a pause came from
    decisions: list[dict[str, Any]] = field(default_factory=list)
    # at 100 % the baseline serves nothing: the canary is judged against the baseline of
    # the last window that had one
    baseline_window: int | None = None
    # a change takes effect on every replica at once: at ``effective_at`` (wall time, a
    # few ticks after the decision, by when every replica has read it); until then the
    # replicas serve ``previous_weight``
    effective_at: float = 0.0
    previous_weight: float = 0.0

    def weight_at(self, wall: float) -> float:
        """The weight served at ``wall``."""
        return self.weight if wall >= self.effective_at else self.previous_weight

    @property
    def judged_against(self) -> int:
        """The window whose baseline counts the current window is compared with."""
        return self.baseline_window if self.weight >= 100 and self.baseline_window is not None else self.window

    def to_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RolloutState:
        return cls(**json.loads(data))

    @property
    def active(self) -> bool:
        """Still moving (or paused on the way): not promoted, held or rolled back."""
        return self.status in ("shadow", "running", "paused")


def initial(rollout: Rollout, now: float, delay_s: float = 0.0) -> RolloutState:
    """The first stage, in effect ``delay_s`` from ``now`` (see :attr:`RolloutState.effective_at`)."""
    at = now + delay_s
    if rollout.shadow is not None:
        return RolloutState(rollout.digest, "shadow", -1, 0.0, now, at, effective_at=at)
    return RolloutState(rollout.digest, "running", 0, rollout.steps[0], now, at, effective_at=at)


def interval_s(rollout: Rollout, state: RolloutState) -> float:
    """How long the current stage lasts at least."""
    if state.step < 0:
        return rollout.shadow.duration_s if rollout.shadow is not None else 0.0
    return rollout.intervals_s[min(state.step, len(rollout.intervals_s) - 1)]


def _record(new: RolloutState, now: float, action: str, by: str, from_weight: float) -> dict[str, Any]:
    """One entry of the decision log: what changed, when it takes effect, and who said so."""
    return {
        "at": now,
        "effective_at": new.effective_at,
        "action": action,
        "by": by,
        "from_weight": from_weight,
        "weight": new.weight,
        "step": new.step,
        "status": new.status,
    }


def started(rollout: Rollout, now: float, delay_s: float = 0.0) -> RolloutState:
    """:func:`initial` with its ``start`` in the decision log: what the controller writes."""
    state = initial(rollout, now, delay_s)
    state.decisions = [_record(state, now, "start", "controller", 0.0)]
    return state


def _moved(
    state: RolloutState, now: float, delay_s: float, action: str, by: str, verdict: Verdict | None, **change: Any
) -> RolloutState:
    baseline, serving, at = state.judged_against, state.weight_at(now), now + delay_s
    new = dataclasses.replace(state, **change, step_started=at, window=state.window + 1, baseline_window=baseline,
                              effective_at=at, previous_weight=serving)  # fmt: skip
    record = _record(new, now, action, by, serving)
    if verdict is not None:
        record.update(verdict.as_dict())
    new.decisions = [*state.decisions, record][-MAX_DECISIONS:]
    return new


def decide(
    rollout: Rollout, state: RolloutState, verdict: Verdict, now: float, delay_s: float = 0.0
) -> RolloutState | None:
    """The next state after ``verdict`` on the current window, or ``None`` (no change).

    A failure acts at once, whenever it is found (a bad canary is not left for the rest
    of its interval); a pass moves on only once the stage's interval is over; ``wait``
    (too few samples) holds the stage until there are enough. An operator's pause stops
    every move forward, but not a rollback."""
    if not state.active:
        return None
    if verdict.outcome == "fail":
        if rollout.on_failure == "rollback":
            return _moved(state, now, delay_s, "rollback", "analysis", verdict, status="rolled_back", weight=0.0)
        if state.status != "paused":
            return _moved(state, now, delay_s, "pause", "analysis", verdict, status="paused", paused_from=state.status)
        return None
    if state.status == "paused" or verdict.outcome != "pass" or now - state.step_started < interval_s(rollout, state):
        return None
    nxt = state.step + 1
    if nxt < len(rollout.steps):
        return _moved(
            state, now, delay_s, "advance", "analysis", verdict, status="running", step=nxt, weight=rollout.steps[nxt]
        )
    if rollout.on_success == "promote":
        return _moved(state, now, delay_s, "promote", "analysis", verdict, status="promoted", weight=100.0)
    return _moved(state, now, delay_s, "hold", "analysis", verdict, status="held")


class InvalidCommand(ValueError):
    """An operator's action that does not apply to the rollout's state."""


def command(state: RolloutState, action: str, now: float, by: str = "operator", delay_s: float = 0.0) -> RolloutState:
    """An operator's ``pause``, ``resume``, ``promote`` (to 100 % now) or ``abort``
    (back to 0 now), recorded like any decision."""
    if action == "pause":
        if state.status not in ("shadow", "running"):
            raise InvalidCommand(f"cannot pause a rollout that is {state.status}")
        return _moved(state, now, delay_s, "pause", by, None, status="paused", paused_from=state.status)
    if action == "resume":
        if state.status != "paused":
            raise InvalidCommand(f"cannot resume a rollout that is {state.status}")
        return _moved(state, now, delay_s, "resume", by, None, status=state.paused_from or "running", paused_from=None)
    if action == "promote":
        if state.status in ("promoted", "rolled_back"):
            raise InvalidCommand(f"cannot promote a rollout that is {state.status}")
        return _moved(state, now, delay_s, "promote", by, None, status="promoted", weight=100.0, paused_from=None)
    if action == "abort":
        if state.status == "rolled_back":
            raise InvalidCommand("the rollout is already rolled back")
        return _moved(state, now, delay_s, "abort", by, None, status="rolled_back", weight=0.0, paused_from=None)
    raise InvalidCommand(f"unknown action {action!r}: pause, resume, promote or abort")


def reweighted(route: Route, canary: Arm, weight: float) -> Route:
    """``route`` with the canary at ``weight`` percent and the baselines sharing the rest
    in their file's proportions (so a sticky user only ever moves to the canary as the
    weight rises, and every canary user moves back when it falls to 0)."""
    bases = [a for a in route.arms if a is not canary]
    total = sum(a.weight for a in bases)
    arms = tuple(
        dataclasses.replace(a, weight=weight)
        if a is canary
        else dataclasses.replace(a, weight=(100.0 - weight) * (a.weight / total if total > 0 else 1 / len(bases)))
        for a in route.arms
    )
    return dataclasses.replace(route, arms=arms)
