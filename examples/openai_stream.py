"""Stream a generation with the OpenAI SDK: faster tiers' previews first, then the image.

    python examples/openai_stream.py

With `stream=True` and `partial_images=N` the gateway starts the routed tier and, beside
it, up to N faster tiers of the route's fallback chain on the same seed; each that
finishes first arrives as an `image_generation.partial_image` event, the routed tier's
image as `image_generation.completed` (docs/openai.md, "Progressive previews").

Environment: ROUTER_URL (default http://127.0.0.1:8080), OPENAI_API_KEY (keys mode),
EXAMPLES_OUT (where the images go; default: the current directory).
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
    client = OpenAI(base_url=f"{ROUTER_URL}/v1", api_key=os.environ.get("OPENAI_API_KEY") or "unused")
    stream = client.images.generate(
        prompt="a lighthouse at dusk",  # the shipped default route: preview, falling back to draft
        stream=True,
        partial_images=1,  # one preview, from the fastest tier of the chain
        extra_body={"seed": 11},
    )
    completed = False
    for event in stream:
        # every event says which model made it (router_model) on which route (router_route)
        made_by = (event.model_extra or {}).get("router_model", "?")
        if event.type == "image_generation.partial_image":
            path = OUT / f"openai_stream_partial_{event.partial_image_index}.png"
        else:  # image_generation.completed; an error event is raised by the SDK instead
            path, completed = OUT / "openai_stream_final.png", True
        path.write_bytes(base64.b64decode(event.b64_json))
        print(f"{event.type} from {made_by}: wrote {path}")
    if not completed:
        print("the stream ended without a completed image", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
