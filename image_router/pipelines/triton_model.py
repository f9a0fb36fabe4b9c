"""Adapter from Triton's Python backend to the tier pipelines.

Every ``model_repository/<name>/1/model.py`` re-exports :class:`TritonPythonModel`
from here; the tier is chosen by the ``pipeline`` parameter of its ``config.pbtxt``
(``draft``, ``preview``, ``quality`` or ``noop``), so one reviewed code path serves
them all. ``checkpoint`` (a local directory, relative paths resolved against the model
directory) switches from seeded random weights to a ``from_pretrained`` load.

Triton hands ``execute`` one request at a time: the shipped configs have no
``dynamic_batching`` block (see model_repository/draft/config.pbtxt), because requests
computed one after another but answered together only made the first wait for the rest.
A list of several is still handled, request by request. The rows of one request run one
by one, or, with the model's opt-in ``batch_rows`` parameter, in fixed chunks of that
many rows in one pass each (:mod:`image_router.pipelines.rows`). A request may ask for
its own chunk size with the ``rows_per_pass`` request parameter: the gateway sends it
for a job tier that batches jobs together (image_router/jobs/batch.py), whose rows come
from several clients' jobs; interactive requests never carry it.

Each request in a batch is validated and answered on its own: one bad request gets a
400 (``INVALID_ARG``) and never fails its batch-mates or the model process. A request
its client cancelled (Triton marks it when a gRPC call is cancelled or its deadline
passes) is not started, or stops after the denoising step it is in, and is answered
``CANCELLED``: abandoned work must not keep the model busy while live requests wait.

Each answer carries ``COMPUTE_NS`` (INT64 ``[batch, 1]``) beside ``IMAGE``: the
nanoseconds each row spent in its generator (denoising and decode). The pipeline returns
host numpy, so on a GPU the CUDA work has finished when the clock stops. The gateway
bills this figure (image_router/billing/), not its own wall time, which also holds Triton's
queueing and the transfer; a client that names only ``IMAGE`` never sees it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from image_router.pipelines.contract import Cancelled, Generation, InvalidInput, Limits, parse_request
from image_router.pipelines.rows import run_rows

__all__ = ["NoopGenerator", "TritonPythonModel", "batch_rows", "build_generator", "generate_rows", "rows_per_pass"]

INPUT_NAMES = ("PROMPT", "SEED", "STEPS", "WIDTH", "HEIGHT", "INIT_IMAGE", "MASK", "STRENGTH")


class Generator(Protocol):
    limits: Limits

    def __call__(self, job: Generation, cancelled: Callable[[], bool] | None = None) -> NDArray[Any]: ...


class NoopGenerator:
    """Answers at once with a fixed image: measures everything but the model."""

    limits = Limits(width=8, height=8, steps=1, max_side=64, max_steps=1000)

    def __call__(self, job: Generation, cancelled: Callable[[], bool] | None = None) -> NDArray[Any]:
        ys, xs = np.mgrid[0 : job.height, 0 : job.width]
        image = np.stack([xs * 4 % 256, ys * 4 % 256, np.full_like(xs, 128)], axis=-1)
        return np.asarray(image, dtype=np.uint8)

    def batch(self, jobs: Sequence[Generation], cancelled: Callable[[], bool] | None = None) -> list[NDArray[Any]]:
        """The same fixed images, as one pass (so ``batch_rows`` is measurable here too)."""
        return [self(job, cancelled) for job in jobs]


class DiffusionGenerator:
    """A tier's diffusion pipeline behind the :class:`Generator` interface."""

    def __init__(self, preset_name: str, checkpoint: Path | None, device: str) -> None:
        from image_router.pipelines.diffusion import (
            PRESETS,
            ImagePipeline,
            build_random_pipeline,
            load_pipeline,
        )

        preset = PRESETS[preset_name]
        pipe = load_pipeline(checkpoint, device) if checkpoint else build_random_pipeline(preset)
        self.pipeline = ImagePipeline(pipe, preset, device)
        self.limits = Limits(
            width=preset.width,
            height=preset.height,
            steps=preset.steps,
            max_side=preset.max_side,
            max_steps=preset.max_steps,
            size_multiple=self.pipeline.size_multiple,
            min_side=self.pipeline.size_multiple,
        )
        # One warm-up image so the first real request does not pay for lazy setup; the
        # image-to-image and inpainting variants too (two steps each: they are set up on
        # first use, which cost a first edit ~0.5 s on the draft tier).
        first = self.pipeline.generate("warm-up", 0, preset.steps, preset.width, preset.height)
        mask = np.full(first.shape[:2], 255, np.uint8)
        self.pipeline.generate("warm-up", 0, 2, preset.width, preset.height, None, first, None, 1.0)
        self.pipeline.generate("warm-up", 0, 2, preset.width, preset.height, None, first, mask, 1.0)

    def __call__(self, job: Generation, cancelled: Callable[[], bool] | None = None) -> NDArray[Any]:
        return self.pipeline.generate(
            job.prompt, job.seed, job.steps, job.width, job.height, cancelled, job.init_image, job.mask, job.strength
        )

    def batch(self, jobs: Sequence[Generation], cancelled: Callable[[], bool] | None = None) -> list[NDArray[Any]]:
        """Text-to-image rows sharing steps and size, in one pass (``batch_rows``)."""
        first = jobs[0]
        return self.pipeline.generate_batch(
            [job.prompt for job in jobs],
            [job.seed for job in jobs],
            first.steps,
            first.width,
            first.height,
            cancelled,
        )


