"""Measured compute against a real Triton: the model's own ``COMPUTE_NS`` reaches the
gateway over both protocols, and it agrees with Triton's own statistics."""

from __future__ import annotations

import asyncio

import pytest

from image_router.backends import ImageRequest
from image_router.backends.triton import TritonBackend
from image_router.config.compile import compile_text
from image_router.config.table import Model
from image_router.triton import TritonServer

pytestmark = pytest.mark.integration


def _compute_infer_ns(stats: dict[str, object]) -> tuple[int, int]:
    """Triton's compute_infer nanoseconds and its successful requests so far."""
    model = stats["model_stats"][0]  # type: ignore[index]
    return int(model["inference_stats"]["compute_infer"]["ns"]), int(model["inference_stats"]["success"]["count"])


async def _after(backend: TritonBackend, model: Model, requests: int) -> int:
    """compute_infer once Triton has counted ``requests`` successes: it records a
    request's statistics after sending its answer, so a read right away can miss it."""
    for _ in range(100):
        ns, count = _compute_infer_ns(await backend.model_statistics(model))
        if count >= requests:
            return ns
        await asyncio.sleep(0.05)
    raise AssertionError(f"Triton counted {count} requests, not {requests}")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_compute_ns_reaches_the_gateway_and_matches_triton(triton: TritonServer, protocol: str) -> None:
    """Each image's COMPUTE_NS arrives on the result (one per image), and over several
    draft requests their sum is within 10 % of Triton's own compute_infer delta (the
    model's execute, which holds the generator calls this figure times)."""
    table = compile_text(
        f"""
backends:
  triton: {{url: "{triton.http_url}", protocol: {protocol}, grpc_port: {triton.config.grpc_port}}}
default_route: {{model: draft, budget_ms: 20000}}
""",
        env={},
    )
    backend, draft = TritonBackend(table.backends["triton"]), table.models["draft"]
    try:
        before, count = _compute_infer_ns(await backend.model_statistics(draft))
        total = 0
        for seed in range(4):
            result = await backend.generate(draft, ImageRequest(("a fox", "a cat"), seeds=(seed, seed + 9)), 20.0)
            assert result.compute_ns is not None and len(result.compute_ns) == 2
            assert all(ns > 0 for ns in result.compute_ns)
            total += sum(result.compute_ns)
        triton_ns = await _after(backend, draft, count + 4) - before
    finally:
        await backend.aclose()
    assert total <= triton_ns
    assert total >= 0.9 * triton_ns, (total, triton_ns)
