"""Prometheus metrics (prometheus-client), in a registry of their own.

Per-request series are updated on the hot path (a counter, a histogram, and only when
they happen a downgrade or a canary assignment). Everything that is *state* — requests
in flight and queued per model, circuit states, retries, reloads, the active config,
the async jobs by state, spend and budget decisions — is read from the gateway when
Prometheus scrapes, by a collector, so it costs nothing per request (the jobs' counts
and the budgets' windows are the last census of the store, never a store call per
scrape). Buckets span image generation:
10 ms to 60 s; a job's wait in the queue spans seconds to a day.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics"]

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

State = Callable[[], dict[str, Any]]


class _StateCollector(Collector):
    """Reads the gateway's state at scrape time (see :meth:`Metrics.watch`)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        s = self.state()
        inflight = GaugeMetricFamily("router_model_inflight", "Requests in flight per model", labels=["model"])
        queued = GaugeMetricFamily("router_model_queued", "Requests waiting for admission per model", labels=["model"])
        for model, m in s.get("models", {}).items():
            inflight.add_metric([model], m["inflight"])
            queued.add_metric([model], m["queued"])
        yield inflight
        yield queued
        circuit = GaugeMetricFamily(
            "router_circuit_open",
            "1 while a circuit is open or half-open (model='' is the replica's own circuit)",
            labels=["backend", "replica", "model"],
        )
        healthy = GaugeMetricFamily(
            "router_replica_healthy", "1 while a replica is in service", labels=["backend", "replica"]
        )
        for backend, replicas in s.get("backends", {}).items():
            for r in replicas:
                healthy.add_metric([backend, r["url"]], 1.0 if r.get("healthy", True) else 0.0)
                if "circuit" in r:
                    circuit.add_metric([backend, r["url"], ""], 0.0 if r["circuit"] == "closed" else 1.0)
                for model, state in r.get("model_circuits", {}).items():
                    circuit.add_metric([backend, r["url"], model], 0.0 if state == "closed" else 1.0)
        yield circuit
        yield healthy
        retries = CounterMetricFamily("router_retries", "Retries sent to another replica", labels=["backend"])
        for backend, count in s.get("retries", {}).items():
            retries.add_metric([backend], count)
        yield retries
        hedges = CounterMetricFamily(
            "router_replica_hedges",
            "Calls also sent to another replica because the first was overdue",
            labels=["backend"],
        )
        for backend, count in s.get("hedges", {}).items():
            hedges.add_metric([backend], count)
        yield hedges
        yield _wasted_metric(s.get("backends", {}))
        reloads = CounterMetricFamily("router_config_reloads", "routes.yaml reload attempts", labels=["result"])
        for result, count in s.get("reloads", {}).items():
            reloads.add_metric([result], count)
        yield reloads
        dropped = CounterMetricFamily(
            "router_access_log_dropped", "Access log lines that could not be written (stdout closed or broken)"
        )
        dropped.add_metric([], s.get("access_log_dropped", 0))
        yield dropped
        cache = s.get("cache")
        if cache:
            store = CounterMetricFamily(
                "router_cache_store_failures",
                "Cache store calls that failed, timed out, or were skipped by its open circuit (each a miss)",
                labels=["kind"],
            )
            for kind in ("errors", "timeouts", "skipped"):
                store.add_metric([kind], cache["store_errors"][kind])
            yield store
            yield GaugeMetricFamily(
                "router_cache_store_circuit_open", "1 while the cache store's circuit is open",
                value=0.0 if cache["circuit"] == "closed" else 1.0,
            )  # fmt: skip
            for name, help_text in (
                ("writes", "Results and images written to the store"),
                ("write_bytes", "Bytes written to the store"),
                ("dropped_writes", "Writes dropped because too many were pending"),
                ("too_large", "Results over max_entry_bytes, not stored"),
                ("corrupt", "Unreadable entries found, removed and treated as misses"),
                ("unverified", "Entries not matching their key or content hash: removed, misses, never served"),
                ("coalesced", "Requests that joined an identical generation in flight on this replica"),
                ("lease_waits", "Requests that waited for another replica's generation"),
                ("evictions", "Entries the disk store removed to stay under max_bytes (Redis: its evicted_keys)"),
            ):
                counter = CounterMetricFamily(f"router_cache_{name}", help_text)
                counter.add_metric([], cache[name])
                yield counter
            fill = cache.get("fill", {})
            yield GaugeMetricFamily(
                "router_cache_fill_pending", "Upgrade and pre-generation jobs waiting for idle capacity",
                value=fill.get("pending", 0),
            )  # fmt: skip
            jobs = CounterMetricFamily(
                "router_cache_fill_jobs",
                "Background jobs by kind (upgrade, pregen) and result",
                labels=["kind", "result"],
            )
            for kind in ("upgrade", "pregen"):
                for result, n in fill.get(kind, {}).items():
                    jobs.add_metric([kind, result], n)
            yield jobs
        yield from _rollout_metrics(s.get("rollouts", []))
        yield from _job_metrics(s.get("jobs"))
        yield from _billing_metrics(s.get("billing"))
        info = GaugeMetricFamily("router_config_info", "The active routes.yaml (value 1)", labels=["digest"])
        info.add_metric([s.get("digest", "")], 1.0)
        yield info


