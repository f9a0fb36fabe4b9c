"""``ModelInferRequest`` / ``ModelInferResponse`` protobufs to and from numpy.

Inputs come either as ``raw_input_contents`` (what ``tritonclient.grpc`` sends: one
blob per input, BYTES elements with 4-byte little-endian lengths) or as typed
``contents``; both go through :func:`image_router.kserve.tensor`, so a shape that does not
fit its data, an unknown datatype or a truncated BYTES element is the same
``InvalidRequest`` naming the tensor as over HTTP. The answer's IMAGE tensor goes back
as raw contents, which is what every Triton client reads.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2 as pb

from image_router.errors import InvalidRequest
from image_router.kserve import tensor

__all__ = ["decode_inputs", "encode_image_response", "parameters_of", "set_parameters"]

_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def parameters_of(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values."""
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def set_parameters(target: Any, values: dict[str, str]) -> None:
    for key, value in values.items():
        target[key].string_param = value


def _from_contents(spec: dict[str, Any], contents: Any, name: str) -> NDArray[Any]:
    datatype = spec["datatype"]
    if datatype == "BYTES":  # bytes, not the JSON protocol's strings: checked here
        shape = spec["shape"]
        if not all(0 <= d < 2**31 for d in shape):
            raise InvalidRequest(f"{name}: shape must be a list of non-negative integers", field=name)
        values = list(contents.bytes_contents)
        count = math.prod(shape)
        if len(values) != count:
            raise InvalidRequest(f"{name}: shape asks for {count} elements, data has {len(values)}", field=name)
        return np.array(values, dtype=object).reshape(shape)
    field = _CONTENTS.get(datatype)
    data = list(getattr(contents, field)) if field is not None else []
    return tensor({**spec, "data": data}, None, name)


def decode_inputs(request: Any) -> dict[str, NDArray[Any]]:
    """The request's input tensors by name; any malformed one is an ``InvalidRequest``."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs", field="raw_input_contents"
        )
    inputs: dict[str, NDArray[Any]] = {}
    for i, spec in enumerate(request.inputs):
        name = spec.name
        if not name:
            raise InvalidRequest(f"inputs[{i}] needs a name", field=f"inputs[{i}]")
        if name in inputs:
            raise InvalidRequest(f"{name}: given twice", field=name)
        fields = {"datatype": spec.datatype, "shape": [int(d) for d in spec.shape]}
        if raw:
            inputs[name] = tensor(fields, memoryview(raw[i]), name)
        else:
            inputs[name] = _from_contents(fields, spec.contents, name)
    return inputs


def encode_image_response(
    model_name: str, version: str, request_id: str, images: NDArray[Any], parameters: dict[str, str]
) -> Any:
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request_id)
    set_parameters(response.parameters, parameters)
    output = response.outputs.add()
    output.name, output.datatype = "IMAGE", "UINT8"
    output.shape.extend(int(d) for d in images.shape)
    response.raw_output_contents.append(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return response