def build_generator(params: dict[str, str], model_dir: Path, device: str) -> Generator:
    """Build the generator a model's ``config.pbtxt`` parameters describe."""
    name = params.get("pipeline", "")
    if name == "noop":
        return NoopGenerator()
    threads = int(params.get("torch_threads", "1") or "1")
    import torch

    # One thread per instance: two threads on two busy cores made latency collapse.
    torch.set_num_threads(threads)
    checkpoint = params.get("checkpoint", "").strip()
    path = None
    if checkpoint:
        path = Path(checkpoint) if os.path.isabs(checkpoint) else model_dir / checkpoint
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    return DiffusionGenerator(name, path, device)


def batch_rows(params: dict[str, str]) -> int:
    """The model's ``batch_rows`` parameter: rows per pipeline pass (1: row by row)."""
    raw = params.get("batch_rows", "1").strip() or "1"
    value = int(raw) if raw.isdigit() else 0
    if value < 1:
        raise ValueError(f"parameter batch_rows must be a whole number >= 1, got {raw!r}")
    return value


MAX_ROWS_PER_PASS = 64


def rows_per_pass(parameters: str | None, configured: int) -> int:
    """The rows one pass may take for a request: its ``rows_per_pass`` parameter (the
    gateway sends it for work that can wait, image_router/jobs/batch.py) or the model's
    own ``batch_rows``. ``parameters`` is the request's parameters as Triton's Python
    backend gives them (a JSON object); a bad value is the request's 400, naming it."""
    if not parameters:
        return configured
    raw = json.loads(parameters).get("rows_per_pass")
    if raw is None:
        return configured
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_ROWS_PER_PASS:
        raise InvalidInput(f"rows_per_pass: a whole number from 1 to {MAX_ROWS_PER_PASS}, got {raw!r}")
    return raw


def generate_rows(
    generator: Generator, jobs: list[Generation], cancelled: Callable[[], bool], rows: int = 1
) -> tuple[list[NDArray[Any]], list[int]]:
    """Each row's image and the nanoseconds it took in the model, ``rows`` rows per
    pass (:func:`image_router.pipelines.rows.run_rows`); rows of one request share a size."""
    images, spent = run_rows(generator, jobs, cancelled, rows)
    if len({image.shape for image in images}) > 1:
        raise InvalidInput("WIDTH/HEIGHT: rows of one request must share a size")
    return images, spent


class TritonPythonModel:
    """The Python-backend model class Triton instantiates once per model instance."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        model_dir = Path(args["model_repository"])
        self.rows = batch_rows(params)
        self.generator = build_generator(params, model_dir, device)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                inputs = {}
                for name in INPUT_NAMES:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    inputs[name] = None if tensor is None else tensor.as_numpy()
                jobs = parse_request(inputs, self.generator.limits)
                rows = rows_per_pass(getattr(request, "parameters", lambda: None)(), self.rows)
                images, spent = generate_rows(self.generator, jobs, request.is_cancelled, rows)
                out = pb_utils.Tensor("IMAGE", np.stack(images))
                compute = pb_utils.Tensor("COMPUTE_NS", np.asarray(spent, dtype=np.int64).reshape(-1, 1))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out, compute]))
            except InvalidInput as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Cancelled as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.CANCELLED)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as exc:  # noqa: BLE001 - one request fails, the process lives
                error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses

    def finalize(self) -> None:
        self.generator = None  # type: ignore[assignment]
