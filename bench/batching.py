"""What batching pays on this hardware, straight against a real Triton.

An operator needs these numbers before turning ``batch_rows`` (or any batching) on for
a GPU: per model, the call latency and images per second at b = 1, 2, 4, 8 rows in one
pipeline pass, the knee (the smallest b with at least 85% of the best throughput), the
model process's peak memory, and which batch sizes give the same bytes as batch 1.
Ratios come from one run with the batch sizes interleaved round by round, so a shared
machine's load shifts every b alike.

It starts the project's Triton (as bench/models.py does) on a copy of model_repository/
in which each measured model has ``batch_rows`` = the largest b, so a request with b
rows runs as one pass of b. It also measures the head-of-line effect the shipped
configs had: ``--concurrent`` one-image draft requests sent at once to draft as shipped
(no dynamic batcher) and to a copy with the old ``dynamic_batching`` block, with
Triton's own count of executions.

    .venv/bin/python bench/batching.py [--models draft,preview,quality] [--rounds 3]
        [--batches 1,2,4,8] [--concurrent 8] [--hol-rounds 3] [--json out.json]

Peak memory is the model process's resident high-water mark (``VmHWM``) after its
batch size's first call, b ascending, so it is the peak up to that b; on a GPU host the
memory ``nvidia-smi`` reports for the process is printed beside it (the caching
allocator keeps its peak reserved).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_router.triton import TritonConfig, TritonServer  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk"
SEED = 1234
KNEE_SHARE = 0.85
# What the shipped configs had until issue 34 (bench/triton_stall.py's "plain").
OLD_BLOCK = "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}\n"
QUEUED = "draft_dynbatch"


def repository(models: list[str], rows: int, into: Path) -> Path:
    """Copies of ``models`` with ``batch_rows`` = ``rows``, and draft with the old block."""
    for model in models:
        shutil.copytree(ROOT / "model_repository" / model, into / model)
        config = into / model / "config.pbtxt"
        text, count = re.subn(r'(key: "batch_rows", value: \{ string_value: )"\d+"', rf'\1"{rows}"', config.read_text())
        assert count == 1, f"no batch_rows parameter in {config}"
        # room for a request of ``rows`` rows (the shipped caps are 8 / 4 / 2)
        text = re.sub(r"^max_batch_size: (\d+)", lambda m: f"max_batch_size: {max(int(m[1]), rows)}", text, flags=re.M)
        config.write_text(text)
    shutil.copytree(ROOT / "model_repository" / "draft", into / QUEUED)
    config = into / QUEUED / "config.pbtxt"
    text = config.read_text().replace('name: "draft"', f'name: "{QUEUED}"')
    assert "dynamic_batching" not in text.replace("# No dynamic_batching", ""), "draft already has a batcher"
    config.write_text(text + "\n" + OLD_BLOCK)
    return into


def row_text(i: int) -> str:
    return PROMPT if i == 0 else f"{PROMPT} #{i}"


def call(url: str, model: str, rows: int, start: int = 0) -> tuple[float, NDArray[Any]]:
    """One request of rows ``start .. start + rows - 1`` (row i: the prompt tagged i,
    seed SEED + i): the seconds it took and its images."""
    client = httpclient.InferenceServerClient(url, network_timeout=600)
    prompt = httpclient.InferInput("PROMPT", [rows, 1], "BYTES")
    texts = [row_text(i) for i in range(start, start + rows)]
    prompt.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    seed = httpclient.InferInput("SEED", [rows, 1], "INT64")
    seed.set_data_from_numpy(np.arange(SEED + start, SEED + start + rows, dtype=np.int64).reshape(rows, 1))
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    t0 = time.perf_counter()
    result = client.infer(model, [prompt, seed], outputs=out)
    elapsed = time.perf_counter() - t0
    client.close()
    images = result.as_numpy("IMAGE")
    assert images is not None and images.shape[0] == rows
    return elapsed, images


def model_pids(model: str) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"triton_python_backend_stub.*/{model}/"], capture_output=True, text=True
    ).stdout.split()
    return [int(pid) for pid in found]


def peak_mib(model: str) -> float:
    """The resident high-water mark of the model's process(es), MiB."""
    total = 0
    for pid in model_pids(model):
        status = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) if match else 0
    return total / 1024


