"""The model-side tensor contract, validated without a server."""

from __future__ import annotations

import numpy as np
import pytest

from image_router.pipelines.contract import InvalidInput, Limits, parse_request
from image_router.pipelines.triton_model import NoopGenerator

LIMITS = Limits(width=64, height=64, steps=4, max_side=256, max_steps=16)


def test_defaults_and_per_row_values() -> None:
    jobs = parse_request(
        {"PROMPT": np.array([[b"a"], [b"b"]], dtype=object), "SEED": np.array([[5], [6]], dtype=np.int64)},
        LIMITS,
    )
    assert [(j.prompt, j.seed, j.steps, j.width, j.height) for j in jobs] == [
        ("a", 5, 4, 64, 64),
        ("b", 6, 4, 64, 64),
    ]


def test_missing_seed_draws_a_random_one() -> None:
    seeds = {parse_request({"PROMPT": np.array([[b"a"]], dtype=object)}, LIMITS)[0].seed for _ in range(20)}
    assert len(seeds) > 1


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "PROMPT: required"),
        ({"PROMPT": np.array([], dtype=object)}, "PROMPT: tensor is empty"),
        ({"PROMPT": np.array([[b"   "]], dtype=object)}, "must not be empty"),
        ({"PROMPT": np.array([[b"x" * 5000]], dtype=object)}, "longer than"),
        ({"STEPS": np.array([[1.5]])}, "STEPS: expected an integer"),
        ({"SEED": np.array([[1], [2], [3]], dtype=np.int64)}, "SEED: expected 1 values"),
        ({"WIDTH": np.array([[4]], dtype=np.int32)}, "WIDTH: 4 is outside"),
    ],
)
def test_violations_name_the_tensor(inputs: dict[str, np.ndarray], message: str) -> None:
    full: dict[str, np.ndarray | None] = {"PROMPT": np.array([[b"ok"]], dtype=object)}
    full.update(inputs)
    if not inputs:
        full = {}
    with pytest.raises(InvalidInput, match=message):
        parse_request(full, LIMITS)


def test_noop_image_is_fixed_and_sized() -> None:
    gen = NoopGenerator()
    job = parse_request({"PROMPT": np.array([[b"x"]], dtype=object)}, gen.limits)[0]
    image = gen(job)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert image.tobytes() == gen(job).tobytes()


def test_image_inputs_are_checked_and_broadcast_to_every_prompt() -> None:
    from image_router.pipelines.contract import InvalidInput, Limits, parse_request

    limits = Limits(width=64, height=64, steps=4, max_side=256, max_steps=16)
    picture = np.zeros((1, 32, 48, 3), np.uint8)
    mask = np.zeros((1, 32, 48), np.uint8)
    jobs = parse_request(
        {"PROMPT": np.array([[b"a"], [b"b"]], dtype=object), "INIT_IMAGE": picture, "MASK": mask,
         "STRENGTH": np.array([[0.5]], np.float32)},
        limits,
    )  # fmt: skip
    assert [j.init_image.shape for j in jobs if j.init_image is not None] == [(32, 48, 3), (32, 48, 3)]
    assert all(j.mask is not None and j.strength == 0.5 for j in jobs)
    bad = [
        ({"INIT_IMAGE": np.zeros((1, 32, 48), np.uint8)}, "INIT_IMAGE"),
        ({"INIT_IMAGE": np.zeros((1, 32, 48, 3), np.float32)}, "INIT_IMAGE"),
        ({"MASK": mask}, "MASK: needs INIT_IMAGE"),
        ({"INIT_IMAGE": picture, "MASK": np.zeros((1, 16, 16), np.uint8)}, "MASK"),
        ({"INIT_IMAGE": picture, "STRENGTH": np.array([[0.0]], np.float32)}, "STRENGTH"),
    ]
    for extra, message in bad:
        with pytest.raises(InvalidInput, match=message):
            parse_request({"PROMPT": np.array([[b"a"]], dtype=object), **extra}, limits)
