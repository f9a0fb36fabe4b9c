"""The HTTP/1.1 server protocol: uvicorn's httptools parser with bounded request heads.

uvicorn with httptools caps neither the size of a request's head (request line and
headers) nor the time a client may take to send it, and the gateway authenticates
only once the head is complete: four connections holding 100 MiB of unfinished
headers each took the process past the chart's 512 Mi, and 200 slowloris connections
stayed open indefinitely (issue 30, item 1). :class:`BoundedHttpToolsProtocol` adds
the two bounds where the bytes arrive, before any Python object is made per header:

- a head over ``max_head_bytes`` is answered ``431 Request Header Fields Too Large``
  and the connection closed. Bytes are counted per read before the parser sees them,
  so a connection never holds more than the bound plus one socket read (asyncio reads
  at most 256 KiB at a time);
- a head not complete within ``head_timeout_s`` of the read that left it unfinished —
  or of the connection, for the first request — is answered ``408 Request Timeout``
  and closed. Idle keep-alive connections are uvicorn's own ``timeout_keep_alive``.

Bodies are bounded by the endpoints that read them (byte counts whatever the framing).
A request answered before its body was read (a 413, a 401) lingers, as nginx's
``lingering_close`` does: the rest is read and dropped for at most
:data:`LINGER_BYTES` and :data:`LINGER_S`, so an ordinary client that is still sending
gets to read its answer (closing at once made httpx report a broken pipe instead of the
413), and then the connection is closed — a 300 MiB upload refused at 32 MiB is not read
to its end. Subclassing keeps uvicorn's parser, flow control and
pipelining as they are. A head that arrives in one read (nearly all of them) costs a
counter and two flags; a timer is armed once per connection and only for heads split
over reads (measured: docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = [
    "HEAD_TIMEOUT_S",
    "MAX_HEAD_BYTES",
    "BoundedHttpToolsProtocol",
    "FlushingConfig",
    "bounded_protocol",
    "flush_on_stop_signal",
]

MAX_HEAD_BYTES = 64 << 10  # nginx's large_client_header_buffers is 4 x 8 KiB; browsers send < 8 KiB
HEAD_TIMEOUT_S = 10.0  # nginx's client_header_timeout is 60 s; a head is one packet in practice
LINGER_BYTES = 8 << 20  # what is read and dropped of a body answered before it was read
LINGER_S = 5.0  # nginx's lingering_timeout


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time bound on each request head."""

    max_head_bytes: ClassVar[int] = MAX_HEAD_BYTES
    head_timeout_s: ClassVar[float] = HEAD_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # waiting for a request head (or part of one)
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_left: int | None = None  # bytes still dropped before closing (None: not lingering)
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._stop_lingering()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._linger_left is not None:
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._stop_lingering()
                self.transport.close()
                return
        if not self._in_head:
            super().data_received(data)
            return
        if self.parser is None:  # refused (or lost): the rest is not read
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if not self._in_head or self._head_bytes == 0 or self.parser is None or self.transport.is_closing():
            return  # the usual case: the whole request came in one read, and no timer was armed
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, f"request head over {self.max_head_bytes} bytes")
        else:
            self._arm_head_timer()  # a head split over reads: it has head_timeout_s to finish

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_lingering()  # the unread body has all come: the connection goes on as usual
        self._in_head = True
        self._head_bytes = 0  # the next request's head is counted from its own first byte

    def on_response_complete(self) -> None:
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            # answered before its body was read (a 413, a 401): linger, bounded (see the module)
            self._linger_left = LINGER_BYTES
            self._linger_timer = self.loop.call_later(LINGER_S, self._linger_over)
        super().on_response_complete()

    def _linger_over(self) -> None:
        self._linger_timer = None
        if self._linger_left is not None:
            self._linger_left = None
            self.transport.close()

    def _stop_lingering(self) -> None:
        self._linger_left = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"request head not complete within {self.head_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` and close: the connection cannot be reused,
        since the rest of its head was never parsed."""
        self._disarm_head_timer()
        body = message.encode("ascii")
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()
        self.parser = None  # type: ignore[assignment]  # nothing more is parsed or buffered


def bounded_protocol(
    max_head_bytes: int = MAX_HEAD_BYTES, head_timeout_s: float = HEAD_TIMEOUT_S
) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` with these bounds (a class per setting:
    uvicorn makes one instance per connection from the class alone)."""
    if max_head_bytes == MAX_HEAD_BYTES and head_timeout_s == HEAD_TIMEOUT_S:
        return BoundedHttpToolsProtocol
    attrs = {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s}
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), attrs)


def flush_on_stop_signal(flush: Callable[[], None]) -> None:
    """Run ``flush`` on the event loop as soon as a stop signal arrives, after the
    handler uvicorn's server installed (which it still runs first). Call it on the
    running loop inside ``Server.serve``: there uvicorn's handlers are in place, and it
    restores what was there before when it returns, so nothing outlives the server.

    What must not wait for the rest of a graceful shutdown goes there: the access log's
    held lines. The shutdown after the signal may take its grace periods (open
    connections, then in-flight gRPC calls), and a pod's is cut by a SIGKILL: the lines
    written at the lifespan's end were lost twice in CI's full runs. It is chained to
    the installed handler, not a ``Server`` subclass, because ``--workers`` builds its
    servers inside uvicorn's supervisor, where no subclass can be named.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only (an embedded server has none of its own)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Callable[..., Any] = previous) -> None:
            previous(signum, frame)
            if not loop.is_closed():  # a signal handler: the loop does the work
                loop.call_soon_threadsafe(flush)

        signal.signal(sig, handler)


class FlushingConfig(uvicorn.Config):
    """uvicorn's config for one process: on load (inside the server, on its loop),
    ``on_stop`` (if any) is chained to the stop signals (:func:`flush_on_stop_signal`)."""

    def __init__(self, app: Any, on_stop: Callable[[], None] | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.on_stop = on_stop

    def load(self) -> None:
        loaded = self.loaded
        super().load()
        if not loaded and self.on_stop is not None:
            with contextlib.suppress(RuntimeError):  # no running loop: not inside a server
                flush_on_stop_signal(self.on_stop)
