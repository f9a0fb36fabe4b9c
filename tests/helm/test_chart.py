"""The Helm chart, rendered offline with Helm's own library (helm-python-sdk) and every
manifest validated against the Kubernetes API schemas (kubernetes-validate)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmValuesError

from image_router.config import compile_text

CHART = Path(__file__).resolve().parents[2] / "helm" / "image-router"
KUBERNETES = "1.37.0"
# Custom resources have no schema in the Kubernetes API; they are checked by shape below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}

CANARY_ROUTES = """\
backends:
  triton: {url: "${TRITON_URL}"}
models:
  quality:    {backend: triton, triton_model: quality, version: "1", latency_hint_ms: 3000}
  quality-v2: {backend: triton, triton_model: quality, version: "2", latency_hint_ms: 3000}
  draft:      {backend: triton, latency_hint_ms: 120}
routes:
  - name: photo
    match: {prompt: "(?i)photo"}
    split:
      - {model: quality, weight: 90}
      - {model: quality-v2, weight: 10, canary: true}
    sticky: header:X-User-Id
    budget_ms: 4000
    fallback: [draft]
default_route: draft
"""

VARIANT: dict[str, Any] = {
    "routes": CANARY_ROUTES,
    "gateway": {
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "adminToken": "t0ken",
        "tracing": {"enabled": True, "endpoint": "http://otel-collector:4318", "sampleRatio": 0.05},
    },
    "triton": {
        "gpu": {"enabled": True, "count": 2},
        "modelRepository": {"source": "volume", "existingClaim": "models-pvc"},
        "models": ["draft", "quality"],
    },
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        rendered = chart.render(values or {}, name="demo", namespace="images", is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in rendered.items():
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(matches) == 1, f"{kind} {name_part}: {len(matches)}"
    return matches[0]


@pytest.mark.parametrize("values", [None, VARIANT], ids=["defaults", "gpu-canary-autoscaling"])
def test_chart_lints_and_every_manifest_is_valid_kubernetes(values: dict[str, Any] | None) -> None:
    report = lint(CHART, values or {}, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_defaults_render_what_an_operator_expects() -> None:
    docs = render()
    gateway = by_kind(docs, "Deployment", "gateway")
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert gateway["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # ready when the gateway serves, not when Triton does: its Service never empties on a
    # Triton restart, and clients get the gateway's own errors, not a proxy's 502s
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert all(container[p]["timeoutSeconds"] <= 2 for p in ("livenessProbe", "readinessProbe"))
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsUser"] != 0
    env = {e["name"]: e for e in container["env"]}
    assert env["TRITON_URL"]["value"] == "http://demo-image-router-triton-headless:8000"
    assert env["TRITON_GRPC_URL"]["value"] == "demo-image-router-triton:8001"
    assert env["ROUTER_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "demo-image-router-admin"
    assert not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)
    triton = by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in triton["containers"][0]["resources"].get("limits", {})
    assert "--model-control-mode=explicit" in triton["containers"][0]["args"]
    assert "OTEL_TRACES_EXPORTER" not in env, "tracing is off unless enabled"
    # the gRPC front door: in the pod's args, as a named container port, and on the Service
    assert "--grpc-port=8081" in container["args"]
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    service = by_kind(docs, "Service", "gateway")
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == 8081 and grpc_port["targetPort"] == "grpc" and grpc_port["appProtocol"] == "grpc"
    off = by_kind(render({"gateway": {"grpc": {"enabled": False}}}), "Deployment", "gateway")
    off_container = off["spec"]["template"]["spec"]["containers"][0]
    assert "--no-grpc" in off_container["args"] and all(p["name"] != "grpc" for p in off_container["ports"])


def test_the_disruption_budget_keeps_a_gateway_serving_and_selects_only_gateway_pods() -> None:
    docs = render()
    pdb = by_kind(docs, "PodDisruptionBudget")
    gateway = by_kind(docs, "Deployment", "gateway")
    triton = by_kind(docs, "Deployment", "triton")
    assert pdb["spec"]["minAvailable"] == 1 and gateway["spec"]["replicas"] > pdb["spec"]["minAvailable"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "a crash-looping pod never blocks a drain"
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector == gateway["spec"]["selector"]["matchLabels"]
    triton_labels = triton["spec"]["template"]["metadata"]["labels"]
    assert not all(triton_labels.get(k) == v for k, v in selector.items()), "Triton pods are not the gateway's"


def test_routes_are_mounted_as_a_directory_and_appear_verbatim() -> None:
    """subPath mounts never update; the directory mount gets the kubelet's ..data swap,
    which the gateway reloads (tests/integration/test_reload.py swaps it the same way)."""
    for values in (None, VARIANT):
        docs = render(values)
        pod = by_kind(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "routes")
        assert "subPath" not in mount and mount["mountPath"] == "/etc/router"
        assert "--routes=/etc/router/routes.yaml" in pod["containers"][0]["args"]
        config = by_kind(docs, "ConfigMap", "routes")
        expected = (values or {}).get("routes") or yaml.safe_load((CHART / "values.yaml").read_text())["routes"]
        assert config["data"]["routes.yaml"] == expected
        env = {
            "TRITON_URL": "http://triton:8000",
            "TRITON_GRPC_URL": "triton:8001",
            "ROUTER_CACHE_STORE": "disk:///var/cache/router",
            "ROUTER_STATE_STORE": "sqlite:///var/lib/image-router/state.db",
        }
        compile_text(config["data"]["routes.yaml"], env=env)  # a valid routes file


def test_gpu_canary_autoscaling_variant() -> None:
    docs = render(VARIANT)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 12
    assert "replicas" not in by_kind(docs, "Deployment", "gateway")["spec"], "the HPA owns the replica count"
    triton = by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert triton["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert triton["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in triton["tolerations"])
    volumes = {v["name"]: v for v in triton["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models-pvc"
    assert [a for a in triton["containers"][0]["args"] if a.startswith("--load-model")] == [
        "--load-model=draft",
        "--load-model=quality",
    ]
    # one ServiceMonitor per component: each selects exactly one Service, whose port it names
    services = [d for d in docs if d["kind"] == "Service"]
    for component, port in (("gateway", "http"), ("triton", "metrics")):
        monitor = by_kind(docs, "ServiceMonitor", component)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        absent = [
            e["key"] for e in monitor["spec"]["selector"].get("matchExpressions", []) if e["operator"] == "DoesNotExist"
        ]
        selected = [
            svc
            for svc in services
            if all(svc["metadata"]["labels"].get(k) == v for k, v in selector.items())
            and not any(k in svc["metadata"]["labels"] for k in absent)
        ]
        assert len(selected) == 1, (component, [svc["metadata"]["name"] for svc in selected])
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port]
        assert port in {p["name"] for p in selected[0]["spec"]["ports"]}, "every scraped port exists on its Service"
    dashboard = by_kind(docs, "ConfigMap", "dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert yaml.safe_load(dashboard["data"]["image-router.json"])["uid"] == "image-router"
    secret = by_kind(docs, "Secret", "router-admin")
    assert secret["data"]["admin-token"] == "dDBrZW4="  # base64("t0ken")
    rolled = by_kind(
        render({**VARIANT, "gateway": {**VARIANT["gateway"], "adminToken": "new"}}), "Deployment", "gateway"
    )
    checksum = by_kind(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["annotations"][
        "checksum/admin-token"
    ]
    assert rolled["spec"]["template"]["metadata"]["annotations"]["checksum/admin-token"] != checksum, (
        "a new token rolls"
    )
    generated = by_kind(render(), "Deployment", "gateway")["spec"]["template"]["metadata"]
    assert "checksum/admin-token" not in (generated.get("annotations") or {}), "a generated token never rolls the pods"
    gateway = by_kind(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio" and env["OTEL_TRACES_SAMPLER_ARG"] == "0.05"
    assert "--access-log-flush=1" in gateway["args"]


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"gateway": {"replicaCount": "three"}}, "/gateway/replicaCount"),
        ({"gateway": {"port": 70000}}, "/gateway/port"),
        ({"triton": {"modelRepository": {"source": "gcs"}}}, "/triton/modelRepository/source"),
        ({"routes": ""}, "/routes"),
        ({"gateway": {"tracing": {"sampleRatio": 2}}}, "/gateway/tracing/sampleRatio"),
        ({"unknown": 1}, "additional properties 'unknown'"),
        ({"cache": {"store": "memcached"}}, "/cache/store"),
        ({"cache": {"disk": {"path": "relative/dir"}}}, "/cache/disk/path"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(bad: dict[str, Any], where: str) -> None:
    with Chart.load(CHART) as chart, pytest.raises(HelmValuesError) as info:
        chart.validate_schema(copy.deepcopy(bad))
    assert where in str(info.value)


def _gateway_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = by_kind(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    return pod


def test_the_cache_is_a_disk_volume_by_default_and_its_store_reaches_the_routes() -> None:
    docs = render()
    pod = _gateway_pod(docs)
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ROUTER_CACHE_STORE"] == "disk:///var/cache/router"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "cache")
    assert mount["mountPath"] == "/var/cache/router" and not mount.get("readOnly")
    volume = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert volume["emptyDir"]["sizeLimit"] == "2Gi"
    assert not any(d["metadata"]["name"].endswith("-redis") for d in docs)
    routes = by_kind(docs, "ConfigMap", "routes")["data"]["routes.yaml"]
    stores = {k: env[k] for k in ("ROUTER_CACHE_STORE", "ROUTER_STATE_STORE")}
    table = compile_text(routes, env={"TRITON_URL": "http://t:8000", "TRITON_GRPC_URL": "t:8001", **stores})
    assert table.cache is not None and table.cache.store == "disk:///var/cache/router"
    assert table.state is not None and table.state.store == "sqlite:///var/lib/image-router/state.db"
    triton = table.backends["triton"]
    assert triton.protocol == "grpc" and triton.discover and triton.grpc_port == 8001
    claimed = _gateway_pod(render({"cache": {"disk": {"existingClaim": "router-cache"}}}))
    volume = next(v for v in claimed["volumes"] if v["name"] == "cache")
    assert volume == {"name": "cache", "persistentVolumeClaim": {"claimName": "router-cache"}}


@pytest.mark.parametrize(
    ("redis", "url", "deployed"),
    [
        ({"url": "redis://redis-master.cache:6379/0"}, "redis://redis-master.cache:6379/0", False),
        ({"deploy": True}, "redis://:$(ROUTER_REDIS_PASSWORD)@demo-image-router-redis:6379/0", True),
    ],
    ids=["existing", "deployed"],
)
def test_a_shared_redis_store(redis: dict[str, Any], url: str, deployed: bool) -> None:
    values = {"cache": {"store": "redis", "redis": redis}}
    report = lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [], report
    docs = render(values)
    pod = _gateway_pod(docs)
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["ROUTER_CACHE_STORE"] == url
    assert not any(v["name"] == "cache" for v in pod["volumes"]), "no disk volume with a shared store"
    redis_docs = [d for d in docs if d["metadata"]["name"].endswith("-redis")]
    assert sorted(d["kind"] for d in redis_docs) == (
        ["Deployment", "NetworkPolicy", "Secret", "Service"] if deployed else []
    )
    for doc in redis_docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    if deployed:
        container = by_kind(docs, "Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
        assert "allkeys-lru" in container["args"] and container["securityContext"]["runAsNonRoot"]
        assert "--requirepass" in container["args"] and "$(REDISCLI_AUTH)" in container["args"]
        assert container["args"][container["args"].index("--protected-mode") + 1] == "yes"


def test_a_redis_store_without_a_redis_is_refused_at_render() -> None:
    with pytest.raises(Exception, match=r"cache\.redis\.url"):
        render({"cache": {"store": "redis"}})


def test_the_gpu_variant_runs_the_models_on_the_gpu_and_upgrades_in_place() -> None:
    """What Triton is told: each model's configs/gpu.pbtxt, which must say KIND_GPU where
    config.pbtxt says KIND_CPU and nothing else; a GPU resource that can be a MIG slice."""
    values = {
        "triton": {"gpu": {"enabled": True, "resourceName": "nvidia.com/mig-1g.10gb", "runtimeClassName": "nvidia"}}
    }
    deployment = by_kind(render(values), "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--model-config-name=gpu" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == 1 and pod["runtimeClassName"] == "nvidia"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    repository = CHART.parents[1] / "model_repository"
    for model in ("draft", "preview", "quality", "noop"):
        cpu = (repository / model / "config.pbtxt").read_text()
        gpu = (repository / model / "configs" / "gpu.pbtxt").read_text()
        assert "kind: KIND_CPU" in cpu and "kind: KIND_GPU" in gpu and "KIND_CPU" not in gpu

        def settings(text: str) -> list[str]:
            return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

        assert settings(gpu) == [line.replace("KIND_CPU", "KIND_GPU") for line in settings(cpu)], (
            f"{model}: the GPU variant differs from config.pbtxt in more than its instance kind"
        )
    # the GPU node selector can be removed (null deletes a default in Helm's values)
    unpinned = {"triton": {"gpu": {"enabled": True, "nodeSelector": {"nvidia.com/gpu.present": None}}}}
    unpinned_pod = by_kind(render(unpinned), "Deployment", "triton")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu.present" not in (unpinned_pod.get("nodeSelector") or {})
    cpu_pod = by_kind(render(), "Deployment", "triton")
    assert "--model-config-name=gpu" not in cpu_pod["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "strategy" not in cpu_pod["spec"], "CPU pods may surge"


def test_triton_is_locked_down() -> None:
    docs = render()
    pod = by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/dev/shm", "/tmp"}
    restricted = [
        a for a in container["args"] if a.startswith(("--http-restricted-api=", "--grpc-restricted-protocol="))
    ]
    assert len(restricted) == 2 and all("model-repository" in a and "$(TRITON_ADMIN_KEY)" in a for a in restricted)
    key = next(e for e in container["env"] if e["name"] == "TRITON_ADMIN_KEY")["valueFrom"]["secretKeyRef"]
    assert by_kind(docs, "Secret", key["name"])["data"][key["key"]]
    assert pod["terminationGracePeriodSeconds"] > int(
        next(a for a in container["args"] if a.startswith("--exit-timeout-secs=")).split("=")[1]
    )
    assert pod["serviceAccountName"] == by_kind(docs, "ServiceAccount", "triton")["metadata"]["name"]
    policy = by_kind(docs, "NetworkPolicy", "triton")
    triton_labels = by_kind(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = by_kind(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    assert all(triton_labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    api, metrics = policy["spec"]["ingress"]
    peer = api["from"][0]["podSelector"]["matchLabels"]
    assert all(gateway_labels.get(k) == v for k, v in peer.items()) and not all(
        triton_labels.get(k) == v for k, v in peer.items()
    ), "only gateway pods"
    assert {p["port"] for p in api["ports"]} == {"http", "grpc"} and [p["port"] for p in metrics["ports"]] == [
        "metrics"
    ]


def test_new_routes_are_validated_before_any_pod_sees_them() -> None:
    """A bad routes value fails the upgrade: unparseable YAML at render time, anything
    else in a pre-upgrade hook Job running `router validate` with the gateway's env."""
    docs = render()
    job = by_kind(docs, "Job", "validate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    hook_config = by_kind(docs, "ConfigMap", "validate")
    assert int(hook_config["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    ), "the routes exist before the Job runs"
    routes = by_kind(docs, "ConfigMap", "image-router-routes")
    assert hook_config["data"]["routes.yaml"] == routes["data"]["routes.yaml"], "it checks what the pods will read"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["validate", "/etc/router/routes.yaml"] and job["spec"]["backoffLimit"] == 0
    gateway = by_kind(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    gateway_env = {e["name"]: e.get("value") for e in gateway["env"] if "value" in e}
    job_env = {e["name"]: e["value"] for e in container["env"]}
    assert job_env == {k: gateway_env[k] for k in job_env} and set(job_env) >= {"TRITON_URL", "ROUTER_CACHE_STORE"}
    compile_text(hook_config["data"]["routes.yaml"], env=job_env)  # what the Job would run: valid as shipped
    for broken in ("models: {draft: [unclosed", "just a string"):
        with pytest.raises(Exception, match=r"routes: not valid YAML"):
            render({"routes": broken})
    with pytest.raises(Exception, match=r"routes: expected a routes\.yaml mapping"):
        render({"routes": "colour: blue"})


def test_slo_alerts_query_only_series_the_gateway_exports() -> None:
    from tests.unit.test_dashboard import exported_names

    rule = by_kind(render(VARIANT), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "ImageRouterBudgetMissed", "ImageRouterErrors", "ImageRouterDowngrading",
        "ImageRouterReloadFailed", "ImageRouterRoutesDiffer", "ImageRouterCircuitOpen",
        "ImageRouterRolloutRolledBack", "ImageRouterRolloutStorePaused",
    }  # fmt: skip
    exported = exported_names()
    for name, rule_ in alerts.items():
        series = set(re.findall(r"\b(router_[a-z_]+)\b", rule_["expr"]))
        assert series and series <= exported, (name, series - exported)
        assert 'job=~"demo-image-router-gateway.*"' in rule_["expr"], name
    assert "0.01" in alerts["ImageRouterBudgetMissed"]["expr"]


def test_triton_scales_on_the_gateways_queue_depth() -> None:
    from tests.unit.test_dashboard import exported_names

    with pytest.raises(Exception, match="prometheusAddress is required"):
        render({"triton": {"autoscaling": {"enabled": True}}})
    values = {
        "triton": {"autoscaling": {"enabled": True, "prometheusAddress": "http://prometheus:9090", "maxReplicas": 6}}
    }
    docs = render(values)
    scaled = by_kind(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == by_kind(docs, "Deployment", "triton")["metadata"]["name"]
    assert scaled["spec"]["maxReplicaCount"] == 6
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metadata"]["serverAddress"] == "http://prometheus:9090"
    series = set(re.findall(r"\b(router_[a-z_]+)\b", trigger["metadata"]["query"]))
    assert series == {"router_model_inflight", "router_model_queued"} and series <= exported_names()


def test_s3_models_an_ingress_and_extra_volumes() -> None:
    values = {
        "triton": {
            "modelRepository": {"source": "s3", "path": "s3://models-bucket/repo", "credentialsSecret": "s3-keys"},
            "extraVolumes": [{"name": "cache", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        },
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "hosts": [{"host": "images.example.com"}],
            "tls": [{"secretName": "images-tls", "hosts": ["images.example.com"]}],
        },
    }
    report = lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [], report
    docs = render(values)
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    container = by_kind(docs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert "--model-repository=s3://models-bucket/repo" in container["args"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert keys["AWS_ACCESS_KEY_ID"] == keys["AWS_SECRET_ACCESS_KEY"] == "s3-keys"
    assert {"name": "cache", "mountPath": "/cache"} in container["volumeMounts"]
    ingress = by_kind(docs, "Ingress")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "images.example.com" and ingress["spec"]["tls"][0]["secretName"] == "images-tls"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": by_kind(docs, "Service", "gateway")["metadata"]["name"], "port": {"name": "http"}}


def test_the_chart_works_as_a_subchart() -> None:
    """A parent chart hands every subchart its `global` values: the schema must take them."""
    docs = render({"global": {"imageRegistry": "registry.example.com", "storageClass": "fast"}})
    assert by_kind(docs, "Deployment", "gateway")


def test_every_triton_pod_is_a_replica_of_its_own() -> None:
    """The gateway's Triton URL is a headless Service over exactly Triton's pods, and the
    routes discover its addresses: per-pod balancing, health checks and circuits."""
    docs = render()
    headless = by_kind(docs, "Service", "triton-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is False
    triton_pods = by_kind(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    assert all(triton_pods.get(k) == v for k, v in headless["spec"]["selector"].items())
    env = {
        e["name"]: e.get("value")
        for e in by_kind(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TRITON_URL"] == f"http://{headless['metadata']['name']}:8000"
    routes = by_kind(docs, "ConfigMap", "image-router-routes")["data"]["routes.yaml"]
    table = compile_text(routes, env={k: v for k, v in env.items() if v is not None})
    assert table.backends["triton"].discover and table.backends["triton"].urls == (env["TRITON_URL"],)


def test_a_rollout_on_several_pods_needs_the_shared_store() -> None:
    """On per-pod SQLite state stores every gateway pod would run a rollout of its own (its own
    weight, its own decisions): the chart refuses to render that."""
    routes = """
models: {a: {backend: triton}, b: {backend: triton}}
backends: {triton: {url: "${TRITON_URL}"}}
routes:
  - name: r
    split: [{model: a}, {model: b, canary: true, rollout: {steps: [5, 50]}}]
default_route: a
"""
    with pytest.raises(Exception, match=r"canary rollout with more than one gateway pod needs state\.store: redis"):
        render({"routes": routes})
    one = render({"routes": routes, "gateway": {"replicaCount": 1, "podDisruptionBudget": {"enabled": False}}})
    assert by_kind(one, "ConfigMap", "routes")
    shared = render({"routes": routes, "state": {"store": "redis", "redis": {"deploy": True}}})
    assert by_kind(shared, "Deployment", "gateway")["spec"]["replicas"] == 2


def _env(pod: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = pod["containers"][0]["env"]
    return env


def test_state_is_a_sqlite_file_on_its_own_volume_by_default() -> None:
    """Never in the cache's store: ROUTER_STATE_STORE names a SQLite file on a volume of
    its own (emptyDir, or a claim so it outlives the pod), and no Redis is run."""
    docs = render()
    pod = _gateway_pod(docs)
    env = {e["name"]: e.get("value") for e in _env(pod)}
    assert env["ROUTER_STATE_STORE"] == "sqlite:///var/lib/image-router/state.db"
    assert env["ROUTER_STATE_DIR"] == "/var/lib/image-router"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "state")
    assert mount["mountPath"] == "/var/lib/image-router" and not mount.get("readOnly")
    assert next(v for v in pod["volumes"] if v["name"] == "state") == {"name": "state", "emptyDir": {}}
    assert not any("redis" in d["metadata"]["name"] for d in docs)
    claimed = _gateway_pod(render({"state": {"sqlite": {"existingClaim": "router-state"}}}))
    volume = next(v for v in claimed["volumes"] if v["name"] == "state")
    assert volume == {"name": "state", "persistentVolumeClaim": {"claimName": "router-state"}}


def test_a_state_redis_never_evicts_has_a_password_and_admits_only_gateway_pods() -> None:
    values = {
        "cache": {"store": "redis", "redis": {"deploy": True}},
        "state": {"store": "redis", "redis": {"deploy": True}},
    }
    report = lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [], report
    docs = render(values)
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    state = by_kind(docs, "Deployment", "state-redis")["spec"]["template"]["spec"]["containers"][0]
    args = state["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction" and args[args.index("--appendonly") + 1] == "yes"
    assert (
        args[args.index("--protected-mode") + 1] == "yes"
        and args[args.index("--requirepass") + 1] == "$(REDISCLI_AUTH)"
    )
    cached = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-image-router-redis")
    )
    cache_args = cached["spec"]["template"]["spec"]["containers"][0]["args"]
    assert cache_args[cache_args.index("--maxmemory-policy") + 1] == "allkeys-lru", "two instances: the cache evicts"
    secret = by_kind(docs, "Secret", "-redis")
    assert set(secret["data"]) == {"redis-password"} and len(secret["data"]["redis-password"]) > 40
    for container in (state, cached["spec"]["template"]["spec"]["containers"][0]):
        (auth,) = container["env"]
        assert auth["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "redis-password"}
    policy = by_kind(docs, "NetworkPolicy", "-redis")["spec"]
    selected = {e["key"]: e["values"] for e in policy["podSelector"]["matchExpressions"]}
    assert selected["app.kubernetes.io/component"] == ["redis", "state-redis"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "image-router", "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "gateway"}}}]  # fmt: skip
    env = _env(_gateway_pod(docs))
    names = [e["name"] for e in env]
    assert names.index("ROUTER_REDIS_PASSWORD") < names.index("ROUTER_STATE_STORE"), "defined before it is used"
    values_of = {e["name"]: e.get("value") for e in env}
    assert values_of["ROUTER_STATE_STORE"] == "redis://:$(ROUTER_REDIS_PASSWORD)@demo-image-router-state-redis:6379/0"
    assert values_of["ROUTER_CACHE_STORE"] == "redis://:$(ROUTER_REDIS_PASSWORD)@demo-image-router-redis:6379/0"
    own = render({**values, "redisAuth": {"existingSecret": "my-redis"}})
    assert not any(d["kind"] == "Secret" and d["metadata"]["name"].endswith("-redis") for d in own)
    password = next(e for e in _env(_gateway_pod(own)) if e["name"] == "ROUTER_REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"]["name"] == "my-redis"


def test_state_sharing_the_cache_redis_makes_that_redis_never_evict() -> None:
    """One Redis for both only if no state key can be evicted: the chart then runs the
    cache's Redis as a state store (noeviction, appendonly)."""
    values = {
        "cache": {"store": "redis", "redis": {"deploy": True}},
        "state": {"store": "redis", "redis": {"useCacheRedis": True}},
    }
    docs = render(values)
    (redis,) = [d for d in docs if d["kind"] == "Deployment" and "redis" in d["metadata"]["name"]]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction" and args[args.index("--appendonly") + 1] == "yes"
    env = {e["name"]: e.get("value") for e in _env(_gateway_pod(docs))}
    assert env["ROUTER_STATE_STORE"] == env["ROUTER_CACHE_STORE"]
    with pytest.raises(Exception, match=r"useCacheRedis needs the chart's cache Redis"):
        render({"state": {"store": "redis", "redis": {"useCacheRedis": True}}})
    with pytest.raises(Exception, match=r"state\.redis\.url"):
        render({"state": {"store": "redis"}})
