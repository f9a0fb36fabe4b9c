"""Batching against a real Triton (issue 34): a shipped model is never handed batches of
requests, and a ``batch_rows`` model gives a request the same bytes every time.

One Triton with two models: ``draft`` as shipped, and ``draft_rows``, the same model
with ``batch_rows: 4``."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from numpy.typing import NDArray

from image_router.triton import TritonServer
from tests.procs import MODEL_REPOSITORY, serving

pytestmark = pytest.mark.integration

ROWS_MODEL = "draft_rows"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("batching")
    repo = root / "repository"
    shutil.copytree(MODEL_REPOSITORY / "draft", repo / "draft")
    shutil.copytree(MODEL_REPOSITORY / "draft", repo / ROWS_MODEL)
    config = repo / ROWS_MODEL / "config.pbtxt"
    text = config.read_text().replace('name: "draft"', f'name: "{ROWS_MODEL}"')
    text, count = re.subn(r'(key: "batch_rows", value: \{ string_value: )"1"', r'\1"4"', text)
    assert count == 1
    config.write_text(text)
    with serving(repo, root / "triton.log") as triton:
        yield triton


def url(server: TritonServer) -> str:
    return server.http_url.removeprefix("http://")


def infer(
    server: TritonServer, model: str, prompts: list[str], seed: int, parameters: dict[str, Any] | None = None
) -> tuple[NDArray[Any], NDArray[Any]]:
    client = httpclient.InferenceServerClient(url(server), network_timeout=120)
    prompt = httpclient.InferInput("PROMPT", [len(prompts), 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[p.encode()] for p in prompts], dtype=object))
    seeds = httpclient.InferInput("SEED", [len(prompts), 1], "INT64")
    seeds.set_data_from_numpy(np.arange(seed, seed + len(prompts), dtype=np.int64).reshape(-1, 1))
    result = client.infer(model, [prompt, seeds], parameters=parameters)
    client.close()
    images, spent = result.as_numpy("IMAGE"), result.as_numpy("COMPUTE_NS")
    assert images is not None and spent is not None
    return images, spent.reshape(-1)


def executions(server: TritonServer, model: str) -> tuple[int, int]:
    """Triton's own (execution_count, request_count) for ``model``."""
    client = httpclient.InferenceServerClient(url(server))
    stats = client.get_inference_statistics(model)["model_stats"][0]
    client.close()
    return int(stats["execution_count"]), int(stats["inference_stats"]["success"]["count"])


def settled(server: TritonServer, model: str, requests_at_least: int) -> tuple[int, int]:
    """:func:`executions` once Triton has recorded at least ``requests_at_least`` requests
    and two reads 0.1 s apart agree: it records a request's statistics just after its
    answer leaves, so a read right after an answer may not count it yet."""
    deadline = time.monotonic() + 5.0
    last = executions(server, model)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = executions(server, model)
        if now == last and now[1] >= requests_at_least:
            return now
        last = now
    raise AssertionError(f"Triton's statistics for {model} did not settle: {last}")


def test_a_shipped_model_is_never_handed_several_requests_at_once(server: TritonServer) -> None:
    """Eight one-image requests released together: eight executions, one per request
    (with the old dynamic batcher Triton ran them in two or three, and every request
    of an execution was answered at its end)."""
    earlier = executions(server, "draft")
    infer(server, "draft", ["warm"], 0)
    gate = threading.Barrier(8)

    def one(i: int) -> None:
        gate.wait()
        infer(server, "draft", [f"a fox {i}"], i)

    before = settled(server, "draft", earlier[1] + 1)  # the warm-up counted (once it counted 9 of 8)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    # Triton records an execution's statistics just after its answers leave: wait for them
    deadline = time.monotonic() + 5.0
    after = executions(server, "draft")
    while after[0] - before[0] < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
        after = executions(server, "draft")
    assert after[1] - before[1] == 8
    assert after[0] - before[0] == 8, f"{after[0] - before[0]} executions for 8 requests: requests were batched"


def test_rows_per_pass_asks_a_shipped_model_for_one_pass(server: TritonServer) -> None:
    """The request parameter the gateway sends for a batching job tier: four rows of the
    shipped draft (``batch_rows: 1``) in one pass, so its COMPUTE_NS is one pass's time
    shared (rows 1-3 equal); without it, four calls, four different times."""
    _, apart = infer(server, "draft", [f"an owl {i}" for i in range(4)], 3)
    _, together = infer(server, "draft", [f"an owl {i}" for i in range(4)], 3, {"rows_per_pass": 4})
    assert len(set(together[1:].tolist())) == 1 and together[0] >= together[1]
    assert len(set(apart.tolist())) == 4


def test_the_same_request_to_a_batch_rows_model_gives_the_same_bytes_twice(server: TritonServer) -> None:
    """Six rows run as passes of 4 and 2, every time: identical bytes on a repeat, rows
    in order, and one shared time per pass (the rows of a pass really ran together)."""
    prompts = [f"a lighthouse at dusk, view {i}" for i in range(6)]
    first, spent = infer(server, ROWS_MODEL, prompts, 100)
    again, _ = infer(server, ROWS_MODEL, prompts, 100)
    assert first.shape == (6, 64, 64, 3)
    assert first.tobytes() == again.tobytes()
    assert len({first[i].tobytes() for i in range(6)}) == 6, "each row its own prompt and seed"
    assert spent[1] == spent[2] == spent[3] and spent[5] <= spent[4], "rows 0-3 one pass, 4-5 another"
    # a row stays within one level of the same row made alone (docs/batching.md)
    alone, _ = infer(server, "draft", prompts[:1], 100)
    assert np.abs(first[0].astype(np.int16) - alone[0].astype(np.int16)).max() <= 1
