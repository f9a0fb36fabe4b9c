"""The schema phase of validation: pydantic's errors located in the file, item by item.

Each backend, model and route is validated on its own, so one bad item does not hide
the others; and an item the schema refuses is *salvaged* — the refused fields removed
(they are reported already) — so the next phases (references, regexes) still check the
rest of it. A route with a negative budget beside an unclosed regex and an unknown model
reports all three.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from image_router.config.schema import RoutesFile, RouteSpec, Strict
from image_router.config.source import Located, PathKey
from image_router.errors import ConfigIssue

__all__ = ["Validated", "schema_issues", "validate"]


def _data_path(data: Any, loc: tuple[int | str, ...], missing: bool = False) -> PathKey:
    """Map a pydantic ``loc`` onto the data, dropping union/tag components (``missing``:
    the last part is a key the data lacks, named)."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_list or (isinstance(node, dict) and part in node):
            node = node[part]
            out.append(part)
        elif missing and i == len(loc) - 1 and isinstance(node, dict):
            out.append(part)  # a missing key: name it
    return tuple(out)


def schema_issues(src: Located, exc: ValidationError, prefix: PathKey = ()) -> list[ConfigIssue]:
    issues = []
    seen: set[tuple[PathKey, str]] = set()
    errors = [(err, _data_path(src.data, prefix + tuple(err["loc"]), err["type"] == "missing"))
              for err in exc.errors(include_url=False)]  # fmt: skip
    for err, path in errors:
        if err["type"].endswith("_type") and any(len(p) > len(path) and p[: len(path)] == path for _, p in errors):
            continue  # a union's other branch ("a valid string") beside the error deeper in the one that fits
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required"
        if (path, message) not in seen:
            seen.add((path, message))
            issues.append(src.issue(path, message))
    return issues


@dataclass
class Validated:
    """The file validated item by item: the spec made of the valid items, the schema
    issues, and what was left out — so the next phase (references, regexes) still runs
    on everything else, and a reference to an item already reported is not reported
    again as unknown."""

    spec: RoutesFile
    issues: list[ConfigIssue]
    route_index: list[int]  # position in the file of each route in spec.routes
    declared_models: set[str]  # every name under models:, valid or not
    invalid_models: set[str] = field(default_factory=set)
    invalid_backends: set[str] = field(default_factory=set)
    invalid_default: bool = False


_SECTIONS = ("backends", "models", "routes", "default_route", "cache")


def validate(src: Located, data: dict[str, Any]) -> Validated:
    issues: list[ConfigIssue] = []

    def valid(value: Any, prefix: PathKey = (), model: type[Strict] = RoutesFile) -> bool:
        try:
            model.model_validate(value)
        except ValidationError as exc:
            issues.extend(schema_issues(src, exc, prefix))
            return False
        return True

    kept: dict[str, Any] = {k: v for k, v in data.items() if k not in _SECTIONS}
    if not valid(kept):
        kept = {}  # version / default_budget_ms / unknown keys: reported, defaults used
    out = Validated(RoutesFile(), issues, [], set())
    for section in ("backends", "models"):
        raw = data.get(section)
        if raw is None or not isinstance(raw, dict):
            if raw is not None and valid({section: raw}):
                kept[section] = raw
            continue
        good = {name: item for name, item in raw.items() if valid({section: {name: item}})}
        bad = {str(name) for name in raw} - set(good)
        kept[section] = good
        (out.invalid_backends if section == "backends" else out.invalid_models).update(bad)
        if section == "models":
            out.declared_models = {str(name) for name in raw}
    routes = data.get("routes")
    if isinstance(routes, list):
        kept["routes"] = []
        for i, route in enumerate(routes):
            usable = route if valid(route, ("routes", i), RouteSpec) else _salvage(route, RouteSpec)
            if usable is not None:
                kept["routes"].append(usable)
                out.route_index.append(i)
    elif routes is not None:
        valid({"routes": routes})
    if "default_route" in data:
        raw = data["default_route"]
        if isinstance(raw, dict):  # a route: its own errors, not the union's "not a string"
            usable = raw if valid(raw, ("default_route",), RouteSpec) else _salvage(raw, RouteSpec)
        else:
            usable = raw if valid({"default_route": raw}) else None
        if usable is not None:
            kept["default_route"] = usable
        else:
            out.invalid_default = True
    if "cache" in data and valid({"cache": data["cache"]}):
        kept["cache"] = data["cache"]
    out.spec = RoutesFile.model_validate(kept)
    return out


def _salvage(value: Any, model: type[Strict], rounds: int = 8) -> Any | None:
    """``value`` without the fields the schema refused (already reported), so that the
    later phases — references, regexes — still check the rest of the item; ``None``
    when what is left is not valid (a required field refused or missing: checking the
    rest would only report that field again, in other words)."""
    current = copy.deepcopy(value)
    for _ in range(rounds):
        try:
            model.model_validate(current)
        except ValidationError as exc:
            dropped = False
            for err in exc.errors(include_url=False):
                path = _data_path(current, tuple(err["loc"]), err["type"] == "missing")
                parent = current
                for part in path[:-1]:
                    parent = parent[part]
                if path and isinstance(parent, dict) and path[-1] in parent:
                    del parent[path[-1]]
                    dropped = True
                else:
                    return None
            if not dropped:
                return None
            continue
        return current
    return None