def _wasted_metric(backends: dict[str, list[dict[str, Any]]]) -> CounterMetricFamily:
    """Calls the gateway gave up on, summed over every backend's replicas (each keeps
    its own, ``Replica.wasted_s``): never billed, and what a reconciliation with Triton's
    statistics subtracts before calling the rest unattributed (docs/billing.md)."""
    wasted = CounterMetricFamily(
        "router_compute_wasted_seconds",
        "Backend time of calls given up on, never billed, by model and reason (hedge, timeout, abandoned, cancelled)",
        labels=["model", "reason"],
    )
    sums: dict[tuple[str, str], float] = {}
    for replicas in backends.values():
        for replica in replicas:
            for model, reasons in replica.get("wasted_s", {}).items():
                for reason, seconds in reasons.items():
                    sums[model, reason] = sums.get((model, reason), 0.0) + seconds
    for (model, reason), seconds in sorted(sums.items()):
        wasted.add_metric([model, reason], seconds)
    return wasted


def _rollout_metrics(rollouts: list[dict[str, Any]]) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
    """Each rollout's live weight and state as this replica serves it, the decisions
    this replica made (sum over replicas: each decision is made once), shadow requests."""
    if not rollouts:
        return
    weight = GaugeMetricFamily("router_rollout_weight", "A canary's live weight (percent)", labels=["route", "model"])
    status = GaugeMetricFamily("router_rollout_status", "1 for a rollout's current status", labels=["route", "status"])
    paused = GaugeMetricFamily(
        "router_rollout_store_paused", "1 while a rollout is paused because the shared store does not answer",
        labels=["route"],
    )  # fmt: skip
    decisions = CounterMetricFamily(
        "router_rollout_decisions", "Rollout decisions made by this replica, by action", labels=["route", "action"]
    )
    shadow = CounterMetricFamily(
        "router_rollout_shadow_requests", "Shadow-stage mirrors by result (mirrored, skipped_busy, failed)",
        labels=["route", "result"],
    )  # fmt: skip
    for r in rollouts:
        weight.add_metric([r["route"], r["canary"]], r["weight"])
        status.add_metric([r["route"], r["status"]], 1.0)
        paused.add_metric([r["route"]], 0.0 if r["store_ok"] else 1.0)
        for action, n in r["decided"].items():
            decisions.add_metric([r["route"], action], n)
        for result, n in r["shadow"].items():
            shadow.add_metric([r["route"], result], n)
    yield from (weight, status, paused, decisions, shadow)


