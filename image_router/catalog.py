"""What the KServe front doors (HTTP and gRPC) ask besides inference: which concrete
model a logical name resolves to, and that model's readiness, metadata, configuration
and statistics from its backend — under the name it was asked by."""

from __future__ import annotations

from typing import Any

from image_router.backends.pool import BackendPool
from image_router.config.table import Model, RoutingTable
from image_router.policy.match import RequestFacts, select_route

__all__ = ["Catalog"]


class Catalog:
    """Read-only KServe control calls, mixed into the gateway (which provides ``table``
    and ``pool``): each reads the active table once."""

    pool: BackendPool

    @property
    def table(self) -> RoutingTable:
        raise NotImplementedError  # the gateway's

    def resolve(self, alias: str) -> Model:
        """The concrete model behind a logical name, by the same rules as inference (the
        route it selects, first arm); an unknown name is a 404 ``model_not_found``."""
        table = self.table
        return table.models[select_route(table, RequestFacts(prompt="", model=alias)).arms[0].model]

    def aliases(self) -> list[str]:
        return self.table.aliases()

    async def model_ready(self, alias: str) -> bool:
        model = self.resolve(alias)
        return await self.pool.get(model.backend).model_ready(model)

    async def model_metadata(self, alias: str) -> dict[str, Any]:
        model = self.resolve(alias)
        meta = await self.pool.get(model.backend).model_metadata(model)
        return {**meta, "name": alias}

    async def model_config(self, alias: str) -> dict[str, Any]:
        model = self.resolve(alias)
        config = await self.pool.get(model.backend).model_config(model)
        return {**config, "name": alias}

    async def model_statistics(self, alias: str) -> dict[str, Any]:
        model = self.resolve(alias)
        stats = await self.pool.get(model.backend).model_statistics(model)
        return {"model_stats": [{**entry, "name": alias} for entry in stats.get("model_stats", [])]}
