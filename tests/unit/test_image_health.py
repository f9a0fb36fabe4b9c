"""Image health as a rollout judges it: what a broken checkpoint draws is degenerate,
pictures are not, and the pixel difference of a shadow pair."""

from __future__ import annotations

import numpy as np

from image_router.rollouts.health import degenerate, difference, thumbnail

NOISE = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)


def test_blank_constant_and_flat_images_are_degenerate() -> None:
    black = np.zeros((512, 512, 3), np.uint8)
    grey = np.full((256, 384, 3), 128, np.uint8)
    specks = black.copy()
    specks[::40, ::40] = 255  # a flat image with a few bright pixels: high variance, one value
    faint = (grey.astype(np.int16) + np.random.default_rng(1).integers(-2, 3, grey.shape)).astype(np.uint8)
    for image in (black, grey, specks, faint, np.zeros((0, 0, 3), np.uint8)):
        assert degenerate(image)


def test_pictures_are_not() -> None:
    gradient = np.tile((np.arange(512) // 2).astype(np.uint8)[None, :, None], (512, 1, 3))
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, 32:] = 200  # two flat halves are a picture (a split screen), not a blank
    for image in (NOISE, gradient, half, NOISE[:100, :37]):
        assert not degenerate(image)


def test_pixel_difference() -> None:
    assert difference(NOISE, NOISE) == 0.0
    shifted = NOISE // 2 + 10
    assert 0.1 < difference(NOISE, shifted) < 0.5
    assert difference(NOISE, NOISE[:256]) == 1.0


def test_thumbnails_are_small_jpegs() -> None:
    uri = thumbnail(NOISE)
    assert uri.startswith("data:image/jpeg;base64,") and len(uri) < 20_000
