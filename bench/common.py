"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["pct", "tree_args"]

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (seconds), in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def tree_args(doc: str | None, number: int) -> argparse.Namespace:
    """``--tree PATH`` (whose ``image_router`` is imported from then on: a ``git worktree``
    of an older commit measures before against after) and ``--number`` (calls timed)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the source tree to import image_router from")
    parser.add_argument("--number", type=int, default=number)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    return args
