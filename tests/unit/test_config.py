"""routes.yaml validation: a table of bad files, each with the exact errors it must give,
plus the full and compact forms that must load."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_router.config import compile_text, load_file
from image_router.errors import ConfigError

TESTDATA = Path(__file__).parent / "testdata"
ROOT = Path(__file__).resolve().parents[2]


def _expected(path: Path) -> list[str]:
    return [line.split("# error: ", 1)[1].strip() for line in path.read_text().splitlines() if "# error: " in line]


@pytest.mark.parametrize("case", sorted(TESTDATA.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_file_reports_every_issue_with_its_position(case: Path) -> None:
    """Each testdata file lists (``# error:``) every issue it must produce, located."""
    with pytest.raises(ConfigError) as info:
        compile_text(case.read_text(), file=case.name, env={})
    got = [str(issue) for issue in info.value.issues]
    for expected in _expected(case):
        assert any(line.startswith(expected) for line in got), f"missing {expected!r} in {got}"
    assert len(got) >= len(_expected(case))


def test_every_phase_is_reported_at_once_and_nothing_twice() -> None:
    """Schema errors no longer stop validation before references and regexes are
    checked; a route naming a model that is itself invalid is not reported again."""
    case = TESTDATA / "all_phases.yaml"
    with pytest.raises(ConfigError) as info:
        compile_text(case.read_text(), file=case.name, env={})
    got = [str(issue) for issue in info.value.issues]
    assert len(got) == len(_expected(case)) == 4, got


def test_shipped_routes_yaml_is_valid() -> None:
    table = load_file(ROOT / "routes.yaml")
    assert {"draft", "preview", "quality", "noop"} <= set(table.models)
    assert table.default.arms[0].model == "preview"


COMPACT = """
default_route: preview
routes:
  - match: "prompt:(?i)photo"
    model: quality
    weight: 90
  - match: "prompt:(?i)photo"
    model: quality-next
    weight: 10
    canary: true
  - match: sketch
    model: draft
    budget_ms: 300
"""


def test_compact_form_loads_with_implicit_models_and_weighted_routes() -> None:
    """`match: "prompt:..."`, bare-word intents, `weight` on routes and a model as default."""
    table = compile_text(COMPACT, env={"TRITON_URL": "http://10.0.0.5:8000"})
    assert table.backends["triton"].url == "http://10.0.0.5:8000"
    photo, sketch = table.routes
    assert [(a.model, a.weight, a.canary) for a in photo.arms] == [
        ("quality", 90, False),
        ("quality-next", 10, True),
    ]
    assert photo.matcher.prompt is not None and photo.matcher.prompt.pattern == "(?i)photo"
    assert sketch.matcher.intents == frozenset({"sketch"})
    assert sketch.budget_ms == 300
    assert table.models["quality-next"].remote_name == "quality-next"
    assert table.default.arms[0].model == "preview"


def test_env_interpolation_with_default_and_secret_is_not_in_repr() -> None:
    text = """
backends:
  hosted: {type: openai, base_url: "https://img.example/v1", api_key: "${KEY}"}
  triton: {url: "${TRITON_URL:-http://127.0.0.1:9000}"}
models:
  remote: {backend: hosted, remote_model: img-1}
  local: {backend: triton}
default_route: local
env: [KEY]
"""
    table = compile_text(text, env={"KEY": "sk-very-secret", "TRITON_URL": ""})
    assert table.backends["triton"].url == "http://127.0.0.1:9000"
    key = table.backends["hosted"].api_key
    assert key is not None and key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(table)


def test_digest_changes_with_content() -> None:
    a = compile_text("default_route: draft\n", env={})
    b = compile_text("default_route: preview\n", env={})
    assert a.digest != b.digest
    assert a.digest == compile_text("default_route: draft\n", env={}).digest


def test_an_unknown_key_inside_a_union_field_is_one_issue_at_its_path() -> None:
    """``match`` is a string or a mapping: an unknown key in the mapping is reported
    there, without the other branch's "a valid string" beside it under a made-up key."""
    text = (
        'backends: {t: {url: "http://x:1"}}\nmodels: {m: {backend: t}}\n'
        "routes:\n  - name: r\n    match: {promt: cat}\n    model: m\ndefault_route: m\n"
    )
    with pytest.raises(ConfigError) as info:
        compile_text(text, file="routes.yaml", env={})
    assert [str(issue) for issue in info.value.issues] == ["routes.yaml:5:13 routes[0].match.promt: unknown key"]


def test_a_model_may_go_over_http_on_a_grpc_backend_only() -> None:
    """``protocol: http`` on a model of a gRPC Triton backend; anywhere else it is an
    error at its line."""
    grpc_backend = """
backends: {triton: {url: "http://t:8000", protocol: grpc, grpc_urls: ["t:8001"]}}
models:
  noop: {backend: triton, protocol: http}
  draft: {backend: triton}
default_route: noop
"""
    table = compile_text(grpc_backend)
    assert table.models["noop"].over_http and not table.models["draft"].over_http
    with pytest.raises(ConfigError) as caught:
        compile_text(grpc_backend.replace('protocol: grpc, grpc_urls: ["t:8001"]', "protocol: http"))
    assert "routes.yaml:4" in str(caught.value) and "protocol: grpc" in str(caught.value), str(caught.value)
