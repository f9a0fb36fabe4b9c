"""The cache's pure parts: keys, entries, the memory layer, heavy hitters, Accept."""

from __future__ import annotations

import numpy as np
import pytest

from image_router.cache import CacheKey, CorruptEntry, Entry, derive_seeds, image_id
from image_router.cache.hitters import HeavyHitters
from image_router.cache.hot import HotEntries
from image_router.http.formats import negotiate


def key(**changes: object) -> str:
    fields: dict[str, object] = dict(
        route="r",
        model="m",
        remote="m",
        version="1",
        prompts=("a fox",),
        seeds=(1,),
        steps=None,
        width=None,
        height=None,
    )
    fields.update(changes)
    return str(CacheKey.of(**fields))  # type: ignore[arg-type]


def test_every_field_that_decides_the_pixels_is_in_the_key_and_nothing_else() -> None:
    base = key()
    changes: list[dict[str, object]] = [
        {"model": "m2"}, {"remote": "x"}, {"version": "2"}, {"prompts": ("a fox ",)}, {"seeds": (2,)},
        {"steps": 4}, {"width": 64}, {"height": 64}, {"route": "r2"}, {"prompts": ("a fox", "a fox")},
    ]  # fmt: skip
    for change in changes:
        assert key(**change) != base, change
    assert key() == base
    assert base.startswith("c:r:r|m|m@1|")


def test_derived_seeds_are_stable_per_prompt_and_differ_within_a_request() -> None:
    assert derive_seeds(("a fox",), None, None, None) == derive_seeds(("a fox",), None, None, None)
    two = derive_seeds(("a fox", "a fox"), None, None, None)
    assert two[0] != two[1] and all(0 <= s < 2**31 for s in two)
    assert derive_seeds(("a fox",), 4, None, None) != derive_seeds(("a fox",), None, None, None)


def test_entries_round_trip_and_anything_else_is_corrupt() -> None:
    images = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    entry = Entry(images, "draft", "1", "thumbs", (5, 6), 123.5, {"k": "v"})
    back = Entry.from_bytes(entry.to_bytes())
    np.testing.assert_array_equal(back.images, images)
    assert (back.model, back.version, back.route, back.seeds, back.created, back.meta) == (
        "draft", "1", "thumbs", (5, 6), 123.5, {"k": "v"}
    )  # fmt: skip
    data = entry.to_bytes()
    for bad in (b"", b"garbage", data[:-1], data[:10], b"RC1\0" + b"\xff" * 20):
        with pytest.raises(CorruptEntry):
            Entry.from_bytes(bad)
    assert image_id(images[0]) != image_id(images[1]) and len(image_id(images[0])) == 32


def test_memory_layer_is_bounded_by_bytes_and_age() -> None:
    now = [0.0]
    hot = HotEntries(max_bytes=5000, ttl_s=5.0, clock=lambda: now[0])
    small = Entry(np.zeros((1, 10, 10, 3), np.uint8), "m", "1", "r", (1,), 0.0)  # 300 bytes + 256
    for i in range(10):
        hot.put(f"k{i}", small, ttl_s=60)
    assert hot.bytes <= 5000 and hot.get("k0") is None and hot.get("k9") is small
    now[0] = 5.0
    assert hot.get("k9") is None, "older than the memory's own bound"
    hot.put("big", Entry(np.zeros((1, 20, 20, 3), np.uint8), "m", "1", "r", (1,), 0.0), ttl_s=60)
    assert hot.get("big") is None, "an entry over an eighth of the memory is not kept"


def test_heavy_hitters_keep_the_frequent_prompts_in_bounded_memory() -> None:
    hitters = HeavyHitters(capacity=10)
    for i in range(2000):
        hitters.add("r", "popular" if i % 3 == 0 else f"rare {i}")
    top = hitters.top(1)[0]
    assert top["prompt"] == "popular" and int(top["at_least"]) >= 600  # type: ignore[call-overload]
    assert len(hitters.top(100)) == 10


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "png"),
        ("image/webp,image/*;q=0.8", "webp"),
        ("image/avif,image/webp,*/*", "avif"),
        ("image/png;q=0.5, image/jpeg;q=0.9", "jpeg"),
        ("text/html", "png"),
        ("image/webp;q=0", "png"),
    ],
)
def test_accept_negotiation(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


def test_heavy_hitters_evict_the_smallest_count_as_the_scan_did() -> None:
    """The bucketed summary keeps what Space-Saving with a full scan keeps: the same
    counts and errors for a stream of unique and repeated prompts."""
    import random

    from image_router.cache.hitters import HeavyHitters

    def reference(stream: list[str], capacity: int) -> dict[str, tuple[int, int]]:
        counters: dict[str, list[int]] = {}
        for item in stream:
            if item in counters:
                counters[item][0] += 1
            elif len(counters) < capacity:
                counters[item] = [1, 0]
            else:
                floor = min(c[0] for c in counters.values())
                victim = next(k for k, c in counters.items() if c[0] == floor)
                del counters[victim]
                counters[item] = [floor + 1, floor]
        return {k: (c[0], c[1]) for k, c in counters.items()}

    rng = random.Random(3)
    stream = [f"p{int(rng.paretovariate(1.2))}" if rng.random() < 0.6 else f"u{i}" for i in range(5000)]
    hitters = HeavyHitters(capacity=50)
    for item in stream:
        hitters.add("r", item)
    got = {prompt: (c.count, c.error) for (_, prompt), c in hitters._counters.items()}
    want = reference(stream, 50)
    assert sorted(got.values()) == sorted(want.values())
    assert {k for k, v in got.items() if v[0] - v[1] > 20} == {k for k, v in want.items() if v[0] - v[1] > 20}
