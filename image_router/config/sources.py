"""Every input of one routing table, read once, with one digest.

A table is made from more than routes.yaml: a tenants file (``tenants: {file: …}``)
and each tenant's ``key_files`` (a mounted Kubernetes Secret's files). :func:`gather`
reads them all into one :class:`Sources`; compiling is pure over it
(:func:`image_router.config.compile.compile_sources`), and the reloader decides "changed" by
comparing :attr:`Sources.digest` — so a rotated key is a change even when routes.yaml
is not, and re-reading the same files is no change, tenants file or not.

Files are read only under the declared secret directories: ``secret_dirs:`` in
routes.yaml (relative to it), by default routes.yaml's own directory. When the process
has ``ROUTER_SECRET_DIRS`` (the operator's list, set in the Deployment), a declared
directory must lie under one of those. Paths are compared after resolving symlinks, so
a Secret's ``key -> ..data/key`` stays inside its directory and a link out of it does
not. Relative paths (``tenants.file``, ``key_files``) are relative to routes.yaml.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image_router.config.source import read_yaml

__all__ = ["SECRET_DIRS", "Sources", "gather", "read_sources", "resolve"]

SECRET_DIRS = "ROUTER_SECRET_DIRS"  # the operator's directories secret files may come from


def resolve(ref: str, base: Path) -> Path:
    """A path as routes.yaml gives it: absolute, or relative to routes.yaml's directory."""
    path = Path(ref).expanduser()
    return path if path.is_absolute() else base / path


def _under(path: Path, directories: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == d or real.startswith(d.rstrip(os.sep) + os.sep) for d in directories)


@dataclass(frozen=True)
class Sources:
    """routes.yaml's text and every file it refers to, as read at one moment."""

    file: str
    text: str
    read: Mapping[str, bytes] = field(default_factory=dict)  # path (resolved against routes.yaml) → bytes
    errors: Mapping[str, str] = field(default_factory=dict)  # path → why it was not read
    dir_errors: tuple[tuple[int, str], ...] = ()  # secret_dirs[i] refused, and why
    digest: str = ""

    @property
    def paths(self) -> tuple[str, ...]:
        """Every file besides routes.yaml that the table depends on (watched too)."""
        return tuple(sorted({*self.read, *self.errors}))

    def content(self, path: Path) -> bytes | str:
        """What ``path`` held, or (a ``str``) why it could not be used."""
        key = str(path)
        if key in self.read:
            return self.read[key]
        return self.errors.get(key, "not read")  # "not read": gather saw no reference to it


def _digest(text: str, read: Mapping[str, bytes], errors: Mapping[str, str]) -> str:
    """Over routes.yaml's text and every other file's path and bytes (or why it was
    not read), each length-prefixed so no two different sets can run together."""
    h = hashlib.sha256()
    routes = text.encode("utf-8", "surrogatepass")
    h.update(len(routes).to_bytes(8, "little") + routes)
    for path in sorted({*read, *errors}):
        value = read[path] if path in read else b"\0error:" + errors[path].encode()
        for part in (path.encode(), value):
            h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:16]


def _secret_dirs(data: dict[str, Any], base: Path, env: Mapping[str, str]) -> tuple[list[str], list[tuple[int, str]]]:
    """The directories secret files may come from (symlinks resolved), and each
    declared one the operator's ``ROUTER_SECRET_DIRS`` refuses, with why."""
    cap_raw = env.get(SECRET_DIRS)
    cap = [os.path.realpath(d) for d in re.split(r"[\s,]+", cap_raw.strip()) if d] if cap_raw is not None else None
    declared = data.get("secret_dirs")
    refs = [d for d in declared if isinstance(d, str)] if isinstance(declared, list) and declared else None
    dirs, errors = [], []
    for i, ref in enumerate(refs or [str(base)]):
        real = os.path.realpath(resolve(ref, base))
        if cap is not None and not _under(Path(real), cap):
            if refs is not None:
                errors.append((i, f"{real} is not under {SECRET_DIRS} ({', '.join(cap)}), the operator's list"))
            continue
        dirs.append(real)
    if refs is None and cap is not None and not dirs:
        dirs = cap  # routes.yaml's directory is not in the operator's list: use the list itself
    return dirs, errors


def _key_file_refs(tenants: Any) -> list[str]:
    if not isinstance(tenants, dict) or not isinstance(tenants.get("tenants"), dict):
        return []
    refs = []
    for tenant in tenants["tenants"].values():
        files = tenant.get("key_files") if isinstance(tenant, dict) else None
        refs += [f for f in files if isinstance(f, str)] if isinstance(files, list) else []
    return refs


def gather(text: str, file: str, env: Mapping[str, str]) -> Sources:
    """Read every file ``text`` (routes.yaml, at ``file``) refers to. Never raises: a
    file that cannot be read, or is outside the secret directories, is recorded with
    the reason, for the compiler to report at the line that names it."""
    base = Path(file).parent
    src = read_yaml(text, file, env)
    data = src.data if isinstance(src.data, dict) else {}
    dirs, dir_errors = _secret_dirs(data, base, env)
    read: dict[str, bytes] = {}
    errors: dict[str, str] = {}

    def take(path: Path) -> bytes | None:
        if not _under(path, dirs):
            errors[str(path)] = f"not under a secret directory ({', '.join(dirs)}; see secret_dirs)"
            return None
        try:
            read[str(path)] = value = path.read_bytes()
        except OSError as exc:
            errors[str(path)] = f"cannot read {path}: {exc.strerror or exc}"
            return None
        return value

    tenants = data.get("tenants")
    if isinstance(tenants, dict) and set(tenants) == {"file"} and isinstance(tenants["file"], str):
        raw = take(resolve(tenants["file"], base))
        tenants = None
        if raw is not None:
            tenants = read_yaml(raw.decode("utf-8", "replace"), file, env, src.declared).data
    for ref in _key_file_refs(tenants):
        if str(resolve(ref, base)) not in read:
            take(resolve(ref, base))
    return Sources(file, text, read, errors, tuple(dir_errors), _digest(text, read, errors))


def read_sources(path: Path, env: Mapping[str, str] | None = None) -> Sources:
    """routes.yaml at ``path`` and everything it refers to (``OSError``: routes.yaml
    itself cannot be read)."""
    return gather(path.read_text(encoding="utf-8"), str(path), os.environ if env is None else env)
