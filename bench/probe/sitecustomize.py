"""The in-process probe ``bench/cpu_breakdown.py`` puts on ``PYTHONPATH`` of the gateway it
starts. It does nothing unless ``ROUTER_PROBE_OUT`` is set.

When ``router serve`` runs uvicorn's server, each target in ``ROUTER_PROBE_TARGETS`` (a
JSON list of ``"module:Qual.name"``, each patched where callers look it up) is wrapped
to add the event-loop thread's CPU time (``time.thread_time``) spent inside it, and the
app is wrapped to count KServe infer calls. After ``ROUTER_PROBE_SKIP`` calls the sums
restart; after ``ROUTER_PROBE_COUNT`` more they are written to ``ROUTER_PROBE_OUT`` as
JSON (``{target: [calls, seconds]}``, the app as ``"app"``). ``thread_time`` inside a
coroutine also counts what other tasks ran while it awaited; with one client that is
the loop's own housekeeping. Each wrapper adds a few microseconds of its own.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import time
from typing import Any

_OUT = os.environ.get("ROUTER_PROBE_OUT")
_sums: dict[str, list[float]] = {}


def _add(label: str, spent: float) -> None:
    entry = _sums.setdefault(label, [0, 0.0])
    entry[0] += 1
    entry[1] += spent


def _wrap(owner: Any, attr: str, label: str) -> None:
    original = getattr(owner, attr)
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return await original(*args, **kwargs)
            finally:
                _add(label, time.thread_time() - start)

        setattr(owner, attr, timed_async)
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            _add(label, time.thread_time() - start)

    setattr(owner, attr, timed)


def _install(targets: list[str]) -> None:
    for target in targets:
        module, _, qualname = target.partition(":")
        owner: Any = importlib.import_module(module)
        *path, attr = qualname.split(".")
        for name in path:
            owner = getattr(owner, name)
        _wrap(owner, attr, target)


class _Counted:
    """The app, with the CPU of each KServe infer call summed and the calls counted."""

    def __init__(self, app: Any, skip: int, count: int, out: str) -> None:
        self.app, self.skip, self.count, self.out = app, skip, count, out
        self.seen = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/infer"):
            await self.app(scope, receive, send)
            return
        start = time.thread_time()
        try:
            await self.app(scope, receive, send)
        finally:
            _add("app", time.thread_time() - start)
            self.seen += 1
            if self.seen == self.skip:
                _sums.clear()
            elif self.seen == self.skip + self.count:
                with open(self.out, "w") as f:
                    json.dump(_sums, f)


if _OUT:
    import uvicorn

    _server_run = uvicorn.Server.run

    def _probed_run(self: Any, sockets: Any = None) -> None:
        """Every way the gateway starts uvicorn (``uvicorn.run``, its own ``GracefulServer``)
        ends in ``Server.run``: the app is wrapped there, before uvicorn loads it."""
        _install(json.loads(os.environ.get("ROUTER_PROBE_TARGETS", "[]")))
        skip, count = int(os.environ["ROUTER_PROBE_SKIP"]), int(os.environ["ROUTER_PROBE_COUNT"])
        self.config.app = _Counted(self.config.app, skip, count, _OUT)
        _server_run(self, sockets)

    uvicorn.Server.run = _probed_run
