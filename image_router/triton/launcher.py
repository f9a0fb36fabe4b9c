"""Start, supervise and stop a ``tritonserver`` process for a model repository.

The lifecycle is explicit — ``start()`` → ``wait_ready()`` → ``stop()`` (or use it as
a context manager) — and the server is started with the models named up front, bound to
loopback unless told otherwise. Ports left at 0 are picked free on the chosen host, so
tests never hard-code one. Triton binds them only once its models have loaded, 20-40 s
later, and another process may take one meanwhile: a start that ended while one of its
picked ports is held by someone else is made once more on fresh ones.

Triton's model-repository API (load and unload, with uploaded model files) is code
execution for whoever reaches the port, and loopback is every local user. With
``model_load_api=False`` (what ``router triton`` and ``router up`` run) the server gets a
repository of links to just the named models and ``--model-control-mode=none``: it
loads them at start and refuses every load and unload after. Tests that load models at
run time keep the default, explicit mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from image_router.errors import TritonStartupError
from image_router.triton.environment import (
    TritonInstall,
    find_pytriton,
    prepare_backend_directory,
    server_environment,
)

__all__ = ["TritonConfig", "TritonServer", "TritonStartupError", "free_port", "repository_models"]

log = logging.getLogger("router.triton")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free on ``host`` a moment ago (held open
    together while they are picked: one at a time, the kernel may hand out one twice)."""
    with contextlib.ExitStack() as stack:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socks = [stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def repository_models(repository: Path) -> list[str]:
    """Names of the models in a repository (directories holding a ``config.pbtxt``)."""
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


@dataclass
class TritonConfig:
    """What to run; ports of 0 are chosen when the server starts."""

    model_repository: Path
    models: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    tritonserver: Path | None = None
    backend_directory: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 300.0
    log_verbose: int = 0
    model_load_api: bool = True  # False: the load/unload API is closed once started


class TritonServer:
    """One supervised ``tritonserver`` process."""

    def __init__(self, config: TritonConfig, log: IO[bytes] | None = None) -> None:
        self.config = config
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._picked: list[str] = []  # the port fields start() chose (they were 0)
        self._restarted = False

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.http_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def running(self) -> bool:
        """Started and not exited (killed, crashed or stopped)."""
        return self._process is not None and self._process.poll() is None

    def _install(self) -> TritonInstall:
        if self.config.tritonserver is None:
            return find_pytriton()
        binary = Path(self.config.tritonserver)
        if not binary.is_file():
            raise TritonStartupError(f"--tritonserver {binary} does not exist")
        return TritonInstall(binary, None, None)

    def _models(self) -> list[str]:
        cfg = self.config
        models = cfg.models or repository_models(cfg.model_repository)
        if not models:
            raise TritonStartupError(f"no models (*/config.pbtxt) in {cfg.model_repository}")
        return models

    def command(self, install: TritonInstall, backends: Path | None, linked: Path | None = None) -> list[str]:
        """The full ``tritonserver`` command line; ``linked``: a repository of links to
        the chosen models, served with the model-repository API closed."""
        cfg = self.config
        models = self._models()
        if linked is not None:
            control = [f"--model-repository={linked}", "--model-control-mode=none"]
        else:
            control = [
                f"--model-repository={cfg.model_repository.resolve()}",
                "--model-control-mode=explicit",
                *(f"--load-model={m}" for m in models),
            ]
        cmd = [
            str(install.binary),
            *control,
            f"--http-address={cfg.host}",
            f"--http-port={cfg.http_port}",
            f"--grpc-address={cfg.host}",
            f"--grpc-port={cfg.grpc_port}",
            f"--metrics-address={cfg.host}",
            f"--metrics-port={cfg.metrics_port}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
            f"--log-verbose={cfg.log_verbose}",
        ]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
        return cmd + list(cfg.extra_args)

    def start(self) -> None:
        """Launch the process (returns at once; see :meth:`wait_ready`)."""
        if self._process is not None:
            raise TritonStartupError("already started")
        cfg = self.config
        names = [n for n in ("http_port", "grpc_port", "metrics_port") if getattr(cfg, n) == 0]
        for name, port in zip(names, free_ports(len(names), cfg.host), strict=True):
            setattr(cfg, name, port)
        self._picked = names
        install = self._install()
        # A neutral working directory: the stub puts it first on sys.path.
        self._workdir = Path(tempfile.mkdtemp(prefix="router-triton-"))
        backends = cfg.backend_directory
        if backends is None and install.backends is not None:
            backends = prepare_backend_directory(install, self._workdir)
        env = server_environment(install)
        linked = None
        if not cfg.model_load_api:
            linked = self._workdir / "models"
            linked.mkdir()
            for name in self._models():
                (linked / name).symlink_to(cfg.model_repository.resolve() / name, target_is_directory=True)
        # Own session: a terminal's Ctrl-C reaches only us, and we stop Triton after
        # the gateway. Parent-death signal: if we die without stopping it (SIGKILL, a
        # crash), the kernel sends Triton SIGTERM instead of leaving it orphaned.
        self._process = subprocess.Popen(
            self.command(install, backends, linked),
            cwd=self._workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def is_ready(self) -> bool:
        return self._get("/v2/health/ready") == 200

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until every loaded model is ready; raise if the process exits first."""
        if self._process is None:
            raise TritonStartupError("not started")
        deadline = time.monotonic() + (timeout_s or self.config.startup_timeout_s)
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None and self._lost_a_port():
                self._start_again()
                continue
            if code is not None:
                raise TritonStartupError(f"tritonserver exited with status {code} before it was ready")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise TritonStartupError(f"tritonserver was not ready after {timeout_s}s")

    def _lost_a_port(self) -> bool:
        """A port this start picked is now held by another process (Triton, which exited,
        holds none): most likely why it exited. Asked once per server."""
        if self._restarted:
            return False
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        for name in self._picked:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((cfg.host, getattr(cfg, name)))
                except OSError:
                    return True
        return False

    def _start_again(self) -> None:
        lost = {name: getattr(self.config, name) for name in self._picked}
        log.warning(
            "tritonserver exited: a port picked for it was taken before it bound it (%s); starting it on fresh ones",
            lost,
        )
        self._restarted = True
        for name in self._picked:
            setattr(self.config, name, 0)
        self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.start()

    def wait(self) -> int:
        """Wait for the process to end by itself; return its exit status."""
        assert self._process is not None
        return self._process.wait()

    def terminate(self) -> None:
        """Ask for a graceful shutdown (in-flight requests finish, up to 10 s)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Stop gracefully, kill after ``timeout_s``; clean the working directory."""
        code = None
        if self._process is not None:
            self.terminate()
            try:
                code = self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                code = self._process.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
