"""Identical generations in flight share one backend call.

The call runs as a task of its own, not inside the request that started it: a waiter
that disconnects or runs out of budget leaves (its wait is shielded) without
cancelling the call the others are waiting for, and a result nobody waits for any
more is still stored. Each waiter waits at most its own time. The outcome is the
backend's result, or a fallback reason (a string) — then every waiter decides for
itself what to do with the time it has left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Flights"]

R = TypeVar("R")


class Flights(Generic[R]):
    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[R | str]] = {}
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._calls)

    def running(self, key: str) -> asyncio.Task[R | str] | None:
        return self._calls.get(key)

    def start(self, key: str, call: Callable[[], Awaitable[R | str]]) -> asyncio.Task[R | str]:
        """Run ``call`` as the one generation for ``key`` until it finishes."""

        async def run() -> R | str:
            try:
                return await call()
            finally:
                if self._calls.get(key) is task:
                    del self._calls[key]

        task = asyncio.ensure_future(run())
        self._calls[key] = task
        return task

    async def wait(self, task: asyncio.Task[R | str], timeout_s: float) -> R | str:
        """The call's outcome, or ``"timeout"`` when this waiter's time is up first.
        Cancelling the waiter never cancels the call."""
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                return await asyncio.shield(task)
        except TimeoutError:
            return "timeout"
