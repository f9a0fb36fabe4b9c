"""Tenants through the chart: ``gateway.tenants.file`` beside routes.yaml, the key Secret
``gateway.tenants.keysSecret`` in a directory routes.yaml declares a secret directory,
``gateway.configEnv`` as the ``${VAR}``\\s routes may read — and the rendered pod's files,
laid out as the kubelet lays them out, loaded by the gateway's own reload path."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from helm_python.chart import Chart, lint
from helm_python.errors import HelmValuesError

from image_router.config.compile import compile_sources
from image_router.config.source import CONFIG_ENV
from image_router.config.sources import read_sources
from image_router.config.table import key_digest
from tests.helm.test_chart import CHART, CUSTOM_KINDS, KUBERNETES, by_kind, render

DEFAULT_ROUTES: str = yaml.safe_load((CHART / "values.yaml").read_text())["routes"]
ACME_KEY = "sk-acme-0123456789abcdef"
GLOBEX_KEY = "sk-globex-0123456789abcdef"
# the operator's Secrets, which the chart refers to and never renders
SECRETS = {"tenant-keys": {"globex": GLOBEX_KEY}, "env-keys": {"acme": ACME_KEY}}
TENANTS = """\
mode: keys
tenants:
  acme: {keys: ["${ACME_KEY}"], requests_per_s: 5, burst: 10}
  globex: {key_files: [/etc/router-keys/globex], images_per_day: 1000}
"""
VALUES: dict[str, Any] = {
    "routes": DEFAULT_ROUTES + "tenants: {file: tenants.yaml}\nsecret_dirs: [., /etc/router-keys]\n",
    "gateway": {
        "configEnv": [{"name": "ACME_KEY", "valueFrom": {"secretKeyRef": {"name": "env-keys", "key": "acme"}}}],
        "tenants": {"file": TENANTS, "keysSecret": "tenant-keys"},
    },
}


def _with(**gateway: Any) -> dict[str, Any]:
    values = copy.deepcopy(VALUES)
    values["gateway"].update(gateway)
    return values


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The gateway's pod and the routes-validation hook's: both must see the same setup."""
    return {
        "gateway": by_kind(docs, "Deployment", "gateway")["spec"]["template"]["spec"],
        "hook": by_kind(docs, "Job", "validate")["spec"]["template"]["spec"],
    }


def _routes_file(container: dict[str, Any]) -> PurePosixPath:
    ref = next(a for a in [*container.get("args", []), *container.get("command", [])] if "routes.yaml" in a)
    return PurePosixPath(ref.removeprefix("--routes="))


def _mount(pod: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == name)
    volume = next(v for v in pod["volumes"] if v["name"] == name)
    return mount, volume


def _secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """A Secret's keys: one the chart renders, else one of the operator's (``SECRETS``)."""
    rendered = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == name]
    if rendered:
        return {k: base64.b64decode(v).decode() for k, v in rendered[0].get("data", {}).items()}
    return SECRETS[name]


def _volume_files(docs: list[dict[str, Any]], volume: dict[str, Any]) -> dict[str, str]:
    """What a ConfigMap, Secret or projected volume holds, file by file."""
    sources = volume["projected"]["sources"] if "projected" in volume else [volume]
    files: dict[str, str] = {}
    for source in sources:
        if "configMap" in source:
            config = [
                d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["configMap"]["name"]
            ]
            files.update(config[0]["data"])
        elif "secret" in source:
            files.update(_secret_data(docs, source["secret"].get("secretName") or source["secret"]["name"]))
    return files


def _env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = _secret_data(docs, ref["name"])[ref["key"]]
    return env


def _materialize(docs: list[dict[str, Any]], pod: dict[str, Any], root: Path) -> tuple[Path, dict[str, str]]:
    """The container's view under ``root``: each ConfigMap/Secret mount as the kubelet
    writes it (a timestamped directory, ``..data`` linked to it, each file a link through
    ``..data``), and the absolute mount paths the files name moved under ``root``."""
    container = pod["containers"][0]
    mounts = {m["mountPath"]: _volume_files(docs, _mount(pod, m["name"])[1]) for m in container["volumeMounts"]}
    moved = re.compile(
        r"(?<![\w./-])(" + "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True)) + r")(?![\w.-])"
    )
    for mount_path, files in mounts.items():
        directory = root / mount_path.lstrip("/")
        (directory / "..2026_01_01_00_00_00.000000001").mkdir(parents=True)
        (directory / "..data").symlink_to("..2026_01_01_00_00_00.000000001")
        for name, text in files.items():
            (directory / "..data" / name).write_text(moved.sub(lambda m: f"{root}{m.group(1)}", text))
            (directory / name).symlink_to(f"..data/{name}")
    return root / str(_routes_file(container)).lstrip("/"), _env(docs, container)


