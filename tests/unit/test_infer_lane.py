"""The image lane ahead of Starlette's stack (KServe infer and the image endpoints'
exact paths): the same paths, errors and ids as the stack would give."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from image_router.errors import InvalidRequest
from image_router.http import kserve_api
from image_router.http.errors import RequestIdMiddleware, exception_handlers
from image_router.http.lane import Endpoint, GatewayApp, ImageLane
from image_router.http.observe import Observer
from image_router.telemetry import AccessLog, Tracing


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v2/models/noop/infer", {"model": "noop"}),
        ("/v2/models/noop/versions/2/infer", {"model": "noop", "version": "2"}),
        ("/v2/models//infer", None),
        ("/v2/models/infer", None),
        ("/v2/models/noop/versions//infer", None),
        ("/v2/models/noop/ready", None),
        ("/v2/models/a/b/infer", None),
        ("/v1/models/noop/infer", None),
    ],
)
def test_the_lane_takes_exactly_the_paths_of_the_infer_routes(path: str, params: dict[str, str] | None) -> None:
    assert kserve_api.infer_path(path) == params


def _app() -> Starlette:
    async def elsewhere(request: Request) -> Response:
        return PlainTextResponse("router")

    return _with_lane(
        routes=[Route("/v2/models/{model}/infer", elsewhere, methods=["GET", "POST"]), Route("/other", elsewhere)],
    )


def _with_lane(routes: list[Route], posts: dict[str, Endpoint] | None = None) -> Starlette:
    return GatewayApp(
        lane=ImageLane(posts),
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=exception_handlers,
    )


def test_errors_in_the_lane_are_answered_by_the_app_s_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, str]] = []

    async def refuse(request: Request) -> Response:
        seen.append(request.path_params)
        raise InvalidRequest("PROMPT: a BYTES input is required", field="PROMPT")

    monkeypatch.setattr(kserve_api, "infer", refuse)
    client = TestClient(_app())
    r = client.post("/v2/models/noop/versions/3/infer", content=b"{}", headers={"X-Request-Id": "abc"})
    assert seen == [{"model": "noop", "version": "3"}]
    assert r.status_code == 400
    assert r.json() == {"error": "PROMPT: a BYTES input is required", "code": "invalid_request", "request_id": "abc"}
    assert r.headers["x-request-id"] == "abc"


def test_a_crash_in_the_lane_is_a_logged_500_without_its_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(request: Request) -> Response:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(kserve_api, "infer", crash)
    r = TestClient(_app(), raise_server_exceptions=False).post("/v2/models/noop/infer", content=b"{}")
    assert r.status_code == 500
    assert r.json()["code"] == "internal_error" and "secret" not in r.text
    assert "secret detail" in caplog.text  # logged here, with its traceback


def test_everything_else_goes_on_to_the_router() -> None:
    client = TestClient(_app())
    assert client.get("/v2/models/noop/infer").text == "router"  # not a POST
    assert client.get("/other").text == "router"
    assert client.post("/v2/models/noop/ready").status_code == 404


def test_the_image_endpoints_exact_posts_take_the_lane_and_nothing_else_does() -> None:
    taken: list[str] = []

    async def lane(request: Request) -> Response:
        taken.append(request.url.path)
        if request.headers.get("x-fail"):
            raise InvalidRequest("prompt: required", field="prompt")
        return PlainTextResponse("lane")

    async def elsewhere(request: Request) -> Response:
        return PlainTextResponse("router")

    app = _with_lane(
        routes=[
            Route("/v1/images/generations", elsewhere, methods=["GET", "POST"]),
            Route("/{rest:path}", elsewhere, methods=["GET", "POST"]),
        ],
        posts={"/v1/images/generations": lane},
    )
    client = TestClient(app)
    assert client.post("/v1/images/generations", json={}).text == "lane"
    refused = client.post("/v1/images/generations", json={}, headers={"x-fail": "1", "X-Request-Id": "r1"})
    error = refused.json()["error"]  # the OpenAI shape, as the app's handlers give on this path
    assert refused.status_code == 400 and error["code"] == "invalid_request" and error["param"] == "prompt"
    assert refused.headers["x-request-id"] == "r1"
    assert client.get("/v1/images/generations").text == "router"  # not a POST
    assert client.post("/v1/images/generations/x").text == "router"
    assert client.post("/v1/images/edits").text == "router"
    assert taken == ["/v1/images/generations"] * 2


def test_a_lane_request_is_observed_once_with_its_id_and_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lane records what the observing middleware would: one access-log line per
    request, with the id the response echoes, the API and the status (an error too)."""

    async def answer(request: Request) -> Response:
        if request.headers.get("x-fail"):
            raise InvalidRequest("PROMPT: a BYTES input is required", field="PROMPT")
        return PlainTextResponse("made")

    monkeypatch.setattr(kserve_api, "infer", answer)
    stream = io.StringIO()
    observer = Observer(None, Tracing.off(), AccessLog(stream, flush_interval_s=0))
    client = TestClient(GatewayApp(lane=ImageLane({}, observer), routes=[], exception_handlers=exception_handlers))
    made = client.post("/v2/models/noop/infer", content=b"{}")
    refused = client.post("/v2/models/noop/infer", content=b"{}", headers={"x-fail": "1", "X-Request-Id": "r2"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["request_id"], line["api"], line["status"]) for line in lines] == [
        (made.headers["x-request-id"], "kserve", 200),
        ("r2", "kserve", 400),
    ]
    assert made.text == "made" and refused.headers["x-request-id"] == "r2"
    assert [r.headers.get_list("x-request-id") for r in (made, refused)] == [[made.headers["x-request-id"]], ["r2"]]


def test_a_stream_that_fails_midway_is_still_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that escapes the handlers (here a stream's, after its 200 went out)
    still leaves the request's access-log line."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"event: partial_image\n\n"
        raise RuntimeError("the encoder broke")

    async def answer(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/event-stream")

    monkeypatch.setattr(kserve_api, "infer", answer)
    stream = io.StringIO()
    observer = Observer(None, Tracing.off(), AccessLog(stream, flush_interval_s=0))
    client = TestClient(
        GatewayApp(lane=ImageLane({}, observer), routes=[], exception_handlers=exception_handlers),
        raise_server_exceptions=False,
    )
    client.post("/v2/models/noop/infer", content=b"{}", headers={"X-Request-Id": "s1"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["request_id"], line["status"]) for line in lines] == [("s1", 200)]
