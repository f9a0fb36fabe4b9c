"""The ``router`` command as an operator runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.procs import ROOT

pytestmark = pytest.mark.e2e

ROUTER = [sys.executable, "-m", "image_router.cli"]


def stop(process: subprocess.Popen[str], signum: int) -> int:
    """Send ``signum``, wait for the exit, close the pipe; the exit code."""
    process.send_signal(signum)
    code = process.wait(60)
    assert process.stdout is not None
    process.stdout.close()
    return code


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROUTER, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_validate_ok_and_all_errors_at_once(tmp_path: Path) -> None:
    ok = run("validate", "routes.yaml")
    assert ok.returncode == 0 and "routes.yaml: OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - model: draft\n    budget_ms: 0\n  - model: draft\n    sticky: nope\n")
    result = run("validate", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert f"{bad}:3:5 routes[0].budget_ms: Input should be greater than 0" in lines
    assert any(line.startswith(f"{bad}:5:5 routes[1].sticky:") for line in lines)
    assert all(re.match(rf"{re.escape(str(bad))}:\d+:\d+ ", line) for line in lines)
    missing = run("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_explain_shows_route_candidates_and_chain() -> None:
    result = run("explain", "routes.yaml", "--prompt", "a portrait photo", "--header", "X-User-Id=7")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["route"] == "photo"
    assert out["candidates"][0]["model"] == "quality"
    assert list(out["chain_forecast_ms"]) == ["quality", "preview", "draft"]
    assert json.loads(run("explain", "routes.yaml", "--prompt", "x", "--intent", "draft").stdout)["route"] == (
        "draft-intent"
    )


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``router ARGS`` in the background, its output readable line by line."""
    return subprocess.Popen(
        [*ROUTER, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(
    process: subprocess.Popen[str], pattern: str, timeout_s: float = 240, seen: list[str] | None = None
) -> re.Match[str]:
    """Read output until ``pattern`` appears (``seen`` collects the lines read)."""
    deadline = time.monotonic() + timeout_s
    seen = [] if seen is None else seen
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"{pattern!r} not printed; output:\n{''.join(seen[-30:])}")


def test_router_up_serves_through_triton_and_stops_cleanly(tmp_path: Path) -> None:
    """The README's one command: Triton + the gateway; Ctrl-C stops both."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        (ROOT / "routes.yaml")
        .read_text()
        .replace("model: preview\n  budget_ms: 2000", "model: noop\n  budget_ms: 2000")
    )
    # TRITON_URL is set by `router up` itself; an inherited one must not win. `--port 0`:
    # a port picked here would stay free only by luck through Triton's 20-40 s start
    log = tmp_path / "triton.log"
    process = spawn(
        *("up", "--routes", str(routes), "--port", "0", "--grpc-port", "0", "--models", "noop,draft"),
        *("--triton-log", str(log)),
        env={"TRITON_URL": ""},
    )
    try:
        seen: list[str] = []
        triton_url = _read_until(process, r"Triton ready: HTTP (http://\S+)", seen=seen).group(1)
        # Triton's own startup table goes to its log file, not over the terminal
        assert not any("| Model" in line for line in seen), "".join(seen)
        assert "| Model" in log.read_text() and any(str(log) in line for line in seen)
        for model in ("noop", "draft"):  # warmed at load (model_warmup), before any request
            stats = httpx.get(f"{triton_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
            assert stats["inference_stats"]["success"]["count"] == 1, (model, stats["inference_stats"])
        port = int(_read_until(process, r"gateway listening on http://127\.0\.0\.1:(\d+)").group(1))
        deadline, ready = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz").status_code
            except httpx.HTTPError:
                ready = None
            if ready == 200:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the gateway never became ready (last /readyz: {ready})")
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/generate", json={"prompt": "a sketch of a cat"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-router-model"] == "draft@1"
        assert "x-router-fallback" not in r.headers, "the first request is served by the tier the rules pick"
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/generate", json={"prompt": "a cat"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-router-model"] == "noop@1"
    finally:
        code = stop(process, signal.SIGINT)
    assert code == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(triton_url + "/v2/health/live", timeout=2)


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_port_zero_binds_a_free_port_and_names_it(tmp_path: Path, workers: int) -> None:
    """``--port 0``: the gateway binds a free port itself (no gap between choosing and
    binding it for another process to fall into) and its first line names the port."""
    args = ["serve", "--port", "0", "--no-grpc", "--no-watch", "--workers", str(workers), "--log-level", "warning"]
    env = {"TRITON_URL": "http://127.0.0.1:9", "ROUTER_STATE_DIR": str(tmp_path / "state")}
    process = spawn(*args, env=env)
    try:
        said = (
            r"gateway listening on http://127\.0\.0\.1:(\d+)"
            if workers == 1
            else r"2 workers on http://127\.0\.0\.1:(\d+)"
        )
        port = int(_read_until(process, said, timeout_s=60).group(1))
        assert port != 0
        deadline, live = time.monotonic() + 30, None
        while time.monotonic() < deadline and live != 200:
            try:
                live = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.1)
        assert live == 200, "nothing answered on the port the gateway named"
    finally:
        assert stop(process, signal.SIGINT) == 0  # Ctrl-C


def test_router_triton_prints_where_it_listens_and_forwards_sigterm() -> None:
    process = spawn("triton", "--models", "noop", "--triton-http-port", "0")
    try:
        url = _read_until(process, r"Triton ready: HTTP http://(\S+)").group(1)
        client = httpclient.InferenceServerClient(url)
        prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[b"x"]], dtype=object))
        assert client.infer("noop", [prompt]).as_numpy("IMAGE").shape == (1, 8, 8, 3)
        client.close()  # an open keep-alive connection would hold Triton's graceful exit
    finally:
        code = stop(process, signal.SIGTERM)
    assert code == 0


def test_triton_does_not_outlive_a_killed_launcher() -> None:
    """SIGKILL leaves no chance to clean up: the kernel's parent-death signal stops Triton."""
    process = spawn("triton", "--models", "noop", "--triton-http-port", "0")
    try:
        url = _read_until(process, r"Triton ready: HTTP (http://\S+)").group(1)
        assert httpx.get(url + "/v2/health/live", timeout=2).status_code == 200
        process.kill()
        process.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/v2/health/live", timeout=1)
            except httpx.HTTPError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("Triton is still serving after its launcher was killed")
    finally:
        assert process.stdout is not None
        process.stdout.close()


def test_serve_refuses_an_unwritable_cache_directory(tmp_path: Path) -> None:
    """A cache directory the gateway cannot write is found at start: exit 2 naming the
    path, not a crash at the first request."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "cache").write_text("a file where the cache directory should be")
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "models: {draft: {backend: triton}}\n"
        f"cache: {{store: 'disk://{locked / 'cache'}'}}\n"
        "routes: [{model: draft, cache: {}}]\n"
        "default_route: draft\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "image_router.cli", "serve", "--routes", str(routes), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert str(locked / "cache") in done.stderr and "Traceback" not in done.stderr
