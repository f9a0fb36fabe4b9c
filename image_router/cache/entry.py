"""A cached result as bytes (pure): a small JSON header, then the raw pixels.

Raw ``uint8`` pixels, not PNG: a hit over KServe returns the tensor without decoding
anything, and the encoded variants an API asks for (PNG, WebP, AVIF, JPEG) are made
off the event loop and cached under their own keys. Anything that does not parse is a
:class:`CorruptEntry` — the caller counts it, deletes it and treats it as a miss.

A result carries the digest of the key it was written under (``key``,
:func:`image_router.cache.keys.key_digest`), so one read back under another key — copied or
swapped in a shared store — is told apart from the real thing (see
:meth:`image_router.cache.ResultCache.lookup`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

__all__ = ["CorruptEntry", "Entry"]

_MAGIC = b"RC1\0"


class CorruptEntry(ValueError):
    """Stored bytes that are not an entry (truncated, another format, a bad shape)."""


@dataclass(frozen=True, slots=True)
class Entry:
    images: NDArray[Any]  # uint8[n, h, w, 3]
    model: str
    version: str
    route: str
    seeds: tuple[int, ...]
    created: float  # wall-clock seconds
    meta: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # key_digest() of the store key it was written under ("" for an image record)

    @property
    def tag(self) -> str:
        return f"{self.model}@{self.version}" if self.version else self.model

    def to_bytes(self) -> bytes:
        pixels = np.ascontiguousarray(self.images, dtype=np.uint8)
        head = orjson.dumps(
            {
                "model": self.model,
                "version": self.version,
                "route": self.route,
                "seeds": list(self.seeds),
                "created": self.created,
                "shape": list(pixels.shape),
                "meta": self.meta,
                "key": self.key,
            }
        )
        return _MAGIC + struct.pack("<I", len(head)) + head + pixels.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        try:
            if data[:4] != _MAGIC:
                raise CorruptEntry("not a cache entry")
            (length,) = struct.unpack_from("<I", data, 4)
            head = orjson.loads(data[8 : 8 + length])
            shape = tuple(int(d) for d in head["shape"])
            if len(shape) != 4 or shape[3] != 3 or len(data) - 8 - length != math.prod(shape):
                raise CorruptEntry("pixels do not match the shape")
            images = np.frombuffer(data, dtype=np.uint8, offset=8 + length).reshape(shape)
            return cls(
                images,
                str(head["model"]),
                str(head["version"]),
                str(head["route"]),
                tuple(int(s) for s in head["seeds"]),
                float(head["created"]),
                dict(head.get("meta") or {}),
                str(head.get("key") or ""),
            )
        except CorruptEntry:
            raise
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise CorruptEntry(f"unreadable entry: {exc}") from None
