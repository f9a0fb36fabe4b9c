"""The model repository served by a real Triton: every tier, determinism, bad input,
and the local-checkpoint loading path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from image_router.triton import TritonServer
from tests.procs import MODEL_REPOSITORY, serving

pytestmark = pytest.mark.integration

SIZES = {"noop": (8, 8), "draft": (64, 64), "preview": (128, 128), "quality": (256, 256)}


@pytest.fixture(scope="module")
def client(triton: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    """Closed when done: Triton's graceful stop waits up to 10 s for an open connection."""
    client = httpclient.InferenceServerClient(triton.http_url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def loader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpclient.InferenceServerClient]:
    """A Triton of its own (the draft tier) for the tests that load models at run time.
    A model that failed to load keeps a server with strict readiness (Triton's default)
    not ready for good, and neither unloading the name nor loading and unloading it
    again cleared that: on the session's shared server every later test asking
    ``ServerReady`` (the gRPC edge's probes) failed."""
    root = tmp_path_factory.mktemp("loader")
    with serving(MODEL_REPOSITORY, root / "triton.log", ["draft"]) as server:
        client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=120)
        yield client
        client.close()


def _inputs(prompt: bytes | None = b"a red fox", **ints: int) -> list[httpclient.InferInput]:
    out = []
    if prompt is not None:
        p = httpclient.InferInput("PROMPT", [1, 1], "BYTES")
        p.set_data_from_numpy(np.array([[prompt]], dtype=object))
        out.append(p)
    for name, value in ints.items():
        dtype, np_dtype = ("INT64", np.int64) if name == "SEED" else ("INT32", np.int32)
        t = httpclient.InferInput(name, [1, 1], dtype)
        t.set_data_from_numpy(np.array([[value]], dtype=np_dtype))
        out.append(t)
    return out


def _image(client: httpclient.InferenceServerClient, model: str, **kw: int) -> np.ndarray:
    prompt = kw.pop("prompt", b"a red fox")  # type: ignore[call-overload]
    result = client.infer(model, _inputs(prompt, **kw))
    image = result.as_numpy("IMAGE")
    assert image is not None
    return image


@pytest.mark.parametrize("model", ["noop", "draft", "preview", "quality"])
def test_each_model_returns_an_image_of_its_size(client: httpclient.InferenceServerClient, model: str) -> None:
    """Every tier answers the shared contract with uint8 [1, H, W, 3] at its default size."""
    image = _image(client, model, SEED=1)
    h, w = SIZES[model]
    assert image.shape == (1, h, w, 3)
    assert image.dtype == np.uint8
    if model != "noop":
        assert image.std() > 5, "a diffusion image should not be flat"


@pytest.mark.parametrize("model", ["draft", "preview", "quality"])
def test_same_prompt_seed_steps_give_identical_bytes(client: httpclient.InferenceServerClient, model: str) -> None:
    """Determinism: same prompt + seed + steps → byte-identical; another seed or prompt differs."""
    a = _image(client, model, SEED=42, STEPS=2)
    b = _image(client, model, SEED=42, STEPS=2)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != _image(client, model, SEED=43, STEPS=2).tobytes()
    assert a.tobytes() != _image(client, model, SEED=42, STEPS=3).tobytes()
    other_prompt = _image(client, model, prompt=b"a blue whale", SEED=42, STEPS=2)  # type: ignore[arg-type]
    assert a.tobytes() != other_prompt.tobytes(), "the image must depend on the prompt"


def test_concurrent_requests_give_the_same_bytes_as_one_alone(
    client: httpclient.InferenceServerClient, triton: TritonServer
) -> None:
    """The promise covers requests that arrive together and meet in one dynamic batch:
    each is computed on its own, so 6 concurrent identical requests (and 2 with another
    seed between them) give exactly the bytes of the same request sent alone."""
    alone = _image(client, "draft", SEED=7, STEPS=4).tobytes()
    other = _image(client, "draft", SEED=8, STEPS=4).tobytes()
    url = triton.http_url.removeprefix("http://")

    def one(seed: int) -> bytes:
        own = httpclient.InferenceServerClient(url, network_timeout=120)  # not thread-safe: one each
        try:
            image = own.infer("draft", _inputs(b"a red fox", SEED=seed, STEPS=4)).as_numpy("IMAGE")
            assert image is not None
            return bytes(image.tobytes())
        finally:
            own.close()

    seeds = [7, 7, 8, 7, 7, 8, 7, 7]
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(one, seeds))
    assert [r == (alone if s == 7 else other) for r, s in zip(results, seeds, strict=True)] == [True] * len(seeds)


