"""Triton's queue stalls: which scheduler configuration answers without ~500 ms waits?

Triton 2.51's dynamic batcher now and then leaves a request waiting for its 500 ms
idle timeout (a lost wake-up: docs/resilience.md). For each variant of the models'
``dynamic_batching`` block this starts a real Triton with `noop` and `draft` (a copy of
this repository's model_repository/ with only that block replaced), keeps `draft` busy
with 3 clients, sends ``--requests`` `noop` requests from 32 clients straight to Triton,
and counts the answers slower than 400 ms (noop itself takes ~1 ms).

    .venv/bin/python bench/triton_stall.py [--requests 2000] [--variants shipped,both,priorities,policy,plain,none]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import MODEL_REPOSITORY  # noqa: E402

# Replacements for the whole `dynamic_batching { ... }` block of both models.
VARIANTS = {
    "shipped": None,  # as in model_repository/ (plain, since this benchmark)
    "plain": "dynamic_batching { max_queue_delay_microseconds: 0 }",
    "both": "dynamic_batching {\n  max_queue_delay_microseconds: 0\n  priority_levels: 3\n"
    "  default_priority_level: 2\n  default_queue_policy {\n    timeout_action: REJECT\n"
    "    default_timeout_microseconds: 10000000\n    allow_timeout_override: true\n"
    "    max_queue_size: 256\n  }\n}",  # what shipped before: priority levels + queue policy
    "priorities": "dynamic_batching {\n  max_queue_delay_microseconds: 0\n  priority_levels: 3\n"
    "  default_priority_level: 2\n}",
    "policy": "dynamic_batching {\n  max_queue_delay_microseconds: 0\n  default_queue_policy {\n"
    "    timeout_action: REJECT\n    default_timeout_microseconds: 10000000\n"
    "    allow_timeout_override: true\n    max_queue_size: 256\n  }\n}",
    "none": "",  # Triton's default scheduler: no queue policy, no priorities
}
BLOCK = re.compile(r"^dynamic_batching \{.*?^\}\n", re.S | re.M)


def repository(variant: str, into: Path) -> Path:
    for model in ("noop", "draft"):
        shutil.copytree(MODEL_REPOSITORY / model, into / model)
        replacement = VARIANTS[variant]
        if replacement is not None:
            config = into / model / "config.pbtxt"
            text, count = BLOCK.subn(replacement + "\n" if replacement else "", config.read_text())
            if count == 0 and replacement:  # the shipped models have no block (docs/batching.md): add one
                text = text.rstrip("\n") + "\n" + replacement + "\n"
            config.write_text(text)
    return into


def body(prompt: bytes) -> tuple[bytes, dict[str, str]]:
    tensor = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[prompt]], dtype=object))
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    raw, size = _get_inference_request([tensor], "", out, 0, False, False, 0, None, None)
    return raw, {"Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"}


async def load(url: str, requests: int) -> list[float]:
    """aiohttp, not httpx: httpx's client costs milliseconds of CPU per request at this
    concurrency, and its own queueing showed up as "stalls" in every variant."""
    noop, draft = body(b"x"), body(b"a busy draft")
    latencies: list[float] = []
    done = False
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def busy() -> None:
            while not done:
                async with session.post("/v2/models/draft/infer", data=draft[0], headers=draft[1]) as r:
                    await r.read()

        async def worker(n: int) -> None:
            for _ in range(n):
                t0 = time.monotonic()
                async with session.post("/v2/models/noop/infer", data=noop[0], headers=noop[1]) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                latencies.append(time.monotonic() - t0)

        busy_tasks = [asyncio.create_task(busy()) for _ in range(3)]
        await asyncio.sleep(0.5)
        await asyncio.gather(*(worker(requests // 32) for _ in range(32)))
        done = True
        await asyncio.gather(*busy_tasks)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--variants", default="shipped,both,priorities,policy,plain,none")
    args = parser.parse_args()
    print("| variant | requests | p50 | p99 | max | over 400 ms |\n|---|---|---|---|---|---|")
    for variant in args.variants.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"stall-{variant}-"))
        with open(work / "triton.log", "wb") as log:
            server = TritonServer(TritonConfig(repository(variant, work / "repo"), ["noop", "draft"]), log)
            server.start()
            try:
                server.wait_ready(180)
                lat = asyncio.run(load(server.http_url, args.requests))
            finally:
                server.stop()
        stalls = sum(1 for x in lat if x > 0.4)
        print(f"| {variant} | {len(lat)} | {pct(lat, 0.5):.1f} ms | {pct(lat, 0.99):.1f} ms | "
              f"{max(lat) * 1000:.0f} ms | {stalls} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