def test_a_tenants_setup_lints_and_every_manifest_is_valid_kubernetes() -> None:
    report = lint(CHART, VALUES, strict=True, kube_version=f"v{KUBERNETES}")
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report
    for doc in render(VALUES):
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_tenants_file_lies_where_routes_yaml_points_in_the_pods_and_the_hook() -> None:
    """Beside routes.yaml in one volume (one ``..data`` swap, in routes.yaml's own directory,
    the default secret directory), from a Secret: a tenants file may hold keys."""
    docs = render(VALUES)
    for who, pod in _pods(docs).items():
        routes_file = _routes_file(pod["containers"][0])
        mount, volume = _mount(pod, "routes")
        assert PurePosixPath(mount["mountPath"]) == routes_file.parent and mount["readOnly"] and "subPath" not in mount
        files = _volume_files(docs, volume)
        routes = yaml.safe_load(files[routes_file.name])
        named = routes_file.parent / routes["tenants"]["file"]
        assert named.parent == routes_file.parent and files[named.name] == TENANTS, who
        kinds = {next(iter(s)) for s in volume["projected"]["sources"]}
        assert kinds == {"configMap", "secret"}, f"{who}: tenants.yaml from a Secret, routes.yaml from a ConfigMap"
    assert by_kind(docs, "ConfigMap", "routes")["data"]["routes.yaml"] == VALUES["routes"]
    assert "tenants.yaml" not in by_kind(docs, "ConfigMap", "routes")["data"]
    plain = _mount(_pods(render())["gateway"], "routes")[1]
    assert plain == {"name": "routes", "configMap": {"name": "demo-image-router-routes"}}, "no tenants: as before"


def test_the_key_secret_is_read_only_in_a_directory_routes_declare_a_secret_directory() -> None:
    """The gateway reads key files only under routes.yaml's ``secret_dirs``: the Secret's
    mount path must be one of them, in the pods and in the hook alike."""
    docs = render(VALUES)
    for who, pod in _pods(docs).items():
        mount, volume = _mount(pod, "tenant-keys")
        assert mount["readOnly"] is True and "subPath" not in mount, who
        assert mount["mountPath"] == "/etc/router-keys" and volume["secret"]["secretName"] == "tenant-keys", who
        routes_dir = _routes_file(pod["containers"][0]).parent
        routes = yaml.safe_load(_volume_files(docs, _mount(pod, "routes")[1])["routes.yaml"])
        declared = {PurePosixPath(routes_dir / d) for d in routes["secret_dirs"]}
        assert PurePosixPath(mount["mountPath"]) in declared, who
        # 0440 and the pod's group: the non-root user reads its keys, no one else does
        assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001, who
    moved = _with(tenants={"file": TENANTS, "keysSecret": "tenant-keys", "keysPath": "/var/run/tenant-keys"})
    with pytest.raises(Exception, match=re.escape("secret_dirs: [., /var/run/tenant-keys]")):
        render(moved)
    moved["routes"] = VALUES["routes"].replace("/etc/router-keys", "/var/run/tenant-keys")
    mount, _ = _mount(_pods(render(moved))["gateway"], "tenant-keys")
    assert mount["mountPath"] == "/var/run/tenant-keys"


def test_config_env_reaches_the_gateway_and_the_hook_as_the_operators_list() -> None:
    """Each entry verbatim (a Secret's key stays a reference), and their names as
    ROUTER_CONFIG_ENV, so routes.yaml may read them and no other variable of the pod."""
    entries = [
        *VALUES["gateway"]["configEnv"],
        {"name": "HOSTED_KEY", "value": "hk-1"},
    ]
    docs = render(_with(configEnv=entries))
    for who, pod in _pods(docs).items():
        env = pod["containers"][0]["env"]
        assert all(e in env for e in entries), who
        assert {"name": CONFIG_ENV, "value": "ACME_KEY,HOSTED_KEY"} in env, who
    assert all(e["name"] != CONFIG_ENV for e in _pods(render())["gateway"]["containers"][0]["env"]), "unset: as before"


