"""Start the proxies that `bench/peers_openai.py` compares, each in front of the stand-in.

Every proxy is a real process (a process group of its own, so its workers are stopped
with it) listening on an ephemeral port, configured with one image model, `img-1`, whose
upstream is the stand-in OpenAI API (`bench/instant_openai.py`). A `Peer` says where to
send the OpenAI Images request, with which headers, and whose CPU to count.

LiteLLM and Portkey are installed apart from the project (see `docs/benchmarks.md`):

    python3 -m venv PEERS/litellm && PEERS/litellm/bin/pip install 'litellm[proxy]'
    mkdir -p PEERS/portkey && npm install --prefix PEERS/portkey @portkey-ai/gateway
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_router.triton.launcher import free_port  # noqa: E402
from tests.procs import GatewayProcess, tail  # noqa: E402

GATEWAY_ROUTES = """
backends:
  hosted: {type: openai, base_url: "${HOSTED_URL}", api_key: "${HOSTED_KEY}"}
models:
  img-1: {backend: hosted, remote_model: img-1, latency_hint_ms: 50}
default_route: {model: img-1, budget_ms: 10000}
env: [HOSTED_URL, HOSTED_KEY]
"""

LITELLM_CONFIG = """
model_list:
  - model_name: img-1
    litellm_params:
      # A model it knows takes `response_format` (for one it does not know, it refuses
      # the field); the stand-in answers any model name.
      model: openai/dall-e-3
      api_base: "{upstream}"
      api_key: sk-test
general_settings:
  # No client authenticates at any proxy here (the gateway runs open, Portkey has no keys
  # of its own); LiteLLM refuses to start that way unless told to.
  dangerously_permit_weak_or_unset_master_key: true
"""


@dataclass
class Peer:
    """A proxy under test: where the request goes, and whose CPU it costs."""

    name: str
    url: str
    pid: int | None  # the root of the process tree whose CPU is counted; None: not a proxy
    headers: dict[str, str] = field(default_factory=dict)
    stop: list[subprocess.Popen[bytes] | GatewayProcess] = field(default_factory=list)


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now (workers a proxy forked)."""
    pids, at = [pid], 0
    while at < len(pids):
        for task in Path(f"/proc/{pids[at]}/task").glob("*/children"):
            pids += [int(c) for c in task.read_text().split()]
        at += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system time of ``pid``'s process tree (all threads of each process)."""
    total = 0.0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # exited between the walk and the read
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{tail(log)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}:\n{tail(log)}")


def stop(proc: subprocess.Popen[bytes] | GatewayProcess) -> None:
    """Stop what this module started: the gateway by its own ``stop()``, any other
    proxy by its process group (its workers included)."""
    if isinstance(proc, GatewayProcess):
        proc.stop()
        return
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_upstream(tmp: Path) -> Peer:
    """The stand-in itself, on the project's interpreter; its CPU is counted too, to show
    it is never the bottleneck."""
    with open(tmp / "upstream.log", "wb") as log:
        cmd = [sys.executable, str(ROOT / "bench" / "instant_openai.py")]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("listening on "):
        stop(proc)
        raise RuntimeError(f"stand-in did not start:\n{tail(tmp / 'upstream.log')}")
    return Peer("direct (the stand-in)", f"http://127.0.0.1:{line.split()[-1]}/v1", proc.pid, stop=[proc])


def start_gateway(tmp: Path, upstream: str) -> Peer:
    """`router serve` as shipped (metrics and access log on), one `type: openai` tier."""
    config = tmp / "gateway" / "config"  # a directory of its own: the gateway watches it
    config.mkdir(parents=True)
    (config / "routes.yaml").write_text(GATEWAY_ROUTES)
    env = {"HOSTED_URL": upstream, "HOSTED_KEY": "sk-test"}
    gateway = GatewayProcess(config / "routes.yaml", "http://127.0.0.1:9", tmp / "gateway.log", env=env)
    return Peer("gateway", gateway.url + "/v1", gateway.process.pid, stop=[gateway])


def start_litellm(tmp: Path, upstream: str, venv: Path) -> Peer:
    """LiteLLM's proxy with its defaults (one uvicorn worker, its request log on), no
    database and no master key (as no other proxy here checks a client's key): the
    cheapest way it runs."""
    binary = venv / "bin" / "litellm"
    if not binary.exists():
        raise RuntimeError(f"no {binary}: python3 -m venv {venv} && {venv}/bin/pip install 'litellm[proxy]'")
    (tmp / "litellm.yaml").write_text(LITELLM_CONFIG.format(upstream=upstream))
    port = free_port()
    # The local model-cost map: no download attempt at start (nothing outside is reachable).
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("PYTHONPATH", None)
    cmd = [str(binary), "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(port)]
    proc = _spawn(cmd, tmp / "litellm.log", env=env, cwd=tmp)
    _wait_listening(proc, port, tmp / "litellm.log")
    return Peer("LiteLLM", f"http://127.0.0.1:{port}/v1", proc.pid, stop=[proc])


def start_portkey(tmp: Path, upstream: str, prefix: Path) -> Peer:
    """Portkey's open-source gateway on node, `--headless` (no log console: how it runs
    in production), calling the stand-in as its OpenAI provider at a custom host."""
    script = prefix / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not script.exists():
        raise RuntimeError(f"no {script}: npm install --prefix {prefix} @portkey-ai/gateway")
    port = free_port()
    proc = _spawn(["node", str(script), f"--port={port}", "--headless"], tmp / "portkey.log", cwd=tmp)
    _wait_listening(proc, port, tmp / "portkey.log")
    headers = {"x-portkey-provider": "openai", "x-portkey-custom-host": upstream, "authorization": "Bearer sk-test"}
    return Peer("Portkey", f"http://127.0.0.1:{port}/v1", proc.pid, headers=headers, stop=[proc])
