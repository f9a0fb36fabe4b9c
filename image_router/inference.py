"""What both KServe v2 front doors (HTTP and gRPC) share: an infer request's tensors as
the generation they ask for, its ``priority`` and ``timeout`` parameters, and the tags
that say what served it.

The two edges differ only in framing (a JSON header with binary tails, or protobuf
messages); once their tensors are numpy arrays and their parameters plain values, the
rules here apply to both, so a ``tritonclient.http`` and a ``tritonclient.grpc`` client
sending the same request get the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from numpy.typing import NDArray

from image_router.backends.base import ImageRequest
from image_router.errors import InvalidRequest
from image_router.served import Served

__all__ = [
    "MAX_PROMPT_CHARS",
    "PRIORITY_LEVELS",
    "InferOptions",
    "canary_choice",
    "image_request",
    "infer_options",
    "priority_level",
    "served_parameters",
    "served_tags",
]

MAX_PROMPT_CHARS = 4000  # every API; the models themselves refuse more than 4096 bytes
PRIORITY_LEVELS = 3  # the gateway's admission levels (1 = highest), as routes.yaml's `priority`
_OPTIONAL = {"SEED": "seeds", "STEPS": "steps", "WIDTH": "width", "HEIGHT": "height"}
_RANGES = {"SEED": (-(2**63), 2**63 - 1), "STEPS": (1, 2**31 - 1), "WIDTH": (1, 2**31 - 1), "HEIGHT": (1, 2**31 - 1)}


def _int_input(array: NDArray[Any] | None, name: str) -> NDArray[Any] | None:
    """An optional integer input, within what the model contract's tensor type holds
    (the model itself checks its own, narrower limits)."""
    if array is None:
        return None
    if array.dtype.kind not in "iu" or array.size == 0:
        raise InvalidRequest(f"{name}: expected an integer tensor", field=name)
    low, high = _RANGES[name]
    flat = array.reshape(-1)
    values = flat.tolist()  # a few elements: Python's min and max beat numpy's reductions
    if min(values) < low or max(values) > high:
        raise InvalidRequest(f"{name}: must be between {low} and {high}", field=name)
    return flat


def image_request(inputs: Mapping[str, NDArray[Any]]) -> ImageRequest:
    """The generation the tensors ask for: ``PROMPT`` (BYTES, one image per element),
    optional ``SEED``, ``STEPS``, ``WIDTH``, ``HEIGHT``; anything else is a 400."""
    prompt = inputs.get("PROMPT")
    if prompt is None or prompt.dtype != object or prompt.size == 0:
        raise InvalidRequest("PROMPT: a BYTES input is required", field="PROMPT")
    try:
        prompts = tuple(p.decode("utf-8") for p in prompt.reshape(-1))
    except UnicodeDecodeError:
        raise InvalidRequest("PROMPT: not valid UTF-8", field="PROMPT") from None
    if not all(p.strip() for p in prompts):
        raise InvalidRequest("PROMPT: must not be empty", field="PROMPT")
    if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
        raise InvalidRequest(f"PROMPT: longer than {MAX_PROMPT_CHARS} characters", field="PROMPT")
    unknown = set(inputs) - {"PROMPT", *_OPTIONAL}
    if unknown:
        raise InvalidRequest(f"unknown input {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    values: dict[str, Any] = {}
    for name, attr in _OPTIONAL.items():
        array = _int_input(inputs.get(name), name)
        if array is None:
            continue
        if attr == "seeds":
            seeds = array.tolist() if array.size == len(prompts) else [int(array[0])] * len(prompts)
            values["seeds"] = tuple(int(s) for s in seeds)
        else:
            values[attr] = int(array[0])
    return ImageRequest(prompts=prompts, **values)


@dataclass(frozen=True, slots=True)
class InferOptions:
    """What an infer request's parameters ask of the gateway."""

    priority: int | None = None  # admission level, 1 = highest (None: the route's)
    budget_s: float | None = None  # caps the route's budget (None: the route's)
    intent: str | None = None


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"parameters.{name}: must be a non-negative integer", field=f"parameters.{name}")
    return value


def infer_options(parameters: Mapping[str, Any]) -> InferOptions:
    """``priority`` and ``timeout`` as Triton reads them: priority 0 is the default
    level and a larger number a lower priority (beyond the gateway's levels: its
    lowest); ``timeout`` is in microseconds, 0 for none, and here it caps the route's
    budget, so the answer (downgraded if need be) comes within it. ``intent`` feeds the
    routing rules."""
    priority = budget_s = None
    if "priority" in parameters:
        level = _whole(parameters["priority"], "priority")
        priority = min(level, PRIORITY_LEVELS) if level else None
    if "timeout" in parameters:
        micros = _whole(parameters["timeout"], "timeout")
        budget_s = micros / 1_000_000 if micros else None
    intent = parameters.get("intent")
    return InferOptions(priority, budget_s, intent if isinstance(intent, str) else None)


def canary_choice(value: str | None) -> str | None:
    """``X-Canary: always | never`` (a header, or gRPC metadata): force or avoid the
    canary arm of a split; anything else leaves the split to its weights."""
    value = (value or "").strip().lower()
    return value if value in ("always", "never") else None


def priority_level(value: str | None) -> int | None:
    """``X-Priority``: 1 (highest), 2 or 3."""
    if value is None:
        return None
    if value not in ("1", "2", "3"):
        raise InvalidRequest("X-Priority must be 1 (highest), 2 or 3", field="X-Priority")
    return int(value)


def served_tags(served: Served) -> dict[str, str]:
    """What served a request, as the ``X-Router-*`` tags (HTTP headers, gRPC metadata):
    a dict of its own for the caller; made once per answer (its edge and its access-log
    line both read them)."""
    made: dict[str, str] | None = served.memo.get("tags")
    if made is None:
        made = served.memo["tags"] = _tags(served)
    return dict(made)


def _tags(served: Served) -> dict[str, str]:
    tags = {
        "X-Router-Route": served.route.name,
        "X-Router-Model": served.model_tag,
        "X-Router-Attempts": str(served.attempts),
        "X-Router-Canary": "true" if served.canary else "false",
    }
    if served.fallback:
        tags["X-Router-Fallback"] = ", ".join(f"{m}:{why}" for m, why in served.fallback)
    if served.hedged:
        tags["X-Router-Hedged"] = "true"
    made = served.result.memo.get("upscaled_from")
    if made is not None:
        size = served.result.dimensions()
        tags["X-Router-Upscaled"] = f"{made}->{size[0]}x{size[1]}" if size else made
    if served.cache is not None:
        tags["X-Cache"] = served.cache
        tags["Age"] = str(int(served.age_s))
    if served.tenant is not None:
        tags["X-Router-Tenant"] = served.tenant
    if served.priority is not None:
        tags["X-Router-Priority"] = str(served.priority)
    tags.update(served.limit_headers)
    if served.usage is not None:
        tags["X-Router-Usage"] = served.usage.header()
    return tags


def served_parameters(served: Served) -> dict[str, str]:
    """The same in a KServe answer's ``parameters``: a client that asked for ``auto``
    sees which route, model and version served it without reading headers."""
    params = {
        "router_route": served.route.name,
        "router_model": served.model.name,
        "router_version": served.version,
    }
    if served.fallback:
        params["router_fallback"] = ", ".join(f"{m}:{why}" for m, why in served.fallback)
    if served.cache is not None:
        params["router_cache"] = served.cache
    if served.priority is not None:
        params["router_priority"] = str(served.priority)
    if served.usage is not None:
        params.update(served.usage.parameters())
    return params
