"""Fair share under overload: two tenants, one sending ten times the other's rate, at
about three times what the tier can serve.

Starts Triton (draft) and two gateways on the same routes: one with two tenants (keys
mode: the admission queue shares fairly between tenants), one in open mode where
the same traffic is one anonymous crowd (arrival order). The route serves draft alone
with one request at a time and a queue, so overload is the admission queue's to sort
out. Each gateway gets the same open-loop traffic (Poisson arrivals). Reported: the
light tenant's requests served within the budget, its p95, and the heavy tenant's.

    .venv/bin/python bench/fairness.py [--seconds 20] [--light-rps R]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import pct  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402

HEAVY, LIGHT = "sk-heavy-0123456789abcdef", "sk-light-0123456789abcdef"
ROUTES = """
backends: {{triton: {{url: "${{TRITON_URL}}"}}}}
models:
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 100, max_concurrency: 1, max_queue: 64}}
{tenants}
default_route: {{name: main, model: draft, budget_ms: {budget_ms}}}
"""
TENANTS = f"""tenants:
  mode: keys
  tenants:
    heavy: {{keys: ["{HEAVY}"]}}
    light: {{keys: ["{LIGHT}"]}}
"""


async def traffic(url: str, seconds: float, light_rps: float, seed: int) -> dict[str, list[tuple[int, float]]]:
    rng = random.Random(seed)
    out: dict[str, list[tuple[int, float]]] = {"heavy": [], "light": []}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=500)) as client:

        async def one(who: str, key: str, i: int) -> None:
            t0 = time.perf_counter()
            r = await client.post(
                url + "/api/v1/generate",
                json={"prompt": f"a fox {who} {i}", "seed": i},
                headers={"Authorization": f"Bearer {key}"},
            )
            out[who].append((r.status_code, time.perf_counter() - t0))

        async def arrivals(who: str, key: str, rps: float) -> None:
            tasks, i, stop = [], 0, time.monotonic() + seconds
            while time.monotonic() < stop:
                await asyncio.sleep(rng.expovariate(rps))
                tasks.append(asyncio.create_task(one(who, key, i)))
                i += 1
            await asyncio.gather(*tasks)

        await asyncio.gather(arrivals("heavy", HEAVY, 10 * light_rps), arrivals("light", LIGHT, light_rps))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--light-rps", type=float, default=None, help="heavy sends ten times this (default: 3x capacity in all)"
    )
    parser.add_argument("--budget-ms", type=int, default=3000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["draft"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready(300)
    gateways = {}
    try:
        for mode, tenants in (("tenants (fair share)", TENANTS), ("open (arrival order)", "")):
            directory = tmp / str(len(gateways))
            directory.mkdir()
            (directory / "routes.yaml").write_text(ROUTES.format(tenants=tenants, budget_ms=args.budget_ms))
            gateways[mode] = GatewayProcess(directory / "routes.yaml", triton.http_url, directory / "gateway.log")
        # capacity: draft alone, one at a time
        t0 = time.perf_counter()
        for i in range(20):
            httpx.post(gateways["open (arrival order)"].url + "/api/v1/generate", json={"prompt": "w", "seed": i},
                       timeout=60, headers={"Authorization": f"Bearer {HEAVY}"}).raise_for_status()  # fmt: skip
        capacity = 20 / (time.perf_counter() - t0)
        light_rps = args.light_rps or 3 * capacity / 11
        offered = 11 * light_rps
        print(f"capacity ~{capacity:.1f} requests/s; offered {offered:.1f}/s ({offered / capacity:.1f}x), "
              f"heavy {10 * light_rps:.1f}/s, light {light_rps:.1f}/s, budget {args.budget_ms} ms")  # fmt: skip
        print("| mode | tenant | sent | in budget (200) | refused (429/504) | p95 of 200s |")
        print("|---|---|---|---|---|---|")
        for mode, gw in gateways.items():
            result = asyncio.run(traffic(gw.url, args.seconds, light_rps, seed=7))
            for who in ("light", "heavy"):
                rows = result[who]
                ok = [s for code, s in rows if code == 200]
                print(f"| {mode} | {who} | {len(rows)} | {len(ok)} ({len(ok) / max(1, len(rows)):.0%}) | "
                      f"{len(rows) - len(ok)} | {pct(ok, 0.95) if ok else float('nan'):.0f} ms |")  # fmt: skip
    finally:
        for gw in gateways.values():
            gw.stop()
        triton.stop()


if __name__ == "__main__":
    main()
