"""Does routing pay? One seeded open-loop trace with bursts, replayed in three modes.

Starts one real Triton with all four tiers (the project's model_repository/), builds a
deterministic trace — a prompt mix (thumbnails/sketches, photos, other, intents) with
Zipf-repeated subjects, Poisson arrivals, and bursts of photos at about 3x the quality
tier's capacity — and replays it, open loop (every request is sent at its time,
whatever is still in flight), in each mode on the same Triton:

  A  straight to Triton: the client picks the tier the rules would pick and waits;
  B  static fallback, as common gateways do it: each tier of the route's chain gets a
     fixed timeout (the route's budget less the later tiers' latency hints), then
     the next tier; an abandoned request is simply dropped by the client;
  C  the gateway (`router serve`) with the shipped routes.yaml, KServe v2 model `auto`,
     its `cache` blocks taken out: routing and budgets alone, comparable with the runs
     before the cache (every request here carries its own random seed, so a cache
     would have nothing to hit; a mode D with seedless, repeating traffic is to come).
  J  mode C with a steady backlog of async jobs at the quality tier beside the trace
     (``--jobs`` submitted before it starts, more than can finish): does the backlog
     cost the interactive requests anything, and do the jobs still get their
     ``min_share`` of the tier (issue 32)? Alternate it with C (``--modes C,J,C,J``).
  S  mode C with a steady background of one-image draft jobs (``--background``
     queued before the trace, more than can finish), each computed alone.
  K  mode S with the same jobs sent to ``draft-bulk``: the same Triton model, whose job
     tier has ``batch_rows: 8``, so queued jobs share passes (issue 34). Background
     images per second K vs S is what batching pays; the interactive classes' share
     within budget is what it costs. Alternate them (``--modes S,K,S,K``).

Per mode and class it reports p50/p95/p99 of the answered requests, the share answered
within budget + 50 ms (of all sent), the share served at the intended tier, goodput
(images per second within budget), Triton compute seconds per image delivered in time
(work spent on abandoned requests counts), and 4xx/5xx counts; it writes a latency CDF
and a tier-mix-over-time plot. Between modes it waits until Triton is idle.

**What an image delivered costs**, per mode and per tier: every mode's Triton compute
(each model's, from its statistics, abandoned work included) priced at
``--gpu-hour-price`` (one GPU per tier), divided by the images that tier delivered in
budget — the price of an image a user got, waste and all. The gateway modes run with a
``billing:`` block at that price, so their answers carry ``usage``: the sum of
``X-Router-Usage`` cost (what the gateway billed) beside Triton's cost shows how much of
the compute was billed and how much was wasted (abandoned, hedged, timed out). Plotted
as ``scenario-cost.png``.

    .venv/bin/python bench/scenario.py [--duration 60] [--seed 7] [--modes A,B,C] \
        [--json bench/results/scenario.json] [--plots docs] [--jobs 40] [--gpu-hour-price 2.40]

Results and the exact command are in docs/scenario.md. This machine is shared and
noisy: compare the modes *of one run*, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.http as httpclient
import yaml
from tritonclient.http._utils import _get_inference_request

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import pct  # noqa: E402

from image_router.config import compile_text  # noqa: E402
from image_router.config.table import RoutingTable  # noqa: E402
from image_router.policy.budget import chain_for  # noqa: E402
from image_router.policy.match import RequestFacts, select_route  # noqa: E402
from image_router.triton import TritonConfig, TritonServer  # noqa: E402
from tests.procs import MODEL_REPOSITORY, GatewayProcess  # noqa: E402

SLACK_S = 0.05  # "within budget" means within budget + 50 ms
SUBJECTS = [
    "a lighthouse", "a red fox", "a mountain lake", "an old tram", "a city at night", "a bowl of ramen",
    "a tabby cat", "a sailing boat", "a desert road", "a glass of wine", "a snowy forest", "a vintage car",
    "a coffee cup", "a parrot", "a wooden cabin", "a bridge in fog", "a market stall", "a sunflower field",
]  # fmt: skip
CLASSES = {  # class -> (prompt template, intent, share of the base traffic)
    "thumbnail": ("a thumbnail of {}", None, 0.40),
    "photo": ("a photo of {}", None, 0.25),
    "other": ("{} in watercolour", None, 0.25),
    "intent:quality": ("{}, detailed", "quality", 0.05),
    "intent:draft": ("{}, quick look", "draft", 0.05),
}


@dataclass(frozen=True)
class Job:
    at: float
    cls: str
    prompt: str
    intent: str | None
    seed: int
    route: str
    budget_s: float
    chain: tuple[str, ...]  # intended tier first


@dataclass
class Outcome:
    job: Job
    status: int
    latency_s: float
    served: str | None  # the tier that produced the image
    billed: float = 0.0  # the answer's usage cost (gateway modes with billing)


@dataclass
class ModeResult:
    mode: str
    outcomes: list[Outcome] = field(default_factory=list)
    compute_s: float = 0.0
    wall_s: float = 0.0
    compute_by_model: dict[str, float] = field(default_factory=dict)
    background: dict[str, int] = field(default_factory=dict)  # images jobs delivered, per tier (mode J)


def make_trace(table: RoutingTable, duration_s: float, seed: int, base_rate: float, bursts: int) -> list[Job]:
    """Poisson arrivals of the class mix, plus ``bursts`` windows of extra photos."""
    rng = random.Random(seed)
    zipf = [1 / (k + 1) for k in range(len(SUBJECTS))]
    names, shares = list(CLASSES), [c[2] for c in CLASSES.values()]
    arrivals: list[tuple[float, str]] = []
    t = rng.expovariate(base_rate)
    while t < duration_s:
        arrivals.append((t, rng.choices(names, shares)[0]))
        t += rng.expovariate(base_rate)
    quality = table.models["quality"].latency_hint_ms / 1000
    burst_len = duration_s / (2 * bursts + 1)
    for b in range(bursts):
        start = (2 * b + 1) * burst_len
        t = start + rng.expovariate(3 / quality)
        while t < start + burst_len:  # photos at 3x what one quality instance can serve
            arrivals.append((t, "photo"))
            t += rng.expovariate(3 / quality)
    jobs = []
    for at, cls in sorted(arrivals):
        template, intent, _ = CLASSES[cls]
        prompt = template.format(rng.choices(SUBJECTS, zipf)[0])
        route = select_route(table, RequestFacts(prompt, intent=intent))
        chain = chain_for(route.arms[0].model, route.fallback)
        jobs.append(Job(at, cls, prompt, intent, rng.randrange(1 << 31), route.name, route.budget_ms / 1000, chain))
    return jobs


def kserve_body(job: Job, gateway: bool) -> tuple[bytes, dict[str, str]]:
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[job.prompt.encode()]], dtype=object))
    seed = httpclient.InferInput("SEED", [1, 1], "INT64")
    seed.set_data_from_numpy(np.array([[job.seed]], dtype=np.int64))
    out = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    params = {"intent": job.intent} if gateway and job.intent else None
    body, json_size = _get_inference_request([prompt, seed], "", out, 0, False, False, 0, None, params)
    return body, {"Inference-Header-Content-Length": str(json_size), "Content-Type": "application/octet-stream"}


async def direct(client: httpx.AsyncClient, triton: str, job: Job) -> Outcome:
    """Mode A: the intended tier, straight to Triton, waiting as long as it takes."""
    body, headers = kserve_body(job, gateway=False)
    t0 = time.monotonic()
    r = await client.post(f"{triton}/v2/models/{job.chain[0]}/infer", content=body, headers=headers, timeout=600)
    return Outcome(job, r.status_code, time.monotonic() - t0, job.chain[0] if r.status_code == 200 else None)


async def static_fallback(client: httpx.AsyncClient, triton: str, job: Job, hints: dict[str, float]) -> Outcome:
    """Mode B: each tier a fixed timeout (budget less the later tiers' hints), then the next."""
    body, headers = kserve_body(job, gateway=False)
    t0 = time.monotonic()
    status = 504
    for i, tier in enumerate(job.chain):
        later = sum(hints[m] for m in job.chain[i + 1 :])
        timeout = job.budget_s - later if i == 0 else hints[tier]
        try:
            r = await client.post(f"{triton}/v2/models/{tier}/infer", content=body, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            continue
        status = r.status_code
        if status == 200:
            return Outcome(job, 200, time.monotonic() - t0, tier)
    return Outcome(job, status, time.monotonic() - t0, None)


async def gateway(client: httpx.AsyncClient, url: str, job: Job) -> Outcome:
    """Mode C: the gateway routes `auto` by the shipped rules."""
    body, headers = kserve_body(job, gateway=True)
    t0 = time.monotonic()
    r = await client.post(f"{url}/v2/models/auto/infer", content=body, headers=headers, timeout=600)
    served = r.headers.get("x-router-model", "").split("@")[0] or None
    ok = r.status_code == 200
    return Outcome(job, r.status_code, time.monotonic() - t0, served if ok else None, billed_cost(r.headers))


def billed_cost(headers: httpx.Headers) -> float:
    """``cost=`` of ``X-Router-Usage`` (an RFC 8941 dictionary), 0 without one."""
    for item in headers.get("x-router-usage", "").split(","):
        name, _, value = item.strip().partition("=")
        if name == "cost":
            return float(value)
    return 0.0


async def replay(jobs: list[Job], send: Any) -> list[Outcome]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(limits=limits) as client:
        t0 = time.monotonic()

        async def fire(job: Job) -> Outcome:
            await asyncio.sleep(max(0.0, t0 + job.at - time.monotonic()))
            try:
                return await send(client, job)  # type: ignore[no-any-return]
            except httpx.HTTPError:
                return Outcome(job, 599, time.monotonic() - t0 - job.at, None)

        return list(await asyncio.gather(*(fire(j) for j in jobs)))


JOB_SHARE = 0.2  # the quality tier's min_share for jobs in modes C and J (the docs' example)
BULK_ROWS = 8  # mode K's batch_rows (bench/batching.py: draft's best images/s on this CPU)


def without_cache(routes_text: str, gpu_hour_price: float) -> str:
    """The routes with every ``cache`` block taken out (the top-level store, routes'
    opt-ins): mode C measures routing and budgets, not the cache. A ``jobs:`` block is
    added (idle in mode C: no job is submitted), so C and J run the same gateway, and a
    ``billing:`` block pricing every tier's compute at ``gpu_hour_price`` (one GPU)."""
    data = yaml.safe_load(routes_text)
    data.pop("cache", None)
    data["jobs"] = {
        "max_queued_per_tenant": 10000,
        "tiers": {
            "quality": {"max_running": 1, "min_share": JOB_SHARE},
            # modes S and K: one Triton model, two job tiers that differ in batching only
            "draft": {"max_running": BULK_ROWS, "min_share": JOB_SHARE},
            "draft-bulk": {"max_running": BULK_ROWS, "min_share": JOB_SHARE, "batch_rows": BULK_ROWS},
        },
    }
    data["models"]["draft-bulk"] = {**data["models"]["draft"], "triton_model": "draft"}
    data["billing"] = {"currency": "USD", "gpu_hour_price": gpu_hour_price}
    for model in data.get("models", {}).values():
        model["price"] = {"gpus": 1.0, "per_image": 0.0}
    for route in [*data.get("routes", []), data.get("default_route")]:
        if isinstance(route, dict):
            route.pop("cache", None)
    return str(yaml.safe_dump(data, sort_keys=False))


@dataclass
class JobsResult:
    submitted: int = 0
    completed: int = 0  # finished while the trace ran
    service_s: float = 0.0  # quality's mean compute per execution over the run
    share: float = 0.0  # completed * service_s / duration: the jobs' share of the tier


async def with_jobs(
    jobs: list[Job], send: Any, url: str, backlog: int, duration_s: float
) -> tuple[list[Outcome], JobsResult]:
    """Mode J: ``backlog`` quality jobs submitted, then the trace replayed beside them;
    the jobs that completed meanwhile counted, the rest deleted (their compute stops)."""
    body = {"prompt": "a detailed photo of a harbour at dawn", "quality": "high"}
    async with httpx.AsyncClient(timeout=60) as client:
        ids = []
        for i in range(backlog):
            r = await client.post(f"{url}/v1/images/jobs", json={**body, "seed": i})
            r.raise_for_status()
            ids.append(r.json()["id"])
        t0 = time.time()
        outcomes = await replay(jobs, send)
        t1 = t0 + duration_s
        done = 0
        for job_id in ids:
            job = (await client.get(f"{url}/v1/images/jobs/{job_id}")).json()
            finished = job.get("completed_at")
            if job["status"] == "completed" and finished is not None and finished <= t1 + 1:
                done += 1
            await client.delete(f"{url}/v1/images/jobs/{job_id}")
    return outcomes, JobsResult(submitted=backlog, completed=done)


@dataclass
class BackgroundResult:
    model: str
    submitted: int = 0
    completed: int = 0  # finished while the trace ran
    images_per_s: float = 0.0


def background_body(model: str, i: int) -> dict[str, Any]:
    return {"prompt": f"a harbour crane, study {i}", "model": model, "size": "64x64", "seed": i}


async def with_background(
    jobs: list[Job], send: Any, url: str, model: str, backlog: int, duration_s: float, admin: dict[str, str]
) -> tuple[list[Outcome], BackgroundResult]:
    """Modes S and K: ``backlog`` one-image draft jobs on ``model``'s job tier, then the
    trace beside them; the jobs completed while it ran counted (their ``completed_at``),
    the rest removed once the cluster is paused (their compute stops)."""
    async with httpx.AsyncClient(timeout=60) as client:
        ids: list[str] = []
        for start in range(0, backlog, 50):
            batch = [
                client.post(f"{url}/v1/images/jobs", json=background_body(model, i))
                for i in range(start, min(backlog, start + 50))
            ]
            for r in await asyncio.gather(*batch):
                r.raise_for_status()
                ids.append(r.json()["id"])
        t0 = time.time()
        outcomes = await replay(jobs, send)
        t1 = t0 + duration_s
        (await client.post(f"{url}/admin/jobs/drain?scope=cluster", headers=admin)).raise_for_status()
        done = 0
        for start in range(0, len(ids), 50):
            views = await asyncio.gather(*(client.get(f"{url}/v1/images/jobs/{i}") for i in ids[start : start + 50]))
            for view in views:
                job = view.json()
                finished = job.get("completed_at")
                done += job["status"] == "completed" and finished is not None and t0 <= finished <= t1 + 1
            await asyncio.gather(*(client.delete(f"{url}/v1/images/jobs/{i}") for i in ids[start : start + 50]))
        (await client.post(f"{url}/admin/jobs/resume?scope=cluster", headers=admin)).raise_for_status()
    return outcomes, BackgroundResult(model, backlog, done, done / duration_s)


def quality_service_s(triton: str) -> float:
    """The quality model's mean compute per execution so far (Triton's statistics)."""
    stats = httpx.get(f"{triton}/v2/models/quality/stats", timeout=30).json()["model_stats"]
    n = sum(m["execution_count"] for m in stats)
    ns = sum(m["inference_stats"][k]["ns"] for m in stats for k in ("compute_input", "compute_infer", "compute_output"))
    return ns / 1e9 / max(1, n)


def compute_seconds(triton: str) -> dict[str, float]:
    """Triton's cumulative compute time per model (input + infer + output)."""
    stats = httpx.get(f"{triton}/v2/models/stats", timeout=30).json()["model_stats"]
    keys = ("compute_input", "compute_infer", "compute_output")
    out: dict[str, float] = {}
    for m in stats:
        out[m["name"]] = out.get(m["name"], 0.0) + sum(m["inference_stats"][k]["ns"] for k in keys) / 1e9
    return out


def since(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {name: s - before.get(name, 0.0) for name, s in after.items()}


def wait_idle(triton: str, quiet_s: float = 3.0, limit_s: float = 900.0) -> None:
    """Until Triton's execution counts stop moving (mode A leaves a long backlog)."""
    deadline, last, since = time.monotonic() + limit_s, None, time.monotonic()
    while time.monotonic() < deadline:
        stats = httpx.get(f"{triton}/v2/models/stats", timeout=30).json()["model_stats"]
        counts = [m["execution_count"] for m in stats]
        if counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


def summarize(result: ModeResult, duration_s: float, price_per_s: float) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Outcome]] = {"all": result.outcomes}
    for o in result.outcomes:
        groups.setdefault(o.job.cls, []).append(o)
    for cls, outs in groups.items():
        ok = [o for o in outs if o.status == 200]
        in_time = [o for o in ok if o.latency_s <= o.job.budget_s + SLACK_S]
        lat = [o.latency_s for o in ok]
        rows[cls] = {
            "sent": len(outs),
            "p50_ms": pct(lat, 0.5) if lat else None,
            "p95_ms": pct(lat, 0.95) if lat else None,
            "p99_ms": pct(lat, 0.99) if lat else None,
            "within_budget": len(in_time) / len(outs),
            "intended_tier": sum(1 for o in ok if o.served == o.job.chain[0]) / len(outs),
            "goodput_per_s": len(in_time) / duration_s,
            "4xx": sum(1 for o in outs if 400 <= o.status < 500),
            "5xx": sum(1 for o in outs if o.status >= 500),
        }
    delivered = round(rows["all"]["within_budget"] * rows["all"]["sent"])
    rows["all"]["compute_s_per_image"] = result.compute_s / max(1, delivered)
    rows["all"]["compute_s"] = result.compute_s
    rate = price_per_s
    rows["all"]["cost"] = result.compute_s * rate
    jobs_delivered = sum(result.background.values())  # mode J: the jobs' images, beside the trace's
    rows["all"]["cost_per_image"] = result.compute_s * rate / max(1, delivered + jobs_delivered)
    rows["all"]["billed"] = sum(o.billed for o in result.outcomes)
    in_time_by_tier: dict[str, int] = dict(result.background)  # a job's image is one delivered too
    for o in result.outcomes:
        if o.status == 200 and o.served and o.latency_s <= o.job.budget_s + SLACK_S:
            in_time_by_tier[o.served] = in_time_by_tier.get(o.served, 0) + 1
    rows["all"]["cost_per_image_by_tier"] = {
        tier: result.compute_by_model.get(tier, 0.0) * rate / n for tier, n in sorted(in_time_by_tier.items())
    }
    return rows


def table_md(summaries: dict[str, dict[str, dict[str, Any]]]) -> str:
    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:.0f}"

    lines = [
        "| mode | class | sent | p50 ms | p95 ms | p99 ms | within budget+50ms | intended tier | goodput img/s "
        "| 4xx | 5xx |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, rows in summaries.items():
        for cls, r in rows.items():
            lines.append(
                f"| {mode} | {cls} | {r['sent']} | {ms(r['p50_ms'])} | {ms(r['p95_ms'])} | {ms(r['p99_ms'])} | "
                f"{100 * r['within_budget']:.1f}% | {100 * r['intended_tier']:.1f}% | {r['goodput_per_s']:.2f} | "
                f"{r['4xx']} | {r['5xx']} |"
            )
    lines.append("")
    lines.append(
        "| mode | Triton compute s | compute s per image delivered in time | Triton cost $ | cost per image "
        "in time $ | billed by the gateway $ (share of Triton cost) | per tier, $ per image in time |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for mode, rows in summaries.items():
        a = rows["all"]
        billed = f"{a['billed']:.5f} ({100 * a['billed'] / a['cost']:.0f}%)" if a["billed"] and a["cost"] else "—"
        tiers = ", ".join(f"{t} {c:.6f}" for t, c in a["cost_per_image_by_tier"].items()) or "—"
        lines.append(f"| {mode} | {a['compute_s']:.1f} | {a['compute_s_per_image']:.2f} | {a['cost']:.5f} | "
                     f"{a['cost_per_image']:.6f} | {billed} | {tiers} |")  # fmt: skip
    return "\n".join(lines)


def plot(results: list[ModeResult], jobs: list[Job], duration_s: float, bursts: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"A": "A: straight to Triton", "B": "B: static fallback", "C": "C: gateway", "J": "J: gateway + jobs",
             "S": "S: gateway + draft jobs alone", "K": "K: gateway + draft jobs batched"}  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for res in results:
        lat = sorted(o.latency_s / o.job.budget_s if o.status == 200 else float("inf") for o in res.outcomes)
        ys = np.arange(1, len(lat) + 1) / len(lat)
        finite = [(x, y) for x, y in zip(lat, ys, strict=True) if x != float("inf")]
        ax.step([x for x, _ in finite], [y for _, y in finite], where="post", label=names[res.mode])
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("latency / the request's budget (log); refused requests never reach the top")
    ax.set_ylabel("share of requests answered")
    ax.set_title("Latency relative to budget, all classes")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "scenario-cdf.png", dpi=110)
    plt.close(fig)

    tiers = ["quality", "preview", "draft", "refused"]
    colors = {"quality": "#2b6cb0", "preview": "#68d391", "draft": "#f6ad55", "refused": "#e53e3e"}
    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.3 * len(results)), sharex=True)
    axes = np.atleast_1d(axes)
    bin_s = 2.0
    edges = np.arange(0, duration_s + bin_s, bin_s)
    burst_len = duration_s / (2 * bursts + 1)
    for ax, res in zip(axes, results, strict=True):
        counts = {t: np.zeros(len(edges) - 1) for t in tiers}
        for o in res.outcomes:
            late = o.status == 200 and o.latency_s > o.job.budget_s + SLACK_S
            tier = "refused" if o.status != 200 or late else (o.served or "refused")
            i = min(len(edges) - 2, int(o.job.at // bin_s))
            counts[tier if tier in counts else "refused"][i] += 1
        ax.stackplot(edges[:-1], *[counts[t] for t in tiers], labels=tiers, colors=[colors[t] for t in tiers],
                     step="post")  # fmt: skip
        for b in range(bursts):
            ax.axvspan((2 * b + 1) * burst_len, (2 * b + 2) * burst_len, color="grey", alpha=0.15)
        ax.set_ylabel("requests / 2 s")
        ax.set_title(names[res.mode] + " — what answered each request in time (red: refused or late)", fontsize=9)
    axes[0].legend(loc="upper left", fontsize=8, ncol=4)
    axes[-1].set_xlabel("arrival time (s); grey: photo bursts at 3x quality's capacity")
    fig.tight_layout()
    fig.savefig(out / "scenario-tiers.png", dpi=110)
    plt.close(fig)


def plot_cost(summaries: dict[str, dict[str, dict[str, Any]]], out: Path) -> None:
    """Bars: per mode, the cost of an image delivered in time by the tier that made it
    (its Triton compute, waste included, over its images in time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = ["draft", "preview", "quality"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / max(1, len(summaries))
    for i, (mode, rows) in enumerate(summaries.items()):
        by_tier = rows["all"]["cost_per_image_by_tier"]
        xs = [t + i * width for t in range(len(tiers))]
        ax.bar(xs, [1e3 * by_tier.get(t, 0.0) for t in tiers], width, label=mode)
    ax.set_xticks([t + width * (len(summaries) - 1) / 2 for t in range(len(tiers))], tiers)
    ax.set_ylabel("USD per 1,000 images delivered in time")
    ax.set_title("What an image delivered in budget costs, by the tier that made it")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scenario-cost.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=1.0, help="base arrivals per second")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--modes", default="A,B,C")
    parser.add_argument("--routes", type=Path, default=ROOT / "routes.yaml")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=None, help="directory for the PNG plots")
    parser.add_argument("--jobs", type=int, default=40, help="mode J: quality jobs queued before the trace")
    parser.add_argument("--background", type=int, default=2500, help="modes S, K: draft jobs queued before it")
    parser.add_argument("--gpu-hour-price", type=float, default=2.40, help="USD per GPU-hour, one GPU per tier")
    args = parser.parse_args()

    routes_text = args.routes.read_text()
    table = compile_text(routes_text, env={"TRITON_URL": "http://127.0.0.1:1"})
    jobs = make_trace(table, args.duration, args.seed, args.rate, args.bursts)
    hints = {name: m.latency_hint_ms / 1000 for name, m in table.models.items()}
    print(f"trace: {len(jobs)} requests over {args.duration:.0f} s, seed {args.seed}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="scenario-"))
    with open(work / "triton.log", "wb") as log:
        server = TritonServer(TritonConfig(MODEL_REPOSITORY, ["draft", "preview", "quality", "noop"]), log)
        server.start()
        try:
            server.wait_ready(300)
            triton = server.http_url
            routes = work / "routes.yaml"
            routes.write_text(without_cache(routes_text, args.gpu_hour_price))
            grpc = f"127.0.0.1:{server.config.grpc_port}"
            gw = GatewayProcess(routes, triton, work / "gateway.log", triton_grpc=grpc)
            results = []
            job_runs: list[JobsResult] = []
            background_runs: list[BackgroundResult] = []
            try:
                senders = {
                    "A": lambda c, j: direct(c, triton, j),
                    "B": lambda c, j: static_fallback(c, triton, j, hints),
                    "C": lambda c, j: gateway(c, gw.url, j),
                    "J": lambda c, j: gateway(c, gw.url, j),
                    "S": lambda c, j: gateway(c, gw.url, j),
                    "K": lambda c, j: gateway(c, gw.url, j),
                }
                for mode in args.modes.split(","):
                    wait_idle(triton)
                    before, t0 = compute_seconds(triton), time.monotonic()
                    if mode == "J":
                        outcomes, ran = asyncio.run(with_jobs(jobs, senders[mode], gw.url, args.jobs, args.duration))
                        ran.service_s = quality_service_s(triton)
                        ran.share = ran.completed * ran.service_s / args.duration
                        job_runs.append(ran)
                        print(f"mode J jobs: {asdict(ran)} (min_share {JOB_SHARE})", flush=True)
                    elif mode in ("S", "K"):
                        model = "draft" if mode == "S" else "draft-bulk"
                        send, count = senders[mode], args.background
                        run = with_background(jobs, send, gw.url, model, count, args.duration, gw.admin)
                        outcomes, bg = asyncio.run(run)
                        background_runs.append(bg)
                        print(f"mode {mode} background: {asdict(bg)}", flush=True)
                    else:
                        outcomes = asyncio.run(replay(jobs, senders[mode]))
                    wait_idle(triton)  # abandoned work is still the mode's compute
                    used = since(compute_seconds(triton), before)
                    result = ModeResult(mode, outcomes, sum(used.values()), time.monotonic() - t0, used)
                    if mode == "J":
                        result.background = {"quality": ran.completed}
                    if mode in ("S", "K"):
                        result.background = {"draft": bg.completed}
                    results.append(result)
                    print(f"mode {mode}: done in {result.wall_s:.0f} s", flush=True)
                    if mode == "C":  # what the gateway learned: per model, pending and service times
                        state = httpx.get(gw.url + "/admin/config", headers=gw.admin, timeout=10).json()
                        for replica in state["backends"]["triton"]:
                            print(f"gateway lanes after C: {json.dumps(replica['lanes'])}", flush=True)
            finally:
                gw.stop()
        finally:
            server.stop()

    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:  # alternating rounds: C, J, C2, J2, ...
        name = r.mode if r.mode not in summaries else f"{r.mode}{sum(k[0] == r.mode for k in summaries) + 1}"
        summaries[name] = summarize(r, args.duration, args.gpu_hour_price / 3600)
    print(table_md(summaries))
    if job_runs:
        print("\n| round | jobs queued | completed during the trace | quality s per image | jobs' share of quality |")
        print("|---|---|---|---|---|")
        for i, ran in enumerate(job_runs, 1):
            print(f"| J{'' if i == 1 else i} | {ran.submitted} | {ran.completed} | {ran.service_s:.2f} | "
                  f"{100 * ran.share:.0f}% (min_share {100 * JOB_SHARE:.0f}%) |")  # fmt: skip
    if background_runs:
        print("\n| round | job tier | batch_rows | jobs queued | completed during the trace | background images/s |")
        print("|---|---|---|---|---|---|")
        for i, bg in enumerate(background_runs, 1):
            rows = BULK_ROWS if bg.model == "draft-bulk" else 1
            print(f"| {i} | {bg.model} | {rows} | {bg.submitted} | {bg.completed} | {bg.images_per_s:.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        raw = {name: [{**asdict(o.job), **{k: getattr(o, k) for k in ("status", "latency_s", "served")}}
                      for o in r.outcomes] for name, r in zip(summaries, results, strict=True)}  # fmt: skip
        args.json.write_text(json.dumps({"args": vars(args) | {"routes": str(args.routes), "json": str(args.json),
                                                               "plots": str(args.plots)},
                                         "summary": summaries, "outcomes": raw}, indent=1, default=str))  # fmt: skip
    if args.plots:
        plot(results, jobs, args.duration, args.bursts, args.plots)
        plot_cost(summaries, args.plots)
        print(f"plots: {args.plots}/scenario-cdf.png, {args.plots}/scenario-tiers.png, {args.plots}/scenario-cost.png")


if __name__ == "__main__":
    main()
