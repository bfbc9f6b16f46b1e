"""Request bodies as typed models: one declaration (a `msgspec.Struct`) is both the check a
route runs and the schema `/openapi.json` publishes, so the two cannot drift apart.

msgspec rather than pydantic: it checks a typical chat body in a quarter of pydantic's
strict-mode time (`benchmarks/request_validation.py`, numbers in docs/benchmarks.md), and
it is already the codec's JSON parser. Rules JSON Schema cannot say are a model's `__post_init__`,
raising `ValueError("`field`: what is wrong")`.

A failed check becomes an `InvalidRequest` that names the field as a path
(`messages[0].role`) and says what was expected in words, for every dialect's error shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Protocol, TypeVar

import msgspec
from msgspec import Meta

from exo.api.backend import InvalidRequest
from exo.models.cards import BUNDLED_MODEL

T = TypeVar("T")
NonEmpty = Annotated[str, Meta(min_length=1)]
# A model's name in a request: the fuzzer and a reader of /openapi.json get a real one.
ModelName = Annotated[
    str, Meta(min_length=1, description="A model id from GET /v1/models.", examples=[BUNDLED_MODEL])
]
Schema = dict[str, Any]
# Text parts of a list-valued `content` are joined with this (as vLLM and llama.cpp do).
CONTENT_PART_SEPARATOR = "\n"

_WHERE = re.compile(
    r"^(?P<detail>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.DOTALL
)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]+)`(?P<rest>.*?)(?:, got `(?P<got>[^`]+)`)?$")
_LENGTH = re.compile(r"^ of length (?P<bound>>=|<=) (?P<count>\d+)$")
_OWN = re.compile(r"^`(?P<field>[^`]+)`: (?P<detail>.*)$", re.DOTALL)
_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "object": "an object",
    "array": "a list",
    "null": "null",
}
_GOT = {**_WORDS, "bool": "a boolean"}


def convert_body(body: object, kind: type[T], hints: Mapping[str, str] | None = None) -> T:
    """`body` (decoded JSON) as a `kind`, or `InvalidRequest` naming what is wrong.

    `hints` add a dialect's advice to an error by the field's path, indices left out
    (`messages[].role`): what to send instead of what it does not take."""
    try:
        return msgspec.convert(body, kind, strict=True)
    except msgspec.ValidationError as error:
        invalid = invalid_request(error)
        hint = (hints or {}).get(re.sub(r"\[\d+\]", "[]", invalid.param or ""))
        if hint is None:
            raise invalid from None
        raise InvalidRequest(f"{invalid.message} ({hint})", invalid.param) from None


def invalid_request(error: msgspec.ValidationError) -> InvalidRequest:
    """msgspec's message ("Expected `int`, got `str` - at `$.options.seed`") in words, with
    the field's path as the error's `param`. A model's own rule says
    "`field`: must be ..." (read as "'path.field' must be ...") or, capitalised, a whole
    sentence ("`tools`: Two tools are named 'f'.")."""
    where = _WHERE.match(str(error))
    assert where is not None  # the pattern matches any text
    detail, path = where["detail"], (where["path"] or "").removeprefix(".")
    # A map's values are at `path[...]`, its keys "`key` in `path`": both named by the map.
    part = "keys" if where["key"] else "values" if path.endswith("[...]") else ""
    path = path.removesuffix("[...]")
    if (missing := _MISSING.match(detail)) is not None:
        param = _join(path, missing["field"])
        return InvalidRequest(f"'{param}' is required", param)
    if (unknown := _UNKNOWN.match(detail)) is not None:
        param = _join(path, unknown["field"])
        return InvalidRequest(f"Unknown field '{param}'.", param)
    if (own := _OWN.match(detail)) is not None:
        param = _join(path, own["field"])
        said = own["detail"]
        return InvalidRequest(said if said[:1].isupper() else f"'{param}' {said}", param)
    subject = f"'{path}'{f' {part}' if part else ''}" if path else "The request body"
    if (expected := _EXPECTED.match(detail)) is not None:
        phrase = _expected(expected["want"], expected["rest"])
        if not path and phrase == "an object":
            phrase = "a JSON object"
        got = f", got {_words(expected['got'], _GOT)}" if expected["got"] else ""
        return InvalidRequest(f"{subject} must be {phrase}{got}", path or None)
    for prefix in ("Invalid enum value ", "Invalid value "):
        if detail.startswith(prefix):
            return InvalidRequest(
                f"{subject} cannot be {detail.removeprefix(prefix)}", path or None
            )
    if detail == "Number out of range":  # an integer too large for a float
        return InvalidRequest(f"{subject} is a number out of range", path or None)
    return InvalidRequest(f"{subject}: {detail}", path or None)


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _words(types: str, words: dict[str, str] | None = None) -> str:
    words = words or _WORDS
    return " or ".join(words.get(t, t) for t in types.split(" | "))


def _expected(want: str, rest: str) -> str:
    length = _LENGTH.match(rest)
    if length is None or want not in ("str", "array", "object"):
        return _words(want) + rest
    unit = {"str": "characters", "array": "items", "object": "entries"}[want]
    bound, count = length["bound"], int(length["count"])
    if bound == ">=" and count == 1:
        return {"str": "a non-empty string", "array": "a non-empty list"}.get(
            want, "a non-empty object"
        )
    return f"{_words(want)} of {'at least' if bound == '>=' else 'at most'} {count} {unit}"


class _Text(Protocol):
    @property
    def text(self) -> str: ...


def joined_text(content: str | Sequence[_Text] | None) -> str:
    """A `content` that is a string, a list of text parts (joined), or absent ("")."""
    if content is None or isinstance(content, str):
        return content or ""
    return CONTENT_PART_SEPARATOR.join(part.text for part in content)


def refuse_duplicate_names(names: Sequence[str], where: str) -> None:
    """Raise, in a request model's `__post_init__`, when two tools share a name; `where` is
    the name's path, `{i}` standing for the tool's index."""
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"`{where.format(i=i)}`: Two tools are named {name!r}.")


def body_schemas(kinds: Iterable[Any]) -> tuple[dict[Any, Schema], dict[str, Schema]]:
    """Each model's `$ref` into the OpenAPI components, and the components they need."""
    kinds = list(kinds)
    refs, components = msgspec.json.schema_components(
        kinds, ref_template="#/components/schemas/{name}"
    )
    return dict(zip(kinds, refs, strict=True)), components
