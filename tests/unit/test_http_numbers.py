"""Numbers in a JSON body are bounded before Python converts them: a 5,000-digit ``seed``
is a 400 naming ``seed`` (Python refuses to convert over 4,300 digits, and that once
surfaced as a 500 with two tracebacks)."""

from __future__ import annotations

import pytest

from image_router.errors import InvalidRequest
from image_router.http.common import GenerationFields, parse_json_model


@pytest.mark.parametrize("digits", [70, 5000, 100_000])
def test_an_absurdly_long_number_is_a_400_naming_its_field(digits: int) -> None:
    body = b'{"prompt": "x", "seed": ' + b"9" * digits + b"}"
    with pytest.raises(InvalidRequest) as info:
        parse_json_model(body, GenerationFields, "application/json")
    assert info.value.details["field"] == "seed" and info.value.status == 400


def test_an_ordinary_number_is_read_as_it_is() -> None:
    assert parse_json_model(b'{"prompt": "x", "seed": 12345}', GenerationFields, None).seed == 12345
