"""Billing's pure parts: prices in micro-units, the `usage` renderings, the config rule
that every routable tier is priced, and COMPUTE_NS read from both wire formats."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from image_router.backends import ImageRequest
from image_router.backends._grpc import decode_compute
from image_router.backends.base import EncodedImages, ImageResult
from image_router.backends.triton import compute_ns
from image_router.billing.meter import bill
from image_router.billing.price import Cost, Shape, cost, micros, quote, rate_per_s
from image_router.billing.spec import Billing, Price, PriceRow
from image_router.billing.usage import Usage
from image_router.config import compile_text
from image_router.errors import ConfigError
from image_router.pipelines.contract import Generation, Limits
from image_router.pipelines.triton_model import generate_rows
from image_router.served import Served

BILLING = Billing(currency="USD", gpu_hour_price=3.6, cache_hit_price=0.0005)

ROUTES = """
backends:
  triton: {url: "http://127.0.0.1:8000"}
billing: {currency: EUR, gpu_hour_price: 2.4}
models:
  draft: {backend: triton, price: {gpus: 0.25, per_image: 0.0002}}
  quality: {backend: triton}
routes:
  - {name: fast, model: draft, fallback: [quality]}
default_route: draft
"""


def test_metered_price_is_per_image_plus_compute_at_the_gpu_rate() -> None:
    """gpus x gpu_hour_price / 3600 per second (x overhead), plus per_image per image."""
    price = Price(gpus=0.5, per_image=0.001)
    assert rate_per_s(price, BILLING) == pytest.approx(0.0005)
    got = cost(BILLING, price, 2, 1.5, Shape(), cached=False)
    assert got == Cost(compute=750, per_image=2000) and got.total == 2750
    dear = Billing(gpu_hour_price=3.6, overhead_factor=1.3)
    assert cost(dear, price, 1, 1.0, Shape(), cached=False).compute == 650
    explicit = Price(gpus=8, per_compute_second=0.01)  # per_compute_second wins over gpus
    assert cost(BILLING, explicit, 1, 2.0, Shape(), cached=False).compute == 20_000


def test_a_cache_hit_costs_the_hit_price_and_no_compute() -> None:
    got = cost(BILLING, Price(per_image=1.0), 3, 9.9, Shape(), cached=True)
    assert got == Cost(cache_hits=1500)


def test_a_price_table_takes_the_first_matching_row() -> None:
    """Rows by the longer side and steps; a steps field unknown (the tier's default)
    matches; nothing matching falls back to the model's per_image."""
    table = (PriceRow(0.01, max_side=512, max_steps=20), PriceRow(0.03, max_side=1024), PriceRow(0.06))
    price = Price(per_image=0.5, table=table)
    assert cost(BILLING, price, 1, 5.0, Shape(side=512, steps=20), False).total == 10_000
    assert cost(BILLING, price, 1, 5.0, Shape(side=512, steps=30), False).total == 30_000
    assert cost(BILLING, price, 1, 5.0, Shape(side=512), False).total == 10_000
    assert cost(BILLING, price, 2, 5.0, Shape(side=2048), False).total == 120_000
    only = Price(per_image=0.5, table=(PriceRow(0.01, size="64x64"),))
    assert cost(BILLING, only, 1, 0.0, Shape(size="128x128"), False).total == 500_000


def test_quote_is_the_estimate_times_the_margin_and_micros_round_once() -> None:
    assert quote(BILLING, Price(gpus=1.0), 1, 2.0, Shape(), False) == 2500  # 2000 x 1.25
    assert micros(0.0000005) == 1 and micros(-0.0000005) == -1 and micros(0.1234564) == 123456


def test_usage_renders_openai_shape_header_and_kserve_parameters() -> None:
    usage = Usage(1, 0, 1_731_000_000, "model", Cost(compute=3312, per_image=1000), "USD")
    body = usage.body()
    assert body["total_tokens"] == 0 and body["input_tokens_details"] == {"text_tokens": 0, "image_tokens": 0}
    assert body["compute_s"] == 1.731 and body["cost"] == 0.004312 and body["currency"] == "USD"
    assert body["cost_details"] == {"compute": 0.003312, "per_image": 0.001, "cache_hits": 0.0}
    assert usage.header() == 'images=1, cached=0, compute-ms=1731, cost=0.004312, currency="USD"'
    assert usage.parameters()["router_cost"] == "0.004312"
    assert usage.parameters()["router_compute_ms"] == "1731"


def test_billing_refuses_a_routable_model_without_a_price_at_its_line() -> None:
    """quality is only a fallback, yet reachable: unpriced, it would bill 0 silently."""
    with pytest.raises(ConfigError) as info:
        compile_text(ROUTES, env={})
    got = [str(issue) for issue in info.value.issues]
    assert got == [
        "routes.yaml:7:3 models.quality: model 'quality' can be routed to but has no price "
        "(billing needs one for every tier)"
    ]


def test_billing_and_budgets_compile() -> None:
    text = ROUTES.replace("quality: {backend: triton}", "quality: {backend: triton, price: {per_image: 0.01}}")
    text += """
tenants:
  mode: keys
  tenants:
    acme:
      keys: ["0123456789abcdefXYZ"]
      budget:
        limits: [{per: day, amount: 50}, {per: 90m, amount: 5}]
        on_exhausted: downgrade
        downgrade_at: 0.9
"""
    table = compile_text(text, env={})
    assert table.billing == Billing(currency="EUR", gpu_hour_price=2.4)
    assert table.models["draft"].price == Price(gpus=0.25, per_image=0.0002)
    budget = table.tenants[0].budget
    assert budget is not None and [(lim.per, lim.amount) for lim in budget.limits] == [("day", 50), ("5400s", 5)]
    assert budget.on_exhausted == "downgrade" and budget.fail == "open"
    assert compile_text(ROUTES.replace("billing: {currency: EUR, gpu_hour_price: 2.4}\n", ""), env={}).billing is None


def test_compute_ns_is_read_from_binary_and_json_http_answers() -> None:
    """COMPUTE_NS after IMAGE in the binary tail, or as JSON data; absent: None."""
    image = np.zeros((2, 2, 2, 3), np.uint8)
    spent = np.array([[5], [7]], "<i8")
    header = {
        "outputs": [
            {"name": "IMAGE", "datatype": "UINT8", "shape": [2, 2, 2, 3], "parameters": {"binary_data_size": 24}},
            {"name": "COMPUTE_NS", "datatype": "INT64", "shape": [2, 1], "parameters": {"binary_data_size": 16}},
        ]
    }
    head = orjson.dumps(header)
    assert compute_ns(head + image.tobytes() + spent.tobytes(), len(head)) == (5, 7)
    as_json = orjson.dumps({"outputs": [{"name": "COMPUTE_NS", "datatype": "INT64", "shape": [1, 1], "data": [9]}]})
    assert compute_ns(as_json, None) == (9,)
    older = orjson.dumps({"outputs": [header["outputs"][0]]})
    assert compute_ns(older + image.tobytes(), len(older)) is None
    with pytest.raises(ValueError):
        compute_ns(head + image.tobytes() + spent.tobytes()[:8], len(head))


def test_compute_ns_is_read_from_a_grpc_answer() -> None:
    response = pb.ModelInferResponse(model_name="draft")
    response.outputs.add(name="IMAGE", datatype="UINT8", shape=[1, 1, 1, 3])
    response.raw_output_contents.append(b"\x00\x00\x00")
    assert decode_compute(response) is None
    response.outputs.add(name="COMPUTE_NS", datatype="INT64", shape=[1, 1])
    response.raw_output_contents.append(np.array([[123]], "<i8").tobytes())
    assert decode_compute(response) == (123,)


def test_the_model_times_each_row_of_its_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row is charged the time of its own call, on a clock the generator moves (a
    real sleep of 20 ms once took 55 beside the other test worker's inference)."""
    from types import SimpleNamespace

    from image_router.pipelines import rows

    clock = [1_000_000_000]
    monkeypatch.setattr(rows, "time", SimpleNamespace(perf_counter_ns=lambda: clock[0]))

    class Slow:
        limits = Limits(8, 8, 1, 64, 10)

        def __call__(self, job: Generation, cancelled: Any = None) -> np.ndarray:
            clock[0] += 20_000_000 * job.seed
            return np.zeros((8, 8, 3), np.uint8)

    jobs = [Generation("a", 1, 1, 8, 8), Generation("b", 3, 1, 8, 8)]
    images, spent = generate_rows(Slow(), jobs, lambda: False)
    assert len(images) == 2
    assert spent == [20_000_000, 60_000_000]


def _served(result: ImageResult, cache: str | None = None, backend_s: float = 0.25) -> Served:
    table = compile_text(ROUTES.replace("quality: {backend: triton}", "quality: {backend: triton, price: {}}"), env={})
    return Served(result, table.default, table.models["draft"], 1, (), False, 0.0, backend_s, 0.3, cache=cache)


def test_billed_compute_is_the_models_own_else_labelled_fallbacks() -> None:
    """model's COMPUTE_NS; the gateway's time when absent; 0 from the store; none hosted."""
    pixels = np.zeros((2, 64, 64, 3), np.uint8)
    billing = Billing(gpu_hour_price=3.6)  # draft: 0.25 GPU -> 250 micro per second
    made = bill(
        billing, _served(ImageResult(pixels, "1", compute_ns=(1_000_000_000, 3_000_000_000))), ImageRequest(("a",))
    )
    assert (made.compute_ns, made.compute_source, made.cost.compute, made.cost.per_image) == (4e9, "model", 1000, 400)
    older = bill(billing, _served(ImageResult(pixels, "1")), ImageRequest(("a",)))
    assert (older.compute_ns, older.compute_source) == (250_000_000, "gateway")
    hit = bill(billing, _served(ImageResult(pixels, "1", compute_ns=(9, 9)), cache="HIT"), ImageRequest(("a",)))
    assert (hit.compute_ns, hit.compute_source, hit.cached_images, hit.cost.total) == (0, "cache", 2, 0)
    hosted = ImageResult(None, "", encoded=EncodedImages(("aGk=",), "png"))
    assert _served(hosted).compute == (0, "none")


def test_the_gateway_puts_usage_on_every_tag_set() -> None:
    """Through the tags every protocol reads (HTTP headers, gRPC metadata, KServe
    parameters): X-Router-Usage and router_usage/router_cost."""
    from image_router.inference import served_parameters, served_tags

    pixels = np.zeros((1, 64, 64, 3), np.uint8)
    served = _served(ImageResult(pixels, "1", compute_ns=(2_000_000_000,)))
    served = dataclasses.replace(served, usage=bill(BILLING, served, ImageRequest(("a",))))
    assert served_tags(served)["X-Router-Usage"].startswith("images=1, cached=0, compute-ms=2000, cost=0.000700")
    assert served_parameters(served)["router_cost"] == "0.000700"


def test_ledger_fields_and_rows_round_trip() -> None:
    """An answer's ledger fields read back as one row per route x model, cost exact."""
    from image_router.billing import ledger

    usage = Usage(2, 1, 1_500_000_000, "model", Cost(compute=1234, per_image=2000), "USD")
    counts = {**ledger.fields("fast", "draft", usage)}
    more = ledger.fields("fast", "quality", Usage(1, 0, 10, "model", Cost(per_image=7), "USD"))
    (first, second) = ledger.rows("20261206", "acme", {**counts, **more})
    assert first == {
        "day": "2026-12-06", "tenant": "acme", "route": "fast", "model": "draft", "images": 2,
        "cached_images": 1, "compute_s": 1.5, "cost": 0.003234, "cost_micros": 3234,
    }  # fmt: skip
    assert second["model"] == "quality" and second["cost_micros"] == 7
    assert ledger.key("20261206", "acme") == "u:20261206:acme" and ledger.day_of(0) == "19700101"
