"""Real processes for the integration and e2e tests: Triton and the gateway.

Ports are always ephemeral; every process logs to a file whose tail is shown when
it fails to start, and every process is stopped (then killed) at teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from image_router.triton import TritonConfig, TritonServer
from image_router.triton.launcher import free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"
ADMIN_TOKEN = "test-admin-token"


@contextlib.contextmanager
def serving(repository: Path, log_path: Path, models: list[str] | None = None) -> Iterator[TritonServer]:
    """A real ``tritonserver`` on ``repository``, ready; its log's tail is the error
    when it does not start (one that lost a picked port to another process is started
    again by :class:`TritonServer` itself). Stopped on the way out: its tests are over
    by then, so it waits 1 s, not the shipped 10, for connections a test left open (one
    such left the session's server waiting out the full 10 s at the end of every run)."""
    with open(log_path, "wb") as log:
        server = TritonServer(TritonConfig(repository, models or [], extra_args=["--exit-timeout-secs=1"]), log=log)
        server.start()
        try:
            server.wait_ready(timeout_s=300)
        except Exception as exc:
            server.stop()
            raise RuntimeError(f"Triton did not start:\n{tail(log_path)}") from exc
        try:
            yield server
        finally:
            server.stop()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class GatewayProcess:
    """``router serve`` in a subprocess, as an operator runs it."""

    def __init__(
        self,
        routes: Path,
        triton_url: str,
        log: Path,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        triton_grpc: str | None = None,
    ) -> None:
        """``cwd``: where ``python -m image_router.cli`` runs, so which checkout's code serves
        (a benchmark's baseline). Its two ports are picked free and bound a second or so
        later; with ``make test``'s two workers another process may take one meanwhile,
        so a start that failed on a port in use is tried once more on fresh ones."""
        self.routes = routes
        self.log = log
        env = {**os.environ, "TRITON_URL": triton_url, "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
        env.setdefault("ROUTER_STATE_DIR", str(log.parent / "state"))  # the test's own state, never the cwd's
        if triton_grpc is not None:  # for routes that say protocol: grpc (the shipped file)
            env["TRITON_GRPC_URL"] = triton_grpc
        for attempt in (1, 2):
            self.port, self.grpc_port = free_ports(2)
            self.url = f"http://127.0.0.1:{self.port}"
            self.grpc_target = f"127.0.0.1:{self.grpc_port}"
            cmd = [sys.executable, "-m", "image_router.cli", "serve", "--routes", str(routes), "--port", str(self.port)]
            cmd += ["--grpc-port", str(self.grpc_port)]
            cmd += ["--log-level", "warning", *(extra or [])]
            self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
            self.process = subprocess.Popen(cmd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=cwd)
            try:
                self._wait()
                return
            except BaseException as exc:
                self.stop()  # kill it and close its log: nothing left behind for the next test
                if attempt == 1 and isinstance(exc, RuntimeError) and "already in use" in tail(log).lower():
                    continue
                raise

    def _wait(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{tail(self.log)}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not start:\n{tail(self.log)}")

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def signal(self, signum: int = signal.SIGHUP) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


def scrape(gw: GatewayProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A gateway's /metrics as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(gw.url + "/metrics", headers=gw.admin, timeout=10).text  # keys mode: admin only
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@contextlib.contextmanager
def running_gateway(triton_url: str, directory: Path, routes_text: str) -> Iterator[GatewayProcess]:
    """A gateway on ``routes_text`` (written to ``directory``) for the length of a block."""
    routes = directory / "routes.yaml"
    routes.write_text(routes_text)
    gateway = GatewayProcess(routes, triton_url, directory / "gateway.log")
    try:
        yield gateway
    finally:
        gateway.stop()


class RedisProcess:
    """A real ``redis-server`` (Debian's package) on an ephemeral port, no persistence;
    run as a cache (``allkeys-lru``) unless ``policy`` says otherwise (a state store
    needs ``noeviction``)."""

    def __init__(self, directory: Path, port: int | None = None, policy: str = "allkeys-lru") -> None:
        self.directory = directory
        self.policy = policy
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.directory), "--maxmemory", "256mb", "--maxmemory-policy", self.policy,
               "--logfile", str(self.log)]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class HostedUpstream:
    """``tests/hosted_upstream.py``: a stand-in hosted OpenAI-compatible image API."""

    def __init__(self, directory: Path, fmt: str = "png", key: str = "sk-test") -> None:
        self.log = directory / f"hosted-{fmt}.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, str(ROOT / "tests" / "hosted_upstream.py"), "--format", fmt, "--key", key]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log_file)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"hosted upstream did not start:\n{tail(self.log)}")
        self.port = int(line.split()[-1])
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def last(self) -> dict[str, object]:
        answer: dict[str, object] = httpx.get(f"http://127.0.0.1:{self.port}/last").json()
        return answer

    def last_request(self) -> dict[str, object]:
        sent: dict[str, object] = httpx.get(f"http://127.0.0.1:{self.port}/last-request").json()
        return sent

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log_file.close()


def proc_stat(pid: int | str) -> list[str]:
    """``/proc/PID/stat``'s fields after the command name (``[]``: the process is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _descends_from(pid: int | str, ancestor: int) -> bool:
    while True:
        fields = proc_stat(pid)
        if not fields:
            return False
        parent = int(fields[1])
        if parent == ancestor:
            return True
        if parent <= 1:
            return False
        pid = parent


def model_cpu_s(model: str, triton: int) -> float:
    """CPU seconds used so far by a Triton model's Python backend process(es): what a
    model really computed, whatever its clients saw. Only those of the Triton whose pid
    is ``triton``: under ``make test`` the other worker's Triton runs the same models."""
    pids = subprocess.run(
        ["pgrep", "-f", f"triton_python_backend_stub.*/{model}/"], capture_output=True, text=True
    ).stdout.split()
    total = 0.0
    for pid in pids:
        fields = proc_stat(pid)
        if fields and _descends_from(pid, triton):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_model_idle(model: str, triton: int, timeout_s: float = 30.0) -> float:
    """Wait until the model (on the Triton whose pid is ``triton``) uses no CPU for
    0.6 s; its CPU time then."""
    deadline = time.monotonic() + timeout_s
    last = model_cpu_s(model, triton)
    while time.monotonic() < deadline:
        time.sleep(0.6)
        now = model_cpu_s(model, triton)
        if now - last < 0.02:
            return now
        last = now
    raise AssertionError(f"the {model} model never went idle")
