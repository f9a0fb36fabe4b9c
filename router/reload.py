"""Replacing the routing table from ``routes.yaml`` without a restart.

Three triggers share one code path (:meth:`RoutesReloader.reload`): file watching,
``SIGHUP`` and ``POST /admin/reload``. The file is read and validated completely
first; only a valid table is swapped in. An invalid one is recorded (with every
issue) for ``GET /admin/config`` while the previous table keeps serving.

Watching covers the Kubernetes ConfigMap case: the kubelet never writes the file in
place, it points the ``..data`` symlink at a new directory. We watch the *directory*
that holds the file and compare content digests, so a symlink swap, an editor's
rename-into-place and an in-place write are all seen, and events that change nothing
do not reload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles

from router.config import compile_text
from router.config.table import RoutingTable
from router.errors import CacheStoreError, ConfigError, ConfigIssue

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
        self._lock = asyncio.Lock()

    def reload(self) -> ReloadResult:
        """Read, validate and (if valid and different) swap in the file's table."""
        now = self._clock()
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            issue = ConfigIssue(str(self.path), 1, 1, "", f"cannot read: {exc.strerror or exc}")
            self.last = ReloadResult(False, now, None, issues=[issue])
            self.counts["failure"] += 1
            log.error("routes reload failed: %s", issue)
            return self.last
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        if digest == self.active.digest:
            self.last = ReloadResult(True, now, digest, changed=False)
            return self.last
        try:
            table = compile_text(text, file=str(self.path))
        except ConfigError as exc:
            self.last = ReloadResult(False, now, digest, issues=exc.issues)
            self.counts["failure"] += 1
            log.error("routes reload rejected, keeping %s:\n%s", self.active.digest, exc)
            return self.last
        try:
            self._apply(table)
        except CacheStoreError as exc:  # e.g. a cache directory that cannot be written
            issue = ConfigIssue(str(self.path), 1, 1, "cache.store", exc.message)
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

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change in the file's directory until ``stop`` is set."""
        directory = self.path.absolute().parent
        name = self.path.name

        def relevant(change: watchfiles.Change, path: str) -> bool:
            # The file itself, a file it reads (a tenants file beside it), or the
            # kubelet's ``..data`` / ``..<timestamp>`` entries.
            base = Path(path).name
            read_too = {Path(source).name for source in self.active.sources}
            return base == name or base in read_too or base.startswith("..")

        async for _changes in watchfiles.awatch(
            directory,
            stop_event=stop,
            watch_filter=relevant,
            debounce=200,
            step=50,
            recursive=False,  # the ConfigMap swap renames ..data in this directory itself
            rust_timeout=1000,
        ):
            self.reload()
