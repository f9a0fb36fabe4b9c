"""Operating async jobs against real processes (a gateway with a ``jobs:`` block on the
session's Triton, SQLite state): the admin counts, drain and resume, ``router jobs``,
the metrics, one access-log line per attempt, and the status page's Jobs card."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from image_router.cli import main
from tests.integration.routes_common import TIERS
from tests.integration.test_jobs_progress import get, submit
from tests.integration.test_status_page import signed_in
from tests.procs import ADMIN_TOKEN, GatewayProcess, scrape

pytestmark = pytest.mark.integration

JOBS = (
    TIERS
    + """
default_route: {name: default, model: draft, budget_ms: 30000}
jobs:
  lease_s: 3
  tiers: {draft: {max_running: 1}, quality: {max_running: 1}}
"""
)
DRAFT = {"prompt": "a lighthouse at dawn", "model": "draft", "size": "64x64", "response_format": "b64_json"}
SLOW = {"prompt": "a castle", "model": "quality", "size": "128x128", "steps": 12, "response_format": "b64_json"}


def until(what: Callable[[], Any], timeout_s: float = 30, every_s: float = 0.1) -> Any:
    """``what()`` once it is truthy; its last value after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (got := what()) and time.monotonic() < deadline:
        time.sleep(every_s)
    return got


