"""Chart values the README names that no other chart test renders: ``triton.shmSize``,
``triton.networkPolicy.metricsFrom``, ``gateway.existingSecret`` and ``gateway.workers``."""

from __future__ import annotations

from typing import Any

from tests.helm.test_chart import by_kind, render


def _env(pod: dict[str, Any], name: str) -> dict[str, Any]:
    container = pod["containers"][0]
    entry: dict[str, Any] = next(e for e in container["env"] if e["name"] == name)
    return entry


def test_triton_shm_size_sizes_its_shared_memory_volume() -> None:
    pod = by_kind(render({"triton": {"shmSize": "3Gi"}}), "Deployment", "triton")["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "3Gi"}


def test_metrics_from_decides_who_reaches_tritons_metrics_port_and_only_that_port() -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}]
    policy = by_kind(render({"triton": {"networkPolicy": {"metricsFrom": peers}}}), "NetworkPolicy", "triton")
    rules = policy["spec"]["ingress"]
    metrics = [r for r in rules if {"port": "metrics", "protocol": "TCP"} in r["ports"]]
    assert len(metrics) == 1 and metrics[0]["from"] == peers and len(metrics[0]["ports"]) == 1
    gateway_only = [r for r in rules if r is not metrics[0]]
    assert all({"port": "metrics", "protocol": "TCP"} not in r["ports"] for r in gateway_only)
    closed = by_kind(render({"triton": {"networkPolicy": {"metricsFrom": []}}}), "NetworkPolicy", "triton")
    assert all({"port": "metrics", "protocol": "TCP"} not in r["ports"] for r in closed["spec"]["ingress"])


def test_an_existing_secret_replaces_the_charts_own_admin_token_secret() -> None:
    docs = render({"gateway": {"existingSecret": "ops-admin"}})
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    assert not secrets & {"ops-admin", "demo-image-router-admin"}, secrets  # the operator's is left alone
    pod = by_kind(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    token = _env(pod, "ROUTER_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token == {"name": "ops-admin", "key": "admin-token"}
    own = render()
    assert [d for d in own if d["kind"] == "Secret" and d["metadata"]["name"] == "demo-image-router-admin"]


def test_workers_runs_that_many_gateway_processes_per_pod() -> None:
    def args(values: dict[str, Any] | None) -> list[str]:
        pod = by_kind(render(values), "Deployment", "gateway")["spec"]["template"]["spec"]
        found: list[str] = pod["containers"][0]["args"]
        return found

    assert not any(a.startswith("--workers") for a in args(None)), "one process unless asked"
    assert "--workers=4" in args({"gateway": {"workers": 4}})
