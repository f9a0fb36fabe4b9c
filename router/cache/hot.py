"""The most recent entries in this process's memory, in front of the store (pure).

A hit on a hot key then costs no store round trip (no thread hop to the disk store, no
Redis call): measured, that is most of a hit's CPU. Bounded by bytes (least recently
used out first) and by age: entries are immutable by key, so memory can only be stale
about a *purge*. A purge clears this replica's memory at once; other replicas sharing
a Redis store drop their copies within ``ttl_s`` (5 s for a shared store). The clock
is injected.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from router.cache.entry import Entry

__all__ = ["HotEntries"]


class HotEntries:
    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.bytes = 0
        self.hits = 0
        self._items: OrderedDict[str, tuple[Entry, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Entry | None:
        item = self._items.get(key)
        if item is None:
            return None
        entry, expires, _ = item
        if self.clock() >= expires:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        size = entry.images.nbytes + 256
        if size > self.max_bytes // 8:  # a few big images must not flush everything else
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (entry, self.clock() + min(ttl_s, self.ttl_s), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, _, size = self._items.pop(key)
        self.bytes -= size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
