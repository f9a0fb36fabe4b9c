"""Gateway CPU per request on the hosted (OpenAI-compatible) backend path.

Starts the stand-in hosted API (`tests/hosted_upstream.py`: answers at once with a
prepared image) and the gateway (`router serve`, as shipped: metrics and access log on)
routing to it, then sends OpenAI Images requests through the gateway from one client in
alternating rounds:

- `png`: `response_format: b64_json`, PNG, the upstream's own format: passed through
- `webp`: the same images as WebP: decoded and encoded again by the gateway
- `kserve`: the same images as a KServe tensor (tritonclient's binary request)

CPU is user + system time of the gateway process per request. With `--baseline DIR`
(another checkout of this repository, e.g. a `git worktree` of an older commit) a second
gateway runs that code beside this one, in the same rounds: compare ratios of one run.

    .venv/bin/python bench/hosted.py [--rounds 3] [--per-round 300] [--size 512] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
from overhead import cpu_seconds  # noqa: E402

from tests.procs import GatewayProcess, HostedUpstream  # noqa: E402

ROUTES = """
backends:
  hosted: {type: openai, base_url: "${HOSTED_URL}", api_key: "${HOSTED_KEY}"}
models:
  remote: {backend: hosted, remote_model: img-1, latency_hint_ms: 50}
default_route: {model: remote, budget_ms: 10000}
env: [HOSTED_URL, HOSTED_KEY]
"""


def kserve_body(size: int) -> tuple[bytes, dict[str, str]]:
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a lighthouse at dusk"]], dtype=object))
    inputs = [prompt]
    for name in ("WIDTH", "HEIGHT"):
        value = httpclient.InferInput(name, [1, 1], "INT64")
        value.set_data_from_numpy(np.array([[size]], dtype=np.int64))
        inputs.append(value)
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    body, json_size = _get_inference_request(inputs, "", out, 0, False, False, 0, None, None)
    return body, {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}


async def run_case(url: str, case: str, size: int, n: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        if case == "kserve":
            body, headers = kserve_body(size)
            for _ in range(n):
                (await client.post("/v2/models/remote/infer", content=body, headers=headers)).raise_for_status()
            return
        payload = {"model": "remote", "prompt": "a lighthouse at dusk", "size": f"{size}x{size}"}
        payload["response_format"] = "b64_json"
        if case == "webp":
            payload["output_format"] = "webp"
        for _ in range(n):
            (await client.post("/v1/images/generations", json=payload)).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--baseline", type=Path, help="another checkout whose gateway runs beside this one")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hosted-"))
    upstream = HostedUpstream(tmp)
    env = {"HOSTED_URL": upstream.url, "HOSTED_KEY": "sk-test"}
    gateways: dict[str, GatewayProcess] = {}
    try:
        for name, code in [("gateway", ROOT), *([("baseline", args.baseline.resolve())] if args.baseline else [])]:
            directory = tmp / name / "config"
            directory.mkdir(parents=True)
            (directory / "routes.yaml").write_text(ROUTES)
            routes, log = directory / "routes.yaml", tmp / f"{name}.log"
            code_env = {**env, "PYTHONPATH": str(code)}
            gateways[name] = GatewayProcess(routes, "http://127.0.0.1:9", log, env=code_env, cwd=code)
        cases = ["png", "webp", "kserve"]
        cpu: dict[tuple[str, str], list[float]] = {(g, c): [] for g in gateways for c in cases}
        for gw in gateways.values():  # warm-up: connections, encoders, estimates
            for case in cases:
                asyncio.run(run_case(gw.url, case, args.size, 20))
        for _ in range(args.rounds):
            for case in cases:
                for name, gw in gateways.items():
                    before = cpu_seconds(gw.process.pid)
                    asyncio.run(run_case(gw.url, case, args.size, args.per_round))
                    cpu[(name, case)].append((cpu_seconds(gw.process.pid) - before) / args.per_round * 1000)
        print(f"image {args.size}x{args.size} PNG from the upstream; gateway CPU per request (ms), median of rounds")
        print("| case | " + " | ".join(gateways) + (" | gateway / baseline |" if args.baseline else " |"))
        print("|---|" + "---|" * (len(gateways) + (1 if args.baseline else 0)))
        for case in cases:
            medians = [float(np.median(cpu[(g, case)])) for g in gateways]
            row = f"| {case} | " + " | ".join(f"{m:.2f}" for m in medians)
            print(row + (f" | {medians[0] / medians[1]:.2f}x |" if args.baseline else " |"))
        ratio = np.median(cpu[("gateway", "png")]) / np.median(cpu[("gateway", "webp")])
        print(f"png vs webp (this gateway): {ratio:.2f}x")
    finally:
        for gw in gateways.values():
            gw.stop()
        upstream.stop()
        os.sync()


if __name__ == "__main__":
    main()
