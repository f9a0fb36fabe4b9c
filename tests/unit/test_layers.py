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


# module prefix -> what it must never import (higher layers)
ABOVE = {
    ("image_router.config", "image_router.policy"): (
        "image_router.backends", "image_router.cache", "image_router.ask", "image_router.served", "image_router.decide", "image_router.dispatch",
        "image_router.gateway", "image_router.tenancy", "image_router.hooks", "image_router.http", "image_router.rpc", "image_router.app", "image_router.cli",
    ),
    ("image_router.ask", "image_router.served", "image_router.decide"): (
        "image_router.dispatch", "image_router.gateway", "image_router.tenancy", "image_router.hooks", "image_router.fill", "image_router.rollouts",
        "image_router.http", "image_router.rpc", "image_router.app", "image_router.cli",
    ),
    ("image_router.dispatch",): ("image_router.gateway", "image_router.tenancy", "image_router.hooks", "image_router.http", "image_router.rpc",
                           "image_router.app", "image_router.cli"),
    ("image_router.gateway", "image_router.tenancy", "image_router.hooks", "image_router.catalog", "image_router.readout", "image_router.pregen"): (
        "image_router.http", "image_router.rpc", "image_router.app", "image_router.cli",
    ),
    ("image_router.http", "image_router.rpc"): ("image_router.app", "image_router.cli"),
}  # fmt: skip
PURE = ("image_router.decide", "image_router.ask", "image_router.served", "image_router.policy")
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
