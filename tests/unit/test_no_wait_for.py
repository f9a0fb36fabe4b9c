"""No ``asyncio.wait_for`` in the gateway (an ``ast`` walk over ``image_router/``).

On Python 3.11 ``wait_for`` returns the inner result when a cancel lands just as that
result arrives, and the cancel is lost: the gRPC edge's readiness watch ran on after
shutdown until SIGKILL (about one gateway stop in 13). ``asyncio.timeout`` keeps the
cancel; 3.12 fixed ``wait_for`` by building it on ``timeout``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "image_router"


def _wait_for_calls(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr == "wait_for":
            if isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "asyncio":
            lines += [node.lineno for alias in node.names if alias.name == "wait_for"]
    return lines


def test_the_gateway_uses_asyncio_timeout_not_wait_for() -> None:
    sources = sorted(ROOT.rglob("*.py"))
    assert len(sources) > 100, f"no modules under {ROOT}: the walk would check nothing"
    found = [f"{path.relative_to(ROOT.parent)}:{line}" for path in sources for line in _wait_for_calls(path)]
    assert not found, f"asyncio.wait_for can swallow a cancel on 3.11, use asyncio.timeout: {found}"
