"""One keep-alive HTTP/1.1 connection that sends one prepared request, again and again.

The load generator of `bench/peers_openai.py`. Client, proxies and upstream share this
machine's cores, so the client must cost as little as it can: the request's bytes are
written once, and an answer is read by its `content-length` (or its chunks) without
an HTTP library; httpx at 32 connections cost more CPU than some of the proxies it
measures. Only what the proxies here answer is handled: no TLS, no redirects, no
`100-continue`.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


def request_bytes(url: str, headers: dict[str, str], body: bytes) -> tuple[str, int, bytes]:
    """Host, port and the raw bytes of ``POST url`` with ``headers`` and ``body``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"host: {host}:{port}", f"content-length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """A connection that re-opens itself when the server says ``connection: close``."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self) -> int:
        """Send the request, read the whole answer; its status."""
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        if b"\r\ntransfer-encoding: chunked" in head:
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")  # no trailers are sent here
        else:
            at = head.find(b"\r\ncontent-length:")
            length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at >= 0 else 0
            await self.reader.readexactly(length)
        if b"\r\nconnection: close" in head:
            self.close()
        return int(head[9:12])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
