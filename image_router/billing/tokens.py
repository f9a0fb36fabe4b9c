"""A hosted upstream's token ``usage`` and what it costs (pure: no clock, no I/O).

OpenAI's GPT-image answers say ``input_tokens`` with ``input_tokens_details {text_tokens,
image_tokens}``, ``output_tokens``, ``total_tokens`` and, only sometimes,
``output_tokens_details {image_tokens, text_tokens}``. The Images endpoints often leave
the output's split out; then **all output tokens are image tokens** — pricing them at the
text rate is the trap LiteLLM fell into (#31142), and an image answer's output is the
image. An input without its details is taken as text (a prompt; an edit's picture is
what ``image_tokens`` would name).

What the upstream said is kept as it said it (:meth:`Tokens.body` gives the same
numbers back, ``output_tokens_details`` only when it was sent), so a client reading our
``usage`` reads the upstream's counts unchanged. An answer whose ``usage`` is missing or
not understood has no tokens (``None``): it is priced per image, never at 0 by accident.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from image_router.billing.spec import TokenPrice

__all__ = ["Tokens", "token_amount"]


class _NotUnderstood(Exception):
    pass


def _count(value: object) -> int:
    """A token count: a non-negative integer (``bool`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _NotUnderstood
    return value


def _split(details: object, first: str, second: str) -> tuple[int, int] | None:
    """``(first, second)`` counts of a ``*_tokens_details`` object (``None``: not sent)."""
    if details is None:
        return None
    if not isinstance(details, dict):
        raise _NotUnderstood
    return _count(details.get(first, 0)), _count(details.get(second, 0))


class Tokens(NamedTuple):
    """One upstream answer's token counts."""

    input_text: int
    input_image: int
    output_image: int
    output_text: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    output_split: bool  # the upstream sent output_tokens_details

    @classmethod
    def of(cls, usage: object) -> Tokens | None:
        """The counts in an answer's ``usage`` object; ``None`` when there is none or a
        count is not a non-negative integer (then nothing of it is believed)."""
        if not isinstance(usage, dict):
            return None
        try:
            inputs, outputs = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
            total = _count(usage.get("total_tokens", inputs + outputs))
            given_in = _split(usage.get("input_tokens_details"), "text_tokens", "image_tokens")
            given_out = _split(usage.get("output_tokens_details"), "image_tokens", "text_tokens")
        except _NotUnderstood:
            return None
        text, image = given_in if given_in is not None else (inputs, 0)
        out_image, out_text = given_out if given_out is not None else (outputs, 0)
        return cls(text, image, out_image, out_text, inputs, outputs, total, given_out is not None)

    def body(self) -> dict[str, Any]:
        """The token fields of our ``usage`` object, as the upstream sent them."""
        out: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"text_tokens": self.input_text, "image_tokens": self.input_image},
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.output_split:
            out["output_tokens_details"] = {"image_tokens": self.output_image, "text_tokens": self.output_text}
        return out


def token_amount(price: TokenPrice, tokens: Tokens) -> float:
    """What ``tokens`` cost at ``price``, in the currency (turned into micro-units once,
    by :func:`image_router.billing.price.cost`)."""
    return (
        tokens.input_text * price.input_text
        + tokens.input_image * price.input_image
        + tokens.output_image * price.output_image
        + tokens.output_text * price.output_text
    )
