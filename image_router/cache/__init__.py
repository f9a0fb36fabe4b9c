"""The result cache: never generate the same image twice.

``keys`` and ``entry`` are pure (what a result is called and how it is stored);
``store`` holds the two stores (local disk, Redis) behind one guard that bounds every
call's delay and opens a circuit on a failing store; ``flight`` coalesces identical
generations in flight; ``service`` is what the dispatcher and the HTTP edge use.
"""

from image_router.cache.entry import CorruptEntry, Entry
from image_router.cache.keys import CacheKey, derive_seeds, image_id
from image_router.cache.service import ResultCache
from image_router.cache.store import Store, open_store

__all__ = ["CacheKey", "CorruptEntry", "Entry", "ResultCache", "Store", "derive_seeds", "image_id", "open_store"]
