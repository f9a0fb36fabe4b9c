"""Generate an image with the unmodified Triton client over HTTP (KServe v2).

    python examples/triton_http.py

Point `tritonclient.http` at the gateway instead of Triton. The model name is a
logical model (`draft`, `preview`, `quality`), a route, or `auto` (routed by the rules,
like an OpenAI request without a model). Every model takes the same tensors: `PROMPT`
(BYTES, required) and the optional `SEED` (INT64), `STEPS`, `WIDTH`, `HEIGHT` (INT32),
each shaped [batch, 1]; it answers `IMAGE`, UINT8 [batch, height, width, 3].

Environment: ROUTER_URL (default http://127.0.0.1:8080), OPENAI_API_KEY (keys mode:
sent as `Authorization: Bearer`), EXAMPLES_OUT (where the image goes; default: the
current directory).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as httpclient
from PIL import Image

ROUTER_URL = os.environ.get("ROUTER_URL", "http://127.0.0.1:8080")
OUT = Path(os.environ.get("EXAMPLES_OUT", "."))
KEY = os.environ.get("OPENAI_API_KEY")


def tensor(name: str, value: np.ndarray[Any, Any], datatype: str) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value, binary_data=True)  # raw bytes after the JSON, not a JSON list
    return tensor


def main() -> int:
    url = urlsplit(ROUTER_URL)  # tritonclient wants host:port, and ssl=True for https
    client = httpclient.InferenceServerClient(url.netloc, ssl=url.scheme == "https")
    headers = {"Authorization": f"Bearer {KEY}"} if KEY else None

    inputs = [
        tensor("PROMPT", np.array([[b"a sketch of a lighthouse"]], dtype=object), "BYTES"),
        tensor("SEED", np.array([[7]], dtype=np.int64), "INT64"),
        tensor("WIDTH", np.array([[64]], dtype=np.int32), "INT32"),
        tensor("HEIGHT", np.array([[64]], dtype=np.int32), "INT32"),
    ]
    outputs = [httpclient.InferRequestedOutput("IMAGE", binary_data=True)]
    result = client.infer("auto", inputs, outputs=outputs, headers=headers)

    # The answer's parameters say which route and model served it.
    print(f"served by: {result.get_response().get('parameters')}")
    image = result.as_numpy("IMAGE")
    if image is None or image.ndim != 4:
        print("the answer holds no IMAGE tensor", file=sys.stderr)
        return 1
    path = OUT / "triton_http.png"
    Image.fromarray(image[0]).save(path)
    print(f"wrote {path} ({image.shape[2]}x{image.shape[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
