"""The result cache with real processes: Triton, gateways, the disk store, Redis.

What a user would check: the second identical request is a HIT that Triton never sees
(its own statistics say so), across the three APIs; identical requests in flight cost
one generation; canary cohorts, model swaps and Cache-Control behave; the disk store
survives a restart and stays under its byte bound; image URLs work from any replica.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import diskcache
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image

from image_router.cache import image_id
from image_router.triton import TritonServer
from tests.integration.routes_common import TIERS
from tests.procs import ADMIN_TOKEN, GatewayProcess, scrape

pytestmark = pytest.mark.integration


def cached_routes(store: str, extra: str = "") -> str:
    return (
        TIERS
        + f"""
cache: {{store: "{store}", max_bytes: 50000000, ttl_s: 600}}
routes:
  - name: thumbs
    match: "prompt:(?i)\\\\bthumb\\\\b"
    model: draft
    budget_ms: 8000
    cache: {{seedless: share}}
  - name: fresh
    match: "prompt:(?i)\\\\bfresh\\\\b"
    model: draft
    budget_ms: 8000
    cache: {{seedless: fresh}}
  - name: slow
    match: "prompt:(?i)\\\\bslowly\\\\b"
    model: preview
    budget_ms: 20000
    cache: {{}}
  - name: cohort
    match: "prompt:(?i)\\\\bcohort\\\\b"
    split:
      - {{model: draft, weight: 50}}
      - {{model: noop, weight: 50, canary: true}}
    sticky: header:X-User-Id
    budget_ms: 8000
    cache: {{}}
{extra}
default_route: {{name: default, model: draft, budget_ms: 8000}}
"""
    )


def inferences(triton: TritonServer, model: str) -> int:
    """Requests Triton itself has run for ``model`` (its statistics extension)."""
    stats = httpx.get(f"{triton.http_url}/v2/models/{model}/stats", timeout=10).json()
    return sum(int(s["inference_stats"]["success"]["count"]) for s in stats["model_stats"])


def openai(gw: GatewayProcess, prompt: str, **extra: object) -> httpx.Response:
    return httpx.post(gw.url + "/v1/images/generations", json={"prompt": prompt, **extra}, timeout=30)


@pytest.fixture()
def gateway(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> GatewayProcess:
    return start_gateway(cached_routes(f"disk://{tmp_path / 'cache'}"))


def test_second_request_is_a_hit_triton_never_sees_on_every_api(gateway: GatewayProcess, triton: TritonServer) -> None:
    before = inferences(triton, "draft")
    first = openai(gateway, "a thumb of a red fox")
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "MISS" and first.headers["x-router-model"].startswith("draft")
    second = openai(gateway, "a thumb of a red fox")
    assert second.headers["x-cache"] == "HIT"
    # a strong ETag: the content hash of the pixels (the image's URL id), not merely equal twice
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(first.json()["data"][0]["b64_json"]))))
    assert second.headers["etag"] == first.headers["etag"] == f'"{image_id(pixels)}"'
    assert second.json()["data"][0]["b64_json"] == first.json()["data"][0]["b64_json"]
    # Age: seconds since the image was made, growing as the entry gets older
    time.sleep(2.1)
    older = openai(gateway, "a thumb of a red fox")
    assert older.headers["x-cache"] == "HIT" and 2 <= int(older.headers["age"]) <= int(second.headers["age"]) + 4
    # the same generation asked for through /api/v1/generate (as WebP) and KServe: one entry
    webp = httpx.post(gateway.url + "/api/v1/generate", json={"prompt": "a thumb of a red fox", "format": "webp"})
    assert webp.headers["x-cache"] == "HIT" and webp.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(webp.content)).format == "WEBP"
    client = httpclient.InferenceServerClient(gateway.url.removeprefix("http://"))
    prompt = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a thumb of a red fox"]], dtype=object))
    result = client.infer("thumbs", [prompt])
    assert result.get_response()["model_name"] == "thumbs"
    png = base64.b64decode(first.json()["data"][0]["b64_json"])
    np.testing.assert_array_equal(result.as_numpy("IMAGE")[0], np.asarray(Image.open(io.BytesIO(png))))
    assert inferences(triton, "draft") == before + 1  # four hits, one generation
    seen = scrape(gateway)
    labels = (("model", "draft@1"), ("result", "HIT"), ("route", "thumbs"))
    assert seen[("router_cache_results_total", labels)] == 4


def test_seedless_share_reports_its_seed_and_fresh_never_hits(gateway: GatewayProcess) -> None:
    a = httpx.post(gateway.url + "/api/v1/generate", json={"prompt": "thumb of a boat", "response": "json"}).json()
    b = httpx.post(gateway.url + "/api/v1/generate", json={"prompt": "thumb of a boat", "response": "json"}).json()
    assert a["images"][0]["seed"] == b["images"][0]["seed"] and b["cache"] == "HIT"
    c = httpx.post(gateway.url + "/api/v1/generate", json={"prompt": "fresh boat", "response": "json"}).json()
    d = httpx.post(gateway.url + "/api/v1/generate", json={"prompt": "fresh boat", "response": "json"}).json()
    assert c["cache"] == d["cache"] == "MISS" and c["images"][0]["seed"] != d["images"][0]["seed"]
    # a fresh image is stored under its seed: asking for that seed is a hit
    e = httpx.post(
        gateway.url + "/api/v1/generate",
        json={"prompt": "fresh boat", "response": "json", "seed": d["images"][0]["seed"]},
    ).json()
    assert e["cache"] == "HIT" and e["images"][0]["b64_png"] == d["images"][0]["b64_png"]


def test_cache_control_no_store_and_no_cache(gateway: GatewayProcess, triton: TritonServer) -> None:
    before = inferences(triton, "draft")
    r = openai(gateway, "thumb of a kite", seed=5)
    assert r.headers["x-cache"] == "MISS"
    bypass = httpx.post(
        gateway.url + "/v1/images/generations", json={"prompt": "thumb of a kite", "seed": 5},
        headers={"Cache-Control": "no-cache"},
    )  # fmt: skip
    assert bypass.headers["x-cache"] == "BYPASS"
    none = httpx.post(
        gateway.url + "/v1/images/generations", json={"prompt": "thumb of a tent", "seed": 5},
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip
    assert none.headers["x-cache"] == "BYPASS"
    assert openai(gateway, "thumb of a tent", seed=5).headers["x-cache"] == "MISS"  # no-store kept nothing
    # no-cache skips the lookup but stores what it made: a key never stored before is a
    # HIT right after its no-cache generation
    first = httpx.post(
        gateway.url + "/v1/images/generations", json={"prompt": "thumb of a sail", "seed": 5},
        headers={"Cache-Control": "no-cache"},
    )  # fmt: skip
    assert first.headers["x-cache"] == "BYPASS"
    assert openai(gateway, "thumb of a sail", seed=5).headers["x-cache"] == "HIT"
    assert inferences(triton, "draft") == before + 5  # a BYPASS generates; the HIT after it does not


def test_canary_cohorts_never_share_entries(gateway: GatewayProcess) -> None:
    seen: dict[str, tuple[str, str]] = {}
    for user in (f"user-{i}" for i in range(40)):
        r = httpx.post(
            gateway.url + "/api/v1/generate", json={"prompt": "cohort picture", "seed": 1},
            headers={"X-User-Id": user},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        seen[user] = (r.headers["x-router-model"], r.headers["x-cache"])
    arms = {model.split("@")[0] for model, _ in seen.values()}
    assert arms == {"draft", "noop"}
    # each arm generated once, then hit its own entry; never the other arm's image
    for arm in arms:
        results = [cache for model, cache in seen.values() if model.startswith(arm)]
        assert results.count("MISS") == 1 and set(results[1:]) <= {"HIT"}


def test_fifty_identical_requests_in_flight_are_one_generation(gateway: GatewayProcess, triton: TritonServer) -> None:
    before = inferences(triton, "preview")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            body = {"prompt": "slowly drawn lighthouse", "seed": 3}
            return await asyncio.gather(*(client.post(gateway.url + "/api/v1/generate", json=body) for _ in range(50)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    caches = [r.headers["x-cache"] for r in responses]
    assert caches.count("MISS") == 1 and set(caches) <= {"MISS", "COALESCED", "HIT"}
    assert len({r.content for r in responses}) == 1
    assert inferences(triton, "preview") == before + 1


def test_disk_store_survives_a_restart_and_a_model_swap_misses(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    store = f"disk://{tmp_path / 'kept'}"
    first = start_gateway(cached_routes(store))
    assert openai(first, "thumb of a lamp", seed=9).headers["x-cache"] == "MISS"
    first.stop()
    again = start_gateway(cached_routes(store), name="again.yaml")
    assert openai(again, "thumb of a lamp", seed=9).headers["x-cache"] == "HIT"
    # the operator points the draft model at another Triton model: a miss by construction
    swapped = cached_routes(store).replace("triton_model: draft,", "triton_model: noop,")
    (again.routes).write_text(swapped)
    assert httpx.post(again.url + "/admin/reload", headers=again.admin, timeout=10).json()["ok"]
    r = openai(again, "thumb of a lamp", seed=9)
    assert r.headers["x-cache"] == "MISS"


def test_corrupt_entry_is_a_miss_and_is_removed(start_gateway: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    # no memory layer: the second request must read the store
    text = cached_routes(f"disk://{tmp_path / 'cache'}").replace("ttl_s: 600}", "ttl_s: 600, memory_bytes: 0}")
    gateway = start_gateway(text)
    assert openai(gateway, "thumb of a cup", seed=2).headers["x-cache"] == "MISS"
    with diskcache.Cache(str(tmp_path / "cache")) as store:
        (key,) = [k for k in store.iterkeys() if "|" in str(k)]
        store.set(key, b"garbage")
    assert openai(gateway, "thumb of a cup", seed=2).headers["x-cache"] == "MISS"
    described = httpx.get(gateway.url + "/admin/cache", headers=gateway.admin).json()
    assert described["corrupt"] == 1


def test_eviction_keeps_the_disk_store_under_max_bytes(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    text = cached_routes(f"disk://{tmp_path / 'small'}").replace("max_bytes: 50000000", "max_bytes: 400000")
    text = text.replace("ttl_s: 600}", "ttl_s: 600, max_entry_bytes: 100000, memory_bytes: 0}")
    gw = start_gateway(text)
    for i in range(60):
        assert openai(gw, f"thumb number {i}", seed=1).status_code == 200
    described = httpx.get(gw.url + "/admin/cache", headers=gw.admin).json()
    stored = described["stored"]
    assert stored["bytes"] <= 400000 * 1.2, stored
    assert described["evictions"] > 0
    assert scrape(gw)[("router_cache_evictions_total", ())] == described["evictions"]
    assert openai(gw, "thumb number 0", seed=1).headers["x-cache"] == "MISS"  # least recently used: gone
    assert openai(gw, "thumb number 59", seed=1).headers["x-cache"] == "HIT"


def test_purge_by_model_route_and_prompt(gateway: GatewayProcess) -> None:
    for prompt in ("thumb of a pear", "thumb of a plum"):
        assert openai(gateway, prompt, seed=4).headers["x-cache"] == "MISS"
    purge = gateway.url + "/admin/cache/purge"
    assert httpx.post(purge, json={"prompt": "thumb of a pear"}).status_code == 401
    assert httpx.post(purge, json={}, headers=gateway.admin).status_code == 400
    removed = httpx.post(purge, json={"prompt": "thumb of a pear"}, headers=gateway.admin).json()["removed"]
    assert removed == 1
    assert openai(gateway, "thumb of a pear", seed=4).headers["x-cache"] == "MISS"
    assert openai(gateway, "thumb of a plum", seed=4).headers["x-cache"] == "HIT"
    assert httpx.post(purge, json={"model": "draft@1"}, headers=gateway.admin).json()["removed"] >= 2
    assert openai(gateway, "thumb of a plum", seed=4).headers["x-cache"] == "MISS"
    assert httpx.post(purge, json={"route": "thumbs"}, headers=gateway.admin).json()["removed"] >= 1
    assert openai(gateway, "thumb of a plum", seed=4).headers["x-cache"] == "MISS"


def test_image_urls_formats_and_bad_input(gateway: GatewayProcess) -> None:
    r = openai(gateway, "thumb of a fern", response_format="url", output_format="webp", output_compression=70)
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert url.startswith(gateway.url + "/v1/images/") and url.endswith(".webp?q=70")
    image = httpx.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert "immutable" in image.headers["cache-control"] and "model:draft@1" in image.headers["surrogate-key"]
    assert httpx.get(url, headers={"If-None-Match": image.headers["etag"]}).status_code == 304
    avif = httpx.get(url.replace(".webp?q=70", ".avif"))
    assert avif.status_code == 200 and Image.open(io.BytesIO(avif.content)).format == "AVIF"
    for bad in ("/v1/images/../../etc/passwd.png", "/v1/images/zz.png", "/v1/images/" + "0" * 32 + ".png"):
        missing = httpx.get(gateway.url + bad)
        assert missing.status_code == 404
        if bad.endswith("0" * 32 + ".png"):
            assert missing.json()["error"]["code"] == "image_not_found"
    wrong = openai(gateway, "thumb", output_format="bmp")
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "output_format"
    far = openai(gateway, "thumb", output_compression=101)
    assert far.status_code == 400 and far.json()["error"]["field"] == "output_compression"


UPGRADE = """
  - name: upgrade
    match: "prompt:(?i)\\\\bupgrade\\\\b"
    model: quality
    budget_ms: 1500
    fallback: [draft]
    cache: {upgrade: true}
