"""This replica's spend and budget decisions since it started: plain counters the
metrics collector reads at scrape time (``Metrics.watch``), so a request costs a dict
update, never a series lookup. Summed over replicas they are the fleet's (each answer
and each decision is counted by the one replica that made it).

Labels stay bounded: tenants are the configured ones and ``_anonymous``; routes and
models those of a table; decisions the few below.
"""

from __future__ import annotations

from typing import Any

from image_router.billing.usage import Usage

__all__ = ["DECISIONS", "Tally"]

# ok | warn | brownout | exhausted: the X-Router-Budget a request was answered with
# (exhausted: refused, or served only what is stored); brownout_refused: refused by a
# brownout that allows none of its tiers while money was left (answered `brownout`);
# fail_open: admitted while the store did not answer; fail_closed: refused for that
# (503 store_unavailable)
DECISIONS = ("ok", "warn", "brownout", "exhausted", "brownout_refused", "fail_open", "fail_closed")


class Tally:
    def __init__(self) -> None:
        # (tenant, route, model, compute source) -> [images, cached images, compute ns, cost micros]
        self.spend: dict[tuple[str, str, str, str], list[int]] = {}
        self.decisions: dict[tuple[str, str], int] = {}  # (tenant, decision) -> count

    def add(self, tenant: str, route: str, model: str, usage: Usage) -> None:
        counts = self.spend.setdefault((tenant, route, model, usage.compute_source), [0, 0, 0, 0])
        counts[0] += usage.images
        counts[1] += usage.cached_images
        counts[2] += usage.compute_ns
        counts[3] += usage.cost.total

    def decided(self, tenant: str, decision: str) -> None:
        key = (tenant, decision)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def decisions_of(self, tenant: str) -> dict[str, int]:
        return {d: n for (t, d), n in sorted(self.decisions.items()) if t == tenant}

    def describe(self) -> dict[str, Any]:
        return {
            "spend": [
                {"tenant": t, "route": r, "model": m, "source": s, "images": c[0], "cached_images": c[1],
                 "compute_ns": c[2], "cost_micros": c[3]}
                for (t, r, m, s), c in sorted(self.spend.items())
            ],
            "decisions": [{"tenant": t, "decision": d, "count": n} for (t, d), n in sorted(self.decisions.items())],
        }  # fmt: skip
