"""routes.yaml's JSON Schema: complete, shipped up to date, and in agreement with the loader.

An editor validating against the schema must say what ``router validate`` says about
the shape of a file: every routes file in the repository (the shipped one, the chart's,
the test files, the docs' examples) passes; an unknown key or a bad value is refused at
the same path as the loader's schema phase refuses it; and ``${VAR}`` is allowed
wherever the loader expands it into a value that validates.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from pydantic import BaseModel

from image_router.config import compile_text, schema
from image_router.config.jsonschema import routes_schema, routes_schema_text
from image_router.config.source import PathKey, format_path, read_yaml
from image_router.config.validate import validate
from tests.procs import ROOT

SHIPPED = ROOT / "schema" / "routes.schema.json"
TESTDATA = Path(__file__).parent / "testdata"
VALIDATOR = Draft202012Validator(routes_schema())


def schema_paths(data: Any) -> set[str]:
    """Where the JSON Schema refuses ``data``, as the loader names paths: an unknown
    or a missing key at its own path; inside an ``anyOf``, the errors of the branch a
    person meant (not one of the wrong kind — a string where a mapping was written —
    and else the one that got deepest)."""
    out: set[str] = set()

    def meant(errors: list[ValidationError]) -> tuple[bool, int, int]:
        wrong_kind = all(e.validator == "type" for e in errors)
        return (not wrong_kind, max(len(e.absolute_path) for e in errors), -len(errors))

    def visit(error: ValidationError) -> None:
        path: PathKey = tuple(error.absolute_path)
        if "propertyNames" in error.schema_path:  # a bad name: the error's instance is the key
            out.add(format_path((*path, error.instance)))
        elif error.context:
            branches: dict[Any, list[ValidationError]] = {}
            for sub in error.context:
                branches.setdefault(sub.relative_schema_path[0], []).append(sub)
            for sub in max(branches.values(), key=meant):
                visit(sub)
        elif error.validator == "additionalProperties":
            known = set(error.schema.get("properties", {}))
            out.update(format_path((*path, key)) for key in error.instance if key not in known)
        elif error.validator == "required":
            out.update(format_path((*path, key)) for key in error.validator_value if key not in error.instance)
        else:
            out.add(format_path(path))

    for error in VALIDATOR.iter_errors(data):
        visit(error)
    return out


def loader_paths(text: str, env: dict[str, str] | None = None) -> set[str]:
    """Where the loader's schema phase (pydantic, item by item) refuses ``text`` (its
    other phases — duplicate keys, references, regexes — are no schema's business).
    A bad name is reported at ``NAME.[key]``, taken as the name's path. An issue at a
    path the file does not have, other than a missing key's, is a pydantic union
    branch's name (``routes[0].match.str``: the other branch of ``str | MatchSpec``),
    which the loader reports beside the real one: left out."""
    src = read_yaml(text, "routes.yaml", env or {})
    paths = {format_path(key) for key in src.positions}
    issues = [(i.path.removesuffix(".[key]"), i.message) for i in validate(src, src.data).issues]
    return {path for path, message in issues if path in paths or message == "required"}


def _routes_files() -> list[Path]:
    """Every tracked YAML file that is a routes file: a mapping of routes.yaml's keys only."""
    listed = subprocess.run(
        ["git", "ls-files", "*.yaml", "*.yml"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    keys = set(routes_schema()["properties"])
    found = []
    for name in listed:
        try:
            data = yaml.safe_load((ROOT / name).read_text())
        except yaml.YAMLError:
            continue  # a syntax-error test file, a Helm template
        if isinstance(data, dict) and data and set(data) <= keys:
            found.append(ROOT / name)
    return found


def _yaml_blocks() -> list[tuple[str, str]]:
    """The ```yaml examples of the README and docs/ that are (parts of) routes files."""
    keys = set(routes_schema()["properties"])
    blocks = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for match in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            data = yaml.safe_load(match.group(1))
            if isinstance(data, dict) and set(data) <= keys:
                blocks.append((f"{doc.name}:{text[: match.start()].count(chr(10)) + 1}", match.group(1)))
    return blocks


def test_every_field_of_every_model_has_a_description() -> None:
    """Editors show the descriptions on hover: none may be missing, in any model."""
    models = [m for _, m in inspect.getmembers(schema, inspect.isclass) if issubclass(m, BaseModel)]
    models = [m for m in models if m not in (BaseModel, schema.Strict)]
    assert len(models) >= 28
    missing = [f"{m.__name__}.{name}" for m in models for name, f in m.model_fields.items() if not f.description]
    assert not missing, f"fields without a description: {missing}"
    undocumented = [m.__name__ for m in models if not m.__doc__]
    assert not undocumented, f"models without a docstring: {undocumented}"


def test_every_property_in_the_schema_has_a_description() -> None:
    """The generated document keeps them: every property of every definition has one."""
    generated = routes_schema()
    objects = [("routes.yaml", generated), *generated["$defs"].items()]
    missing = [
        f"{name}.{key}"
        for name, obj in objects
        for key, prop in obj.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert not missing
    assert "``" not in json.dumps(generated), "RST double backticks reached the schema"


def test_the_schema_is_draft_2020_12() -> None:
    generated = routes_schema()
    assert generated["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(generated)


def test_the_shipped_schema_file_is_up_to_date() -> None:
    """schema/routes.schema.json (what the modeline names) is what the models generate."""
    assert SHIPPED.read_text() == routes_schema_text(), (
        "schema/routes.schema.json is stale: run `router schema --output schema/routes.schema.json`"
    )


def test_the_shipped_routes_file_names_the_schema() -> None:
    first = (ROOT / "routes.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=./schema/routes.schema.json"
    assert (ROOT / "routes.yaml").parent.joinpath("schema/routes.schema.json").is_file()


def test_the_routes_files_of_the_repository_are_found() -> None:
    found = {p.relative_to(ROOT).as_posix() for p in _routes_files()}
    assert "routes.yaml" in found
    assert "tests/unit/testdata/unknown_key.yaml" in found
    assert not any(name.startswith("helm/") for name in found)  # the chart's routes are a string in values.yaml


@pytest.mark.parametrize("path", _routes_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_routes_file_in_the_repository_is_judged_as_the_loader_judges_it(path: Path) -> None:
    """The shipped file and the test files: valid to the schema exactly when the loader's
    schema phase finds nothing, and refused at the very paths it names (the test files
    with references, regex or duplicate-key errors are valid *shapes*)."""
    text = path.read_text()
    assert schema_paths(yaml.safe_load(text)) == loader_paths(text, {"NOT_SET_ANYWHERE": "http://x"})


def test_the_shipped_file_and_the_charts_routes_validate() -> None:
    assert schema_paths(yaml.safe_load((ROOT / "routes.yaml").read_text())) == set()
    values = yaml.safe_load((ROOT / "helm" / "image-router" / "values.yaml").read_text())
    assert schema_paths(yaml.safe_load(values["routes"])) == set()


@pytest.mark.parametrize(("where", "text"), _yaml_blocks(), ids=lambda x: x if ":" in x else "")
def test_the_docs_examples_validate(where: str, text: str) -> None:
    assert schema_paths(yaml.safe_load(text)) == set(), where


UNKNOWN_KEYS = [
    ("routes:\n  - model: draft\n    match: {promt: cat}\n", "routes[0].match.promt"),
    ("rutes: []\n", "rutes"),
    ("backends:\n  triton: {url: 'http://t:8000', retry: {atempts: 2}}\n", "backends.triton.retry.atempts"),
    ("backends:\n  hosted: {type: openai, base_url: 'https://h/v1', url: 'https://h'}\n", "backends.hosted.url"),
    (
        "models:\n  draft: {backend: t, price: {table: [{per_image: 1, max_sid: 2}]}}\n",
        "models.draft.price.table[0].max_sid",
    ),
    ("cache: {stor: 'disk://x'}\n", "cache.stor"),
    ("jobs: {tiers: {draft: {max_runing: 2}}}\n", "jobs.tiers.draft.max_runing"),
    (
        "tenants:\n  tenants:\n    acme: {keys: [k], budget: {limits: [{per: day, amount: 1, pre: 2}]}}\n",
        "tenants.tenants.acme.budget.limits[0].pre",
    ),
    ("routes:\n  - split: [{model: a, wieght: 2}]\n", "routes[0].split[0].wieght"),
    ("default_route: {model: draft, fallbak: [x]}\n", "default_route.fallbak"),
]


@pytest.mark.parametrize(("text", "path"), UNKNOWN_KEYS, ids=[p for _, p in UNKNOWN_KEYS])
def test_an_unknown_key_is_refused_at_its_path_by_both(text: str, path: str) -> None:
    assert path in loader_paths(text)
    assert schema_paths(yaml.safe_load(text)) == loader_paths(text) == {path}


BAD_VALUES = [
    "routes:\n  - model: draft\n    budget_ms: -1\n",
    "routes:\n  - model: draft\n    sticky: cookie\n",
    "routes:\n  - {model: draft, resize: stretch}\n",
    "backends:\n  triton: {url: 'ftp://t', protocol: udp, grpc_port: 70000}\n",
    "models:\n  'bad name': {backend: triton}\n",
    "models:\n  draft: {backend: triton, max_queue: 1.5}\n",
    "state: {store: 'memcached://x', timeout_ms: 0}\n",
    "version: 2\n",
    "env: ['1BAD']\n",
    "tenants: {mode: closed}\n",
]


@pytest.mark.parametrize("text", BAD_VALUES)
def test_a_bad_value_is_refused_at_the_same_path_by_both(text: str) -> None:
    expected = loader_paths(text)
    assert expected
    assert schema_paths(yaml.safe_load(text)) == expected


ENV = {"TRITON_URL": "http://triton:8000", "PORT": "8001", "PROTO": "grpc", "FLAG": "true", "MS": "250"}
WITH_ENV = [
    "backends:\n  triton: {url: '${TRITON_URL}', protocol: '${PROTO}', grpc_port: '${PORT}'}\n",
    "backends:\n  triton: {url: '${TRITON_URL:-http://127.0.0.1:8000}', max_connections: '${PORT:-8}'}\n",
    "routes:\n  - {model: draft, budget_ms: '${MS}', cache: {upgrade: '${FLAG}'}}\n",
    "cache: {store: 'redis://${REDIS_HOST:-r}:6379/0', max_bytes: '${MS}'}\n",
    "state: {store: '${ROUTER_STATE_STORE:-sqlite://state.db}', assume_noeviction: '${FLAG}'}\n",
    "models:\n  draft: {backend: triton, version: '${MS}', latency_hint_ms: '${MS}'}\n",
]


@pytest.mark.parametrize("text", WITH_ENV)
def test_env_references_are_allowed_where_the_loader_expands_them(text: str) -> None:
    """A ``${VAR}`` in a number, flag, enum or patterned string loads, and validates."""
    declared = "env: [PORT, PROTO, FLAG, MS, REDIS_HOST]\n"
    assert loader_paths(declared + text, ENV) == set()
    assert schema_paths(yaml.safe_load(declared + text)) == set()


def test_a_backend_of_no_known_type_is_refused_by_both() -> None:
    """The loader names the backend (pydantic's tag error); the schema, more exactly,
    its ``type``."""
    text = "backends:\n  x: {type: nope}\n"
    assert loader_paths(text) == {"backends.x"}
    assert schema_paths(yaml.safe_load(text)) == {"backends.x.type"}


def test_env_references_are_not_allowed_where_pydantic_would_still_refuse_them() -> None:
    """``version`` is the integer 1: ``"1"`` from a variable is refused by pydantic, so
    the schema refuses the reference too; and a list is never a string."""
    assert schema_paths({"version": "${V}"}) == {"version"}
    assert schema_paths({"routes": "${ROUTES}"}) == {"routes"}


def test_a_tenants_file_reference_validates(tmp_path: Path) -> None:
    """``tenants: {file: …}`` is the loader's too: the schema accepts it, and only it."""
    (tmp_path / "tenants.yaml").write_text("mode: keys\ntenants: {acme: {keys: [sk-acme-0123456789abcdef]}}\n")
    text = "routes: []\ndefault_route: draft\ntenants: {file: tenants.yaml}\n"
    compile_text(text, str(tmp_path / "routes.yaml"), {})
    assert schema_paths(yaml.safe_load(text)) == set()
    assert schema_paths({"tenants": {"file": "t.yaml", "mode": "keys"}})  # one or the other, not both
