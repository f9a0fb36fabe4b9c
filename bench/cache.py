"""The result cache, measured with real processes: Triton, gateways, disk and Redis.

    .venv/bin/python bench/cache.py [--trace 10000] [--prompts 2000] [--hits 2000]

1. **Hits** per store (disk, Redis): p50/p99 latency and gateway CPU per request for a
   cache hit — over KServe binary (the tensor as stored) and over ``/api/v1/generate``
   (one PNG encoded per answer) — beside a miss (a draft generation) in the same run.
2. **A Zipf(1.0) trace** of ``--trace`` requests over ``--prompts`` prompts on the draft
   tier through the disk store (8 clients): hit ratio, and the compute-seconds saved
   (hits x the mean time Triton spent per generation in this run, from Triton's own
   statistics).
3. **Coalescing**: 50 identical concurrent requests on the preview tier, through one
   replica and through two sharing Redis: executions in Triton's own statistics.
4. **Encoding off the loop**: cache hits answered while a 768x768 image is encoded to
   AVIF again and again by another client: hit p50/p99 with and without.
5. **Pre-generation**: live draft requests (Poisson arrivals, 4 per second) with and
   without a pre-generation run of 60 prompts on the same tier: live p50/p95.

Compare the ratios of one run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import diskcache
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402
from overhead import cpu_seconds  # noqa: E402

from image_router.cache import Entry, image_id  # noqa: E402
from image_router.cache.keys import image_key  # noqa: E402
from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import ADMIN_TOKEN, GatewayProcess, RedisProcess  # noqa: E402

SHARE = 0.01  # background_share: the shipped default

ROUTES = """
backends: {{triton: {{url: "${{TRITON_URL}}"}}}}
cache: {{store: "{store}", max_bytes: 2000000000, background_share: {share}}}
models:
  draft: {{backend: triton, triton_model: draft, latency_hint_ms: 150}}
  preview: {{backend: triton, triton_model: preview, latency_hint_ms: 700}}
routes:
  - name: cached
    match: "prompt:^cached"
    model: draft
    budget_ms: 30000
    cache: {{seedless: share}}
  - name: slow
    match: "prompt:^slow"
    model: preview
    budget_ms: 60000
    cache: {{}}
