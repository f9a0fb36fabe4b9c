"""A cached route under a long tail of unique prompts: what each request costs the gateway
when nearly every prompt is new (issue 36, "no per-request surprise").

Starts one Triton (`noop`) and one gateway (as shipped: metrics and access log on) with
two routes on the same tier, one with a result cache (disk store) and one without, then
sends, in alternating rounds from one client, the same number of KServe binary requests
each way:

- **unique, cached**: every prompt new (a miss: the generation, its key, the store write
  and the heavy-hitter counters, which must stay O(1) however many prompts they see);
- **unique, uncached**: the same prompts on the route without a cache (the floor);
- **repeated, cached**: one prompt again and again (hits).

Prints the gateway's CPU per request (user + system, /proc) and p50/p99 per case, and
the ratio of the first to the second. Compare the ratios of one run: the machine is
shared and noisy.

    .venv/bin/python bench/unique_prompts.py [--rounds 3] [--per-round 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402
from overhead import cpu_seconds  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402

ROUTES = """
backends: {{triton: {{url: "${{TRITON_URL}}"}}}}
models: {{noop: {{backend: triton, triton_model: noop, latency_hint_ms: 20}}}}
cache: {{store: "disk://{store}", max_bytes: 2000000000}}
routes:
  - {{name: cached, match: "prompt:^cached", model: noop, budget_ms: 5000, cache: {{}}}}
default_route: {{name: plain, model: noop, budget_ms: 5000}}
"""


def body(prompt: str) -> tuple[bytes, dict[str, str]]:
    import tritonclient.http as httpclient
    from tritonclient.http._utils import _get_inference_request

    p = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    p.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
    s = httpclient.InferInput("SEED", [1, 1], "INT64")
    s.set_data_from_numpy(np.array([[1]], dtype=np.int64))
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    data, size = _get_inference_request([p, s], "", out, 0, False, False, 0, None, None)
    return data, {"Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"}


async def run(url: str, prompts: list[str]) -> list[float]:
    bodies = [body(p) for p in prompts]  # made before the clock starts: the client's CPU is not the gateway's
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for data, headers in bodies:
            t0 = time.perf_counter()
            r = await client.post("/v2/models/auto/infer", content=data, headers=headers)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=1500)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-unique-"))
    (tmp / "config").mkdir()
    routes = tmp / "config" / "routes.yaml"
    routes.write_text(ROUTES.format(store=tmp / "store"))
    config = TritonConfig(ROOT / "model_repository", ["noop"])
    with open(tmp / "triton.log", "wb") as log, TritonServer(config, log) as triton:
        gw = GatewayProcess(routes, triton.http_url, tmp / "gateway.log")
        try:
            pid = gw.process.pid
            asyncio.run(run(gw.url, [f"cached warm {i}" for i in range(200)] + ["plain warm"] * 200))
            cases: dict[str, tuple[list[float], list[float]]] = {
                "unique, cached": ([], []), "unique, uncached": ([], []), "repeated, cached": ([], []),
            }  # fmt: skip
            for r in range(args.rounds):
                n = args.per_round
                plan = {
                    "unique, cached": [f"cached prompt {r}-{i}" for i in range(n)],
                    "unique, uncached": [f"plain prompt {r}-{i}" for i in range(n)],
                    "repeated, cached": ["cached the same prompt"] * n,
                }
                for case, prompts in plan.items():
                    before = cpu_seconds(pid)
                    latencies = asyncio.run(run(gw.url, prompts))
                    cases[case][0].append((cpu_seconds(pid) - before) / n)
                    cases[case][1].extend(latencies)
        finally:
            gw.stop()
    print("| case | gateway CPU per request, per round | p50 ms | p99 ms |\n|---|---|---|---|")
    for case, (cpu, lat) in cases.items():
        rounds = ", ".join(f"{1000 * c:.3f}" for c in cpu)
        print(f"| {case} | {rounds} ms | {pct(lat, 0.5):.2f} | {pct(lat, 0.99):.2f} |")
    mean = {case: sum(cpu) / len(cpu) for case, (cpu, _) in cases.items()}
    ratio = mean["unique, cached"] / mean["unique, uncached"]
    print(f"\nunique cached / unique uncached: {ratio:.2f}x CPU per request")


if __name__ == "__main__":
    main()
