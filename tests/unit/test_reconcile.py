"""The reconciliation's arithmetic (image_router/billing/reconcile.py), pure: Triton's
``batch_stats`` summed per execution, counter growth across a Triton restart, billed
compute split over replicas, wasted by reason, what is left unattributed, utilisation,
and the ring of reads on a fake clock (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from image_router.billing.price import Cost
from image_router.billing.reconcile import (
    KEEP,
    Reconciler,
    Sample,
    Snapshot,
    billed_ns,
    instances_of,
    reconcile,
    replica_samples,
    triton_compute_ns,
    window_seconds,
)
from image_router.billing.tally import Tally
from image_router.billing.usage import Usage
from image_router.config import compile_text

S = 1_000_000_000  # ns per second
TABLE = compile_text(
    """
backends:
  triton: {urls: ["http://t0:8000", "http://t1:8000"]}
models:
  draft: {backend: triton, triton_model: draft, instances: 2}
  draft-fixed: {backend: triton, triton_model: draft}
  quality: {backend: triton, triton_model: quality}
default_route: {model: draft, budget_ms: 1000, fallback: [draft-fixed, quality]}
""",
    env={},
)
T0, T1 = "http://t0:8000", "http://t1:8000"


def _batch(size: int, input_ns: int, infer_ns: int, output_ns: int, count: int = 1) -> dict[str, Any]:
    return {
        "batch_size": size,
        "compute_input": {"count": count, "ns": input_ns},
        "compute_infer": {"count": count, "ns": infer_ns},
        "compute_output": {"count": count, "ns": output_ns},
    }


def test_triton_compute_is_batch_stats_per_execution_over_every_version() -> None:
    """Σ input + infer + output over batch sizes and versions; ``inference_stats``
    (which charges each request of a batch the whole batch) is not read."""
    stats = {
        "model_stats": [
            {
                "name": "draft",
                "version": "1",
                "inference_stats": {"compute_infer": {"count": 4, "ns": 999 * S}},  # per request: ignored
                "batch_stats": [_batch(1, 10, 1000, 5), _batch(2, 20, 3000, 7)],
            },
            {"name": "draft", "version": "2", "batch_stats": [_batch(1, 1, 100, 1)]},
            {"name": "quality", "version": "1", "batch_stats": []},  # loaded, never executed
            {"name": "odd", "batch_stats": [{"batch_size": 1, "compute_infer": {"ns": "x"}}]},  # not understood: 0
        ]
    }
    assert triton_compute_ns(stats) == {"draft": 10 + 1000 + 5 + 20 + 3000 + 7 + 1 + 100 + 1, "quality": 0, "odd": 0}
    assert triton_compute_ns({}) == {}


def test_the_gateways_counts_are_summed_per_triton_model() -> None:
    """Two configured models on one Triton model are one row; a replica whose
    statistics did not answer has no Triton figure, and a model Triton never ran for
    this gateway still has its row."""
    samples = replica_samples(
        "triton",
        T0,
        {"draft": 5 * S, "noop": S},
        {"draft": 2 * S, "draft-fixed": S},
        {("draft", "timeout"): 0.5, ("draft-fixed", "timeout"): 0.25, ("quality", "hedge"): 1.0},
        TABLE,
    )
    assert samples == {
        ("triton", T0, "draft"): Sample(5 * S, 3 * S, {"timeout": 0.75}),
        ("triton", T0, "noop"): Sample(S, 0, {}),
        ("triton", T0, "quality"): Sample(0, 0, {"hedge": 1.0}),
    }
    assert replica_samples("triton", T1, None, {"draft": S}, {}, TABLE) == {
        ("triton", T1, "draft"): Sample(None, S, {})
    }


def _usage(compute_ns: int) -> Usage:
    return Usage(1, 0, compute_ns, "model", Cost(), "USD")


def test_billed_compute_per_triton_model_and_instances_from_the_table() -> None:
    tally = Tally()
    tally.add("acme", "default", "draft", _usage(2 * S))
    tally.add("_anonymous", "other", "draft-fixed", _usage(S))
    tally.add("acme", "default", "quality", _usage(0))  # a cache hit: billed no compute
    tally.add("acme", "default", "gone", _usage(S))  # a model a reload removed
    assert billed_ns(tally, TABLE) == {("triton", "draft"): 3 * S, ("triton", "quality"): 0}
    assert instances_of(TABLE) == {("triton", "draft"): 2, ("triton", "quality"): 1}


def _snap(at: float, billed: int, **samples: Sample) -> Snapshot:
    """A read at ``at``: the draft model's samples on replicas ``t0`` / ``t1``."""
    urls = {"t0": T0, "t1": T1}
    return Snapshot(
        at, {("triton", urls[name], "draft"): s for name, s in samples.items()}, {("triton", "draft"): billed}
    )


