"""Every script in ``examples/`` run as a new user runs it, against a real gateway.

The scripts are found by listing the directory, so a new example is run without a
change here: a ``.py`` with this virtualenv's Python, a ``.sh`` with bash, each in a
directory of its own with ``ROUTER_URL``, ``ROUTER_GRPC``, ``OPENAI_API_KEY`` and
``EXAMPLES_OUT`` pointing at the test gateway and that directory. Each must exit 0 and
every image it says it ``wrote`` must exist and decode.

The gateway serves the shipped ``routes.yaml`` — what ``make up`` serves, so the
examples' prompts reach the tiers a user's would (sketches: draft; other prompts:
preview with a draft preview) — plus a ``jobs:`` block for the async example and keys
mode, so a script that forgets to send the key fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from image_router.triton import TritonServer
from tests.procs import ROOT, GatewayProcess

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "examples"
RUNNERS = {".py": [sys.executable], ".sh": ["bash"]}
SCRIPTS = sorted(path.name for path in EXAMPLES.iterdir() if path.suffix in RUNNERS)
KEY = "sk-examples-0123456789abcdef"
EXTRA = f"""
tenants:
  mode: keys
  tenants:
    examples: {{keys: ["{KEY}"]}}
"""
WROTE = re.compile(r"\bwrote (\S+)")


@pytest.fixture(scope="module")
def gw(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The shipped routes.yaml (its cache in a directory of its own), with jobs and keys."""
    directory = tmp_path_factory.mktemp("examples-gateway")
    text = (ROOT / "routes.yaml").read_text().replace("disk://.router-cache", f"disk://{directory}/cache")
    assert re.search(r"^jobs:", text, re.MULTILINE), "the shipped file turns jobs on (the async example needs it)"
    routes = directory / "routes.yaml"
    routes.write_text(text + EXTRA)
    grpc = f"127.0.0.1:{triton.config.grpc_port}"  # the shipped file's backend speaks gRPC
    gateway = GatewayProcess(routes, triton.http_url, directory / "gateway.log", triton_grpc=grpc)
    yield gateway
    gateway.stop()


def test_every_file_in_examples_is_run_or_is_the_readme() -> None:
    """Nothing lands in examples/ that this test would silently skip."""
    others = {path.name for path in EXAMPLES.iterdir()} - set(SCRIPTS) - {"README.md", "__pycache__"}
    assert not others, f"examples/ holds files this test cannot run: {sorted(others)}"
    assert SCRIPTS, "no examples found"
    listed = (EXAMPLES / "README.md").read_text()
    assert [name for name in SCRIPTS if name not in listed] == [], "every example is listed in examples/README.md"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_example_runs_and_writes_images_that_decode(gw: GatewayProcess, tmp_path: Path, script: str) -> None:
    """The script exits 0 against the gateway; each image it reports exists and decodes."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "ROUTER_"))}
    env |= {"ROUTER_URL": gw.url, "ROUTER_GRPC": gw.grpc_target, "OPENAI_API_KEY": KEY, "EXAMPLES_OUT": str(tmp_path)}
    path = EXAMPLES / script
    done = subprocess.run(
        [*RUNNERS[path.suffix], str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    report = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    print(report)  # what the user would see: shown with -s, or beside a failure
    assert done.returncode == 0, report
    written = [tmp_path / match for match in WROTE.findall(done.stdout)]
    assert written, f"{script} reported no image written\n{report}"
    for image in written:
        assert image.is_file(), f"{image} was reported but not written\n{report}"
        with Image.open(image) as decoded:
            decoded.load()  # the whole file decodes, not just its header
            assert decoded.width > 0 and decoded.height > 0
