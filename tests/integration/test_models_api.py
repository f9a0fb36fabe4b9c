"""``GET /v1/models`` through the ``openai`` SDK against a real gateway: every name a
caller may put in ``model``, in OpenAI's list shape — and in keys mode only the
tenant's own."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.integration.routes_common import TIERS
from tests.integration.test_tenants import ACME_KEY, BETA_KEY, ROUTES
from tests.procs import GatewayProcess

pytestmark = pytest.mark.integration
Start = Callable[..., GatewayProcess]

OPEN = (
    TIERS
    + """
routes:
  - {name: photo, match: {intent: photo}, model: quality}
default_route: {name: main, model: draft, budget_ms: 5000}
aliases: {dall-e-3: quality, gpt-image-1: photo, gpt-image-2: auto}
"""
)


def client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def test_the_sdk_lists_models_routes_and_aliases_and_retrieves_one(start_gateway: Start) -> None:
    gw = start_gateway(OPEN)
    with client(gw, "unused") as sdk:
        listed = {m.id: m for m in sdk.models.list()}
        assert {"draft", "preview", "quality", "noop", "photo", "main", "dall-e-3", "gpt-image-1"} <= set(listed)
        assert listed["dall-e-3"].owned_by == "image-router" and listed["dall-e-3"].created > 0
        extra = listed["gpt-image-1"].model_extra or {}
        assert extra == {"kind": "alias", "target": "photo"}, extra
        assert (listed["gpt-image-2"].model_extra or {})["target"] == "auto"
        assert (listed["photo"].model_extra or {})["kind"] == "route"
        assert (listed["quality"].model_extra or {})["kind"] == "model"
        assert sdk.models.retrieve("dall-e-3").id == "dall-e-3"
        with pytest.raises(openai.NotFoundError) as info:
            sdk.models.retrieve("sdxl-turbo")
        assert info.value.code == "model_not_found"


def test_in_keys_mode_a_tenant_lists_only_what_it_may_use(start_gateway: Start) -> None:
    """acme may use the routes ``cheap`` and ``ab``: it sees those alone and cannot
    retrieve another; beta has no restriction; without a key the SDK gets a 401."""
    gw = start_gateway(ROUTES, env={"ACME_KEY": ACME_KEY, "BETA_KEY": BETA_KEY})
    with client(gw, ACME_KEY) as acme:
        assert sorted(m.id for m in acme.models.list()) == ["ab", "cheap"]
        with pytest.raises(openai.NotFoundError):
            acme.models.retrieve("other")
    with client(gw, BETA_KEY) as beta:
        assert {"ab", "cheap", "other", "main", "noop"} <= {m.id for m in beta.models.list()}
    with client(gw, "sk-nobody-0123456789abcdef") as nobody, pytest.raises(openai.AuthenticationError):
        nobody.models.list()