default_route: {{name: live, model: draft, budget_ms: 30000}}
"""


def kserve_body(prompt: str) -> tuple[bytes, dict[str, str]]:
    import tritonclient.http as httpclient
    from tritonclient.http._utils import _get_inference_request

    p = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    p.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
    s = httpclient.InferInput("SEED", [1, 1], "INT64")
    s.set_data_from_numpy(np.array([[1]], dtype=np.int64))
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    body, size = _get_inference_request([p, s], "", out, 0, False, False, 0, None, None)
    return body, {"Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"}


def executions(triton: TritonServer, model: str) -> tuple[int, float]:
    """Requests Triton ran for ``model`` and the seconds its executions computed."""
    stats = httpx.get(f"{triton.http_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"]
    count = sum(int(s["inference_stats"]["success"]["count"]) for s in stats)
    # per execution (a dynamic batch counts once), not per request
    compute = sum(int(b["compute_infer"]["ns"]) for s in stats for b in s.get("batch_stats", [])) / 1e9
    return count, compute


async def timed_loop(client: httpx.AsyncClient, n: int, send: object) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await send()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return out


def hits(gw: GatewayProcess, n: int) -> dict[str, tuple[float, float, float]]:
    """{api: (p50 ms, p99 ms, CPU ms per request)} for hits, and a miss for scale."""
    body, headers = kserve_body("cached kserve hit")
    results: dict[str, tuple[float, float, float]] = {}

    async def run() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            sends = {
                "KServe binary": lambda: client.post("/v2/models/cached/infer", content=body, headers=headers),
                "/api/v1/generate (PNG)": lambda: client.post("/api/v1/generate", json={"prompt": "cached png hit"}),
            }
            for name, send in sends.items():
                first = await send()
                assert first.headers["x-cache"] == "MISS", first.headers
                await asyncio.sleep(0.3)  # the background write lands (hits below come from memory)
                await timed_loop(client, 100, send)
                before = cpu_seconds(gw.process.pid)
                latencies = await timed_loop(client, n, send)
                cpu = (cpu_seconds(gw.process.pid) - before) / n
                results[name] = (pct(latencies, 0.5), pct(latencies, 0.99), cpu * 1000)
            misses = []
            for i in range(30):
                t0 = time.perf_counter()
                r = await client.post("/api/v1/generate", json={"prompt": f"cached miss {i} {random.random()}"})
                misses.append(time.perf_counter() - t0)
                assert r.headers["x-cache"] == "MISS"
            results["a miss (draft generation)"] = (pct(misses, 0.5), pct(misses, 0.99), float("nan"))

    asyncio.run(run())
    return results


def zipf_trace(gw: GatewayProcess, triton: TritonServer, total: int, prompts: int) -> dict[str, float]:
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, prompts + 1)
    draws = rng.choice(prompts, size=total, p=weights / weights.sum())
    count0, compute0 = executions(triton, "draft")
    caches: list[str] = []

    async def run() -> float:
        queue = list(draws)
        async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:

            async def worker() -> None:
                while queue:
                    i = queue.pop()
                    r = await client.post("/api/v1/generate", json={"prompt": f"cached zipf prompt {i}"})
                    r.raise_for_status()
                    caches.append(r.headers["x-cache"])

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(8)))
            return time.perf_counter() - t0

    wall = asyncio.run(run())
    count1, compute1 = executions(triton, "draft")
    generated, compute = count1 - count0, compute1 - compute0
    served_without = caches.count("HIT") + caches.count("COALESCED")
    per_generation = compute / max(1, generated)
    return {
        "requests": total,
        "distinct prompts drawn": len(set(draws.tolist())),
        "hit ratio": served_without / total,
        "generations in Triton": generated,
        "compute seconds spent": compute,
        "compute seconds saved": served_without * per_generation,
        "wall seconds": wall,
    }


def coalesce(gateways: list[GatewayProcess], triton: TritonServer, tag: str) -> tuple[int, list[str]]:
    before, _ = executions(triton, "preview")

    async def run() -> list[str]:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"prompt": f"slow coalesced lighthouse {tag}", "seed": 5}
            posts = [client.post(gateways[i % len(gateways)].url + "/api/v1/generate", json=body) for i in range(50)]
            return [r.headers["x-cache"] for r in await asyncio.gather(*posts)]

    caches = asyncio.run(run())
    after, _ = executions(triton, "preview")
    return after - before, caches


def encoding_vs_hits(gw: GatewayProcess, store_dir: Path) -> dict[str, tuple[float, float]]:
    big = np.random.default_rng(1).integers(0, 255, (768, 768, 3), dtype=np.uint8)
    name = image_id(big)
    with diskcache.Cache(str(store_dir)) as store:
        store.set(image_key(name), Entry(big[None], "draft", "1", "cached", (1,), time.time()).to_bytes())
    body, headers = kserve_body("cached kserve hit")
    out: dict[str, tuple[float, float]] = {}

    async def run() -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:

            async def hit() -> httpx.Response:
                return await client.post("/v2/models/cached/infer", content=body, headers=headers)

            alone = await timed_loop(client, 300, hit)
            out["hits alone"] = (pct(alone, 0.5), pct(alone, 0.99))
            stop = asyncio.Event()
            encoded = 0

            async def encode() -> None:
                nonlocal encoded
                async with httpx.AsyncClient(base_url=gw.url, timeout=60) as other:
                    q = 0
                    while not stop.is_set():
                        q = (q + 1) % 100  # a new quality each time: a new variant, encoded afresh
                        (await other.get(f"/v1/images/{name}.avif?q={q}")).raise_for_status()
                        encoded += 1

            task = asyncio.ensure_future(encode())
            await asyncio.sleep(0.5)
            during = await timed_loop(client, 300, hit)
            stop.set()
            await task
            out[f"hits while 768x768 AVIF encodes run ({encoded} encoded)"] = (pct(during, 0.5), pct(during, 0.99))

    asyncio.run(run())
    return out


def pregen_vs_live(gw: GatewayProcess) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}

    async def live(seconds: float, tag: str) -> list[float]:
        gaps = random.Random(tag)  # Poisson arrivals, 4 per second
        latencies = []
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                i += 1
                t0 = time.perf_counter()
                r = await client.post("/api/v1/generate", json={"prompt": f"live {tag} {i}"})
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()
                await asyncio.sleep(max(0.0, gaps.expovariate(4.0) - (time.perf_counter() - t0)))
        return latencies

    base = asyncio.run(live(60, "alone"))
    out["live, alone"] = (pct(base, 0.5), pct(base, 0.95))
    items = [{"prompt": f"cached pregen {i}"} for i in range(60)]
    r = httpx.post(gw.url + "/admin/pregenerate", json={"items": items}, headers=gw.admin, timeout=30)
    r.raise_for_status()
    during = asyncio.run(live(60, "during"))
    state = httpx.get(gw.url + "/admin/pregenerate", headers=gw.admin).json()
    out[f"live, during pre-generation ({state['pregen']['done']} of 60 made meanwhile)"] = (
        pct(during, 0.5),
        pct(during, 0.95),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=int, default=10_000)
    parser.add_argument("--prompts", type=int, default=2_000)
    parser.add_argument("--hits", type=int, default=2_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["draft", "preview"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready(timeout_s=300)
    redis = RedisProcess(tmp).start()
    started: list[GatewayProcess] = []

    def gateway(store: str, name: str) -> GatewayProcess:
        (tmp / name).mkdir()
        routes = tmp / name / "routes.yaml"
        routes.write_text(ROUTES.format(store=store, share=SHARE))
        gw = GatewayProcess(routes, triton.http_url, tmp / f"{name}.log", ["--no-access-log"])
        started.append(gw)
        return gw

    try:
        disk_dir = tmp / "disk-store"
        disk = gateway(f"disk://{disk_dir}", "disk")
        shared = [gateway(redis.url, "redis-a"), gateway(redis.url, "redis-b")]
        print("## 1. Cache hits, one client\n")
        print("| store | request | p50 ms | p99 ms | gateway CPU ms/request |")
        print("|---|---|---|---|---|")
        for store, gw in (("disk", disk), ("Redis", shared[0])):
            for name, (p50, p99, cpu) in hits(gw, args.hits).items():
                print(f"| {store} | {name} | {p50:.2f} | {p99:.2f} | {'n/a' if cpu != cpu else f'{cpu:.3f}'} |")
        print(f"\n## 2. Zipf(1.0): {args.trace} requests over {args.prompts} prompts, draft tier, disk store\n")
        for key, value in zipf_trace(disk, triton, args.trace, args.prompts).items():
            print(f"- {key}: {value:.3f}" if isinstance(value, float) else f"- {key}: {value}")
        print("\n## 3. Coalescing: 50 identical concurrent requests (preview tier)\n")
        for label, gws in (("one replica (disk)", [disk]), ("two replicas (Redis)", shared)):
            ran, caches = coalesce(gws, triton, label)
            counts = {c: caches.count(c) for c in sorted(set(caches))}
            print(f"- {label}: {ran} execution(s) in Triton; answers {counts}")
        print("\n## 4. Cache hits while large images are encoded (disk store, KServe hits)\n")
        print("| | p50 ms | p99 ms |\n|---|---|---|")
        for label, (p50, p99) in encoding_vs_hits(disk, disk_dir).items():
            print(f"| {label} | {p50:.2f} | {p99:.2f} |")
        print("\n## 5. Live draft traffic (Poisson, 4/s) and a pre-generation run on the same tier\n")
        print("| | p50 ms | p95 ms |\n|---|---|---|")
        for label, (p50, p95) in pregen_vs_live(disk).items():
            print(f"| {label} | {p50:.1f} | {p95:.1f} |")
    finally:
        for gw in started:
            gw.stop()
        redis.stop()
        triton.stop()


if __name__ == "__main__":
    _ = ADMIN_TOKEN
    main()
