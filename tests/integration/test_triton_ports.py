"""A Triton whose picked port another process took before Triton bound it (it binds
only once its models have loaded) is started once more on fresh ports, by the launcher
itself: ``router up`` and ``router triton`` as much as the tests' fixtures, which run
two at a time under ``make test``."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from image_router.triton import TritonServer, launcher
from image_router.triton.launcher import TritonConfig
from tests.procs import MODEL_REPOSITORY

pytestmark = pytest.mark.integration


def test_a_port_taken_before_triton_binds_it_gets_a_fresh_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real, picks = launcher.free_ports, []

        def first_pick_is_taken(count: int, host: str = "127.0.0.1") -> list[int]:
            picks.append(count)
            ports = real(count, host)
            return [busy, *ports[1:]] if len(picks) == 1 else ports

        monkeypatch.setattr(launcher, "free_ports", first_pick_is_taken)
        with open(tmp_path / "triton.log", "wb") as log, TritonServer(TritonConfig(MODEL_REPOSITORY, ["noop"]), log):
            pass  # __enter__ waited for ready: it got there
        text = (tmp_path / "triton.log").read_text()
        assert f"'127.0.0.1:{busy}' already in use" in text, text[-2000:]
        assert len(picks) == 2


def test_a_triton_that_fails_for_another_reason_is_not_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, picks = launcher.free_ports, []

    def counted(count: int, host: str = "127.0.0.1") -> list[int]:
        picks.append(count)
        return real(count, host)

    monkeypatch.setattr(launcher, "free_ports", counted)
    with open(tmp_path / "triton.log", "wb") as log:
        server = TritonServer(TritonConfig(MODEL_REPOSITORY, ["no_such_model"]), log)
        server.start()
        try:
            with pytest.raises(launcher.TritonStartupError, match="exited"):
                server.wait_ready(120)
        finally:
            server.stop()
    assert picks == [3], "started again though no port was lost"
