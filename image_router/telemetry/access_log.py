"""The access log: one JSON line per image request, written in batches.

Lines go to a text stream (stdout, where log shippers read them) and are flushed every
``flush_interval_s``, when ``max_lines`` are waiting, and at shutdown — the same trade
as Envoy's file flush interval (1 s by default) or nginx's ``access_log ... flush=``.
A write per line costs one system call and a trip through :mod:`logging` per request;
buffered, the log costs little more than encoding the JSON. What is lost if the
process is killed outright is at most the last interval. ``flush_interval_s=0``
writes every line at once.

Each write is at most :data:`ATOMIC_BYTES` and holds whole lines only: POSIX makes a
pipe write of up to ``PIPE_BUF`` (4,096 bytes on Linux) atomic, so the lines of
``router serve --workers N``, whose workers share one standard output, never
interleave mid-line. A line longer than that goes alone (it cannot be atomic).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, TextIO

import orjson

__all__ = ["ATOMIC_BYTES", "AccessLog", "chunks"]

log = logging.getLogger("router.access")

ATOMIC_BYTES = 4096  # PIPE_BUF on Linux: the most one write(2) to a pipe keeps whole


def chunks(lines: list[bytes], limit: int = ATOMIC_BYTES) -> list[bytes]:
    """``lines`` joined into newline-ended writes of at most ``limit`` bytes each, never
    splitting a line (one longer than ``limit`` is a write of its own)."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for line in lines:
        if group and size + len(line) + 1 > limit:
            out.append(b"\n".join(group) + b"\n")
            group, size = [], 0
        group.append(line)
        size += len(line) + 1
    if group:
        out.append(b"\n".join(group) + b"\n")
    return out


class AccessLog:
    def __init__(self, stream: TextIO | None = None, flush_interval_s: float = 1.0, max_lines: int = 512) -> None:
        self.stream = stream
        self.flush_interval_s = flush_interval_s
        self.max_lines = max_lines
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0  # lines that could not be written

    def record(self, entry: dict[str, Any]) -> None:
        self._lines.append(orjson.dumps(entry))  # compact, like separators=(",", ":")
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
            binary = getattr(stream, "buffer", None)  # a real stdout: bytes as they are
            stream.flush()  # text written before goes first
            for data in chunks(lines):
                if binary is not None:
                    binary.write(data)
                    binary.flush()  # one write(2) per chunk
                else:
                    stream.write(data.decode())
            stream.flush()
        except (OSError, ValueError) as exc:  # a closed or broken stdout must not break serving
            if not self.dropped:  # said once
                log.error("access log lines dropped: cannot write to the access log: %s", exc)
            self.dropped += len(lines)
