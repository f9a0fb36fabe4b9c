"""Jobs computed together (image_router/jobs/batch.py) and the model's ``rows_per_pass``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from image_router.config import compile_text
from image_router.errors import ConfigError
from image_router.jobs.batch import mates, pass_request, passes, shape
from image_router.jobs.model import Job
from image_router.jobs.schedule import pick
from image_router.pipelines.contract import InvalidInput
from image_router.pipelines.triton_model import rows_per_pass


def job(name: str, n: int = 1, tag: float = 0.0, tenant: str = "t", deadline: float = 1000.0, **asked: Any) -> Job:
    request = {"prompt": name, "n": n, "seeds": list(range(n)), "steps": None, "width": None, "height": None}
    return Job(name, tenant, "draft", "r", {**request, **asked}, 0.0, deadline, 2000.0, tag=tag)


def test_a_pass_is_filled_in_fair_order_with_jobs_of_the_same_shape_that_fit() -> None:
    first = job("a", n=2, tag=1)
    queued = [
        first,
        job("late", n=1, tag=9),
        job("big", n=5, tag=2),  # does not fit beside a (2 + 5 > 4): passed over, not a stop
        job("other-size", n=1, tag=3, width=128),
        job("b", n=1, tag=4),
        job("capped", n=1, tag=5, tenant="busy"),
        job("expired", n=1, tag=6, deadline=5),
    ]
    group = mates(first, queued, batch_rows=4, now=10.0, capped={"busy"})
    assert [j.id for j in group] == ["a", "b", "late"]
    assert len({shape(j) for j in group}) == 1


def test_no_mate_has_an_earlier_deadline_than_the_job_whose_pass_it_is() -> None:
    """The pass runs on the first job's deadline: a mate due sooner waits for its own."""
    first = job("a", deadline=500.0)
    sooner, later = job("sooner", tag=1, deadline=400.0), job("later", tag=2, deadline=900.0)
    assert [j.id for j in mates(first, [first, sooner, later], batch_rows=4, now=0.0)] == ["a", "later"]


def test_pass_request_puts_each_jobs_prompt_and_seed_in_its_row() -> None:
    a, b = job("a", n=2), job("b", n=1)
    a.request["seeds"] = [10, 11]
    b.request["seeds"] = [20]
    (cut,) = passes([a, b], 4)
    request = pass_request([a, b], cut, 4, upscale=False)
    assert request.prompts == ("a", "a", "b") and request.seeds == (10, 11, 20)
    assert request.rows_per_pass == 3
    assert pass_request([a], passes([a], 1)[1], 1, upscale=True).rows_per_pass == 1, "a tier that does not batch"


def test_a_big_job_is_urgent_as_many_service_times_sooner() -> None:
    """Urgency counts a job's images: one image's 1 s does not make a 50-image job due
    in 80 s urgent, 50 of them do (1.5 x 50 s + the 10 s margin)."""
    small, big = job("small", n=1, deadline=80.0), job("big", n=50, deadline=80.0)
    assert pick([small], now=0.0, expected_s=1.0, margin_s=10.0) == (small, "fair")
    assert pick([big], now=0.0, expected_s=1.0, margin_s=10.0) == (big, "urgent")


def test_batch_rows_one_or_a_job_that_fills_the_pass_runs_alone() -> None:
    first, other = job("a", n=1), job("b", n=1, tag=1)
    assert mates(first, [first, other], batch_rows=1, now=0.0) == [first]
    wide = job("wide", n=4)
    assert mates(wide, [wide, other], batch_rows=4, now=0.0) == [wide]


def test_a_downgradable_job_never_shares_a_pass_with_one_that_is_not() -> None:
    first = job("a")
    flexible = Job("b", "t", "draft", "r", dict(first.request), 0.0, 1000.0, 2000.0, tag=1, allow_downgrade=True)
    assert mates(first, [first, flexible], batch_rows=4, now=0.0) == [first]


def test_passes_keep_several_jobs_in_one_call_and_cut_a_large_job_by_batch_rows() -> None:
    group = [job("a", n=2), job("b", n=1)]
    assert passes(group, 4) == [[(0, 0), (0, 1), (1, 0)]]
    assert passes([job("big", n=50)], 8) == [[(0, r) for r in range(i, min(i + 8, 50))] for i in range(0, 50, 8)]
    assert passes([job("single", n=3)], 1) == [[(0, 0)], [(0, 1)], [(0, 2)]]  # a tier that does not batch


def test_the_model_takes_rows_per_pass_from_the_request_and_refuses_a_bad_one_by_name() -> None:
    assert rows_per_pass(None, 1) == 1
    assert rows_per_pass("{}", 2) == 2
    assert rows_per_pass(json.dumps({"rows_per_pass": 6, "timeout": 5}), 1) == 6
    for bad in (0, 65, "4", True, 2.5):
        with pytest.raises(InvalidInput, match="rows_per_pass"):
            rows_per_pass(json.dumps({"rows_per_pass": bad}), 1)


ROUTES = """
models: {draft: {backend: triton}, preview: {backend: triton}}
backends: {triton: {url: "http://t:8000"}}
default_route: draft
jobs:
  max_n: 20
  tiers:
    draft: {max_running: 2, batch_rows: 4}
"""


def test_batch_rows_above_max_running_is_refused_at_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        compile_text(ROUTES)
    assert "routes.yaml:8" in str(caught.value) and "batch_rows 4 needs max_running >= 4" in str(caught.value)
    jobs = compile_text(ROUTES.replace("max_running: 2", "max_running: 4")).jobs
    assert jobs is not None and jobs.tier("draft").batch_rows == 4 and jobs.max_n == 20
    assert jobs.tier("preview").batch_rows == 1