def gpu_mib(model: str) -> float | None:
    """GPU memory ``nvidia-smi`` reports for the model's process(es); None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    rows = subprocess.run(query, capture_output=True, text=True).stdout.splitlines()
    pids = set(model_pids(model))
    used = [float(r.split(",")[1]) for r in rows if r.strip() and int(r.split(",")[0]) in pids]
    return sum(used) if used else 0.0


def difference(a: NDArray[Any], b: NDArray[Any]) -> tuple[int, int]:
    """(max |a - b| in levels, how many values differ)."""
    delta = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(delta.max()), int(np.count_nonzero(delta))


def measure_model(url: str, model: str, batches: list[int], rounds: int, warmup: int) -> dict[str, Any]:
    """Interleaved rounds of one call per batch size (rotated each round)."""
    times: dict[int, list[float]] = {b: [] for b in batches}
    memory: dict[int, float] = {}
    gpu: dict[int, float | None] = {}
    first: dict[int, NDArray[Any]] = {}
    repeat_same: dict[int, bool] = {b: True for b in batches}
    for r in range(warmup + rounds):
        order = batches[r % len(batches) :] + batches[: r % len(batches)] if r >= warmup else batches
        for b in order:
            elapsed, images = call(url, model, b)
            if b not in first:  # first call of this b, b ascending: the peak so far
                first[b] = images
                memory[b], gpu[b] = peak_mib(model), gpu_mib(model)
            else:
                repeat_same[b] &= images.tobytes() == first[b].tobytes()
            if r >= warmup:
                times[b].append(elapsed)
    # every row alone (batch 1): what each row of a batched call is compared with
    alone = [first[1][0] if i == 0 and 1 in first else call(url, model, 1, i)[1][0] for i in range(max(batches))]
    base = alone[0]
    rows: list[dict[str, Any]] = []
    for b in batches:
        t = median(times[b])
        top, count = difference(first[b][0], base)
        per_row = [difference(first[b][i], alone[i]) for i in range(b)]
        rows.append(
            {
                "b": b,
                "call_ms": 1000 * t,
                "images_per_s": b / t,
                "peak_rss_mib": memory[b],
                "gpu_mib": gpu[b],
                "row0_vs_b1": {"identical": top == 0, "max_delta": top, "values_differ": count},
                "rows_vs_alone": {
                    "identical": sum(d[0] == 0 for d in per_row),
                    "of": b,
                    "max_delta": max(d[0] for d in per_row),
                    "most_values_differ": max(d[1] for d in per_row),
                    "values_per_image": int(base.size),
                },
                "same_bytes_every_round": repeat_same[b],
                "row0_sha": hashlib.sha256(first[b][0].tobytes()).hexdigest()[:12],
            }
        )
    t1 = rows[0]["call_ms"]
    for row in rows:
        row["throughput_x"] = row["images_per_s"] / rows[0]["images_per_s"]
        row["latency_x"] = row["call_ms"] / t1
    best = max(row["images_per_s"] for row in rows)
    knee = next(row["b"] for row in rows if row["images_per_s"] >= KNEE_SHARE * best)
    slope, intercept = np.polyfit([row["b"] for row in rows], [row["call_ms"] for row in rows], 1)
    classes: dict[str, list[int]] = {}
    for row in rows:
        classes.setdefault(row["row0_sha"], []).append(row["b"])
    return {
        "model": model,
        "rounds": rounds,
        "rows": rows,
        "knee": knee,
        "fit_ms": {"a": float(intercept), "c": float(slope)},
        "max_gain_x": float((intercept + slope) / slope) if slope > 0 else None,
        "invariance_classes": sorted(classes.values()),
    }


def stats(url: str, model: str) -> tuple[int, int]:
    """Triton's (execution_count, inference_count) for ``model``: executions vs rows."""
    client = httpclient.InferenceServerClient(url)
    entry = client.get_inference_statistics(model)["model_stats"][0]
    client.close()
    return int(entry["execution_count"]), int(entry["inference_count"])


def burst(url: str, model: str, concurrent: int) -> dict[str, Any]:
    """``concurrent`` one-image requests released together; each one's latency (sorted)
    and how many executions Triton ran for them."""
    gate = threading.Barrier(concurrent)

    def one(i: int) -> float:
        client = httpclient.InferenceServerClient(url, network_timeout=600)
        prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[f"{PROMPT} {i}".encode()]], dtype=object))
        seed = httpclient.InferInput("SEED", [1, 1], "INT64")
        seed.set_data_from_numpy(np.array([[i]], dtype=np.int64))
        gate.wait()
        t0 = time.perf_counter()
        client.infer(model, [prompt, seed])
        elapsed = time.perf_counter() - t0
        client.close()
        return elapsed

    before = stats(url, model)
    with ThreadPoolExecutor(concurrent) as pool:
        latencies = sorted(pool.map(one, range(concurrent)))
    time.sleep(0.5)  # Triton records an execution's statistics just after its answers leave
    after = stats(url, model)
    return {"latency_ms": [round(1000 * s, 1) for s in latencies], "executions": after[0] - before[0]}


