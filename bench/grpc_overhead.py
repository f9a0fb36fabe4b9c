"""gRPC overhead, both sides: the gRPC front door against direct Triton gRPC, and the
gateway's backend protocol (HTTP or gRPC to Triton) — the method of `bench/overhead.py`.

Starts a real Triton (noop only) and two real gateways (`router serve`, as shipped:
metrics and the access log on) whose Triton backend differs only in `protocol`. From one
and from 32 concurrent clients it sends the same KServe request (PROMPT + SEED, IMAGE
as raw/binary output): `tritonclient.grpc.aio` to the gRPC front door, `tritonclient`'s
binary HTTP request through httpx to the HTTP one, and the same straight to Triton. It
prints the added p50 and the gateway's CPU time per request (user + system from /proc)
for every pair of front door and backend protocol, all in one run, so they compare as ratios.

    .venv/bin/python bench/grpc_overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as aiogrpc
from tritonclient.grpc import InferInput

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import pct  # noqa: E402
from overhead import cpu_seconds, measure, write_routes  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402


def grpc_inputs() -> list[InferInput]:
    prompt = InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a red fox in the snow"]], dtype=object))
    seed = InferInput("SEED", [1, 1], "INT64")
    seed.set_data_from_numpy(np.array([[7]], dtype=np.int64))
    return [prompt, seed]


async def measure_grpc(target: str, concurrency: int, total: int) -> list[float]:
    client = aiogrpc.InferenceServerClient(target)
    inputs = grpc_inputs()
    latencies: list[float] = []
    try:
        for _ in range(50):  # warm-up: the channel, caches, estimates
            await client.infer("noop", inputs)
        queue = list(range(total))

        async def worker() -> None:
            while queue:
                queue.pop()
                t0 = time.perf_counter()
                await client.infer("noop", inputs)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    routes = write_routes(tmp)
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready()
    triton_grpc = f"127.0.0.1:{triton.config.grpc_port}"
    grpc_routes = tmp / "grpc-backend" / "routes.yaml"
    grpc_routes.parent.mkdir()
    grpc_backend = f'triton: {{url: "${{TRITON_URL}}", protocol: grpc, grpc_urls: ["{triton_grpc}"]}}'
    grpc_routes.write_text(routes.read_text().replace('triton: {url: "${TRITON_URL}"}', grpc_backend))
    gateways = {
        "http": GatewayProcess(routes, triton.http_url, tmp / "gateway.log"),
        "grpc": GatewayProcess(grpc_routes, triton.http_url, tmp / "gateway-grpc.log"),
    }
    try:
        columns = ["front door", "backend", "clients", "direct p50", "gateway p50", "gateway p99", "added p50"]
        print("| " + " | ".join([*columns, "gateway CPU/req"]) + " |")
        print("|---|---|---|---|---|---|---|---|")
        for concurrency in (1, 32):
            for front in ("gRPC", "HTTP"):
                if front == "gRPC":
                    direct = asyncio.run(measure_grpc(triton_grpc, concurrency, args.requests))
                else:
                    direct = asyncio.run(measure(triton.http_url, concurrency, args.requests))
                for backend, gateway in gateways.items():
                    before = cpu_seconds(gateway.process.pid)
                    if front == "gRPC":
                        via = asyncio.run(measure_grpc(gateway.grpc_target, concurrency, args.requests))
                    else:
                        via = asyncio.run(measure(gateway.url, concurrency, args.requests))
                    cpu = (cpu_seconds(gateway.process.pid) - before) / (args.requests + 50)
                    print(
                        f"| {front} | {backend} | {concurrency} | {pct(direct, 0.5):.2f} ms | {pct(via, 0.5):.2f} ms | "
                        f"{pct(via, 0.99):.2f} ms | {pct(via, 0.5) - pct(direct, 0.5):+.2f} ms | {cpu * 1000:.3f} ms |"
                    )
        print(f"\n{args.requests} requests per cell, after 50 warm-up requests per cell.")
    finally:
        for gateway in gateways.values():
            gateway.stop()
        triton.stop()


if __name__ == "__main__":
    main()
