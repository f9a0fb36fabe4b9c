"""Reading YAML so that every value still knows its line and column.

PyYAML's node graph carries positions but its Python objects do not, so we compose
the node graph, build plain data from it while recording the position of every path
(``("routes", 2, "split", 0, "weight")`` → ``(14, 9)``), expand ``${VAR}`` and
``${VAR:-default}`` in scalars, and reject duplicate keys, which PyYAML would
otherwise resolve silently in favour of the last one.

``${VAR}`` reads only variables the operator declared, because whoever can edit
routes.yaml could otherwise copy any secret of the process into a field that is shown
(``public_url`` into image URLs, say). Declared are: :data:`ALWAYS_DECLARED` (the
gateway's own addresses), the names in the process's ``ROUTER_CONFIG_ENV`` (comma or
space separated: set in the Deployment, out of a ConfigMap editor's reach) and those
listed under a top-level ``env:`` in routes.yaml — which, when ``ROUTER_CONFIG_ENV`` is
set, may only repeat its names. ``ROUTER_ADMIN_TOKEN`` is never expanded. A use of
anything else is an issue at its line, like every other config error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from image_router.errors import ConfigIssue

__all__ = ["ALWAYS_DECLARED", "CONFIG_ENV", "NEVER_EXPANDED", "Located", "PathKey", "format_path", "read_yaml"]

PathKey = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ALWAYS_DECLARED = frozenset({"TRITON_URL", "TRITON_GRPC_URL", "ROUTER_CACHE_STORE", "ROUTER_STATE_STORE"})
NEVER_EXPANDED = frozenset({"ROUTER_ADMIN_TOKEN"})
CONFIG_ENV = "ROUTER_CONFIG_ENV"  # the operator's list of variables routes.yaml may read


def format_path(path: PathKey) -> str:
    """``("routes", 2, "split", 0)`` → ``routes[2].split[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Located:
    """Plain data from a YAML document plus where each path came from."""

    file: str
    data: Any
    positions: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    declared: frozenset[str] = ALWAYS_DECLARED  # the variables ``${VAR}`` may read

    def where(self, path: PathKey) -> tuple[int, int]:
        """Position of ``path``, or of its nearest ancestor that has one."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.positions:
                return self.positions[path[:cut]]
        return (1, 1)

    def issue(self, path: PathKey, message: str) -> ConfigIssue:
        line, col = self.where(path)
        return ConfigIssue(self.file, line, col, format_path(path), message)


class _Builder:
    def __init__(self, located: Located, env: Mapping[str, str]) -> None:
        self.located = located
        self.env = env
        self.loader = yaml.SafeLoader("")
        self.declared = located.declared

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        mark = node.start_mark
        self.located.positions[path] = (mark.line + 1, mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                if key in out:
                    self.located.issues.append(self.located.issue(path + (str(key),), f"duplicate key {key!r}"))
                out[key] = self.build(value_node, path + (str(key),))
                self.located.positions[path + (str(key),)] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: PathKey) -> Any:
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            return self._expand(value, path)
        return value

    def _expand(self, value: str, path: PathKey) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in NEVER_EXPANDED or name not in self.declared:
                why = "is never expanded here" if name in NEVER_EXPANDED else "is not declared"
                hint = f"routes.yaml reads only the variables in {CONFIG_ENV} or its own top-level env: list"
                self.located.issues.append(self.located.issue(path, f"environment variable {name} {why} ({hint})"))
                return ""
            value = self.env.get(name)
            if default is not None:  # as in the shell: ``:-`` also replaces an empty value
                return value or default
            if value is not None:
                return value
            self.located.issues.append(
                self.located.issue(path, f"environment variable {name} is not set (use ${{{name}:-default}})")
            )
            return ""

        return _ENV.sub(replace, value)


def _operator_list(env: Mapping[str, str]) -> frozenset[str] | None:
    raw = env.get(CONFIG_ENV)
    return None if raw is None else frozenset(re.split(r"[\s,]+", raw.strip())) - {""}


def _declarations(node: yaml.Node, located: Located, env: Mapping[str, str]) -> frozenset[str]:
    """The variables a document may read: see the module's docstring. The ``env:``
    list is read from the node graph, before anything is expanded."""
    allowed = _operator_list(env)
    names = set(ALWAYS_DECLARED | (allowed or frozenset()))
    if not isinstance(node, yaml.MappingNode):
        return frozenset(names - NEVER_EXPANDED)
    for key_node, value_node in node.value:
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.value == "env"):
            continue
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else []
        for item in items:
            if not isinstance(item, yaml.ScalarNode):
                continue  # the schema reports it
            where = (item.start_mark.line + 1, item.start_mark.column + 1)
            if item.value in NEVER_EXPANDED:
                message = f"{item.value} is never expanded in routes.yaml"
            elif allowed is not None and item.value not in allowed:
                message = f"{item.value} is not in {CONFIG_ENV}, the operator's list of variables routes.yaml may read"
            else:
                names.add(item.value)
                continue
            located.issues.append(ConfigIssue(located.file, *where, "env", message))
    return frozenset(names - NEVER_EXPANDED)


def read_yaml(
    text: str, file: str, env: Mapping[str, str] | None = None, declared: frozenset[str] | None = None
) -> Located:
    """Parse one YAML document; syntax errors become a located issue, not an exception.
    ``declared``: the variables ``${VAR}`` may read (default: as the document's own
    ``env:`` list and the operator's ``ROUTER_CONFIG_ENV`` declare them; a file it
    includes is given the including file's)."""
    located = Located(file=file, data=None)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        located.issues.append(ConfigIssue(file, line, col, "", f"YAML syntax error: {problem}"))
        return located
    if node is None:
        located.data = {}
        return located
    env = os.environ if env is None else env
    located.declared = _declarations(node, located, env) if declared is None else declared
    located.data = _Builder(located, env).build(node, ())
    return located
