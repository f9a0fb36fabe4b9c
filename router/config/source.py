"""Reading YAML so that every value still knows its line and column.

PyYAML's node graph carries positions but its Python objects do not, so we compose
the node graph, build plain data from it while recording the position of every path
(``("routes", 2, "split", 0, "weight")`` → ``(14, 9)``), expand ``${VAR}`` and
``${VAR:-default}`` in scalars, and reject duplicate keys, which PyYAML would
otherwise resolve silently in favour of the last one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from router.errors import ConfigIssue

__all__ = ["Located", "PathKey", "format_path", "read_yaml"]

PathKey = tuple[str | int, ...]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


def read_yaml(text: str, file: str, env: Mapping[str, str] | None = None) -> Located:
    """Parse one YAML document; syntax errors become a located issue, not an exception."""
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
    located.data = _Builder(located, os.environ if env is None else env).build(node, ())
    return located
