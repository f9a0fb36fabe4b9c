"""``router triton``: a SIGTERM sent the moment it says Triton is ready is passed on to
Triton (a graceful stop, exit 0), never the start's "end everything" (exit 143). A
fake server and a real signal to this process, delivered while that line is written."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from image_router import cli
from image_router.cli_parser import build_parser


class FakeTriton:
    def __init__(self) -> None:
        self.terminated = self.stopped = False
        self.config = type(
            "Config", (), {"host": "127.0.0.1", "grpc_port": 1, "metrics_port": 2, "model_repository": "m"}
        )()
        self.http_url = "http://127.0.0.1:0"

    def start(self) -> None: ...

    def wait_ready(self) -> None: ...

    def terminate(self) -> None:
        self.terminated = True

    def wait(self) -> int:
        return -signal.SIGTERM if self.terminated else 1

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_sigterm_sent_on_the_ready_line_stops_triton_gracefully(
    monkeypatch: pytest.MonkeyPatch, handlers: None
) -> None:
    fake = FakeTriton()
    said = cli._say

    def say(args: Any, message: str, **kwargs: Any) -> None:
        said(args, message, **kwargs)
        if message.startswith("Triton ready"):  # what a supervisor reads, then signals at once
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "_triton_server", lambda args: fake)
    monkeypatch.setattr(cli, "_say", say)
    assert cli.cmd_triton(build_parser().parse_args(["triton", "--models", "noop"])) == 0
    assert fake.terminated and fake.stopped


def test_a_sigterm_during_the_start_ends_it_and_stops_triton(monkeypatch: pytest.MonkeyPatch, handlers: None) -> None:
    fake = FakeTriton()
    fake.wait_ready = lambda: os.kill(os.getpid(), signal.SIGTERM)  # type: ignore[method-assign]
    monkeypatch.setattr(cli, "_triton_server", lambda args: fake)
    with pytest.raises(SystemExit) as ended:
        cli.cmd_triton(build_parser().parse_args(["triton", "--models", "noop"]))
    assert ended.value.code == 128 + signal.SIGTERM and fake.stopped and not fake.terminated
