"""A hosted tier priced by its upstream's tokens, as pure parts: what an answer's
``usage`` says (output without its split is all image tokens), its price in micro-units,
the ``usage`` object that passes the counts through, the answer parsed with its images,
and the config errors of a bad ``tokens`` price, at their lines."""

from __future__ import annotations

import base64
import dataclasses
import io

import orjson
import pytest
from PIL import Image

from image_router.backends import ImageRequest
from image_router.backends.openai import HostedResult, parse_answer
from image_router.billing.meter import bill
from image_router.billing.price import Cost, Shape, cost
from image_router.billing.spec import Billing, Price, TokenPrice
from image_router.billing.tokens import Tokens
from image_router.billing.usage import Usage
from image_router.config import compile_text
from image_router.errors import ConfigError
from image_router.served import Served

GPT_IMAGE = TokenPrice(input_text=5e-6, input_image=1e-5, output_image=4e-5, output_text=1e-5)
HOSTED = Price(per_image=0.063, tokens=GPT_IMAGE)
NO_SPLIT = {
    "input_tokens": 50,
    "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
    "output_tokens": 1056,
    "total_tokens": 1106,
}


def test_output_without_its_details_is_all_image_tokens() -> None:
    """LiteLLM #31142: the Images API leaves output_tokens_details out; priced as text,
    1056 output tokens would cost 0.01056 instead of 0.04224."""
    tokens = Tokens.of(NO_SPLIT)
    assert tokens is not None
    assert (tokens.input_text, tokens.input_image, tokens.output_image, tokens.output_text) == (40, 10, 1056, 0)
    got = cost(Billing(), HOSTED, 1, 0.0, Shape(), cached=False, tokens=tokens)
    assert got == Cost(tokens=200 + 100 + 42_240) and got.total == 42_540


def test_output_details_split_the_output_and_are_kept() -> None:
    split = {**NO_SPLIT, "output_tokens_details": {"image_tokens": 1000, "text_tokens": 56}}
    tokens = Tokens.of(split)
    assert tokens is not None and (tokens.output_image, tokens.output_text) == (1000, 56)
    assert cost(Billing(), HOSTED, 1, 0.0, Shape(), cached=False, tokens=tokens).tokens == 300 + 40_000 + 560
    assert tokens.body() == split, "passed through unchanged"


@pytest.mark.parametrize(
    "usage",
    [
        None,
        "lots",
        {},
        {"input_tokens": 5},
        {"input_tokens": -1, "output_tokens": 3},
        {"input_tokens": True, "output_tokens": 3},
        {"input_tokens": 1.5, "output_tokens": 3},
        {"input_tokens": 1, "output_tokens": 3, "output_tokens_details": "many"},
        {"input_tokens": 1, "output_tokens": 3, "input_tokens_details": {"text_tokens": -2}},
    ],
)
def test_a_usage_not_understood_is_not_believed(usage: object) -> None:
    assert Tokens.of(usage) is None


def test_input_without_details_is_text_and_total_defaults_to_the_sum() -> None:
    tokens = Tokens.of({"input_tokens": 12, "output_tokens": 100})
    assert tokens is not None and (tokens.input_text, tokens.input_image, tokens.total_tokens) == (12, 0, 112)


def test_without_tokens_or_a_tokens_price_the_per_image_price_applies() -> None:
    tokens = Tokens.of(NO_SPLIT)
    assert cost(Billing(), HOSTED, 2, 0.0, Shape(), cached=False) == Cost(per_image=126_000)
    assert cost(Billing(), Price(per_image=0.063), 1, 0.0, Shape(), False, tokens) == Cost(per_image=63_000)
    hit = cost(Billing(cache_hit_price=0.001), HOSTED, 1, 0.0, Shape(), cached=True, tokens=tokens)
    assert hit == Cost(cache_hits=1000), "a stored image costs the hit price, whatever made it"


