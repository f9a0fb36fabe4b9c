"""What a state store promises: state that must last, shared by every gateway that uses it.

A cache may drop what it holds; a state store may not. Rollouts keep their state and
per-window counts here, tenants their shared request rate and daily images, and the
async jobs, webhook deliveries and spend budgets to come will follow. The operations are
the few that coordination needs, each atomic for every gateway sharing the store:

- ``get_many`` / ``swap``: read, and compare-and-swap (``expected=None``: "absent");
- ``lease`` / ``release``: one holder at a time, with expiry (re-entrant for its holder);
- ``add_counts`` / ``counts``: integer fields of a hash added to (a window's counters);
- ``limit``: a tenant's GCRA rate and daily images checked and counted in one step
  (arguments and reply: :mod:`image_router.state.gcra`);
- ``reserve`` / ``settle``: a spend budget's reserve-before, settle-after, in integer
  micro-units, idempotent on retry (:mod:`image_router.state.spend`);
- ``commit`` / ``scan``: several keys and ordered indexes changed in one atomic step
  (:class:`~image_router.state.txn.Txn`: a job, its queue and its idempotency key), and an
  index read in score order (a tier's queue, a tenant's jobs, webhook deliveries due);
- ``delete``, ``check`` (can it be trusted to keep what it is given?) and ``aclose``.

A key expires only when the caller gave it a ttl (``ttl_s=None``: never). ``shared``
says whether what one gateway process writes is seen by the others: ``True`` for both
implementations (SQLite: the processes of one machine; Redis: every replica).
"""

from __future__ import annotations

from typing import Literal, Protocol

from image_router.state.txn import Txn

__all__ = ["Committed", "StateStore"]

Committed = Literal["ok", "changed", "full"]  # done; an expected value differed; an index had no room


class StateStore(Protocol):
    kind: str  # "sqlite" | "redis": for the status page and logs, never for a capability test
    shared: bool

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def swap(self, key: str, expected: bytes | None, value: bytes, ttl_s: float | None) -> bool:
        """Set ``key`` to ``value`` only if it still holds ``expected`` (``None``: absent)."""
        ...

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take ``key`` for ``ttl_s`` unless someone else holds it. The holder asking
        again renews it, so a call that timed out but took effect is not read as
        another's lease on retry."""
        ...

    async def release(self, key: str, owner: str) -> None: ...

    async def add_counts(self, key: str, counts: dict[str, int], ttl_s: float | None) -> None:
        """Add ``counts`` to the integer fields of ``key`` (the ttl covers the whole key)."""
        ...

    async def counts(self, key: str) -> dict[str, int]: ...

    async def limit(self, keys: list[str], args: list[int]) -> list[int]:
        """``keys``: the tenant's rate key and today's images key; ``args`` and the
        reply as :func:`image_router.state.gcra.step` defines them."""
        ...

    async def reserve(self, keys: list[str], args: list[int]) -> list[int]:
        """A spend budget's reservation: keys, args and reply as
        :mod:`image_router.state.spend` defines them."""
        ...

    async def settle(self, keys: list[str], args: list[int]) -> int:
        """A spend budget's settlement, counted once per ``done`` key (1: applied, 0:
        already settled); see :mod:`image_router.state.spend`."""
        ...

    async def commit(self, txn: Txn) -> Committed:
        """All of ``txn`` or nothing: ``"changed"`` when a key did not hold what it
        expects, ``"full"`` when an index had no room (checked in that order)."""
        ...

    async def scan(
        self, index: str, lo: float = float("-inf"), hi: float = float("inf"), limit: int = 100, reverse: bool = False
    ) -> list[tuple[str, float]]:
        """Up to ``limit`` members of ``index`` scored in ``[lo, hi]``, lowest score
        first (``reverse``: highest first), with their scores."""
        ...

    async def delete(self, keys: list[str]) -> None: ...

    def verify(self) -> None:
        """:meth:`check`, synchronously: start and reload are not coroutines."""
        ...

    async def check(self) -> None:
        """Raise :class:`~image_router.errors.StateStoreError` when the store could lose what
        it is given (a Redis that may evict); log what is only a risk (no persistence)."""
        ...

    async def aclose(self) -> None: ...
