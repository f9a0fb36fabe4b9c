"""The most recent entries in this process's memory, in front of the store (pure).

A hit on a hot key then costs no store round trip (no thread hop to the disk store, no
Redis call): measured, that is most of a hit's CPU. Encoded variants of recent images
(a PNG, a WebP at some quality) are kept here too, keyed by image id and format, so a
repeated inline answer is not encoded again. Bounded by bytes (least recently
used out first) and by age: entries are immutable by key, so memory can only be stale
about a *purge*. A purge clears this replica's memory at once; other replicas sharing
a Redis store drop their copies within ``ttl_s`` (5 s for a shared store). The clock
is injected.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from image_router.cache.entry import Entry

__all__ = ["HotEntries"]


class HotEntries:
    def __init__(self, max_bytes: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.clock = clock
        self.bytes = 0
        self.hits = 0
        self._items: OrderedDict[str, tuple[Entry | bytes, float, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str, count: bool = True) -> Entry | None:
        """``count=False``: a look that serves nothing (a budget asking what is stored)
        is not a hit — the walk that serves it counts its own."""
        value = self._get(key, count)
        return value if isinstance(value, Entry) else None

    def get_variant(self, image: str, fmt: str, quality: int) -> bytes | None:
        value = self._get(f"#{image}.{fmt}.{quality}")
        return value if isinstance(value, bytes) else None

    def put_variant(self, image: str, fmt: str, quality: int, data: bytes, ttl_s: float) -> None:
        self._put(f"#{image}.{fmt}.{quality}", data, len(data) + 128, ttl_s)

    def _get(self, key: str, count: bool = True) -> Entry | bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires, _ = item
        if self.clock() >= expires:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        self.hits += count
        return value

    def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        self._put(key, entry, entry.images.nbytes + 256, ttl_s)

    def _put(self, key: str, value: Entry | bytes, size: int, ttl_s: float) -> None:
        if size > self.max_bytes // 8:  # a few big images must not flush everything else
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (value, self.clock() + min(ttl_s, self.ttl_s), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, _, size = self._items.pop(key)
        self.bytes -= size

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
