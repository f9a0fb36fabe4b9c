"""What a cached result is called (pure).

A key names everything that decides the pixels — the route, the served logical model,
its backend model and version, the exact prompt bytes, the seeds, steps and size —
and nothing that does not (the output format, the API the request came through). So
a canary arm never reads the baseline's entry, a version bump or a model swap misses
by construction, and the same image asked for as PNG over OpenAI and as a tensor over
KServe is one entry. The route is part of the key because an entry lives by its
route's rules (ttl, purge by route).

Keys are readable up to the hashes, ``c:r:{route}|{model}|{remote}@{version}|{prompt}|{params}``,
so a purge by route, model or prompt is a pattern over keys, with no index to keep
in step (route and model names cannot hold ``|`` or glob characters).

Every key the cache writes starts with :data:`NAMESPACE` (``c:``): results ``c:r:``,
images by URL ``c:i:``, their encoded variants ``c:v:``, generation leases ``c:l:``.
A purge scans only that prefix, so whatever else shares the store (rollout state
``ro:``, tenant counters ``t:``) is out of its reach by construction, not by care.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "NAMESPACE",
    "CacheKey",
    "derive_seeds",
    "image_id",
    "image_key",
    "key_digest",
    "lease_key",
    "prompt_hash",
    "variant_key",
    "variants_of",
]

NAMESPACE = "c:"  # every cache key, and nothing else, starts with this


def _digest(data: bytes, size: int = 16) -> str:
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def prompt_hash(prompts: tuple[str, ...]) -> str:
    """One prompt asked ``n`` times hashes as that prompt (a purge by prompt finds it)."""
    if all(p == prompts[0] for p in prompts):
        return _digest(prompts[0].encode("utf-8", "surrogatepass"), 8)
    return _digest(b"\0".join(p.encode("utf-8", "surrogatepass") for p in prompts), 8)


def _params(seeds: tuple[int, ...], count: int, steps: int | None, width: int | None, height: int | None) -> bytes:
    fields = [count, -1 if steps is None else steps, -1 if width is None else width, -1 if height is None else height]
    return struct.pack(f"<{len(fields) + len(seeds)}q", *fields, *seeds)


@dataclass(frozen=True, slots=True)
class CacheKey:
    route: str
    model: str
    remote: str
    version: str
    prompt: str  # prompt_hash()
    params: str
    scope: str = ""  # whose entries: "" shared, else e.g. a tenant's (never read by another scope)

    @classmethod
    def of(
        cls,
        route: str,
        model: str,
        remote: str,
        version: str | None,
        prompts: tuple[str, ...],
        seeds: tuple[int, ...],
        steps: int | None,
        width: int | None,
        height: int | None,
    ) -> CacheKey:
        exact = b"\0".join(p.encode("utf-8", "surrogatepass") for p in prompts)
        params = _digest(exact + _params(seeds, len(prompts), steps, width, height), 12)
        return cls(route, model, remote, version or "", prompt_hash(prompts), params)

    def __str__(self) -> str:
        key = f"{NAMESPACE}r:{self.route}|{self.model}|{self.remote}@{self.version}|{self.prompt}|{self.params}"
        # a scope goes last: a purge's pattern (``|*`` after the prompt) still finds its entries
        return f"{key}|{self.scope}" if self.scope else key

    @staticmethod
    def pattern(route: str | None, model: str | None, version: str | None, prompt: str | None) -> str:
        """The glob over result keys matching every given condition (``None``: any)."""
        return "{}r:{}|{}|*@{}|{}|*".format(
            NAMESPACE,
            route or "*",
            model or "*",
            version if version is not None else "*",
            prompt_hash((prompt,)) if prompt else "*",
        )


def key_digest(key: str) -> str:
    """What a stored result carries of the key it was written under: read back under
    another key (copied, swapped, forged without care), it does not match."""
    return _digest(key.encode("utf-8", "surrogatepass"), 16)


def image_key(image: str) -> str:
    """The store key of one image served by URL (``image``: its :func:`image_id`)."""
    return f"{NAMESPACE}i:{image}"


def variant_key(image: str, fmt: str, quality: int) -> str:
    return f"{NAMESPACE}v:{image}.{fmt}.{quality}"


def variants_of(image: str) -> str:
    """The glob over every encoded variant of one image."""
    return f"{NAMESPACE}v:{image}.*"


def lease_key(key: CacheKey) -> str:
    """Who is making ``key``'s image now, across replicas. Without the version: one
    replica may not have learnt the served version yet (its key says ``@``) while
    another has, and the same generation must still be one lease."""
    return f"{NAMESPACE}l:{str(replace(key, version='')).removeprefix(NAMESPACE)}"


def derive_seeds(prompts: tuple[str, ...], steps: int | None, width: int | None, height: int | None) -> tuple[int, ...]:
    """Seeds for a seedless request on a ``seedless: share`` route: the same prompt and
    parameters always give the same seeds (so the same image, so a hit), and the
    ``n`` images of one request still differ. Independent of the tier, so a downgrade
    keeps the seed the answer reports."""
    out = []
    for i, prompt in enumerate(prompts):
        data = prompt.encode("utf-8", "surrogatepass") + _params((i,), len(prompts), steps, width, height)
        out.append(int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "little") & 0x7FFFFFFF)
    return tuple(out)


def image_id(image: NDArray[Any]) -> str:
    """The content hash of one image (its URL id and ``ETag``): the pixels and the shape."""
    h = hashlib.blake2b(digest_size=16)
    h.update(struct.pack("<3q", *image.shape))
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()
