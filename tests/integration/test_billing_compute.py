"""Measured compute against a real Triton: the model's own ``COMPUTE_NS`` reaches the
gateway over both protocols, and it agrees with Triton's own statistics."""

from __future__ import annotations

import pytest

from router.backends import ImageRequest
from router.backends.triton import TritonBackend
from router.config.compile import compile_text
from router.triton import TritonServer

pytestmark = pytest.mark.integration


def _compute_infer_ns(stats: dict[str, object]) -> int:
    model = stats["model_stats"][0]  # type: ignore[index]
    return int(model["inference_stats"]["compute_infer"]["ns"])


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
        before = _compute_infer_ns(await backend.model_statistics(draft))
        total = 0
        for seed in range(4):
            result = await backend.generate(draft, ImageRequest(("a fox", "a cat"), seeds=(seed, seed + 9)), 20.0)
            assert result.compute_ns is not None and len(result.compute_ns) == 2
            assert all(ns > 0 for ns in result.compute_ns)
            total += sum(result.compute_ns)
        triton_ns = _compute_infer_ns(await backend.model_statistics(draft)) - before
    finally:
        await backend.aclose()
    assert total <= triton_ns
    assert total >= 0.9 * triton_ns, (total, triton_ns)
