"""What a rollout costs per request: the same split served with and without a rollout.

Starts a real Triton (`noop` only), a Redis when `redis-server` is installed (else the
disk store) and one gateway with two routes over the same two arms (`noop` and a
canary `noop-canary`, 50/50): `plain` (a split an operator moves by hand) and `rolled`
(the same split under a rollout held at its 50 % step, so the controller counts every
answer, checks each image's health, keeps gallery thumbnails and ticks against the
store). It sends the same KServe v2 binary `noop` request to each route from one
client, in alternating rounds, and prints the gateway's CPU per request (user + system,
all threads). Compare within one run: this machine is shared and noisy.

    .venv/bin/python bench/rollout_overhead.py [--rounds 4] [--per-round 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from overhead import cpu_seconds, request_body  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess, RedisProcess  # noqa: E402

ROUTES = """
backends: {{triton: {{url: "${{TRITON_URL}}"}}}}
models:
  noop: {{backend: triton, triton_model: noop, latency_hint_ms: 10}}
  noop-canary: {{backend: triton, triton_model: noop, latency_hint_ms: 10}}
cache: {{store: "{store}"}}
routes:
  - name: plain
    match: {{model: plain}}
    split: [{{model: noop, weight: 50}}, {{model: noop-canary, weight: 50, canary: true}}]
  - name: rolled
    match: {{model: rolled}}
    split:
      - {{model: noop, weight: 50}}
      - {{model: noop-canary, canary: true, rollout: {{steps: [50, 100], interval_s: 86400}}}}
default_route: {{model: noop, budget_ms: 5000}}
"""


async def send(url: str, route: str, total: int) -> None:
    body, headers = request_body()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(total):
            (await client.post(f"/v2/models/{route}/infer", content=body, headers=headers)).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    redis = RedisProcess(tmp).start() if shutil.which("redis-server") else None
    store = redis.url if redis is not None else f"disk://{tmp / 'state'}"
    config = tmp / "config"
    config.mkdir()
    (config / "routes.yaml").write_text(ROUTES.format(store=store))
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready()
    gateway = GatewayProcess(config / "routes.yaml", triton.http_url, tmp / "gateway.log")
    try:
        deadline = time.monotonic() + 10
        while httpx.get(gateway.url + "/admin/canary/rolled", headers=gateway.admin).json()["weight"] != 50:
            assert time.monotonic() < deadline, "the rollout did not start"
            time.sleep(0.1)
        for route in ("plain", "rolled"):  # warm-up
            asyncio.run(send(gateway.url, route, 100))
        cpu: dict[str, list[float]] = {"plain": [], "rolled": []}
        for _ in range(args.rounds):
            for route in ("plain", "rolled"):
                before = cpu_seconds(gateway.process.pid)
                asyncio.run(send(gateway.url, route, args.per_round))
                cpu[route].append((cpu_seconds(gateway.process.pid) - before) / args.per_round * 1000)
        state = httpx.get(gateway.url + "/admin/canary/rolled", headers=gateway.admin).json()
        print(f"store: {store.split(':')[0]}, rollout {state['status']} at {state['weight']:g}%")
        print("| route | gateway CPU per request, per round | median |")
        print("|---|---|---|")
        for route, values in cpu.items():
            print(f"| {route} | {', '.join(f'{v:.3f}' for v in values)} ms | {statistics.median(values):.3f} ms |")
        ratio = statistics.median(cpu["rolled"]) / statistics.median(cpu["plain"])
        print(f"\nrolled / plain: {ratio:.2f}x ({args.rounds} rounds of {args.per_round}, alternating)")
    finally:
        gateway.stop()
        triton.stop()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
