"""The import layers stay one-way (an ``ast`` walk over ``router/``, no imports run):

    config, policy  →  backends  →  ask, served, decide  →  dispatch  →  gateway  →  http, rpc  →  app  →  cli

and the pure decision modules import no clock, no RNG and no event loop, so they stay
testable without one. A change that makes a lower layer reach up fails here with the
module and the import that did it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "router"


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


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# module prefix -> what it must never import (higher layers)
ABOVE = {
    ("router.config", "router.policy"): (
        "router.backends", "router.cache", "router.ask", "router.served", "router.decide", "router.dispatch",
        "router.gateway", "router.tenancy", "router.hooks", "router.http", "router.rpc", "router.app", "router.cli",
    ),
    ("router.ask", "router.served", "router.decide"): (
        "router.dispatch", "router.gateway", "router.tenancy", "router.hooks", "router.fill", "router.rollouts",
        "router.http", "router.rpc", "router.app", "router.cli",
    ),
    ("router.dispatch",): ("router.gateway", "router.tenancy", "router.hooks", "router.http", "router.rpc",
                           "router.app", "router.cli"),
    ("router.gateway", "router.tenancy", "router.hooks", "router.catalog", "router.readout", "router.pregen"): (
        "router.http", "router.rpc", "router.app", "router.cli",
    ),
    ("router.http", "router.rpc"): ("router.app", "router.cli"),
}  # fmt: skip
PURE = ("router.decide", "router.ask", "router.served", "router.policy")
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
    assert all(_under(n, ("router.http", "router.app")) for n in starlette), starlette
    grpc = [n for n, t in MODULES.items() if any(_under(x, ("grpc",)) for x in t)]
    assert all(_under(n, ("router.rpc", "router.backends")) for n in grpc), grpc


def test_the_walk_finds_what_it_checks() -> None:
    """The walk itself works: the gateway is seen importing the dispatcher."""
    assert "router.dispatch" in MODULES["router.gateway"] and len(MODULES) > 50
