"""The live set of backend clients, kept in step with the routing table.

On a reload, clients whose backend spec is unchanged are kept (their connection pools
stay warm); new specs get new clients; clients no longer configured are closed after a
grace period, because requests that started on the previous table may still use them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from image_router.backends.base import ImageBackend
from image_router.config.table import Backend
from image_router.errors import BackendUnavailable

__all__ = ["BackendPool"]


class BackendPool:
    def __init__(self, factory: Callable[[Backend], ImageBackend], grace_s: float = 120.0) -> None:
        self._factory = factory
        self._grace_s = grace_s
        self._specs: dict[str, Backend] = {}
        self._clients: dict[str, ImageBackend] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def get(self, name: str) -> ImageBackend:
        client = self._clients.get(name)
        if client is None:
            raise BackendUnavailable(f"backend {name!r} is not configured")
        return client

    def items(self) -> list[tuple[str, ImageBackend]]:
        return list(self._clients.items())

    def sync(self, specs: Mapping[str, Backend]) -> None:
        """Make the clients match ``specs`` (called on every table swap)."""
        for name, spec in specs.items():
            if self._specs.get(name) != spec:
                old = self._clients.get(name)
                self._clients[name] = self._factory(spec)
                self._specs[name] = spec
                if old is not None:
                    self._retire(old)
        for name in set(self._clients) - set(specs):
            self._retire(self._clients.pop(name))
            self._specs.pop(name, None)

    def _retire(self, client: ImageBackend) -> None:
        async def later() -> None:
            await asyncio.sleep(self._grace_s)
            await client.aclose()

        try:
            task = asyncio.get_running_loop().create_task(later())
        except RuntimeError:  # no loop (CLI tools): nothing is in flight
            return
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        self._specs.clear()
