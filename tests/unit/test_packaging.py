"""What the wheel carries is declared in pyproject.toml by hand (a package list and the
top-level files mapped into it): these keep the declarations equal to the tree, so a new
subpackage or model file cannot be left out of the wheel unnoticed. The wheel itself is
built and installed by tests/e2e/test_wheel.py."""

from __future__ import annotations

import fnmatch
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
MAPPED = {"image_router.model_repository": "model_repository", "image_router.shipped": "."}


def test_every_package_directory_is_listed_and_nothing_else() -> None:
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "image_router").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert len(on_disk) > 10
    assert set(CONFIG["packages"]) - set(MAPPED) == on_disk


def test_the_mapped_top_level_files_are_the_ones_the_wheel_carries() -> None:
    """Every tracked file of model_repository/ is matched by a package-data glob (so
    ``router up`` from the wheel finds each model complete), and the shipped routes.yaml
    and its schema are there."""
    assert CONFIG["package-dir"] == MAPPED
    globs = CONFIG["package-data"]["image_router.model_repository"]
    tracked = subprocess.run(["git", "ls-files", "model_repository"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    assert tracked
    unmatched = [f for f in tracked if not any(fnmatch.fnmatch(f.removeprefix("model_repository/"), g) for g in globs)]
    assert unmatched == []
    shipped = CONFIG["package-data"]["image_router.shipped"]
    assert all((ROOT / name).is_file() for name in shipped) and "routes.yaml" in shipped
