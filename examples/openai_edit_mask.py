"""Generate an image, then repaint a circle in its middle with an edit and a mask.

    python examples/openai_edit_mask.py

The mask is an RGBA picture of the image's size; its fully transparent pixels are the
ones repainted (OpenAI's convention), the rest of the picture is kept. Here it is made
with numpy and Pillow: transparent inside a circle, opaque elsewhere.

Environment: ROUTER_URL (default http://127.0.0.1:8080), OPENAI_API_KEY (keys mode),
EXAMPLES_OUT (where the images go; default: the current directory).
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import numpy as np
from openai import OpenAI
from PIL import Image

ROUTER_URL = os.environ.get("ROUTER_URL", "http://127.0.0.1:8080")
OUT = Path(os.environ.get("EXAMPLES_OUT", "."))


def circle_mask(width: int, height: int) -> bytes:
    """A PNG: alpha 0 (repaint) inside a centred circle, 255 (keep) outside."""
    ys, xs = np.mgrid[0:height, 0:width]
    inside = (xs - width / 2) ** 2 + (ys - height / 2) ** 2 < (min(width, height) / 3) ** 2
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(inside, 0, 255)
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    return out.getvalue()


def save(name: str, data: bytes) -> Path:
    path = OUT / name
    path.write_bytes(data)
    print(f"wrote {path}")
    return path


def main() -> int:
    client = OpenAI(base_url=f"{ROUTER_URL}/v1", api_key=os.environ.get("OPENAI_API_KEY") or "unused")

    # 1. A picture to start from (any PNG, JPEG or WebP would do).
    generated = client.images.generate(prompt="a sketch of a house with a garden", extra_body={"seed": 3})
    if not generated.data or not generated.data[0].b64_json:
        print("the generation holds no image", file=sys.stderr)
        return 1
    source = base64.b64decode(generated.data[0].b64_json)
    save("openai_edit_source.png", source)

    # 2. A mask of the same size.
    width, height = Image.open(io.BytesIO(source)).size
    mask = circle_mask(width, height)
    save("openai_edit_mask.png", mask)

    # 3. The edit: files go as (name, bytes, content type); `strength` (0, 1] is the
    #    gateway's extra: 1 repaints the masked pixels from scratch.
    edited = client.images.edit(
        image=("source.png", source, "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="a sketch of a red door",
        extra_body={"seed": 3, "strength": 1.0},
    )
    if not edited.data or not edited.data[0].b64_json:
        print("the edit holds no image", file=sys.stderr)
        return 1
    save("openai_edit_result.png", base64.b64decode(edited.data[0].b64_json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
