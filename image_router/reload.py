"""Replacing the routing table from ``routes.yaml`` without a restart.

Three triggers share one code path (:meth:`RoutesReloader.reload`): file watching,
``SIGHUP`` and ``POST /admin/reload``. Every source is read first — routes.yaml, the
tenants file, each tenant's ``key_files`` (:func:`image_router.config.sources.read_sources`)
— and "changed" is decided from one digest over all of them: a rotated key is a
change though routes.yaml is not, and reading the same files again is none. A changed
set is validated completely; only a valid table is swapped in. An invalid one is
recorded (with every issue) for ``GET /admin/config`` while the previous table keeps
serving. Only a swap counts as a success.

Watching covers the Kubernetes ConfigMap and Secret case: the kubelet never writes a
file in place, it points the ``..data`` symlink at a new directory. We watch the
*directory* of every source and compare digests, so a symlink swap, an editor's
rename-into-place and an in-place write are all seen, and events that change nothing
do not reload. When a reload brings a source in another directory, the watch moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles

from image_router.config.compile import compile_sources
from image_router.config.sources import read_sources
from image_router.config.table import RoutingTable
from image_router.errors import CacheStoreError, ConfigError, ConfigIssue, StateStoreError

__all__ = ["ReloadResult", "RoutesReloader"]

log = logging.getLogger("router.reload")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    at: float
    digest: str | None
    changed: bool = False
    issues: list[ConfigIssue] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "at": self.at,
            "digest": self.digest,
            "changed": self.changed,
            "errors": [str(i) for i in self.issues],
        }


class RoutesReloader:
    def __init__(
        self,
        path: Path,
        apply: Callable[[RoutingTable], None],
        active: RoutingTable,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._apply = apply
        self._clock = wall_clock
        self.active = active
        self.loaded_at = wall_clock()
        self.last: ReloadResult = ReloadResult(True, self.loaded_at, active.digest)
        self.counts = {"success": 0, "failure": 0}
        self._seen: tuple[str, ...] = ()
        self._lock = asyncio.Lock()

    def reload(self) -> ReloadResult:
        """Read, validate and (if valid and different) swap in the file's table."""
        now = self._clock()
        try:
            sources = read_sources(self.path)
        except OSError as exc:
            issue = ConfigIssue(str(self.path), 1, 1, "", f"cannot read: {exc.strerror or exc}")
            self.last = ReloadResult(False, now, None, issues=[issue])
            self.counts["failure"] += 1
            log.error("routes reload failed: %s", issue)
            return self.last
        self._seen = sources.paths  # watched from now on, even if this reload fails
        digest = sources.digest
        if digest == self.active.digest:
            self.last = ReloadResult(True, now, digest, changed=False)
            return self.last
        try:
            table = compile_sources(sources)
        except ConfigError as exc:
            self.last = ReloadResult(False, now, digest, issues=exc.issues)
            self.counts["failure"] += 1
            log.error("routes reload rejected, keeping %s:\n%s", self.active.digest, exc)
            return self.last
        try:
            self._apply(table)
        except (CacheStoreError, StateStoreError) as exc:  # an unwritable cache, a Redis that may evict state
            where = "state.store" if isinstance(exc, StateStoreError) else "cache.store"
            issue = ConfigIssue(str(self.path), 1, 1, where, exc.message)
            self.last = ReloadResult(False, now, digest, issues=[issue])
            self.counts["failure"] += 1
            log.error("routes reload rejected, keeping %s: %s", self.active.digest, issue)
            return self.last
        self.active, self.loaded_at = table, now
        self.last = ReloadResult(True, now, table.digest, changed=True)
        self.counts["success"] += 1
        log.info("routes reloaded: %s", table.digest)
        return self.last

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "active": {"digest": self.active.digest, "loaded_at": self.loaded_at},
            "last_reload": self.last.to_dict(),
        }

    def watched(self) -> tuple[Path, ...]:
        """The directories of routes.yaml and of every file the active table read or the
        last reload tried to (a key file whose Secret is not mounted yet is seen when
        it is)."""
        paths = [self.path, *(Path(p) for p in (*self.active.sources, *self._seen))]
        return tuple(sorted({p.absolute().parent for p in paths if p.absolute().parent.is_dir()}))

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change in a source's directory until ``stop`` is set; when a
        reload changes the set of directories, watch the new set."""

        def relevant(change: watchfiles.Change, path: str) -> bool:
            # a source itself, or the kubelet's ``..data`` / ``..<timestamp>`` entries
            base = Path(path).name
            names = {self.path.name, *(Path(source).name for source in (*self.active.sources, *self._seen))}
            return base in names or base.startswith("..")

        while not stop.is_set():
            directories = self.watched()
            changes = watchfiles.awatch(
                *directories,
                stop_event=stop,
                watch_filter=relevant,
                debounce=200,
                step=50,
                recursive=False,  # a ConfigMap or Secret swap renames ..data in the directory itself
                rust_timeout=1000,
            )
            async with contextlib.aclosing(changes):
                async for _changes in changes:
                    self.reload()
                    if self.watched() != directories:
                        break  # a source moved to another directory: watch anew