"""


def test_a_downgraded_answer_is_upgraded_in_the_background(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gw = start_gateway(cached_routes(f"disk://{tmp_path / 'up'}", UPGRADE))
    first = openai(gw, "upgrade me: a harbour at dusk", seed=21)
    assert first.status_code == 200, first.text
    assert first.headers["x-router-model"].startswith("draft")
    assert first.headers["x-router-fallback"].startswith("quality:")
    deadline = time.monotonic() + 60  # one quality generation on this CPU, at the lowest priority
    while time.monotonic() < deadline:
        fill = httpx.get(gw.url + "/admin/cache", headers=gw.admin).json()["fill"]
        if fill["upgrade"]["done"] >= 1:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no upgrade ran: {fill}")
    again = openai(gw, "upgrade me: a harbour at dusk", seed=21)
    assert again.headers["x-cache"] == "HIT" and again.headers["x-router-model"].startswith("quality")
    assert "x-router-fallback" not in again.headers
    assert fill["upgrade"]["queued"] == 1


def test_pregen_from_the_cli_then_hits_and_the_top_prompts(gateway: GatewayProcess, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        'thumb of a red barn\nthumb of a blue barn\n# a comment\n{"prompt": "thumb of a barn", "seed": 3}\n'
    )
    env = {**os.environ, "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "image_router.cli", "pregen", str(prompts), "--url", gateway.url],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "queued 3 jobs for 3 prompts" in done.stdout
    for body in (
        {"prompt": "thumb of a red barn"},
        {"prompt": "thumb of a blue barn"},
        {"prompt": "thumb of a barn", "seed": 3},
    ):
        assert openai(gateway, **body).headers["x-cache"] == "HIT"  # type: ignore[arg-type]
    for _ in range(3):
        openai(gateway, "thumb of a red barn")
    top = httpx.get(gateway.url + "/admin/cache", headers=gateway.admin).json()["top_prompts"]
    assert top[0] == {"route": "thumbs", "prompt": "thumb of a red barn", "count": 4, "at_least": 4}
    stats = subprocess.run(
        [sys.executable, "-m", "image_router.cli", "cache", "stats", "--url", gateway.url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert stats.returncode == 0 and json.loads(stats.stdout)["fill"]["pregen"]["done"] == 3
    purge = subprocess.run(
        [sys.executable, "-m", "image_router.cli", "cache", "purge", "--model", "draft", "--url", gateway.url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert purge.returncode == 0 and purge.stdout.startswith("removed ")
    assert openai(gateway, "thumb of a red barn").headers["x-cache"] == "MISS"
    # both actions are audit lines (README: reloads, purges, pre-generation, sign-ins)
    deadline = time.monotonic() + 5  # the access log is flushed every second
    while time.monotonic() < deadline:
        audits = [json.loads(line) for line in gateway.log.read_text().splitlines() if '"audit"' in line]
        if {"pregenerate", "purge"} <= {a["audit"] for a in audits}:
            break
        time.sleep(0.2)
    pregen = next(a for a in audits if a["audit"] == "pregenerate")
    purged = next(a for a in audits if a["audit"] == "purge")
    assert pregen["items"] == 3 and pregen["queued"] == 3 and pregen["auth"] == "bearer", pregen
    assert purged["model"] == "draft" and purged["removed"] >= 3 and purged["from"], purged
    refused = subprocess.run(
        [sys.executable, "-m", "image_router.cli", "cache", "purge", "--all", "--url", gateway.url],
        env={**env, "ROUTER_ADMIN_TOKEN": "wrong"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0 and "401" in refused.stderr


def test_a_large_avif_is_encoded_off_the_loop_in_a_worker_process(gateway: GatewayProcess, tmp_path: Path) -> None:
    """A 768x768 image record (written into the store as a replica would) served as AVIF:
    libavif holds the GIL for milliseconds at a time, so it runs in a worker process."""
    from image_router.cache import Entry
    from image_router.cache.keys import image_key

    big = np.random.default_rng(3).integers(0, 255, (768, 768, 3), dtype=np.uint8)
    name = image_id(big)
    with diskcache.Cache(str(tmp_path / "cache")) as store:
        store.set(image_key(name), Entry(big[None], "draft", "1", "thumbs", (1,), time.time()).to_bytes())

    async def avif_while_polling_health() -> tuple[httpx.Response, float, list[float]]:
        """The AVIF request, and /healthz every 50 ms while it is encoded: an encode on
        the loop (seconds for this image here) would hold every other answer up."""
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            t0 = time.monotonic()
            avif = asyncio.create_task(client.get(f"/v1/images/{name}.avif?q=40"))
            health: list[float] = []
            while not avif.done():
                h0 = time.monotonic()
                assert (await client.get("/healthz")).status_code == 200
                health.append(time.monotonic() - h0)
                await asyncio.sleep(0.05)
            return await avif, time.monotonic() - t0, health

    r, encode_s, health = asyncio.run(avif_while_polling_health())
    assert r.status_code == 200 and r.headers["content-type"] == "image/avif"
    assert Image.open(io.BytesIO(r.content)).size == (768, 768)
    print(f"avif {encode_s:.2f} s; /healthz meanwhile: {len(health)} answers, slowest {max(health):.3f} s")
    assert len(health) >= 3 and max(health) < 0.5 * encode_s, (encode_s, health)