def head_of_line(url: str, concurrent: int, rounds: int) -> dict[str, Any]:
    call(url, "draft", 1)
    call(url, QUEUED, 1)
    solo = [1000 * call(url, "draft", 1)[0] for _ in range(5)]
    out: dict[str, Any] = {"solo_ms": round(median(solo), 1), "before": [], "after": []}
    for _ in range(rounds):  # interleaved: the machine's load shifts both alike
        out["before"].append(burst(url, QUEUED, concurrent))
        out["after"].append(burst(url, "draft", concurrent))
    return out


def report(results: list[dict[str, Any]], hol: dict[str, Any] | None, concurrent: int) -> None:
    for res in results:
        print(f"\n### {res['model']} ({res['rounds']} rounds, median call)\n")
        print(
            "| b | call | images/s | throughput vs b=1 | call latency vs b=1 | peak RSS | rows byte-identical "
            "to each row alone | same bytes each round |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for row in res["rows"]:
            ident = row["rows_vs_alone"]
            same = f"{ident['identical']} of {ident['of']}"
            if ident["identical"] < ident["of"]:
                same += f" (max Δ {ident['max_delta']}, ≤ {ident['most_values_differ']} of {ident['values_per_image']})"
            gpu = f" (GPU {row['gpu_mib']:.0f} MiB)" if row["gpu_mib"] is not None else ""
            print(
                f"| {row['b']} | {row['call_ms']:.1f} ms | {row['images_per_s']:.2f} | {row['throughput_x']:.2f}x | "
                f"{row['latency_x']:.2f}x | {row['peak_rss_mib']:.0f} MiB{gpu} | {same} | "
                f"{'yes' if row['same_bytes_every_round'] else 'NO'} |"
            )
        fit = res["fit_ms"]
        gain = f"{res['max_gain_x']:.2f}x" if res["max_gain_x"] else "n/a"
        print(
            f"\nknee (smallest b with ≥ {KNEE_SHARE:.0%} of the best images/s): b = {res['knee']}; "
            f"T(b) ≈ {fit['a']:.1f} + {fit['c']:.1f}·b ms (most batching can give: {gain}); "
            f"row-0 invariance classes: {res['invariance_classes']}"
        )
    if hol is not None:
        print(f"\n### head-of-line: {concurrent} one-image draft requests at once (solo: {hol['solo_ms']} ms)\n")
        print("| config | round | executions | latencies, sorted (ms) |")
        print("|---|---|---|---|")
        for label, key in (("old: dynamic_batching block", "before"), ("shipped: default scheduler", "after")):
            for i, run in enumerate(hol[key]):
                print(f"| {label} | {i + 1} | {run['executions']} | {', '.join(map(str, run['latency_ms']))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="draft,preview,quality")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--hol-rounds", type=int, default=3, help="0: skip the head-of-line measurement")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    batches = sorted(int(b) for b in args.batches.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    repo = repository(models if "draft" in models else [*models, "draft"], max(batches), work / "models")
    log = open(work / "triton.log", "wb")  # noqa: SIM115
    server = TritonServer(TritonConfig(repo), log)
    started = time.perf_counter()
    server.start()
    server.wait_ready()
    print(f"Triton ready in {time.perf_counter() - started:.0f} s (log: {work / 'triton.log'})", file=sys.stderr)
    url = server.http_url.removeprefix("http://")
    try:
        hol = head_of_line(url, args.concurrent, args.hol_rounds) if args.hol_rounds else None
        results = []
        for model in models:
            t0 = time.perf_counter()
            results.append(measure_model(url, model, batches, args.rounds, args.warmup))
            print(f"{model}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        report(results, hol, args.concurrent)
        if args.json:
            args.json.write_text(json.dumps({"models": results, "head_of_line": hol}, indent=1))
    finally:
        server.stop()
        log.close()


if __name__ == "__main__":
    main()
