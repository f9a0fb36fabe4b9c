"""The Grafana dashboard shipped with the chart only queries metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from image_router.telemetry import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "image-router" / "dashboards" / "image-router.json"


def exported_names() -> set[str]:
    metrics = Metrics()
    metrics.watch(
        lambda: {
            "models": {"m": {"inflight": 0, "queued": 0}},
            "backends": {"b": [{"url": "u", "healthy": True, "circuit": "closed", "model_circuits": {"m": "open"}}]},
            "retries": {"b": 0},
            "reloads": {"success": 0},
            "digest": "d",
            "rollouts": [
                {
                    "route": "r",
                    "canary": "c",
                    "weight": 5.0,
                    "status": "running",
                    "store_ok": True,
                    "decided": {"advance": 1},
                    "shadow": {"mirrored": 0},
                }
            ],
        }
    )
    names = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for family in metrics.registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_every_panel_queries_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried.update(re.findall(r"\b(router_[a-z_]+)\b", target["expr"]))
    missing = {name for name in queried if name not in exported}
    assert not missing, f"the dashboard queries series nobody exports: {sorted(missing)}"
    assert {"router_requests_total", "router_request_duration_seconds_bucket", "router_downgrades_total"} <= queried