def test_usage_passes_the_upstream_counts_through_and_diffusion_keeps_zeros() -> None:
    tokens = Tokens.of(NO_SPLIT)
    body = Usage(1, 0, 0, "none", Cost(tokens=42_540), "USD", tokens).body()
    assert {k: body[k] for k in NO_SPLIT} == NO_SPLIT and "output_tokens_details" not in body
    assert (body["cost"], body["cost_details"]["tokens"]) == (0.04254, 0.04254)
    plain = Usage(1, 0, 5, "model", Cost(per_image=10), "USD").body()
    assert (plain["input_tokens"], plain["output_tokens"], plain["total_tokens"]) == (0, 0, 0)
    assert "tokens" not in plain["cost_details"]


def _png_b64() -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_the_hosted_answer_keeps_its_usage_and_the_meter_prices_it() -> None:
    """The upstream's ``usage`` rides on the result; billed by tokens, never for a hit."""
    body = orjson.dumps({"data": [{"b64_json": _png_b64()}], "usage": NO_SPLIT})
    result = parse_answer(body)
    assert isinstance(result, HostedResult) and result.tokens == Tokens.of(NO_SPLIT)
    assert parse_answer(orjson.dumps({"data": [{"b64_json": _png_b64()}], "usage": "?"})).tokens is None
    table = compile_text(ROUTES, env={})
    model = table.models["remote"]
    served = Served(result, table.default, model, 1, (), False, 0.0, 0.2, 0.2)
    usage = bill(Billing(), served, ImageRequest(("a",)))
    assert (usage.cost.total, usage.tokens, usage.compute_source) == (42_540, result.tokens, "none")
    hit = bill(Billing(cache_hit_price=0.001), dataclasses.replace(served, cache="HIT"), ImageRequest(("a",)))
    assert (hit.cost.total, hit.tokens) == (1000, None)


ROUTES = """
backends:
  hosted: {type: openai, base_url: "http://upstream:1/v1"}
billing: {}
models:
  remote:
    backend: hosted
    price:
      per_image: 0.063
      tokens: {input_text: 5.0e-6, input_image: 1.0e-5, output_image: 4.0e-5, output_text: 1.0e-5}
default_route: remote
"""


def test_a_tokens_price_compiles() -> None:
    price = compile_text(ROUTES, env={}).models["remote"].price
    assert price is not None and price.tokens == GPT_IMAGE and price.per_image == 0.063


BAD = """
backends:
  hosted: {type: openai, base_url: "http://upstream:1/v1"}
  triton: {url: "http://127.0.0.1:8000"}
billing: {}
models:
  zero:
    backend: hosted
    price: {per_image: 0.01, tokens: {input_text: 0}}
  alone:
    backend: hosted
    price:
      tokens: {output_image: 4.0e-5}
  local:
    backend: triton
    price: {per_image: 0.01, tokens: {output_image: 4.0e-5}}
  negative:
    backend: hosted
    price: {per_image: 0.01, tokens: {output_image: -4.0e-5}}
  typo:
    backend: hosted
    price: {per_image: 0.01, tokens: {output_images: 4.0e-5}}
default_route: {model: zero, fallback: [alone, local, negative, typo]}
"""


def test_a_bad_tokens_price_is_refused_at_its_line() -> None:
    """All at once: every price 0, no per-image price to quote and bill an answer without
    ``usage`` by, tokens on a Triton tier, a negative price, an unknown kind."""
    with pytest.raises(ConfigError) as info:
        compile_text(BAD, env={})
    assert [str(issue) for issue in info.value.issues] == [
        "routes.yaml:9:30 models.zero.price.tokens: give at least one token price above 0 "
        "(input_text, input_image, output_image, output_text)",
        "routes.yaml:13:7 models.alone.price.tokens: give per_image or a table too: answers without usage "
        "are billed, and budgets quoted, by it",
        "routes.yaml:16:30 models.local.price.tokens: token prices are for hosted (type: openai) tiers; "
        "this model's backend is triton",
        "routes.yaml:19:39 models.negative.price.tokens.output_image: Input should be greater than or equal to 0",
        "routes.yaml:22:39 models.typo.price.tokens.output_images: unknown key",
    ]
