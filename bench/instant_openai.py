"""A stand-in OpenAI Images API that answers every request at once with a 1x1 PNG.

`bench/peers_openai.py` puts every proxy in front of it, so it must never be the
bottleneck: a raw asyncio protocol (uvloop where installed), no HTTP library, no JSON
parsing, one prepared answer in OpenAI's shape (`{"created", "data": [{"b64_json"}]}`)
written for every request whatever its path, body or key. Keep-alive, pipelining and
chunked request bodies are handled; nothing else of HTTP is.

    python bench/instant_openai.py [--port 0]

It prints ``listening on PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

# The smallest valid PNG: one opaque pixel (what the upstream's image is does not matter:
# every proxy here passes `b64_json` through without decoding it).
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
BODY = b'{"created":1700000000,"data":[{"b64_json":"' + PNG_1X1.encode() + b'"}]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


def request_end(buffer: bytes) -> int:
    """Where the first complete request in ``buffer`` ends, or -1 if it has not all
    arrived yet."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return -1
    head = buffer[:head_end].lower()
    body_start = head_end + 4
    if b"transfer-encoding: chunked" in head:
        end = buffer.find(b"\r\n0\r\n\r\n", body_start - 2)  # the last chunk; no trailers are sent here
        return -1 if end < 0 else end + 7
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return body_start
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
    return body_start + length if len(buffer) >= body_start + length else -1


class Instant(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answers = 0
        while (end := request_end(self.buffer)) >= 0:
            self.buffer = self.buffer[end:]
            answers += 1
        if answers:
            self.transport.write(RESPONSE * answers)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Instant, "127.0.0.1", port)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