def overview(gw: GatewayProcess) -> dict[str, Any]:
    answer = httpx.get(f"{gw.url}/admin/jobs", headers=gw.admin, timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def job_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The access log's job lines (the gateway's stdout goes to its log file)."""
    lines = [json.loads(x) for x in gw.log.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("api") == "job"]


def test_drain_holds_new_jobs_while_the_running_one_finishes(start_gateway: Callable[..., GatewayProcess]) -> None:
    """Drained while a quality job runs: it finishes, two draft jobs submitted meanwhile
    stay queued (the counts say queued 2, running 1 here, the oldest's age), the metrics
    say the same; resumed, they complete and the counts fall back to 0. One access-log
    line per attempt; drain and resume are audited; the admin token is needed."""
    gw = start_gateway(JOBS)
    assert httpx.get(f"{gw.url}/admin/jobs", timeout=10).status_code == 401
    assert httpx.post(f"{gw.url}/admin/jobs/drain", timeout=10).status_code == 401
    quiet = overview(gw)
    assert quiet["counts"] == {"queued": 0, "in_progress": 0, "cancelling": 0} and not quiet["draining"]
    slow = submit(gw, SLOW)
    assert until(lambda: get(gw, slow)["status"] != "queued")
    drained = httpx.post(f"{gw.url}/admin/jobs/drain", headers=gw.admin, timeout=10).json()
    assert drained["draining"] and drained["running_here"] == {"quality": 1}, drained
    held = [submit(gw, {**DRAFT, "seed": i}) for i in range(2)]
    held_at = time.monotonic()
    now = overview(gw)
    assert now["counts"] == {"queued": 2, "in_progress": 1, "cancelling": 0}, now
    assert now["queued_by_tier"] == {"draft": 2} and now["running_by_tier"] == {"quality": 1}, now
    samples = scrape(gw)  # the admin call just counted: the metrics read that count
    assert samples[("router_jobs", (("state", "queued"),))] == 2
    assert samples[("router_jobs", (("state", "in_progress"),))] == 1
    assert samples[("router_jobs_draining", ())] == 1
    assert until(lambda: get(gw, slow)["status"] == "completed"), "a running job finishes through a drain"
    time.sleep(max(0.0, 1.0 - (time.monotonic() - held_at)))  # ten claim ticks at least
    assert [get(gw, i)["status"] for i in held] == ["queued", "queued"], "a drained replica claims nothing"
    still = overview(gw)
    assert still["counts"]["queued"] == 2 and still["oldest_queued_age_s"] >= 1.0, still
    assert still["running_here"] == {} and still["finished_here"]["completed"] == 1, still
    resumed = httpx.post(f"{gw.url}/admin/jobs/resume", headers=gw.admin, timeout=10).json()
    assert not resumed["draining"]
    assert until(lambda: all(get(gw, i)["status"] == "completed" for i in held)), "resumed, it claims again"
    after = overview(gw)
    assert after["counts"] == {"queued": 0, "in_progress": 0, "cancelling": 0}, after
    assert after["finished_here"]["completed"] == 3 and after["oldest_queued_age_s"] == 0
    samples = scrape(gw)
    assert samples[("router_jobs", (("state", "queued"),))] == 0
    assert samples[("router_jobs_draining", ())] == 0
    assert samples[("router_jobs_finished_total", (("outcome", "completed"), ("tier", "draft")))] == 2
    assert samples[("router_jobs_finished_total", (("outcome", "completed"), ("tier", "quality")))] == 1
    assert sum(v for (name, labels), v in samples.items() if name == "router_jobs_started_total") == 3
    assert samples[("router_job_queue_wait_seconds_count", (("tier", "draft"),))] == 2
    lines = until(lambda: len(job_lines(gw)) >= 3 and job_lines(gw), 5)
    assert lines, f"no job lines in the access log:\n{gw.log.read_text()[-2000:]}"
    assert sorted(x["request_id"] for x in lines) == sorted([slow, *held]), lines
    for line in lines:
        assert line["status"] == 200 and line["outcome"] == "completed" and line["attempts"] == "1", line
        job = get(gw, line["request_id"])
        assert line["route"] == job["route"] and line["model"] == job["model"] and line["latency_ms"] > 0, line
    slow_line = next(x for x in lines if x["request_id"] == slow)
    assert slow_line["tier"] == "quality" and slow_line["mode"] in ("idle", "share", "urgent")
    audits = [json.loads(x).get("audit") for x in gw.log.read_text().splitlines() if '"audit"' in x]
    assert "jobs drain" in audits and "jobs resume" in audits, audits


def test_router_jobs_counts_drains_lists_and_cancels(
    start_gateway: Callable[..., GatewayProcess], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``router jobs`` as an operator types it, against a real gateway: drain, counts
    (queued 2 on draft), list, show (any tenant's job), cancel, resume; ``drain --wait``
    returns once the job it found running has finished; an unknown id is the gateway's
    404."""
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    gw = start_gateway(JOBS)

    def router_jobs(*args: str) -> str:
        capsys.readouterr()
        assert main(["jobs", *args, "--url", gw.url]) == 0
        return capsys.readouterr().out

    assert "DRAINING" in router_jobs("drain")
    kept, dropped = submit(gw, {**DRAFT, "seed": 1}), submit(gw, {**DRAFT, "seed": 2})
    counts = router_jobs("counts")
    assert "DRAINING" in counts and "queued 2 " in counts and "  draft: queued 2, running 0 (0 here)" in counts, counts
    listed = router_jobs("list").splitlines()
    assert [x.split()[:2] for x in listed] == [[kept, "queued"], [dropped, "queued"]], listed
    shown = json.loads(router_jobs("show", kept))
    assert shown["id"] == kept and shown["tier"] == "draft" and shown["tenant"] == "" and shown["status"] == "queued"
    assert router_jobs("cancel", dropped).strip() == f"{dropped}: cancelled"
    assert get(gw, dropped)["status"] == "cancelled"
    assert "claiming" in router_jobs("resume")
    assert until(lambda: get(gw, kept)["status"] == "completed")
    counts = router_jobs("counts")
    assert "queued 0 " in counts and "attempts ended here: completed 1" in counts, counts
    slow = submit(gw, SLOW)
    assert until(lambda: get(gw, slow)["status"] != "queued")
    assert router_jobs("drain", "--wait").strip().endswith("runs no job: drained")
    assert get(gw, slow)["status"] == "completed", "drain --wait returns once the replica runs nothing"
    router_jobs("resume")
    with pytest.raises(SystemExit, match="error: 404"):
        main(["jobs", "show", "imgjob_nope", "--url", gw.url])


def test_the_status_page_shows_the_jobs_card(start_gateway: Callable[..., GatewayProcess], browser: Browser) -> None:
    """A drained replica with one queued draft job: the Jobs card says queued 1,
    draining, and a draft row; a gateway without jobs has no card and no /admin/jobs."""
    gw = start_gateway(JOBS)
    httpx.post(f"{gw.url}/admin/jobs/drain", headers=gw.admin, timeout=10).raise_for_status()
    submit(gw, DRAFT)
    page = signed_in(browser, gw)
    page.wait_for_function("() => document.querySelector('.jobs-queued')?.textContent === '1'", timeout=15000)
    assert page.is_visible("#jobs-section")
    assert page.text_content(".jobs-drain") == "draining"
    cells = [c.strip() for c in page.locator("#jobs tr[data-tier='draft'] td").all_text_contents()]
    assert cells == ["draft", "1", "0", "0"], cells
    plain = start_gateway(TIERS + "default_route: draft\n", "plain.yaml")
    missing = httpx.get(f"{plain.url}/admin/jobs", headers=plain.admin, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "jobs" not in httpx.get(f"{plain.url}/admin/status.json", headers=plain.admin, timeout=10).json()
    other = signed_in(browser, plain)
    other.wait_for_selector("#digest:not(:has-text('…'))")
    assert not other.is_visible("#jobs-section")