def test_width_height_and_steps_are_honoured(client: httpclient.InferenceServerClient) -> None:
    image = _image(client, "draft", SEED=1, WIDTH=96, HEIGHT=48, STEPS=2)
    assert image.shape == (1, 48, 96, 3)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"prompt": None, "SEED": 1}, "PROMPT: required"),
        ({"prompt": b""}, "PROMPT: must not be empty"),
        ({"prompt": b"\xff\xfe"}, "PROMPT: not valid UTF-8"),
        ({"WIDTH": 100000}, "WIDTH: 100000 is outside"),
        ({"HEIGHT": 60}, "HEIGHT: 60 is not a multiple of 8"),
        ({"STEPS": 0}, "STEPS: 0 is outside"),
        ({"STEPS": 10**6}, "STEPS: 1000000 is outside"),
        ({"SEED": -1}, "SEED: -1 must be"),
    ],
)
def test_bad_input_is_a_400_and_the_model_survives(
    client: httpclient.InferenceServerClient, inputs: dict[str, object], message: str
) -> None:
    """Contract violations are 400s with a message naming the tensor; the model keeps serving."""
    kw = dict(inputs)
    prompt = kw.pop("prompt", b"a red fox")
    with pytest.raises(InferenceServerException) as info:
        client.infer("draft", _inputs(prompt, **kw))  # type: ignore[arg-type]
    assert info.value.status() == "400"
    assert message in info.value.message()
    assert client.is_model_ready("draft")
    assert _image(client, "draft", SEED=1).shape == (1, 64, 64, 3)


def test_local_checkpoint_is_loaded_with_from_pretrained(
    loader: httpclient.InferenceServerClient, tmp_path: Path
) -> None:
    """A checkpoint saved with save_pretrained loads through the `checkpoint` parameter.

    The checkpoint holds the draft preset's seeded weights, so the model loaded from disk
    must reproduce the built-in draft model's image: the loaded model is byte-for-byte
    deterministic itself, and against the built-in model at most a handful of pixels
    differ by one level (tensors loaded from safetensors can take other kernel paths,
    which changes float summation order; a different model would differ everywhere).
    """
    from image_router.pipelines.diffusion import PRESETS, build_random_pipeline

    checkpoint = tmp_path / "tiny-checkpoint"
    build_random_pipeline(PRESETS["draft"]).save_pretrained(checkpoint)
    assert (checkpoint / "model_index.json").is_file()

    config = loader.get_model_config("draft")
    config["name"] = "draft_checkpoint"
    config["parameters"]["checkpoint"] = {"string_value": str(checkpoint)}
    model_py = (MODEL_REPOSITORY / "draft" / "1" / "model.py").read_bytes()
    files = {"file:1/model.py": model_py, "file:warmup/prompt": (MODEL_REPOSITORY / "draft/warmup/prompt").read_bytes()}
    loader.load_model("draft_checkpoint", config=json.dumps(config), files=files)
    try:
        assert loader.is_model_ready("draft_checkpoint")
        loaded = _image(loader, "draft_checkpoint", SEED=7, STEPS=4)
        assert loaded.tobytes() == _image(loader, "draft_checkpoint", SEED=7, STEPS=4).tobytes()
        builtin = _image(loader, "draft", SEED=7, STEPS=4)
        diff = np.abs(loaded.astype(int) - builtin.astype(int))
        assert diff.max() <= 1
        assert (diff > 0).mean() < 0.001
        # image-to-image and inpainting come from the loaded checkpoint too (from_pipe)
        for with_mask in (False, True):
            inputs = _inputs(b"a red fox", SEED=7, STEPS=4)
            picture = httpclient.InferInput("INIT_IMAGE", [1, 64, 64, 3], "UINT8")
            picture.set_data_from_numpy(builtin)
            inputs.append(picture)
            if with_mask:
                mask = httpclient.InferInput("MASK", [1, 64, 64], "UINT8")
                mask.set_data_from_numpy(np.full((1, 64, 64), 255, np.uint8))
                inputs.append(mask)
            edited = [loader.infer(name, inputs).as_numpy("IMAGE") for name in ("draft_checkpoint", "draft")]
            assert edited[0] is not None and edited[1] is not None and edited[0].shape == (1, 64, 64, 3)
            assert np.abs(edited[0].astype(int) - edited[1].astype(int)).max() <= 1
    finally:
        loader.unload_model("draft_checkpoint")


def test_missing_checkpoint_fails_the_load_not_the_server(
    loader: httpclient.InferenceServerClient, tmp_path: Path
) -> None:
    config = loader.get_model_config("draft")
    config["name"] = "draft_missing"
    config["parameters"]["checkpoint"] = {"string_value": str(tmp_path / "nowhere")}
    model_py = (MODEL_REPOSITORY / "draft" / "1" / "model.py").read_bytes()
    with pytest.raises(InferenceServerException, match="does not exist"):
        loader.load_model("draft_missing", config=json.dumps(config), files={"file:1/model.py": model_py})
    assert loader.is_server_live()
    assert loader.is_model_ready("draft")
