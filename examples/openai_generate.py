"""Generate one image with the official OpenAI SDK, save it, and say what served it.

    make up                                  # in another terminal: Triton + the gateway
    python examples/openai_generate.py

Environment: ROUTER_URL (default http://127.0.0.1:8080); OPENAI_API_KEY, a tenant's key
when routes.yaml says `tenants: {mode: keys}` (any value otherwise); EXAMPLES_OUT, the
directory the image is written to (default: the current one).
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

from openai import OpenAI

ROUTER_URL = os.environ.get("ROUTER_URL", "http://127.0.0.1:8080")
OUT = Path(os.environ.get("EXAMPLES_OUT", "."))


def main() -> int:
    # The gateway speaks the OpenAI Images API under /v1: only base_url changes.
    client = OpenAI(base_url=f"{ROUTER_URL}/v1", api_key=os.environ.get("OPENAI_API_KEY") or "unused")

    # with_raw_response keeps the HTTP answer beside the parsed one: its X-Router-*
    # headers say which route and model served the request, and how.
    raw = client.images.with_raw_response.generate(
        prompt="a sketch of a lighthouse on a cliff",  # the shipped routes send sketches to the draft tier
        response_format="b64_json",
        extra_body={"seed": 7},  # the gateway's extras go in extra_body: the same seed, the same image
    )
    for name, value in raw.headers.items():
        if name.lower().startswith("x-router-"):
            print(f"{name}: {value}")

    answer = raw.parse()
    if not answer.data or not answer.data[0].b64_json:
        print("the answer holds no image", file=sys.stderr)
        return 1
    path = OUT / "openai_generate.png"
    path.write_bytes(base64.b64decode(answer.data[0].b64_json))
    print(f"wrote {path} ({answer.size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
