"""Generate an image with the unmodified Triton client over gRPC (KServe v2).

    python examples/triton_grpc.py

The gateway serves `inference.GRPCInferenceService` on its own port (`router serve
--grpc-port`, 8081 by default). The tensors are those of examples/triton_http.py. A
`client_timeout` is the request's deadline: the gateway caps the route's budget with it
and downgrades to a faster tier in time rather than miss it.

Environment: ROUTER_GRPC (default 127.0.0.1:8081), OPENAI_API_KEY (keys mode: sent as
`authorization` metadata), EXAMPLES_OUT (where the image goes; default: the current
directory).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

ROUTER_GRPC = os.environ.get("ROUTER_GRPC", "127.0.0.1:8081")
OUT = Path(os.environ.get("EXAMPLES_OUT", "."))
KEY = os.environ.get("OPENAI_API_KEY")


def tensor(name: str, value: np.ndarray[Any, Any], datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def main() -> int:
    client = grpcclient.InferenceServerClient(ROUTER_GRPC)
    headers = {"authorization": f"Bearer {KEY}"} if KEY else None  # gRPC metadata keys are lower case

    inputs = [
        tensor("PROMPT", np.array([[b"a sketch of a lighthouse"]], dtype=object), "BYTES"),
        tensor("SEED", np.array([[7]], dtype=np.int64), "INT64"),
        tensor("WIDTH", np.array([[64]], dtype=np.int32), "INT32"),
        tensor("HEIGHT", np.array([[64]], dtype=np.int32), "INT32"),
    ]
    result = client.infer("auto", inputs, client_timeout=30.0, headers=headers)

    # The answer's parameters say which route and model served it.
    served = {name: p.string_param for name, p in result.get_response().parameters.items()}
    print(f"served by: {served}")
    image = result.as_numpy("IMAGE")
    if image is None or image.ndim != 4:
        print("the answer holds no IMAGE tensor", file=sys.stderr)
        return 1
    path = OUT / "triton_grpc.png"
    Image.fromarray(image[0]).save(path)
    print(f"wrote {path} ({image.shape[2]}x{image.shape[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