def _job_metrics(jobs: dict[str, Any] | None) -> Iterable[GaugeMetricFamily]:
    """The async jobs (``JobRunner.describe``): the store's counts as the runner last
    read them (every replica reports the same: take one, not the sum), and this
    replica's own — draining, running here."""
    if jobs is None:
        return
    states = GaugeMetricFamily(
        "router_jobs", "Jobs in the store by state (queued, in_progress, cancelling), as last counted",
        labels=["state"],
    )  # fmt: skip
    for state, n in jobs.get("counts", {}).items():
        states.add_metric([state], n)
    by_tier = GaugeMetricFamily(
        "router_jobs_tier", "Jobs in the store per tier: queued, running (in_progress + cancelling)",
        labels=["tier", "state"],
    )  # fmt: skip
    for state, key in (("queued", "queued_by_tier"), ("running", "running_by_tier")):
        for tier, n in jobs.get(key, {}).items():
            by_tier.add_metric([tier, state], n)
    here = GaugeMetricFamily("router_jobs_running_here", "Job attempts this replica runs, per tier", labels=["tier"])
    for tier, n in jobs.get("running_here", {}).items():
        here.add_metric([tier], n)
    yield from (states, by_tier, here)
    yield GaugeMetricFamily(
        "router_job_queue_oldest_seconds", "Age of the oldest queued job since its submission (0: none queued)",
        value=jobs.get("oldest_queued_age_s", 0.0),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "router_webhook_backlog", "Webhook deliveries waiting in the store", value=jobs.get("webhook_backlog", 0)
    )
    yield GaugeMetricFamily(
        "router_jobs_draining", "1 while this replica claims no new job (POST /admin/jobs/drain)",
        value=1.0 if jobs.get("draining") else 0.0,
    )  # fmt: skip


