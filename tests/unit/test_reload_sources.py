"""The reloader decides "changed" from every source: a Kubernetes Secret rotated by a
``..data`` symlink swap is picked up by one reload and by the watcher; re-reading the
same files (with a tenants file too) is ``changed: false`` and counts as no success."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from image_router.config import load_file
from image_router.config.table import RoutingTable
from image_router.policy.tenants import find_tenant
from image_router.reload import RoutesReloader

OLD, NEW = "sk-acme-old-0123456789abcdef", "sk-acme-new-0123456789abcdef"


def secret(directory: Path, stamp: str, value: str) -> None:
    """What the kubelet does: write a timestamped directory, then point ``..data`` at
    it by an atomic rename; ``key -> ..data/key`` never changes."""
    (directory / stamp).mkdir()
    (directory / stamp / "key").write_text(value + "\n")
    (directory / "..data_tmp").symlink_to(stamp)
    os.replace(directory / "..data_tmp", directory / "..data")
    if not (directory / "key").is_symlink():
        (directory / "key").symlink_to("..data/key")


def setup(tmp_path: Path, tenants_file: bool = False) -> tuple[RoutesReloader, list[RoutingTable]]:
    keys = tmp_path / "acme-key"
    keys.mkdir()
    secret(keys, "..2026_12_06_01", OLD)
    tenants = f"mode: keys\ntenants:\n  acme: {{key_files: [{keys / 'key'}]}}\n"
    if tenants_file:
        (tmp_path / "tenants.yaml").write_text(tenants)
        tenants = "tenants: {file: tenants.yaml}\n"
    else:
        tenants = "tenants:\n" + "".join(f"  {line}\n" for line in tenants.splitlines())
    path = tmp_path / "routes.yaml"
    path.write_text(
        'backends: {triton: {url: "http://t:8000"}}\nmodels: {noop: {backend: triton}}\ndefault_route: noop\n' + tenants
    )
    applied: list[RoutingTable] = []
    return RoutesReloader(path, applied.append, load_file(path)), applied


def knows(reloader: RoutesReloader, key: str) -> bool:
    return find_tenant(reloader.active.tenant_keys, key) is not None


def test_a_rotated_secret_is_one_reload_away_and_the_old_key_is_gone(tmp_path: Path) -> None:
    reloader, applied = setup(tmp_path)
    assert knows(reloader, OLD) and not knows(reloader, NEW)
    secret(tmp_path / "acme-key", "..2026_12_06_02", NEW)
    result = reloader.reload()
    assert result.ok and result.changed and len(applied) == 1
    assert knows(reloader, NEW) and not knows(reloader, OLD)
    assert reloader.counts == {"success": 1, "failure": 0}


def test_nothing_changed_is_changed_false_and_not_a_success(tmp_path: Path) -> None:
    for tenants_file in (False, True):
        directory = tmp_path / str(tenants_file)
        directory.mkdir()
        reloader, applied = setup(directory, tenants_file)
        for _ in range(3):
            result = reloader.reload()
            assert result.ok and not result.changed, (tenants_file, result)
        assert applied == [] and reloader.counts == {"success": 0, "failure": 0}


async def test_the_watcher_sees_a_secret_swap_in_another_directory(tmp_path: Path) -> None:
    reloader, _ = setup(tmp_path, tenants_file=True)
    assert tmp_path / "acme-key" in reloader.watched()
    stop = asyncio.Event()
    watching = asyncio.create_task(reloader.watch(stop))
    await asyncio.sleep(0.5)  # the watcher is set up
    secret(tmp_path / "acme-key", "..2026_12_06_02", NEW)
    async with asyncio.timeout(10):
        while not knows(reloader, NEW):
            await asyncio.sleep(0.05)
    assert not knows(reloader, OLD)
    stop.set()
    await asyncio.wait_for(watching, 5)
