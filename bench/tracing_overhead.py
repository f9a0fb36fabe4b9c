"""Tracing's CPU cost, measured robustly on a noisy machine: A/B rounds, interleaved.

One real Triton (noop) and two real gateways side by side — one with tracing off, one
with every request traced and exported over OTLP/HTTP to a local sink — then rounds of
``--per-round`` requests alternating between them. Host noise hits both alike, so the
ratio of their CPU per request is stable where absolute figures are not.

    .venv/bin/python bench/tracing_overhead.py [--rounds 8] [--per-round 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import ROUTES, _Sink, cpu_seconds, measure  # noqa: E402

from router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import GatewayProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=500)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    routes = tmp / "routes.yaml"
    routes.write_text(ROUTES)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    triton = TritonServer(TritonConfig(ROOT / "model_repository", ["noop"]), open(tmp / "triton.log", "wb"))  # noqa: SIM115
    triton.start()
    triton.wait_ready()
    traced_env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}"}
    plain = GatewayProcess(routes, triton.http_url, tmp / "plain.log")
    traced = GatewayProcess(routes, triton.http_url, tmp / "traced.log", env=traced_env)
    cost: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(args.rounds):
            for label, gateway in (("off", plain), ("on", traced)):
                before = cpu_seconds(gateway.process.pid)
                asyncio.run(measure(gateway.url, 1, args.per_round))
                cost[label].append((cpu_seconds(gateway.process.pid) - before) / (args.per_round + 50))
        off, on = statistics.median(cost["off"]), statistics.median(cost["on"])
        ratios = [b / a for a, b in zip(cost["off"], cost["on"], strict=True)]
        print(f"gateway CPU per request, median of {args.rounds} interleaved rounds of {args.per_round}:")
        print(f"  tracing off: {off * 1000:.3f} ms   tracing on (100%, OTLP): {on * 1000:.3f} ms")
        print(f"  on/off per round: {', '.join(f'{r:.2f}' for r in ratios)}  median {statistics.median(ratios):.2f}")
    finally:
        plain.stop()
        traced.stop()
        triton.stop()


if __name__ == "__main__":
    main()