def _billing_metrics(billing: dict[str, Any] | None) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
    """Spend and budget decisions this replica counted (sum over replicas), and every
    budget window as the census last read it (the store's: take one replica's, not the
    sum). Amounts in the billing currency."""
    if billing is None:
        return
    currency = billing["currency"]
    cost = CounterMetricFamily(
        "router_cost", "What answers were billed, in the currency", labels=["tenant", "route", "model", "currency"]
    )
    images = CounterMetricFamily(
        "router_images", "Images answered, made or from the result store (cache: hit, miss)",
        labels=["tenant", "route", "model", "cache"],
    )  # fmt: skip
    compute = CounterMetricFamily(
        "router_compute_seconds", "Compute billed, by where it was measured (model, gateway, cache, none)",
        labels=["tenant", "route", "model", "source"],
    )  # fmt: skip
    totals: dict[tuple[str, str, str], list[int]] = {}
    for row in billing["spend"]:
        t, r, m = row["tenant"], row["route"], row["model"]
        sums = totals.setdefault((t, r, m), [0, 0, 0])
        sums[0] += row["cost_micros"]
        sums[1] += row["images"] - row["cached_images"]
        sums[2] += row["cached_images"]
        compute.add_metric([t, r, m, row["source"]], row["compute_ns"] / 1e9)
    for (t, r, m), (micro, made, hits) in totals.items():
        cost.add_metric([t, r, m, currency], micro / 1e6)
        images.add_metric([t, r, m, "miss"], made)
        images.add_metric([t, r, m, "hit"], hits)
    decisions = CounterMetricFamily(
        "router_budget_decisions",
        "Budgeted requests by what their budget allowed (ok, warn, brownout, brownout_refused, exhausted, "
        "fail_open, fail_closed)",
        labels=["tenant", "decision"],
    )
    for d in billing["decisions"]:
        decisions.add_metric([d["tenant"], d["decision"]], d["count"])
    yield from (cost, images, compute, decisions)
    said = {"limit": "amount", "spent": "amount spent", "reserved": "amount held by requests in flight",
            "remaining": "amount left"}  # fmt: skip
    gauges = {
        key: GaugeMetricFamily(f"router_budget_{key}", f"A budget window's {what}, as last read",
                               labels=["tenant", "per"])
        for key, what in said.items()
    }  # fmt: skip
    for budget in billing["budgets"]:
        for w in budget["windows"]:
            for key, gauge in gauges.items():
                gauge.add_metric([budget["tenant"], w["per"]], w[key])
    yield from gauges.values()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # what /metrics shows: this registry, or under `router serve --workers N`
        # (PROMETHEUS_MULTIPROC_DIR set) every worker's counters and histograms, summed
        # from their files, beside this worker's state read at scrape time
        self.exposition = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        r = self.registry
        self.requests = Counter(
            "router_requests",
            "Requests by route, serving model and status",
            ["api", "route", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "router_request_duration_seconds",
            "End-to-end request latency",
            ["api", "route", "model", "outcome"],
            buckets=BUCKETS,
            registry=r,
        )
        self.downgrades = Counter(
            "router_downgrades", "Tiers passed over, by reason", ["route", "model", "reason"], registry=r
        )
        self.canary = Counter(
            "router_canary_assignments", "Split decisions by arm", ["route", "model", "canary"], registry=r
        )
        self.budget_exhausted = Counter(
            "router_budget_exhausted", "Requests whose budget ran out", ["route"], registry=r
        )
        self.hedges = Counter("router_hedges", "Hedged requests, by which tier won", ["route", "winner"], registry=r)
        self.tenant_requests = Counter(
            "router_tenant_requests",
            "Image requests by tenant (configured names only, and 'unknown' for a bad key) and outcome "
            "(served, rate_limited, forbidden, unauthorized)",
            ["tenant", "outcome"],
            registry=r,
        )
        self.cache_results = Counter(
            "router_cache_results",
            "Answers on cached routes by X-Cache (HIT, MISS, COALESCED, BYPASS) and the model that made the image",
            ["route", "model", "result"],
            registry=r,
        )
        self.jobs_started = Counter(
            "router_jobs_started", "Job attempts this replica started, by tier and mode (idle, share, urgent)",
            ["tier", "mode"], registry=r,
        )  # fmt: skip
        self.jobs_finished = Counter(
            "router_jobs_finished",
            "Job attempts this replica ended, by tier and outcome "
            "(completed, failed, cancelled, expired, lost, handed_back)",
            ["tier", "outcome"],
            registry=r,
        )
        self.job_wait = Histogram(
            "router_job_queue_wait_seconds", "From submission to an attempt's start", ["tier"],
            buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.job_run = Histogram(
            "router_job_run_seconds", "An attempt's run, start to end", ["tier"], buckets=BUCKETS, registry=r
        )
        # labels() validates and locks on every call; a request's children are looked up once
        # per label set instead (bounded like the series themselves: routes x models x status).
        self._children: dict[tuple[str, str, str, int, str], tuple[Any, Any]] = {}

    def observe_request(self, api: str, route: str, model: str, status: int, outcome: str, seconds: float) -> None:
        """Count one finished request and its latency."""
        key = (api, route, model, status, outcome)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(api, route, model, str(status)),
                self.latency.labels(api, route, model, outcome),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def job_started(self, tier: str, mode: str, waited_s: float) -> None:
        self.jobs_started.labels(tier, mode).inc()
        self.job_wait.labels(tier).observe(waited_s)

    def job_finished(self, tier: str, outcome: str, run_s: float) -> None:
        self.jobs_finished.labels(tier, outcome).inc()
        self.job_run.labels(tier).observe(run_s)

    def cache_result(self, route: str, model: str, result: str) -> None:
        self.cache_results.labels(route, model, result).inc()

    def watch(self, state: State) -> None:
        """Export gauges and counters read from ``state()`` at scrape time."""
        collector = _StateCollector(state)
        self.registry.register(collector)
        if self.exposition is not self.registry:
            self.exposition.register(collector)

    def render(self) -> bytes:
        """The exposition (:attr:`exposition`)."""
        return generate_latest(self.exposition)
