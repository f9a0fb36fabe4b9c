"""Virtual time for asyncio tests of pure timing logic (no sockets): a fresh event loop
whose clock only moves when the loop would otherwise sleep, and then by exactly as much
as it would have slept. Sleeps, timeouts and deadlines are therefore exact and cost no
real time, and a busy CI host cannot make a timing assertion flaky.

The trick sits in the selector: the event loop asks it to wait up to the next timer;
with nothing to read it returns at once and moves the clock to that timer instead.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

__all__ = ["virtual_time"]

T = TypeVar("T")


class _Clock:
    now = 1000.0


class _Selector(selectors.BaseSelector):
    def __init__(self, clock: _Clock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._real.select(0)  # never block on real time
        if not events and timeout is not None and timeout > 0:
            self._clock.now += timeout
        return events

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


def virtual_time(test: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an ``async def`` test on its own loop in virtual time (the loop is closed after)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> T:
        clock = _Clock()
        loop = asyncio.SelectorEventLoop(_Selector(clock))
        loop.time = lambda: clock.now  # type: ignore[method-assign]
        try:
            return loop.run_until_complete(test(*args, **kwargs))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return run
