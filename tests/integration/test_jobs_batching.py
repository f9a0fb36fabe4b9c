"""Jobs computed together (a job tier's ``batch_rows``, issue 34) on the session's real
Triton: queued jobs of one shape share one pass, a large job is cut into passes, one
client's cancel never costs another's job, and nothing a pass makes answers a
singleton request."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from image_router.triton import TritonServer
from tests.integration.routes_common import TIERS
from tests.integration.test_cache import inferences
from tests.integration.test_jobs import submit, wait_for
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

BATCHED = (
    TIERS
    + """
cache: {store: "disk://${CACHE_DIR}", max_bytes: 50000000, ttl_s: 600}
routes:
  - {name: cached, match: {intent: cached}, model: draft, budget_ms: 30000, cache: {}}
default_route: {name: default, model: draft, budget_ms: 30000}
jobs:
  lease_s: 1.5
  max_n: 20
  max_running_per_tenant: 8
  tiers: {draft: {max_running: 4, batch_rows: 4}}
"""
)
BODY = {"size": "64x64", "response_format": "b64_json", "intent": "cached"}


@pytest.fixture()
def batched(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> GatewayProcess:
    return start_gateway(BATCHED.replace("${CACHE_DIR}", str(tmp_path / "cache")))


def pause(gw: GatewayProcess, on: bool) -> None:
    path = "drain" if on else "resume"
    answer = httpx.post(f"{gw.url}/admin/jobs/{path}?scope=cluster", headers=gw.admin, timeout=10)
    assert answer.status_code == 200, answer.text
    time.sleep(1.2 if on else 0)  # every replica reads the flag each second


def draft_lane(gw: GatewayProcess) -> dict[str, Any]:
    """The gateway's forecast lane for draft (``/admin/config``)."""
    config = httpx.get(f"{gw.url}/admin/config", headers=gw.admin, timeout=10).json()
    (replica,) = config["backends"]["triton"]
    lane: dict[str, Any] = next(v for k, v in replica["lanes"].items() if k.startswith("draft@"))
    return lane


def pixels(blob: str) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(blob))).convert("RGB"), dtype=np.int16)


def results(gw: GatewayProcess, job_id: str) -> list[str]:
    answer = httpx.get(f"{gw.url}/v1/images/jobs/{job_id}/result", timeout=10)
    assert answer.status_code == 200, answer.text
    return [d["b64_json"] for d in answer.json()["data"]]


def run_queued(gw: GatewayProcess, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``bodies`` submitted while the cluster is paused, so they wait together, then run."""
    pause(gw, True)
    ids = []
    for body in bodies:
        made = submit(gw, body)
        assert made.status_code == 202, made.text
        ids.append(made.json()["id"])
    pause(gw, False)
    return [wait_for(gw, i, lambda j: j["status"] in ("completed", "failed", "cancelled")) for i in ids]


def test_queued_jobs_of_one_shape_share_a_pass_and_never_answer_a_singleton_request(
    batched: GatewayProcess, triton: TritonServer
) -> None:
    """Four one-image jobs and one of another size, queued together: two Triton
    requests (one pass of four, one alone). The same four again: the same bytes. A
    singleton request for one of them afterwards (on the same cached route) is a cache
    MISS that Triton computes, and its image is within one level of the batched one
    (the stated guarantee)."""
    gw = batched
    bodies = [{**BODY, "prompt": f"a harbour crane {i}", "seed": 40 + i} for i in range(4)]
    odd = {**BODY, "prompt": "a harbour crane, wide", "seed": 50, "size": "128x64"}
    before = inferences(triton, "draft")
    done = run_queued(gw, [*bodies, odd])
    assert [j["status"] for j in done] == ["completed"] * 5, done
    assert inferences(triton, "draft") == before + 2, "four jobs in one pass, the other size alone"
    assert "4" in draft_lane(gw)["pass_factor"], "the gateway sent the four rows as one pass"
    first = [results(gw, j["id"])[0] for j in done[:4]]
    again = run_queued(gw, bodies)
    assert [results(gw, j["id"])[0] for j in again] == first, "same inputs, same pass size: same bytes"

    before = inferences(triton, "draft")
    single = httpx.post(f"{gw.url}/v1/images/generations", json=bodies[0], timeout=30)
    assert single.status_code == 200, single.text
    assert single.headers["x-cache"] == "MISS" and inferences(triton, "draft") == before + 1
    diff = np.abs(pixels(single.json()["data"][0]["b64_json"]) - pixels(first[0]))
    assert diff.max() <= 1, f"a batched row is within one level of the row alone, got {diff.max()}"


def test_a_large_job_is_cut_into_passes_and_n_is_bounded_by_jobs_max_n(
    batched: GatewayProcess, triton: TritonServer
) -> None:
    gw = batched
    before = inferences(triton, "draft")
    made = submit(gw, {**BODY, "prompt": "a field of poppies", "seed": 1, "n": 18})
    assert made.status_code == 202, made.text
    done = wait_for(gw, made.json()["id"], lambda j: j["status"] in ("completed", "failed"))
    assert done["status"] == "completed" and len(done["data"]) == 18, done
    assert len(set(results(gw, done["id"]))) == 18
    assert inferences(triton, "draft") == before + 5, "18 rows in passes of 4"
    over = submit(gw, {**BODY, "prompt": "too many", "n": 21})
    assert over.status_code == 400 and "n must be at most 20 for a job" in over.text, over.text
    interactive = httpx.post(f"{gw.url}/v1/images/generations", json={**BODY, "prompt": "x", "n": 18}, timeout=30)
    assert interactive.status_code == 400, "a route's max_n still holds for interactive calls"


def test_one_clients_cancel_leaves_the_other_jobs_of_its_pass_alone(
    batched: GatewayProcess, triton: TritonServer
) -> None:
    """A pass of three slow jobs (16 steps at 192², seconds); one is cancelled while the pass runs:
    it ends ``cancelled`` with no images, the other two complete in that same pass."""
    gw = batched
    before = inferences(triton, "draft")
    slow = [{**BODY, "prompt": f"a slow tide {i}", "seed": i, "steps": 16, "size": "192x192"} for i in range(3)]
    pause(gw, True)
    ids = [submit(gw, body).json()["id"] for body in slow]
    pause(gw, False)
    running = wait_for(gw, ids[0], lambda j: j["status"] == "in_progress", 20)
    assert running["status"] == "in_progress", running
    cancelled = httpx.post(f"{gw.url}/v1/images/jobs/{ids[0]}/cancel", timeout=10)
    assert cancelled.status_code == 200, cancelled.text
    ends = [wait_for(gw, i, lambda j: j["status"] in ("completed", "failed", "cancelled")) for i in ids]
    assert [j["status"] for j in ends] == ["cancelled", "completed", "completed"], ends
    assert ends[0]["data"] is None and len(ends[1]["data"]) == len(ends[2]["data"]) == 1
    assert [j["attempts"] for j in ends[1:]] == [1, 1], "the pass ran on: nothing was handed back and rerun"
    assert inferences(triton, "draft") == before + 1, "the three were one pass, which finished"
