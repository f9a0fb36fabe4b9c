"""Per-model latency through Triton: p50/p95 at batch 1, sequential and concurrent.

Starts the project's Triton with every model (or uses --url), then for each model
sends --requests requests one at a time, and again from --concurrency clients at
once, and prints a Markdown table.

    .venv/bin/python bench/models.py [--requests 20] [--concurrency 4] [--url http://...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402

MODELS = ("noop", "draft", "preview", "quality")


def one(url: str, model: str, seed: int) -> float:
    client = httpclient.InferenceServerClient(url, network_timeout=300)
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a lighthouse on a cliff at dusk"]], dtype=object))
    seed_in = httpclient.InferInput("SEED", [1, 1], "INT64")
    seed_in.set_data_from_numpy(np.array([[seed]], dtype=np.int64))
    t0 = time.perf_counter()
    client.infer(model, [prompt, seed_in])
    elapsed = time.perf_counter() - t0
    client.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--url", help="an already running Triton (host:port)")
    args = parser.parse_args()
    server = None
    url = args.url
    if url is None:
        log = open(Path(tempfile.mkdtemp()) / "triton.log", "wb")  # noqa: SIM115
        server = TritonServer(TritonConfig(ROOT / "model_repository"), log)
        server.start()
        server.wait_ready()
        url = server.http_url.removeprefix("http://")
    try:
        print("| model | batch-1 p50 | batch-1 p95 | concurrent p50 | concurrent p95 | concurrent throughput |")
        print("|---|---|---|---|---|---|")
        p50 = {}
        for model in MODELS:
            one(url, model, 0)  # warm-up
            sequential = [one(url, model, i) for i in range(args.requests)]
            n = args.requests
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                concurrent = list(pool.map(lambda i, m=model: one(url, m, i), range(n)))
            wall = time.perf_counter() - t0
            p50[model] = pct(sequential, 0.5)
            print(
                f"| {model} | {pct(sequential, 0.5):.1f} ms | {pct(sequential, 0.95):.1f} ms | "
                f"{pct(concurrent, 0.5):.1f} ms | {pct(concurrent, 0.95):.1f} ms | {n / wall:.1f} img/s |"
            )
        print(
            f"\n{args.requests} requests per cell, {args.concurrency} concurrent clients; "
            f"quality p50 / draft p50 = {p50['quality'] / p50['draft']:.1f}"
        )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
