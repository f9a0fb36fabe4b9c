"""Gateway overhead: the same `noop` requests direct to Triton and through the gateway.

Starts a real Triton (noop only) and a real gateway (`router serve`), sends identical
KServe v2 binary requests (what `tritonclient.http` sends) to both, at 1 and at 32
concurrent clients, and prints the added p50/p99 latency and the gateway's CPU time
per request (from /proc/<pid>/stat, user + system).

    .venv/bin/python bench/overhead.py [--requests 2000] [--tracing]

Metrics and the access log are always on (as in production); ``--tracing`` adds an
OpenTelemetry span per request and per attempt, exported over OTLP/HTTP to a local
sink.

Client, gateway and Triton share this machine's cores: at 32 clients the client's own
CPU competes with the gateway, so the added latency there is an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as httpclient
from tritonclient.http._utils import _get_inference_request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402

from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402

ROUTES = """
backends: {triton: {url: "${TRITON_URL}"}}
models:
  noop: {backend: triton, triton_model: noop, latency_hint_ms: 10}
default_route: {model: noop, budget_ms: 5000}
"""


def request_body() -> tuple[bytes, dict[str, str]]:
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a red fox in the snow"]], dtype=object))
    seed = httpclient.InferInput("SEED", [1, 1], "INT64")
    seed.set_data_from_numpy(np.array([[7]], dtype=np.int64))
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    body, json_size = _get_inference_request([prompt, seed], "", out, 0, False, False, 0, None, None)
    return body, {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts every export (the collector's cost is not ours)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def write_routes(tmp: Path) -> Path:
    """``ROUTES`` in a directory of its own under ``tmp``: the gateway watches that
    directory, and logs written beside the file would wake its watcher."""
    routes = tmp / "config" / "routes.yaml"
    routes.parent.mkdir()
    routes.write_text(ROUTES)
    return routes


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, concurrency: int, total: int) -> list[float]:
    body, headers = request_body()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        for _ in range(50):  # warm-up: connections, caches, estimates
            (await client.post("/v2/models/noop/infer", content=body, headers=headers)).raise_for_status()
        queue = list(range(total))

        async def worker() -> None:
            while queue:
                queue.pop()
                t0 = time.perf_counter()
                r = await client.post("/v2/models/noop/infer", content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tracing", action="store_true", help="also trace every request (OTLP to a local sink)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    routes = write_routes(tmp)
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready()
    env = {}
    if args.tracing:  # spans exported over OTLP/HTTP to a local sink that accepts everything
        sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}"}
    gateway = GatewayProcess(routes, triton.http_url, tmp / "gateway.log", env=env)
    try:
        columns = ["clients", "direct p50", "direct p99", "gateway p50", "gateway p99", "added p50", "added p99"]
        print("| " + " | ".join([*columns, "gateway CPU/req"]) + " |")
        print("|---|---|---|---|---|---|---|---|")
        for concurrency in (1, 32):
            direct = asyncio.run(measure(triton.http_url, concurrency, args.requests))
            before = cpu_seconds(gateway.process.pid)
            via = asyncio.run(measure(gateway.url, concurrency, args.requests))
            cpu = (cpu_seconds(gateway.process.pid) - before) / (args.requests + 50)
            print(
                f"| {concurrency} | {pct(direct, 0.5):.2f} ms | {pct(direct, 0.99):.2f} ms | {pct(via, 0.5):.2f} ms | "
                f"{pct(via, 0.99):.2f} ms | {pct(via, 0.5) - pct(direct, 0.5):+.2f} ms | "
                f"{pct(via, 0.99) - pct(direct, 0.99):+.2f} ms | {cpu * 1000:.3f} ms |"
            )
        print(f"\n{args.requests} requests per cell, after 50 warm-up requests per cell.")
    finally:
        gateway.stop()
        triton.stop()


if __name__ == "__main__":
    main()
