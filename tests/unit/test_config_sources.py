"""routes.yaml's inputs: every file read once into one digest, ``${VAR}`` only for
declared variables (never the admin token), secret files only under declared
directories, and every issue of a mixed file reported at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from image_router.config import compile_text
from image_router.config.compile import compile_sources
from image_router.config.source import CONFIG_ENV
from image_router.config.sources import SECRET_DIRS, gather
from image_router.errors import ConfigError

TESTDATA = Path(__file__).parent / "testdata"
BASE = 'backends: {triton: {url: "http://t:8000"}}\nmodels: {noop: {backend: triton}}\ndefault_route: noop\n'
KEYS = "tenants:\n  mode: keys\n  tenants:\n    acme: {key_files: [keys/acme]}\n"


def issues(text: str, env: dict[str, str], file: str = "routes.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        compile_text(text, file=file, env=env)
    return [str(i) for i in info.value.issues]


@pytest.mark.parametrize(("case", "count"), [("mixed_route", 4), ("mixed_split", 6), ("all_phases", 4)])
def test_a_mixed_file_reports_every_problem_once(case: str, count: int) -> None:
    """A schema error no longer hides the regex and references of its own route."""
    got = issues((TESTDATA / f"{case}.yaml").read_text(), {}, f"{case}.yaml")
    assert len(got) == count == len(set(got)), got


def test_only_declared_variables_are_expanded_and_never_the_admin_token() -> None:
    env = {"ACME_URL": "http://acme:1", "ROUTER_ADMIN_TOKEN": "adm-secret", "OTHER_SECRET": "s3"}
    used = BASE.replace('"http://t:8000"', '"${ACME_URL}"')
    got = issues(used, env)
    assert (
        "routes.yaml:1:26 backends.triton.url: environment variable ACME_URL is not declared (routes.yaml reads "
        f"only the variables in {CONFIG_ENV} or its own top-level env: list)"
    ) in got
    assert compile_text(used + "env: [ACME_URL]\n", env=env).backends["triton"].url == "http://acme:1"
    leak = BASE + 'cache: {public_url: "https://img/${ROUTER_ADMIN_TOKEN}"}\nenv: [ROUTER_ADMIN_TOKEN]\n'
    got = issues(leak, {**env, CONFIG_ENV: "ROUTER_ADMIN_TOKEN"})
    assert "routes.yaml:5:7 env: ROUTER_ADMIN_TOKEN is never expanded in routes.yaml" in got
    assert any("ROUTER_ADMIN_TOKEN is never expanded here" in i and ":4:" in i for i in got), got
    assert not any("adm-secret" in i for i in got)
    # with the operator's list set, routes.yaml may declare only what it names
    got = issues(used + "env: [ACME_URL, OTHER_SECRET]\n", {**env, CONFIG_ENV: "ACME_URL"})
    assert got == [f"routes.yaml:4:17 env: OTHER_SECRET is not in {CONFIG_ENV}, the operator's list of variables "
                   "routes.yaml may read"]  # fmt: skip
    assert compile_text(used, env={**env, CONFIG_ENV: "ACME_URL, OTHER"}).backends["triton"].url == "http://acme:1"


def test_key_files_and_the_tenants_file_only_under_secret_dirs(tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "keys").mkdir(parents=True)
    (config / "keys" / "acme").write_text("sk-acme-0123456789abcdef\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "k").write_text("sk-outside-0123456789abcdef\n")
    (config / "keys" / "link").symlink_to(outside / "k")
    file = str(config / "routes.yaml")
    assert compile_text(BASE + KEYS, file=file, env={}).tenants[0].name == "acme"  # beside routes.yaml: allowed
    refused = f"{file}:7:24 tenants.tenants.acme.key_files[0]: not under a secret directory ({config}; see secret_dirs)"
    assert refused in issues(BASE + KEYS.replace("keys/acme", str(outside / "k")), {}, file)
    assert refused in issues(BASE + KEYS.replace("keys/acme", "keys/link"), {}, file)  # a symlink out is out
    declared = BASE + KEYS.replace("keys/acme", str(outside / "k")) + f'secret_dirs: ["{outside}"]\n'
    assert compile_text(declared, file=file, env={}).tenants[0].name == "acme"
    got = issues(declared, {SECRET_DIRS: str(config)}, file)  # the operator's list caps secret_dirs
    assert any(i.startswith(f"{file}:8:") and SECRET_DIRS in i for i in got), got
    got = issues(BASE + 'tenants: {file: "/etc/hostname"}\n', {}, file)
    assert got == [f"{file}:4:11 tenants.file: not under a secret directory ({config}; see secret_dirs)"]


def test_the_digest_covers_every_source_and_only_them(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    key = tmp_path / "keys" / "acme"
    key.write_text("sk-acme-0123456789abcdef\n")
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("mode: keys\ntenants:\n  acme: {key_files: [keys/acme]}\n")
    text, file = BASE + "tenants: {file: tenants.yaml}\n", str(tmp_path / "routes.yaml")
    first = gather(text, file, {})
    assert first.digest == gather(text, file, {}).digest, "the same files: the same digest"
    assert set(first.paths) == {str(tenants), str(key)}
    table = compile_sources(first, {})
    assert table.digest == first.digest and set(table.sources) == {str(tenants), str(key)}
    key.write_text("sk-acme-rotated-0123456789\n")
    assert gather(text, file, {}).digest != first.digest, "a rotated key is a change"
    tenants.write_text("mode: keys\ntenants:\n  acme: {key_files: [keys/acme], images_per_day: 5}\n")
    assert len({first.digest, gather(text, file, {}).digest}) == 2
    os.remove(key)
    missing = gather(text, file, {})
    assert str(key) in missing.errors and missing.digest != first.digest
