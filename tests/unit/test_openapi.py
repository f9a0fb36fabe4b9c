"""``/openapi.json`` is built from the app's own routes and the pydantic models that
validate the bodies: valid OpenAPI 3.1, every served operation and nothing else, and a
route added without a description is refused at build."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from image_router.app import _routes
from image_router.http.images_api import OpenAIImagesRequest
from image_router.http.openapi import OPERATIONS, document, served


def test_the_document_is_valid_openapi_3_1_and_lists_exactly_what_the_app_serves() -> None:
    routes = _routes()
    doc = document(routes)
    validate(doc)  # raises on any departure from the 3.1 meta-schema
    listed = {(path, method) for path, methods in doc["paths"].items() for method in methods}
    assert listed == set(served(routes)), "every route served, nothing else"
    assert ("/v1/images/generations", "post") in listed and ("/v2/models/{model}/infer", "post") in listed
    assert set(OPERATIONS) == listed, "no description of a route the app does not serve"
    ids = [op["operationId"] for methods in doc["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))


def test_request_bodies_are_the_models_that_validate_them() -> None:
    doc = document(_routes())
    body = doc["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert schema == OpenAIImagesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schema["additionalProperties"] is False and schema["required"] == ["prompt"]
    form = doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    job = doc["paths"]["/v1/images/jobs"]["post"]
    assert "202" in job["responses"] and "webhook" in doc["components"]["schemas"]["JobRequest"]["properties"]
    admin = doc["paths"]["/admin/cache/purge"]["post"]["security"]
    assert admin == [{"adminToken": []}]


def test_a_route_without_a_description_is_refused() -> None:
    async def secret(request: object) -> None: ...

    with pytest.raises(LookupError, match="POST /v1/secret"):
        document([*_routes(), Route("/v1/secret", secret, methods=["POST"])])
