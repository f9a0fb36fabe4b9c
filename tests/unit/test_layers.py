"""The import layers stay one-way (an ``ast`` walk over ``image_router/``, no imports run):

    config, policy  →  backends  →  ask, served, decide  →  dispatch  →  gateway  →  http, rpc  →  app  →  cli

and the pure decision modules import no clock, no RNG and no event loop, so they stay
testable without one. A change that makes a lower layer reach up fails here with the
module and the import that did it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "image_router"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from x import y`` gives x and x.y)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {_module(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}
assert len(MODULES) > 100, f"no modules under {ROOT}: the walk would check nothing"


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _pkg(*names: str) -> tuple[str, ...]:
    return tuple(f"image_router.{name}" for name in names)


# module prefix -> what it must never import (higher layers)
ABOVE = {
    _pkg("config", "policy"): _pkg(
        "backends",
        "cache",
        "ask",
        "served",
        "decide",
        "dispatch",
        "gateway",
        "tenancy",
        "hooks",
        "http",
        "rpc",
        "app",
        "cli",
    ),
    _pkg("ask", "served", "decide"): _pkg(
        "dispatch",
        "gateway",
        "tenancy",
        "hooks",
        "fill",
        "rollouts",
        "http",
        "rpc",
        "app",
        "cli",
    ),
    _pkg("dispatch"): _pkg("gateway", "tenancy", "hooks", "http", "rpc", "app", "cli"),
    _pkg("gateway", "tenancy", "hooks", "catalog", "readout", "pregen"): _pkg("http", "rpc", "app", "cli"),
    _pkg("http", "rpc"): _pkg("app", "cli"),
}
PURE = _pkg("decide", "ask", "served", "policy")
IMPURE = ("asyncio", "time", "random", "secrets")


@pytest.mark.parametrize("layer", list(ABOVE), ids=lambda layer: "+".join(layer))
def test_no_layer_imports_one_above_it(layer: tuple[str, ...]) -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in MODULES.items()
        if _under(name, layer)
        for target in targets
        if _under(target, ABOVE[layer])
    ]
    assert wrong == []


def test_the_pure_decisions_import_no_clock_rng_or_loop() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in MODULES.items()
        if _under(name, PURE)
        for target in targets
        if target in IMPURE
    ]
    assert wrong == []


def test_starlette_only_at_the_http_edge_and_grpc_only_in_rpc_and_backends() -> None:
    starlette = [n for n, t in MODULES.items() if any(_under(x, ("starlette",)) for x in t)]
    assert all(_under(n, ("image_router.http", "image_router.app")) for n in starlette), starlette
    grpc = [n for n, t in MODULES.items() if any(_under(x, ("grpc",)) for x in t)]
    assert all(_under(n, ("image_router.rpc", "image_router.backends")) for n in grpc), grpc


def test_the_walk_finds_what_it_checks() -> None:
    """The walk itself works: the gateway is seen importing the dispatcher."""
    assert "image_router.dispatch" in MODULES["image_router.gateway"] and len(MODULES) > 50
