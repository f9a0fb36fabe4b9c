"""How long encoding an image answer holds the event loop.

A ticker coroutine wakes every millisecond and records how late it woke: that is how
long any other request (a cache hit, /healthz) would have waited. While it runs, 768x768
answers are encoded the ways the gateway answers — a PNG (`/api/v1/generate`), base64
PNG in JSON (OpenAI `b64_json`), a KServe tensor as JSON text — first inline on the loop
(as before), then through `image_router.http.encode.encode_off_loop` (the bounded pool).
Also: the KServe JSON encoding alone, `tolist()` + `json.dumps` (before) vs orjson.

    .venv/bin/python bench/event_loop.py [--side 768] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_router.http.encode import encode_off_loop  # noqa: E402
from image_router.http.formats import encode_image  # noqa: E402
from image_router.kserve import encode_response  # noqa: E402


def old_kserve_json(image: np.ndarray) -> bytes:
    """The encoding before: a Python list of every value, then json.dumps."""
    output = {"name": "IMAGE", "datatype": "UINT8", "shape": list(image.shape), "data": image.reshape(-1).tolist()}
    return json.dumps({"model_name": "m", "model_version": "1", "outputs": [output]}, separators=(",", ":")).encode()


async def worst_stall(work: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """Run ``work`` (a coroutine factory) ``rounds`` times beside a 1 ms ticker: the
    ticker's worst lateness and the total wall time, in ms."""
    worst, stop = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not stop:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t0 - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    for _ in range(rounds):
        await work()
        await asyncio.sleep(0.003)  # between answers the ticker runs: a stall is one answer
    wall = time.perf_counter() - t0
    stop = True
    await task
    return worst * 1000, wall * 1000 / rounds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, args.side, args.side, 3), dtype=np.uint8)

    t0 = time.perf_counter()
    old = old_kserve_json(image)
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    new, _ = encode_response("m", "1", None, "IMAGE", image, binary=False)
    t_new = time.perf_counter() - t0
    assert json.loads(old)["outputs"][0]["data"] == json.loads(new)["outputs"][0]["data"]
    print(f"KServe JSON answer, {args.side}x{args.side}: tolist+json.dumps {t_old * 1000:.1f} ms, "
          f"orjson {t_new * 1000:.1f} ms ({t_old / t_new:.0f}x)")  # fmt: skip

    cases: dict[str, Callable[[], Any]] = {
        "PNG": lambda: encode_image(image[0], "png"),
        "base64 PNG (OpenAI b64_json)": lambda: base64.b64encode(encode_image(image[0], "png")).decode(),
        "KServe JSON, before (tolist + json.dumps)": lambda: old_kserve_json(image),
        "KServe JSON (orjson)": lambda: encode_response("m", "1", None, "IMAGE", image, binary=False),
    }
    print(f"\n| {args.side}x{args.side} answer | on the loop: worst stall | through the pool: worst stall | "
          "time per answer (pool) |\n|---|---|---|---|")  # fmt: skip
    for name, fn in cases.items():

        async def inline(fn: Callable[[], Any] = fn) -> Any:
            return fn()

        async def pooled(fn: Callable[[], Any] = fn) -> Any:
            return await encode_off_loop(image, fn)

        stall_inline, _ = await worst_stall(inline, args.rounds)
        stall_pool, wall = await worst_stall(pooled, args.rounds)
        print(f"| {name} | {stall_inline:.1f} ms | {stall_pool:.1f} ms | {wall:.1f} ms |")


if __name__ == "__main__":
    asyncio.run(main())
