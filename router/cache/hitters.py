"""The most requested prompts, in bounded memory (pure).

The Space-Saving algorithm (Metwally, Agrawal, El Abbadi, 2005): at most ``capacity``
counters; a new item takes over the smallest counter and inherits its count as its
possible overcount (``error``). Every item requested more than ``total / capacity``
times is guaranteed to be present, which is what a pre-generation list needs: the
prompts that come back, not an exact census. O(1) amortised per request with the
minimum found lazily (a linear scan only when a new item evicts).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeavyHitters"]


@dataclass(slots=True)
class _Counter:
    count: int
    error: int


class HeavyHitters:
    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.total = 0
        self._counters: dict[tuple[str, str], _Counter] = {}

    def add(self, route: str, prompt: str) -> None:
        self.total += 1
        key = (route, prompt)
        counter = self._counters.get(key)
        if counter is not None:
            counter.count += 1
            return
        if len(self._counters) < self.capacity:
            self._counters[key] = _Counter(1, 0)
            return
        victim = min(self._counters, key=lambda k: self._counters[k].count)
        floor = self._counters.pop(victim).count
        self._counters[key] = _Counter(floor + 1, floor)

    def top(self, n: int = 50) -> list[dict[str, object]]:
        """The ``n`` most requested (route, prompt) pairs, as pre-generation items with
        their counts (``count - error`` is a guaranteed lower bound)."""
        ranked = sorted(self._counters.items(), key=lambda kv: kv[1].count, reverse=True)[:n]
        return [
            {"route": route, "prompt": prompt, "count": c.count, "at_least": c.count - c.error}
            for (route, prompt), c in ranked
        ]
