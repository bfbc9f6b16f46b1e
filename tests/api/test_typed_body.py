"""Typed request bodies: msgspec's checks, said in words with the field's path."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import pytest

from exo.api.backend import InvalidRequest
from exo.api.typed_body import body_schemas, convert_body


class Part(msgspec.Struct, kw_only=True):
    kind: Literal["text", "image"]
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind == "image":
            raise ValueError("`kind`: is 'image', which is not supported")


class Body(msgspec.Struct, kw_only=True):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    parts: Annotated[list[Part], msgspec.Meta(min_length=1)]
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    stream: bool = False
    labels: Annotated[dict[str, str], msgspec.Meta(min_length=1)] | None = None


OK: dict[str, Any] = {"model": "m", "parts": [{"kind": "text", "text": "hi"}]}


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ([1], "The request body must be a JSON object, got a list", None),
        ({"parts": OK["parts"]}, "'model' is required", "model"),
        ({**OK, "model": ""}, "'model' must be a non-empty string", "model"),
        ({**OK, "model": 5}, "'model' must be a string, got an integer", "model"),
        ({**OK, "parts": []}, "'parts' must be a non-empty list", "parts"),
        ({**OK, "parts": [5]}, "'parts[0]' must be an object, got an integer", "parts[0]"),
        ({**OK, "parts": [{}]}, "'parts[0].kind' is required", "parts[0].kind"),
        ({**OK, "parts": [{"kind": "x"}]}, "'parts[0].kind' cannot be 'x'", "parts[0].kind"),
        (
            {**OK, "parts": [{"kind": "image"}]},
            "'parts[0].kind' is 'image', which is not supported",
            "parts[0].kind",
        ),
        ({**OK, "temperature": 3}, "'temperature' must be a number <= 2", "temperature"),
        (
            {**OK, "temperature": "hot"},
            "'temperature' must be a number or null, got a string",
            "temperature",
        ),
        ({**OK, "stream": 1}, "'stream' must be true or false, got an integer", "stream"),
        ({**OK, "stream": None}, "'stream' must be true or false, got null", "stream"),
        ({**OK, "labels": {}}, "'labels' must be a non-empty object", "labels"),
    ],
)
def test_a_bad_body_is_said_in_words_with_the_path_of_the_field(
    body: object, message: str, param: str | None
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert_body(body, Body)
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.param == param


def test_a_good_body_converts_and_unknown_fields_are_ignored() -> None:
    body = convert_body({**OK, "temperature": 1, "extra": {"any": "thing"}}, Body)
    assert body == Body(model="m", parts=[Part(kind="text", text="hi")], temperature=1.0)
    # A bool is not a number, even though Python's bool is an int.
    with pytest.raises(InvalidRequest):
        convert_body({**OK, "temperature": True}, Body)


def test_the_schema_is_the_model() -> None:
    refs, components = body_schemas([Body])
    assert refs[Body] == {"$ref": "#/components/schemas/Body"}
    schema = components["Body"]
    assert schema["required"] == ["model", "parts"]
    assert schema["properties"]["model"] == {"type": "string", "minLength": 1}
    assert schema["properties"]["parts"]["minItems"] == 1
    assert components["Part"]["properties"]["kind"] == {"enum": ["image", "text"]}
