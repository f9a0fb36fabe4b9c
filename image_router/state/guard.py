"""Store calls that never hang a request and never fail it.

:class:`Bounded` is what the result cache's store and the state store share: every
call is bounded in time, and failures open a circuit, so a slow or dead store turns
into "no answer" (``None``, a miss, a write not made) within the bound — counted in
:attr:`Bounded.counts`, never an error and never more than the bound of delay.

:class:`GuardedState` is the state store as its users see it. A tenant's limits are on
the request path: bounded by ``timeout_s`` and skipped while the circuit is open (the
replica then counts on its own). The rollouts' calls are the control plane: off the
request path, so bounded by ``bound_s`` (a second by default) and asked even with the
circuit open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from image_router.config.table import CircuitPolicy, StateConfig
from image_router.policy.circuit import CircuitBreaker
from image_router.state.base import Committed, StateStore
from image_router.state.txn import Txn

__all__ = ["CIRCUIT", "CONTROL_BOUND_S", "Bounded", "GuardedState"]

log = logging.getLogger("router.state")
T = TypeVar("T")
CIRCUIT = CircuitPolicy(consecutive_failures=10, failure_ratio=0.5, min_requests=20, window_s=10.0, cooldown_s=2.0)
CONTROL_BOUND_S = 1.0  # a control-plane call (off the request path)


class Bounded:
    """The bound, the circuit and the failure counts of one store's calls."""

    def __init__(self, what: str, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what  # "cache store redis", "state store sqlite": for the log
        self.timeout_s = timeout_s
        self.clock = clock
        self.breaker = CircuitBreaker(CIRCUIT)
        self.counts = {"errors": 0, "timeouts": 0, "skipped": 0}
        self.latency_s = 0.0  # of the last call, for the status page

    async def _guard(
        self,
        call: Callable[[], Awaitable[Any]],
        fallback: T,
        timeout_s: float | None = None,
        circuit: bool = True,
        breaker: CircuitBreaker | None = None,
    ) -> T:
        """``breaker``: the circuit this call answers to (:attr:`breaker` unless said),
        asked first when ``circuit`` and told the outcome either way."""
        breaker = breaker or self.breaker
        now = self.clock()
        if circuit and not breaker.allow(now):
            self.counts["skipped"] += 1
            return fallback
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                result: T = await call()
        except TimeoutError:
            self.counts["timeouts"] += 1
            breaker.record(self.clock(), False)
            return fallback
        except Exception as exc:  # noqa: BLE001 - a store fault is a miss, never the client's error
            self.counts["errors"] += 1
            if self.counts["errors"] == 1 or self.counts["errors"] % 1000 == 0:
                log.warning("%s failed (%d so far): %s: %s", self.what, self.counts["errors"],
                            type(exc).__name__, exc)  # fmt: skip
            breaker.record(self.clock(), False)
            return fallback
        self.latency_s = self.clock() - now
        breaker.record(self.clock(), True)
        return result

    @property
    def state(self) -> str:
        return self.breaker.state


class GuardedState(Bounded):
    """A :class:`~image_router.state.base.StateStore` whose calls answer ``None`` (or
    ``False``) when the store did not, within their bound."""

    def __init__(
        self,
        store: StateStore,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        config: StateConfig | None = None,
    ) -> None:
        super().__init__(f"state store {store.kind}", timeout_s, clock)
        self.store = store
        self.config = config  # what it was opened from (a reload with the same keeps it)

    @property
    def kind(self) -> str:
        return self.store.kind

    @property
    def shared(self) -> bool:
        return self.store.shared

    # -- the request path

    async def limit(self, keys: list[str], args: list[int]) -> list[int] | None:
        """A tenant's shared limits (see :mod:`image_router.state.gcra`), or ``None`` when the
        store did not answer in time (the caller counts on this replica)."""
        reply: list[int] | None = await self._guard(lambda: self.store.limit(keys, args), None)
        return reply

    async def reserve(self, keys: list[str], args: list[int]) -> list[int] | None:
        """A spend budget's reservation (:mod:`image_router.state.spend`), or ``None`` when the
        store did not answer in time (the budget's ``fail`` says what happens then)."""
        reply: list[int] | None = await self._guard(lambda: self.store.reserve(keys, args), None)
        return reply

    async def settle(self, keys: list[str], args: list[int], bound_s: float = CONTROL_BOUND_S) -> int | None:
        """Off the request path (a longer bound); ``None``: not known to be applied — the
        caller retries it, which counts once."""
        done: int | None = await self._guard(lambda: self.store.settle(keys, args), None, bound_s, False)
        return done

    # -- the control plane

    async def get_many(self, keys: list[str], bound_s: float = CONTROL_BOUND_S) -> list[bytes | None] | None:
        """The values (``None`` each: absent), or ``None`` when the store could not say."""
        got: list[bytes | None] | None = await self._guard(lambda: self.store.get_many(keys), None, bound_s, False)
        return got

    async def swap(
        self, key: str, expected: bytes | None, value: bytes, ttl_s: float | None, bound_s: float = CONTROL_BOUND_S
    ) -> bool | None:
        done: bool | None = await self._guard(
            lambda: self.store.swap(key, expected, value, ttl_s), None, bound_s, False
        )
        return done

    async def lease(self, key: str, owner: str, ttl_s: float, bound_s: float = CONTROL_BOUND_S) -> bool | None:
        held: bool | None = await self._guard(lambda: self.store.lease(key, owner, ttl_s), None, bound_s, False)
        return held

    async def release(self, key: str, owner: str, bound_s: float = CONTROL_BOUND_S) -> None:
        await self._guard(lambda: self.store.release(key, owner), None, bound_s, False)

    async def add_counts(
        self, key: str, counts: dict[str, int], ttl_s: float | None, bound_s: float = CONTROL_BOUND_S
    ) -> bool:
        async def add() -> bool:
            await self.store.add_counts(key, counts, ttl_s)
            return True

        return await self._guard(add, False, bound_s, False)

    async def read_counts(self, key: str, bound_s: float = CONTROL_BOUND_S) -> dict[str, int] | None:
        counts: dict[str, int] | None = await self._guard(lambda: self.store.counts(key), None, bound_s, False)
        return counts

    async def commit(self, txn: Txn, bound_s: float = CONTROL_BOUND_S) -> Committed | None:
        """``None`` when the store could not say (the step may or may not have been made)."""
        done: Committed | None = await self._guard(lambda: self.store.commit(txn), None, bound_s, False)
        return done

    async def scan(
        self, index: str, lo: float = float("-inf"), hi: float = float("inf"), limit: int = 100,
        reverse: bool = False, bound_s: float = CONTROL_BOUND_S,
    ) -> list[tuple[str, float]] | None:  # fmt: skip
        rows: list[tuple[str, float]] | None = await self._guard(
            lambda: self.store.scan(index, lo, hi, limit, reverse), None, bound_s, False
        )
        return rows

    async def delete(self, keys: list[str], bound_s: float = CONTROL_BOUND_S) -> bool:
        async def remove() -> bool:
            await self.store.delete(keys)
            return True

        return await self._guard(remove, False, bound_s, False)

    # -- lifecycle: not guarded (a refused store must refuse the table)

    def verify(self) -> None:
        """Raise :class:`~image_router.errors.StateStoreError` when the store could lose
        state (start and every reload; synchronous, like the reload path)."""
        self.store.verify()

    async def check(self) -> None:
        await self.store.check()

    async def aclose(self) -> None:
        try:
            await self.store.aclose()
        except Exception:  # closing a dead store is not an error
            log.debug("closing the state store failed", exc_info=True)
