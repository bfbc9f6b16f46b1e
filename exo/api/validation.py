"""Checks on decoded JSON request bodies, shared by every dialect.

Each raises `InvalidRequest` naming the offending field in `param`, so every dialect can
answer a violation with a 400 in its own error shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any

from exo.api.backend import InvalidRequest

MAX_STOP_SEQUENCES = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Deepest JSON nesting accepted. The decoder allows what fits under the recursion limit
# where it runs; echoed back, a body that deep can overflow it when the answer is encoded
# deeper in the stack (a 500). No request needs more than a few dozen levels.
MAX_JSON_DEPTH = 512


def invalid(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def decode_json_body(raw: bytes) -> Any:
    """Strict UTF-8 JSON (no NaN/Infinity); raises InvalidRequest with a clear message."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid(f"The request body is not valid UTF-8 (byte {error.start}).", None) from None
    if not text.strip():
        raise invalid("The request body is empty; expected a JSON object.", None)
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise invalid(
            f"The request body is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno}).",
            None,
        ) from None
    except (ValueError, RecursionError) as error:
        raise invalid(f"The request body is not valid JSON: {error}.", None) from None
    if _nested_deeper(body, MAX_JSON_DEPTH):
        raise invalid(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", None)
    return body


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` deep (walked without recursion)."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend([(c, depth + 1) for c in children if isinstance(c, dict | list)])
    return False


def optional_number(
    body: Mapping[str, Any], name: str, low: float, high: float, *, low_open: bool = False
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    # An integer is finite, and one too large for a float overflows `isfinite`.
    if not is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise invalid(f"'{name}' must be a number in {interval}.", name)
    if value > high or value < low or (low_open and value == low):
        raise invalid(f"'{name}' must be in {interval}; got {value}.", name)
    return float(value)


def optional_positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not is_int(value) or value < 1:
        raise invalid(f"'{name}' must be an integer of at least 1; got {value!r}.", name)
    return value


def parse_stop(
    value: object,
    *,
    name: str = "stop",
    limit: int = MAX_STOP_SEQUENCES,
    allow_string: bool = True,
) -> tuple[str, ...]:
    """OpenAI's `stop` by default; other dialects name their field, cap and shape."""
    if value is None:
        return ()
    if isinstance(value, str) and allow_string:
        value = [value]
    if not isinstance(value, list) or len(value) > limit:
        shape = "a string or a list" if allow_string else "a list"
        raise invalid(f"'{name}' must be {shape} of up to {limit} strings.", name)
    stops: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise invalid(f"Each '{name}' sequence must be a non-empty string.", name)
        stops.append(item)
    return tuple(stops)


def text_parts(value: list[Any], where: str, kinds: Collection[str], refusal: str) -> list[str]:
    """The `text` of each part of a list-valued content; a part of another kind is refused,
    `refusal` saying what the dialect does not support (images, tool results, ...)."""
    texts: list[str] = []
    for j, part in enumerate(value):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            expected = " or ".join(repr(k) for k in kinds)
            raise invalid(
                f"'{at}.type' must be {expected}; got {kind!r} ({refusal}).", f"{at}.type"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid(f"'{at}.text' must be a string.", f"{at}.text")
        texts.append(text)
    return texts
