"""Job progress and per-tenant ``max_running`` against real processes: the session's
Triton and a gateway with a ``jobs:`` block (docs/jobs.md).

The ``quality`` tier's latency hint is set long (20 s) so the estimates rest on a known
service time: the gateway has no answer to learn a shorter one from while they are read."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

HINTED = TIERS.replace("latency_hint_ms: 3500", "latency_hint_ms: 20000")
JOBS = (
    HINTED
    + """
default_route: {name: default, model: draft, budget_ms: 30000}
jobs:
  tiers: {quality: {max_running: 1}}
"""
)
LONG = {"prompt": "a castle", "model": "quality", "size": "256x256", "steps": 16, "response_format": "b64_json"}
MEDIUM = {**LONG, "steps": 6}  # about 0.35 s a step at 256x256 on a busy CPU
SHORT = {**LONG, "size": "128x128", "steps": 8}
TERMINAL = ("completed", "failed", "cancelled", "expired")


def submit(gw: GatewayProcess, body: dict[str, Any], key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    made = httpx.post(f"{gw.url}/v1/images/jobs", json=body, headers=headers, timeout=30)
    assert made.status_code == 202, made.text
    job_id: str = made.json()["id"]
    return job_id


def get(gw: GatewayProcess, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{gw.url}/v1/images/jobs/{job_id}", timeout=10).json()
    return job


def wait_for(
    gw: GatewayProcess, job_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not until(job := get(gw, job_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def stream(gw: GatewayProcess, job_id: str, into: list[tuple[float, str, dict[str, Any]]]) -> None:
    """Read the job's event stream to its end: (arrival, SSE id or "", event)."""
    with httpx.stream("GET", f"{gw.url}/v1/images/jobs/{job_id}/events", timeout=90) as answer:
        seen_id = ""
        for line in answer.iter_lines():
            if line.startswith("id: "):
                seen_id = line[4:]
            elif line.startswith("data: "):
                into.append((time.monotonic(), seen_id, json.loads(line[6:])))
                seen_id = ""


def test_a_queued_job_waits_behind_a_running_one_and_both_report_progress(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """Behind a running job on a one-place tier a job is 1st in line, its ``ahead_s``
    above 0 and shrinking; the running job's ``percent`` grows within (0, 95) and its
    ``eta_s`` shrinks. The stream sends ``image_job.progress`` (queue, then progress)
    without an SSE id, no faster than the throttle allows, never after the terminal
    event and never on replay (it is not stored)."""
    gw = start_gateway(JOBS)
    first = submit(gw, {**LONG, "seed": 1})
    assert wait_for(gw, first, lambda j: j["status"] != "queued")["status"] == "in_progress"
    second = submit(gw, {**SHORT, "seed": 2})
    got: list[tuple[float, str, dict[str, Any]]] = []
    reader = threading.Thread(target=stream, args=(gw, second, got), daemon=True)
    reader.start()
    behind, running = get(gw, second), get(gw, first)
    time.sleep(0.6)
    later, further = get(gw, second), get(gw, first)
    assert behind["status"] == later["status"] == "queued" and further["status"] == "in_progress", "too slow a test"
    assert behind["progress"] is None and running["queue"] is None
    assert behind["queue"]["position"] == 1 == later["queue"]["position"], behind
    assert 0 < later["queue"]["ahead_s"] < behind["queue"]["ahead_s"] <= 20, (behind["queue"], later["queue"])
    before, after = running["progress"], further["progress"]
    assert before["source"] == "estimate" and (before["image"], before["images"]) == (1, 1)
    assert 0 < after["percent"] < 95 and after["percent"] > before["percent"], (before, after)
    assert 0 < after["eta_s"] < before["eta_s"] < 20, (before, after)
    listed = httpx.get(f"{gw.url}/v1/images/jobs?status=queued", timeout=10).json()["data"]
    assert [j["queue"]["position"] for j in listed if j["id"] == second] == [1], "the list shows it too"
    done = wait_for(gw, second, lambda j: j["status"] in TERMINAL, 60)
    reader.join(30)
    assert done["status"] == "completed" and done["queue"] is None and done["progress"] is None, done
    kinds = [e["type"] for _, _, e in got]
    assert kinds[0] == "image_job.queued" and kinds[-1] == "image_job.completed", kinds
    progress = [(at, sse_id, e) for at, sse_id, e in got if e["type"] == "image_job.progress"]
    queued = [e for _, _, e in progress if e["status"] == "queued"]
    ran = [e for _, _, e in progress if e["status"] == "in_progress"]
    # the last one may come as the tier frees (nothing ahead any more: 0 s) before the claim
    assert queued and queued[0]["queue"]["ahead_s"] > 0, queued
    assert all(e["queue"]["position"] == 1 and e["queue"]["ahead_s"] >= 0 for e in queued), queued
    assert ran and all(0 <= e["progress"]["percent"] < 95 for e in ran), ran
    assert all(sse_id == "" for _, sse_id, _ in progress), "a progress event has no SSE id"
    last_stored = [0]
    for _, _, e in got:  # a progress event follows the stored event of its state, never runs ahead of it
        if e["type"] != "image_job.progress":
            last_stored.append(e["sequence_number"])
        else:
            assert e["sequence_number"] == last_stored[-1], (e, last_stored)
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(progress) if a[2]["status"] == b[2]["status"]]
    # one state's estimates: at most one a second (a short wait may hold only one: nothing to compare)
    assert min(gaps, default=1.0) > 0.5, gaps
    started = next(at for at, _, e in got if e["type"] == "image_job.started")
    waited_s = started - progress[0][0]
    assert len(queued) <= waited_s / 3 + 2, (len(queued), waited_s)  # unchanged: every 3 s
    replay: list[tuple[float, str, dict[str, Any]]] = []
    stream(gw, second, replay)
    assert [e["type"] for _, _, e in replay] == ["image_job.queued", "image_job.started", "image_job.completed"]


TENANTS = (
    HINTED
    + """
default_route: {name: default, model: draft, budget_ms: 30000}
jobs:
  tiers: {quality: {max_running: 3}}
tenants:
  mode: keys
  tenants:
    acme:
      keys: ["sk-acme-0123456789abcdef"]
      jobs: {max_running: 1}
    beta: {keys: ["sk-beta-0123456789abcdef"]}
"""
)


def test_a_tenant_at_max_running_waits_while_another_tenant_s_job_runs(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """acme (max_running 1) submits two jobs, then beta one, on a tier with three
    places: acme's never run at once, beta's runs while one of acme's does, and all
    three complete."""
    gw = start_gateway(TENANTS)
    acme, beta = "sk-acme-0123456789abcdef", "sk-beta-0123456789abcdef"
    ids = {submit(gw, {**MEDIUM, "seed": 10 + i}, acme): "acme" for i in range(2)}
    ids[submit(gw, {**SHORT, "seed": 20}, beta)] = "beta"
    most_acme, beside = 0, False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = {"acme": 0, "beta": 0}
        statuses = []
        for key in (acme, beta):
            answer = httpx.get(f"{gw.url}/v1/images/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
            for job in answer.json()["data"]:
                statuses.append(job["status"])
                running[ids[job["id"]]] += job["status"] in ("in_progress", "cancelling")
        most_acme = max(most_acme, running["acme"])
        beside = beside or (running["acme"] == 1 and running["beta"] == 1)
        if len(statuses) == 3 and all(s in TERMINAL for s in statuses):
            break
        time.sleep(0.05)
    assert statuses == ["completed"] * 3, statuses
    assert most_acme == 1, "acme's two jobs ran at once"
    assert beside, "beta's job never ran beside acme's"
