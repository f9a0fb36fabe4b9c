"""docs/openai.md "Progressive previews" with ``partial_images`` 2 and 3: the faster
tiers of the route's chain, fastest first, each sent as it finishes with its own
``partial_image_index``, then the routed tier's image; every event says what made it
(``router_model``) and on which route (``router_route``)."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.integration.routes_common import TIERS
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration

ROUTES = (
    TIERS
    + """
routes:
  - name: patient
    match: {intent: patient}
    model: quality
    budget_ms: 60000
    fallback: [preview, draft]
default_route: {name: default, model: draft, budget_ms: 5000}
"""
)


@pytest.mark.parametrize("partials", [2, 3])
def test_partial_images_are_the_faster_tiers_fastest_first_then_the_routed_image(
    start_gateway: Callable[..., GatewayProcess], partials: int
) -> None:
    gw = start_gateway(ROUTES)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    events = list(
        client.images.generate(
            prompt="a photo of a pier",
            stream=True,
            partial_images=partials,
            extra_body={"intent": "patient", "seed": 5},
        )
    )
    made = [(e.type, (e.model_extra or {}).get("router_model", "?").split("@")[0]) for e in events]
    # two faster tiers in the chain: with 3 asked for, still two previews
    assert made == [
        ("image_generation.partial_image", "draft"),
        ("image_generation.partial_image", "preview"),
        ("image_generation.completed", "quality"),
    ], made
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    assert all((e.model_extra or {}).get("router_route") == "patient" for e in events), events
    assert len({e.b64_json for e in events}) == 3  # three different images
