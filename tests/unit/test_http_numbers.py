"""Numbers in a JSON body are bounded before Python converts them: a 5,000-digit ``seed``
is a 400 naming ``seed`` (Python refuses to convert over 4,300 digits, and that once
surfaced as a 500 with two tracebacks)."""

from __future__ import annotations

import json

import pytest

from image_router.errors import InvalidRequest
from image_router.http.common import GenerationFields, _bounded_int, parse_json_model, validated


@pytest.mark.parametrize("digits", [70, 5000, 100_000])
def test_an_absurdly_long_number_is_a_400_naming_its_field(digits: int) -> None:
    body = b'{"prompt": "x", "seed": ' + b"9" * digits + b"}"
    with pytest.raises(InvalidRequest) as info:
        parse_json_model(body, GenerationFields, "application/json")
    assert info.value.details["field"] == "seed" and info.value.status == 400


def test_an_ordinary_number_is_read_as_it_is() -> None:
    assert parse_json_model(b'{"prompt": "x", "seed": 12345}', GenerationFields, None).seed == 12345


def _stdlib_reading(body: bytes) -> object:
    """What the stdlib decoder alone made of ``body``: the model, or the error's text."""
    try:
        data = json.loads(body, parse_int=_bounded_int)
    except (ValueError, RecursionError) as exc:
        return f"not JSON: {type(exc).__name__}"
    if not isinstance(data, dict):
        return "not an object"
    try:
        return validated(GenerationFields, data)
    except InvalidRequest as exc:
        return str(exc)


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "x", "seed": 12345, "n": 2}',
        b'{"prompt": "x", "n": 18446744073709551616}',  # 2**64: orjson would read a float
        b'{"prompt": "x", "n": 18446744073709551615}',
        b'{"prompt": "x", "seed": 99999999999999999999999999999999999999999999999999}',
        b'{"prompt": "x", "seed": 1e400}',
        b'{"prompt": "x", "seed": NaN}',
        b'{"prompt": "x", "width": 64.0}',
        b'{"prompt": "x", "prompt": "y"}',
        b'{"prompt": "\\ud800"}',
        b'{"prompt": "x"' + b"," * 3 + b"}",
        b"[" * 2000 + b"]" * 2000,
        b'{"prompt": "a 20-digit 12345678901234567890 in a prompt"}',
        b'{"prompt": "\xff"}',
        b"",
    ],
)
def test_the_fast_reading_gives_what_the_stdlib_reading_gave(body: bytes) -> None:
    expected = _stdlib_reading(body)
    try:
        got: object = parse_json_model(body, GenerationFields, "application/json")
    except InvalidRequest as exc:
        got = str(exc)
    if isinstance(expected, str) and expected.startswith("not JSON"):
        assert isinstance(got, str) and got.startswith("body is not valid JSON"), got
    elif expected == "not an object":
        assert got == "body must be a JSON object"
    else:
        assert got == expected
