"""Each servable name's real state, for the repository index (HTTP and gRPC alike).

KServe's ``/v2/repository/index`` and gRPC ``RepositoryIndex`` list every name a client
may ask for. Its state is what its backend says now — ``READY``, or ``UNAVAILABLE`` with
a reason — never a constant: a hosted tier whose upstream is down, or a Triton model
that is not loaded, shows as such. Names that resolve to the same model share one
check, and every check is bounded, so an index over many aliases costs one call per
model and at most :data:`CHECK_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from image_router.config.table import Model
from image_router.gateway import Gateway

__all__ = ["CHECK_TIMEOUT_S", "ModelState", "repository_states"]

CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ModelState:
    name: str
    state: str  # "READY" | "UNAVAILABLE"
    reason: str = ""


async def _check(gateway: Gateway, model: Model, timeout_s: float) -> str:
    """Why ``model`` cannot serve now; ``""`` when it can."""
    try:
        async with asyncio.timeout(timeout_s):
            ready = await gateway.pool.get(model.backend).model_ready(model)
    except Exception as exc:  # noqa: BLE001 - a failed check reads as unavailable, with why
        return f"readiness check failed: {type(exc).__name__}"
    return "" if ready else f"backend {model.backend!r} says {model.remote_name!r} is not ready"


async def repository_states(gateway: Gateway, timeout_s: float = CHECK_TIMEOUT_S) -> list[ModelState]:
    resolved: dict[str, Model] = {}
    for name in gateway.aliases():
        try:
            resolved[name] = gateway.resolve(name)
        except Exception:  # noqa: BLE001 - a name that stopped resolving is simply not listed
            continue
    distinct = {(m.backend, m.remote_name, m.version): m for m in resolved.values()}
    reasons = await asyncio.gather(*(_check(gateway, m, timeout_s) for m in distinct.values()))
    by_model = dict(zip(distinct, reasons, strict=True))
    out = []
    for name, model in resolved.items():
        reason = by_model[(model.backend, model.remote_name, model.version)]
        out.append(ModelState(name, "UNAVAILABLE" if reason else "READY", reason))
    return out
