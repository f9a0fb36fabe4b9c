"""The package as a new user gets it: ``python -m build`` makes a wheel and an sdist; the
wheel, installed with its ``pytriton`` extra in a fresh virtualenv, runs ``router up`` in
an empty directory — Triton with the packaged models, the gateway with the packaged
routes — and the ``openai`` SDK gets an image through it. ``import image_router`` works
there and ``import router`` does not exist.

It loads the packaged ``noop`` tier, which needs no torch: installing the ``models``
extra (torch, diffusers) into a fresh virtualenv takes a minute of the suite's 15, and
the wheel's listing shows every tier's files are there (the diffusion tiers themselves
are tested through the checkout's model repository)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.procs import free_ports, tail

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def build(out: Path) -> tuple[Path, Path]:
    """The sdist from the checkout, then the wheel from the sdist (``python -m build``'s
    default): the wheel can only hold what the sdist carries, and no stale ``build/``
    of the checkout leaks into it."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("image_router-*.whl")
    (sdist,) = out.glob("image_router-*.tar.gz")
    return wheel, sdist


def test_the_wheel_installs_in_a_fresh_virtualenv_and_router_up_serves_an_image(tmp_path: Path) -> None:
    wheel, sdist = build(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert not any(n.startswith("router/") for n in names), "no top-level router package"
    assert "image_router/model_repository/draft/config.pbtxt" in names
    assert "image_router/model_repository/quality/1/model.py" in names
    assert "image_router/shipped/routes.yaml" in names
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert any(m.endswith("/model_repository/draft/config.pbtxt") for m in members), "the sdist builds the wheel"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    started = time.monotonic()
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", f"{wheel}[pytriton]"],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    print(f"installed in {time.monotonic() - started:.0f} s")
    empty = tmp_path / "empty"
    empty.mkdir()
    check = "import image_router, importlib.util; print(importlib.util.find_spec('router'))"
    probe = subprocess.run([str(python), "-c", check], cwd=empty, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "None", probe.stdout

    port, grpc_port = free_ports(2)
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROUTER_", "TRITON_"))}
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [str(env_dir / "bin" / "router"), "up", "--port", str(port), "--grpc-port", str(grpc_port),
             "--models", "noop"],
            cwd=empty, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while True:
                assert up.poll() is None, f"router up exited {up.returncode}:\n{tail(log)}"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"not ready:\n{tail(log)}"
                time.sleep(0.5)
            client = (
                "import base64, openai\n"
                f"c = openai.OpenAI(base_url='http://127.0.0.1:{port}/v1', api_key='unused')\n"
                "r = c.images.generate(model='noop', prompt='a lighthouse', size='64x64')\n"
                "print(len(base64.b64decode(r.data[0].b64_json)))\n"
            )
            got = subprocess.run([sys.executable, "-c", client], cwd=empty, capture_output=True, text=True, timeout=120)
            assert got.returncode == 0 and int(got.stdout) > 100, f"{got.stderr}\n{tail(log)}"
        finally:  # a failure above is the one to see, not the cleanup's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(up.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.wait(timeout=60)
