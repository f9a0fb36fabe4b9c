"""A tenant's key rotated the way Kubernetes rotates a mounted Secret — a new
timestamped directory, then the ``..data`` symlink swapped atomically — against a real
gateway: the new key works after one ``POST /admin/reload`` (and, the next time, within
the watcher's delay) and the old one gets 401. A reload with nothing changed says so."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

KEYS = ["sk-acme-first-0123456789abcdef", "sk-acme-second-0123456789abcd", "sk-acme-third-0123456789abcdef"]


def rotate(directory: Path, stamp: str, value: str) -> None:
    (directory / stamp).mkdir()
    (directory / stamp / "key").write_text(value + "\n")
    (directory / "..data_tmp").symlink_to(stamp)
    os.replace(directory / "..data_tmp", directory / "..data")  # atomic, as the kubelet does
    if not (directory / "key").is_symlink():
        (directory / "key").symlink_to("..data/key")


def status(gw: GatewayProcess, key: str) -> int:
    r = httpx.post(
        gw.url + "/api/v1/generate", json={"prompt": "a key"}, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    return r.status_code


def test_a_secret_rotated_by_symlink_swap(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    secret = tmp_path / "acme"
    secret.mkdir()
    rotate(secret, "..2026_12_06_21_00_00.1", KEYS[0])
    (tmp_path / "tenants.yaml").write_text(f"mode: keys\ntenants:\n  acme: {{key_files: [{secret / 'key'}]}}\n")
    gw = start_gateway(TIERS + "default_route: {model: noop, budget_ms: 5000}\ntenants: {file: tenants.yaml}\n")
    assert status(gw, KEYS[0]) == 200
    reload = gw.url + "/admin/reload"
    unchanged = httpx.post(reload, headers=gw.admin).json()
    assert unchanged["ok"] and unchanged["changed"] is False, unchanged  # with a tenants file too

    rotate(secret, "..2026_12_06_21_05_00.2", KEYS[1])
    result = httpx.post(reload, headers=gw.admin).json()
    assert result["ok"] and result["changed"] is True, result
    assert status(gw, KEYS[1]) == 200 and status(gw, KEYS[0]) == 401

    rotate(secret, "..2026_12_06_21_10_00.3", KEYS[2])  # no reload asked: the watcher sees it
    deadline = time.monotonic() + 10
    while status(gw, KEYS[2]) != 200:
        assert time.monotonic() < deadline, "the watcher did not pick the new key up"
        time.sleep(0.1)
    assert status(gw, KEYS[1]) == 401
