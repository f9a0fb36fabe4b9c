"""A test-only Triton Python-backend model whose behaviour its config parameters set:
the canary variants of the rollout tests (never part of the shipped repository).

Parameters: ``delay_ms`` (each execute sleeps this long, once for its batch), ``fail``
(``true``: every request answers INTERNAL), ``blank`` (``true``: black images),
``shift`` (added to every pixel, mod 256: another checkpoint's take on one seed). The
images are seeded noise, so a request's seed decides its picture, as with the tiers.
It speaks the project's own tensor contract (image_router.pipelines.contract).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from image_router.pipelines.contract import InvalidInput, Limits, parse_request

LIMITS = Limits(width=64, height=64, steps=1, max_side=256, max_steps=1000)
INPUTS = ("PROMPT", "SEED", "STEPS", "WIDTH", "HEIGHT", "INIT_IMAGE", "MASK", "STRENGTH")


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.delay_s = float(params.get("delay_ms", "0") or 0) / 1000
        self.fail = params.get("fail", "") == "true"
        self.blank = params.get("blank", "") == "true"
        self.shift = int(params.get("shift", "0") or 0)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        time.sleep(self.delay_s)
        responses = []
        for request in requests:
            if self.fail:
                error = pb_utils.TritonError("this variant fails every request", pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            try:
                inputs = {}
                for name in INPUTS:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    inputs[name] = None if tensor is None else tensor.as_numpy()
                images = []
                for job in parse_request(inputs, LIMITS):
                    if self.blank:
                        images.append(np.zeros((job.height, job.width, 3), np.uint8))
                    else:
                        rng = np.random.default_rng(job.seed)
                        noise = rng.integers(0, 256, (job.height, job.width, 3), dtype=np.uint8)
                        images.append(noise + np.uint8(self.shift))
                out = pb_utils.Tensor("IMAGE", np.stack(images))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except InvalidInput as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
