"""``routes.yaml``: schema → validation with positions → compiled immutable table."""

from pathlib import Path

from image_router.config.compile import compile_text
from image_router.config.table import Arm, Backend, HeaderRule, Matcher, Model, Route, RouteLimits, RoutingTable

__all__ = [
    "Arm",
    "Backend",
    "HeaderRule",
    "Matcher",
    "Model",
    "Route",
    "RouteLimits",
    "RoutingTable",
    "compile_text",
    "load_file",
]


def load_file(path: str | Path) -> RoutingTable:
    """Read and compile a routes file (see :func:`compile_text`)."""
    p = Path(path)
    return compile_text(p.read_text(encoding="utf-8"), file=str(p))
