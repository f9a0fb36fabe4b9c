"""The result cache as a cache only: a purge touches its own keys and nothing else in
the store, and what it reads back is served only if it is what was stored under that
key (a result carries its key's digest, an image hashes to its id).

Over a real :class:`DiskStore` (files, no sockets); the same over Redis is in
tests/integration/test_cache_integrity.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from image_router.cache import CacheKey, Entry, ResultCache, image_id
from image_router.cache.keys import NAMESPACE, image_key, key_digest, variant_key
from image_router.cache.store import DiskStore, GuardedStore
from image_router.config.table import CacheConfig

KEY = CacheKey.of("thumbs", "draft", "draft", "1", ("a fox",), (7,), None, None, None)
OTHER = CacheKey.of("thumbs", "draft", "draft", "1", ("a wolf",), (7,), None, None, None)
# what other owners keep in a store the cache may share (rollouts, tenant limits)
FOREIGN = {"ro:photo:abc123": b"state", "ro:photo:abc123:w3:b": b"counts", "t:acme:rate": b"1", "t:acme:images:1": b"9"}


def pixels(value: int) -> np.ndarray:
    return np.full((1, 4, 4, 3), value, np.uint8)


@pytest.fixture()
async def cache(tmp_path: Path) -> AsyncIterator[tuple[ResultCache, DiskStore]]:
    store = DiskStore(tmp_path / "cache", 1 << 26)
    result = ResultCache(CacheConfig(store=f"disk://{tmp_path / 'cache'}", timeout_s=1.0), GuardedStore(store, 1.0))
    yield result, store
    await result.aclose()


async def test_every_key_the_cache_writes_is_in_its_namespace(cache: tuple[ResultCache, DiskStore]) -> None:
    """Results, images, variants and leases all start with ``c:``."""
    service, store = cache
    entry = Entry(pixels(1), "draft", "1", "thumbs", (7,), 0.0)
    service.save(KEY, entry, 60)
    await service.save_image(image_id(pixels(1)[0]), entry, 60)
    service.save_variant(image_id(pixels(1)[0]), "png", 90, b"\x89PNG", 60)
    assert await service.lease(KEY, "me", 5)
    await service.drain()
    keys = await store.keys("*")
    assert len(keys) == 4 and all(k.startswith(NAMESPACE) for k in keys), keys


async def test_purge_all_leaves_rollout_and_tenant_keys_intact(cache: tuple[ResultCache, DiskStore]) -> None:
    service, store = cache
    for key, value in FOREIGN.items():
        await store.set(key, value, 600)
    service.save(KEY, Entry(pixels(1), "draft", "1", "thumbs", (7,), 0.0), 60)
    await service.save_image(image_id(pixels(1)[0]), Entry(pixels(1), "draft", "1", "thumbs", (7,), 0.0), 60)
    await service.drain()
    assert await service.purge() == 2
    assert sorted(await store.keys("*")) == sorted(FOREIGN)
    assert await store.get_many(list(FOREIGN)) == list(FOREIGN.values())
    # a purge by model (which also walks image records) leaves them too
    await service.purge(model="draft")
    assert sorted(await store.keys("*")) == sorted(FOREIGN)


async def test_a_result_read_back_under_another_key_is_a_miss_removed_and_counted(
    cache: tuple[ResultCache, DiskStore],
) -> None:
    service, store = cache
    service.save(KEY, Entry(pixels(1), "draft", "1", "thumbs", (7,), 0.0), 60)
    await service.drain()
    service.hot.clear()
    assert "draft" in await service.lookup({"draft": KEY})  # what was stored under KEY is served
    service.hot.clear()
    (value,) = await store.get_many([str(KEY)])
    assert value is not None
    await store.set(str(OTHER), value, 60)  # someone with access to the store copies it
    assert await service.lookup({"draft": OTHER}) == {}
    await service.drain()
    assert await store.get_many([str(OTHER)]) == [None], "removed"
    assert service.counters()["unverified"] == 1
    # an entry with no key digest at all (forged by hand) is not served either
    await store.set(str(OTHER), Entry(pixels(2), "draft", "1", "thumbs", (7,), 0.0).to_bytes(), 60)
    assert await service.lookup({"draft": OTHER}) == {}
    assert service.counters()["unverified"] == 2


async def test_an_image_that_does_not_hash_to_its_id_is_a_miss_removed_and_counted(
    cache: tuple[ResultCache, DiskStore],
) -> None:
    service, store = cache
    name = image_id(pixels(1)[0])
    await service.save_image(name, Entry(pixels(1), "draft", "1", "thumbs", (7,), 0.0), 60)
    service.save_variant(name, "png", 90, b"\x89PNG encoded", 60)
    await service.drain()
    found = await service.image(name)
    assert found is not None and int(found.images[0, 0, 0, 0]) == 1
    await store.set(image_key(name), Entry(pixels(2), "draft", "1", "thumbs", (7,), 0.0).to_bytes(), 60)  # replaced
    assert await service.image(name) is None
    await service.drain()
    assert await store.get_many([image_key(name), variant_key(name, "png", 90)]) == [None, None]
    assert service.counters()["unverified"] == 1
    await store.set(image_key(name), b"not an entry", 60)
    assert await service.image(name) is None
    assert service.counters()["corrupt"] == 1 and await store.get_many([image_key(name)]) == [None]


def test_a_key_digest_names_one_key() -> None:
    assert key_digest(str(KEY)) == key_digest(str(KEY)) != key_digest(str(OTHER))
