"""The access log: one JSON line per image request, written in batches.

Lines go to a text stream (stdout, where log shippers read them) and are flushed every
``flush_interval_s``, when ``max_lines`` are waiting, and at shutdown — the same trade
as Envoy's file flush interval (1 s by default) or nginx's ``access_log ... flush=``.
A write per line costs one system call and a trip through :mod:`logging` per request;
buffered, the log costs little more than encoding the JSON. What is lost if the
process is killed outright is at most the last interval. ``flush_interval_s=0``
writes every line at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, TextIO

import orjson

__all__ = ["AccessLog"]

log = logging.getLogger("router.access")


class AccessLog:
    def __init__(self, stream: TextIO | None = None, flush_interval_s: float = 1.0, max_lines: int = 512) -> None:
        self.stream = stream
        self.flush_interval_s = flush_interval_s
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0  # lines that could not be written

    def record(self, entry: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps(entry).decode())  # compact, like separators=(",", ":")
        if len(self._lines) >= self.max_lines or self.flush_interval_s <= 0:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # outside an event loop: nothing would flush later
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = self.stream or sys.stdout  # looked up late: tests and tools swap stdout
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stdout must not break serving
            if not self.dropped:  # said once
                log.error("access log lines dropped: cannot write to the access log: %s", exc)
            self.dropped += len(lines)