def test_the_gateways_extra_env_reaches_the_hook_too() -> None:
    """routes.yaml may read a variable given in ``gateway.env`` (with an ``env:`` list):
    the validation hook that runs it before an upgrade must have it as well, or every
    ``helm upgrade`` fails with "X is not set"."""
    extra = [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4318"}, {"name": "X", "value": "1"}]
    for who, pod in _pods(render(_with(env=extra))).items():
        env = pod["containers"][0]["env"]
        assert all(e in env for e in extra), who


def test_tenant_edits_are_hot_reloaded_like_routes_and_roll_no_pod() -> None:
    """The gateway watches the tenants file and the key directory and reloads both, as it
    does routes.yaml, so neither change touches the pod template (no checksum annotation)."""
    before = render(VALUES)
    edited = _with(
        tenants={"file": TENANTS.replace("images_per_day: 1000", "images_per_day: 10"), "keysSecret": "tenant-keys"}
    )
    after = render(edited)
    assert by_kind(before, "Secret", "tenants")["data"] != by_kind(after, "Secret", "tenants")["data"]
    template = by_kind(before, "Deployment", "gateway")["spec"]["template"]
    assert by_kind(after, "Deployment", "gateway")["spec"]["template"] == template
    rerouted = render({**VALUES, "routes": VALUES["routes"].replace("budget_ms: 500", "budget_ms: 600")})
    assert by_kind(rerouted, "Deployment", "gateway")["spec"]["template"] == template


@pytest.mark.parametrize(
    ("routes", "tenants", "error"),
    [
        (DEFAULT_ROUTES, {"file": TENANTS}, "routes must read it with `tenants: {file: tenants.yaml}`"),
        (VALUES["routes"], {}, "set gateway.tenants.file to its content"),
        (VALUES["routes"], {"file": "tenants.yaml"}, "expected the content of tenants.yaml"),
        (
            DEFAULT_ROUTES + "tenants: {file: tenants.yaml}\n",
            {"file": TENANTS, "keysSecret": "k"},
            "routes must list it in secret_dirs (secret_dirs: [., /etc/router-keys])",
        ),
        (
            DEFAULT_ROUTES + "tenants: {file: tenants.yaml}\nsecret_dirs: [/etc/router-keys]\n",
            {"file": TENANTS, "keysSecret": "k"},
            "secret_dirs must include routes.yaml's own directory (.)",
        ),
    ],
    ids=["file-unread", "file-missing", "file-is-a-path", "keys-undeclared", "routes-dir-undeclared"],
)
def test_tenants_values_and_routes_that_disagree_fail_the_render(
    routes: str, tenants: dict[str, Any], error: str
) -> None:
    """Every pod would refuse such routes: the render says why instead."""
    with pytest.raises(Exception, match=re.escape(error)):
        render({"routes": routes, "gateway": {"tenants": tenants}})


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"configEnv": [{"name": "TRITON_URL", "value": "x"}]}, "/gateway/configEnv/0/name"),
        ({"configEnv": [{"name": "ROUTER_ADMIN_TOKEN", "value": "x"}]}, "/gateway/configEnv/0/name"),
        ({"configEnv": [{"name": "ACME-KEY", "value": "x"}]}, "/gateway/configEnv/0/name"),
        ({"configEnv": [{"value": "x"}]}, "/gateway/configEnv/0"),
        ({"tenants": {"keysPath": "/etc/router/keys"}}, "/gateway/tenants/keysPath"),
        ({"tenants": {"keysPath": "keys"}}, "/gateway/tenants/keysPath"),
        ({"tenants": {"keySecret": "typo"}}, "additional properties 'keySecret'"),
    ],
)
def test_schema_rejects_bad_tenants_values_naming_the_key(bad: dict[str, Any], where: str) -> None:
    """A variable the chart sets (or the admin token) is not the operator's to declare; the
    key Secret is never mounted inside routes.yaml's ConfigMap directory."""
    with Chart.load(CHART) as chart, pytest.raises(HelmValuesError) as info:
        chart.validate_schema({"gateway": bad})
    assert where in str(info.value)


@pytest.mark.parametrize("who", ["gateway", "hook"])
def test_the_rendered_files_load_as_a_tenants_setup(who: str, tmp_path: Path) -> None:
    """The pod's (or the hook's) files and environment as rendered, laid out as the kubelet
    mounts them, read and compiled by what a reload runs: both tenants, their keys from a
    ``${VAR}`` and from the mounted Secret, and every file inside a secret directory."""
    docs = render(VALUES)
    routes_file, env = _materialize(docs, _pods(docs)[who], tmp_path)
    sources = read_sources(routes_file, env)
    table = compile_sources(sources, env)
    assert table.tenant_mode == "keys"
    assert {t.name: t.key_digests for t in table.tenants} == {
        "acme": (key_digest(ACME_KEY),),
        "globex": (key_digest(GLOBEX_KEY),),
    }
    assert {Path(p).name for p in table.sources} == {"tenants.yaml", "globex"}