def test_one_replica_attributed_wasted_unattributed_and_utilisation() -> None:
    """Over 60 s: Triton computed 10 s, the gateway billed 7 s and gave up on 1.5 s
    (two reasons): 1.5 s unattributed; 2 instances busy 10 of 120 instance-seconds."""
    first = _snap(100.0, 4 * S, t0=Sample(50 * S, 20 * S, {"timeout": 1.0}))
    last = _snap(160.0, 11 * S, t0=Sample(60 * S, 27 * S, {"timeout": 2.0, "hedge": 0.5}))
    (row,) = reconcile([first, last], {("triton", "draft"): 2})
    assert (row.backend, row.replica, row.model, row.covered_s) == ("triton", T0, "draft", 60.0)
    assert row.triton_compute_s == pytest.approx(10.0)
    assert row.attributed_s == pytest.approx(7.0)
    assert row.wasted == pytest.approx({"timeout": 1.0, "hedge": 0.5}) and row.wasted_s == pytest.approx(1.5)
    assert row.unattributed_s == pytest.approx(1.5)
    assert row.utilisation == pytest.approx(10 / 120)
    assert row.body() == {
        "backend": "triton", "replica": T0, "model": "draft", "covered_s": 60.0,
        "triton_compute_s": 10.0, "attributed_s": 7.0, "wasted_s": 1.5,
        "wasted": {"hedge": 0.5, "timeout": 1.0}, "unattributed_s": 1.5, "utilisation": 0.0833,
    }  # fmt: skip


def test_billed_compute_is_split_over_replicas_by_what_each_answered() -> None:
    """The gateway bills per model, not per replica: t0 answered 3 s of the 4 s the
    model answered, so it is attributed 3/4 of the 8 s billed."""
    first = _snap(0.0, 0, t0=Sample(0, 0), t1=Sample(0, 0))
    last = _snap(60.0, 8 * S, t0=Sample(7 * S, 3 * S), t1=Sample(3 * S, S))
    rows = {row.replica: row for row in reconcile([first, last], {})}
    assert rows[T0].attributed_s == pytest.approx(6.0) and rows[T1].attributed_s == pytest.approx(2.0)
    assert rows[T0].unattributed_s == pytest.approx(1.0) and rows[T1].unattributed_s == pytest.approx(1.0)


def test_a_triton_restart_counts_its_new_total_as_the_growth() -> None:
    first = _snap(0.0, 0, t0=Sample(500 * S, 0))
    last = _snap(60.0, 2 * S, t0=Sample(3 * S, 2 * S))  # restarted: the counter went down
    (row,) = reconcile([first, last], {})
    assert row.triton_compute_s == pytest.approx(3.0) and row.unattributed_s == pytest.approx(1.0)


def test_a_read_without_statistics_is_skipped_and_none_at_all_has_no_triton_figure() -> None:
    """The window starts at the first read whose statistics answered; with fewer than
    two such reads only the gateway's side is known."""
    reads = [
        _snap(0.0, 0, t0=Sample(None, 0, {"abandoned": 9.0})),
        _snap(60.0, S, t0=Sample(10 * S, S, {"abandoned": 10.0})),
        _snap(120.0, 3 * S, t0=Sample(14 * S, 3 * S, {"abandoned": 11.0})),
    ]
    (row,) = reconcile(reads, {})
    assert row.covered_s == 60.0 and row.triton_compute_s == pytest.approx(4.0)
    assert row.attributed_s == pytest.approx(2.0) and row.wasted == pytest.approx({"abandoned": 1.0})
    (blind,) = reconcile([reads[0], _snap(60.0, S, t0=Sample(None, S, {"abandoned": 9.5}))], {})
    assert blind.triton_compute_s is None and blind.unattributed_s is None and blind.utilisation is None
    assert blind.attributed_s == pytest.approx(1.0) and blind.wasted == pytest.approx({"abandoned": 0.5})
    assert reconcile([], {}) == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600.0), ("15m", 900.0), ("30s", 30.0), ("90", 90.0), ("1d", 86400.0), ("24h", 86400.0),
     ("25h", None), ("0m", None), ("1w", None), ("-1h", None), ("1.5h", None), ("", None), ("h", None)],
)  # fmt: skip
def test_window_values(text: str, seconds: float | None) -> None:
    assert window_seconds(text) == seconds


async def test_the_ring_holds_timed_reads_and_a_report_ends_at_a_read_of_its_own() -> None:
    """Reads land every interval (a fake clock and sleep); a report covers only the
    reads inside its window plus one made for it, which is not kept."""
    clock = [0.0]
    total = [0]
    slept = asyncio.Event()
    wake = asyncio.Event()

    async def read() -> Snapshot:
        total[0] += S  # Triton computes 1 s and the gateway bills 1 s between reads
        return _snap(clock[0], total[0], t0=Sample(total[0], total[0]))

    async def sleep(seconds: float) -> None:
        slept.set()
        await wake.wait()
        wake.clear()
        clock[0] += seconds

    reconciler = Reconciler(read, interval_s=60.0, sleep=sleep)
    assert reconciler.ring.maxlen == KEEP
    reconciler.start()
    for _ in range(3):  # reads at 0, then 60, 120, 180
        await slept.wait()
        slept.clear()
        wake.set()
    await slept.wait()
    assert [s.at for s in reconciler.ring] == [0.0, 60.0, 120.0, 180.0]
    clock[0] = 200.0
    (row,) = await reconciler.report(90.0, {})  # reads at 120, 180 and the report's at 200
    assert row.covered_s == 80.0 and row.triton_compute_s == pytest.approx(2.0)
    assert row.attributed_s == pytest.approx(2.0) and row.unattributed_s == pytest.approx(0.0)
    assert len(reconciler.ring) == 4
    await reconciler.aclose()
    assert reconciler.task is None
