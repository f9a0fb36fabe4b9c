"""Compute spent on abandoned work during a burst at the quality tier, with the gateway's
Triton backend over HTTP and over gRPC.

Starts one Triton (quality and draft) and two gateways on the same routes but for the
backend's `protocol`. Each gets the same burst: waves of concurrent requests on a route
whose budget makes quality worth trying for the first in line and leaves room to
downgrade to draft. Quality's `latency_hint_ms` (1.2 s) is below what it really takes
here (~2.7 s): a tier that has become slower than its forecast, so attempts sent on the
forecast miss and are abandoned until the gateway has learned the new service time.
The gateway gives up on quality attempts that will not make it (its timeout): over HTTP
Triton computes them anyway, over gRPC the call is cancelled and the model stops within
a denoising step. Reported per protocol: the quality model's CPU seconds (its own
backend process, /proc) from the burst until it is idle again, how many quality images
were delivered, the compute that went to abandoned work (the total less the delivered
images at one image's cost, measured alone first), and what the clients got.

    .venv/bin/python bench/abandoned.py [--waves 2] [--per-wave 6] [--budget-ms 4000] [--hint-ms 1200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess, wait_model_idle  # noqa: E402

ROUTES = """
backends:
  triton: {{url: "${{TRITON_URL}}", protocol: {protocol}, grpc_urls: ["127.0.0.1:{grpc_port}"]}}
models:
  quality: {{backend: triton, triton_model: quality, latency_hint_ms: {hint_ms}}}
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150}}
routes:
  - name: burst
    match: {{intent: burst}}
    model: quality
    fallback: [draft]
    budget_ms: {budget_ms}
default_route: {{model: draft, budget_ms: 10000}}
"""


def quiet(triton: TritonServer) -> float:
    assert triton.pid is not None
    return wait_model_idle("quality", triton.pid, timeout_s=120)


async def burst(url: str, waves: int, per_wave: int) -> list[tuple[int, str, float]]:
    out: list[tuple[int, str, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            r = await client.post("/api/v1/generate", json={"prompt": f"a castle {i}", "intent": "burst", "seed": i})
            out.append((r.status_code, r.headers.get("x-router-model", ""), time.perf_counter() - t0))

        tasks = []
        for wave in range(waves):
            tasks += [asyncio.create_task(one(wave * per_wave + i)) for i in range(per_wave)]
            await asyncio.sleep(1.0)
        await asyncio.gather(*tasks)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--per-wave", type=int, default=6)
    parser.add_argument("--budget-ms", type=int, default=4000)
    parser.add_argument(
        "--hint-ms", type=int, default=1200, help="quality's latency_hint_ms: below its real ~2.7 s, as a slowing tier"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-abandoned-"))
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["quality", "draft"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready(timeout_s=300)
    gateways = {}
    try:
        for protocol in ("http", "grpc"):
            directory = tmp / protocol
            directory.mkdir()
            routes = directory / "routes.yaml"
            routes.write_text(
                ROUTES.format(
                    protocol=protocol, grpc_port=triton.config.grpc_port, budget_ms=args.budget_ms, hint_ms=args.hint_ms
                )
            )
            gateways[protocol] = GatewayProcess(routes, triton.http_url, directory / "gateway.log")
        before = quiet(triton)
        r = httpx.post(
            gateways["http"].url + "/api/v1/generate", json={"prompt": "one", "model": "quality", "seed": 1}, timeout=60
        )
        r.raise_for_status()
        one_image = quiet(triton) - before
        print(f"one quality image alone: {one_image:.2f} s of model CPU")
        print(
            f"burst: {args.waves} waves of {args.per_wave} requests, 1 s apart; budget {args.budget_ms} ms; "
            f"quality hinted at {args.hint_ms} ms"
        )
        print("| backend protocol | quality CPU | quality images delivered | abandoned compute | "
              "answered | of them downgraded | errors | worst latency |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for protocol, gw in gateways.items():
            before = quiet(triton)
            results = asyncio.run(burst(gw.url, args.waves, args.per_wave))
            spent = quiet(triton) - before
            delivered = sum(1 for status, model, _ in results if status == 200 and model.startswith("quality"))
            answered = sum(1 for status, _, _ in results if status == 200)
            downgraded = sum(1 for status, model, _ in results if status == 200 and model.startswith("draft"))
            errors = len(results) - answered
            worst = max(elapsed for _, _, elapsed in results)
            abandoned = max(0.0, spent - delivered * one_image)
            print(
                f"| {protocol} | {spent:.2f} s | {delivered} | {abandoned:.2f} s ({abandoned / spent:.0%}) | "
                f"{answered}/{len(results)} | {downgraded} | {errors} | {worst * 1000:.0f} ms |"
            )
    finally:
        for gw in gateways.values():
            gw.stop()
        triton.stop()


if __name__ == "__main__":
    main()
