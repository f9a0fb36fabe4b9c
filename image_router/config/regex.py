"""Route regexes run on RE2: linear time in the length of the prompt, as Envoy compiles
its route regexes.

Python's ``re`` backtracks, and a route regex runs on the event loop against text the
client chose: ``match: {prompt: "^(\\w+\\s?)*$"}`` held the loop for 24 s on a
29-character prompt, and every other request — ``/healthz`` included — waited. RE2 cannot
backtrack. In return it has no backreferences or lookaround, and ``\\w``/``\\b`` are
ASCII; a pattern RE2 cannot run is a config error at its YAML line, never a slow path.
"""

from __future__ import annotations

from typing import Protocol, cast

import re2

__all__ = ["Pattern", "RegexError", "compile_regex"]


class Pattern(Protocol):
    """What routing needs of a compiled regex."""

    @property
    def pattern(self) -> str: ...

    def search(self, text: str) -> object | None: ...


class RegexError(ValueError):
    """The pattern is not one RE2 can run; the message says why."""


def _options() -> object:
    options = re2.Options()
    options.log_errors = False  # the reason goes into the config error, not to stderr
    options.never_capture = True  # routing only asks whether it matches
    return options


_OPTIONS = _options()


def compile_regex(pattern: str) -> Pattern:
    try:
        return cast(Pattern, re2.compile(pattern, _OPTIONS))
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise RegexError(text) from None
