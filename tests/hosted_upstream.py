"""A stand-in for a hosted OpenAI-compatible image API, run as a real process.

No hosted API can be reached from here, so the integration tests and
``bench/hosted.py`` start this one: ``POST /v1/images/generations`` with a bearer key,
answering ``n`` PNG images (or ``--format jpeg|webp``) whose smooth pixels follow from
the prompt and the index, encoded once per size and prompt and then answered at once. A
prompt can ask it to misbehave, so the gateway's handling of each failure is tested
against real HTTP:

- ``status:NNN``: answer that HTTP status with an OpenAI-style error body
- ``sleep:S``: wait S seconds first
- ``garbage``: answer 200 with ``b64_json`` that is not an image

``GET /last`` returns the last answer's body verbatim, so a test can check that the
gateway passed the images through byte for byte; ``GET /last-request`` the last request
body it was sent (which fields the gateway passed on).

    python tests/hosted_upstream.py --port 0 [--format png] [--key sk-test]

It prints ``listening on PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import time
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

FORMAT = "png"
KEY = "sk-test"
LAST = b"{}"
LAST_REQUEST = b"{}"


@lru_cache(maxsize=256)
def image_b64(prompt: str, index: int, width: int, height: int, fmt: str) -> str:
    seed = int.from_bytes(hashlib.blake2b(f"{prompt}|{index}".encode(), digest_size=4).digest(), "little")
    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)  # smooth, like a photo
    out = io.BytesIO()
    image.save(out, format=fmt.upper())
    return base64.b64encode(out.getvalue()).decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/last":
            self._answer(200, LAST)
        elif self.path == "/last-request":
            self._answer(200, LAST_REQUEST)
        else:
            self._answer(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        global LAST, LAST_REQUEST
        LAST_REQUEST = self.rfile.read(int(self.headers.get("content-length", "0")))
        request = json.loads(LAST_REQUEST)
        if self.path != "/v1/images/generations":
            self._answer(404, b'{"error": {"message": "not found"}}')
            return
        if self.headers.get("authorization") != f"Bearer {KEY}":
            self._answer(401, b'{"error": {"message": "bad key", "code": "invalid_api_key"}}')
            return
        prompt = str(request.get("prompt", ""))
        if prompt.startswith("sleep:"):
            time.sleep(float(prompt.split(":", 1)[1]))
        if prompt.startswith("status:"):
            error = {"error": {"message": "upstream says no", "type": "server_error"}}
            self._answer(int(prompt.split(":", 1)[1]), json.dumps(error).encode())
            return
        width, height = (int(x) for x in str(request.get("size") or "64x64").split("x"))
        n = int(request.get("n", 1))
        if prompt == "garbage":
            data = [{"b64_json": base64.b64encode(b"hello, not an image").decode()}]
        else:
            data = [{"b64_json": image_b64(prompt, i, width, height, FORMAT)} for i in range(n)]
        LAST = json.dumps({"created": int(time.time()), "data": data}).encode()
        self._answer(200, LAST)

    def log_message(self, format: str, *args: object) -> None:
        return


def main() -> None:
    global FORMAT, KEY
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    parser.add_argument("--key", default=KEY)
    args = parser.parse_args()
    FORMAT, KEY = args.format, args.key
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
