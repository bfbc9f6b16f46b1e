"""A request body's bytes as JSON, shared by every dialect, and the limits the typed
request models share.

A violation raises `InvalidRequest`, so every dialect can answer it with a 400 in its own
error shape.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from exo.api.backend import InvalidRequest

MAX_STOP_SEQUENCES = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Deepest JSON nesting accepted. The decoder allows what fits under the recursion limit
# where it runs; echoed back, a body that deep can overflow it when the answer is encoded
# deeper in the stack (a 500). No request needs more than a few dozen levels.
MAX_JSON_DEPTH = 512


def invalid(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def decode_json_body(raw: bytes) -> Any:
    """Strict UTF-8 JSON (no NaN/Infinity); raises InvalidRequest with a clear message.

    msgspec parses a body in a fifth of the stdlib's time; a body it refuses goes through
    the stdlib as well, whose errors say where (line, column, byte) and why."""
    try:
        body = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        body = _decode_slowly(raw)
    if _nested_deeper(body, MAX_JSON_DEPTH):
        raise invalid(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.", None)
    return body


_decoder = msgspec.json.Decoder()


def _decode_slowly(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid(f"The request body is not valid UTF-8 (byte {error.start}).", None) from None
    if not text.strip():
        raise invalid("The request body is empty; expected a JSON object.", None)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise invalid(
            f"The request body is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno}).",
            None,
        ) from None
    except (ValueError, RecursionError) as error:
        raise invalid(f"The request body is not valid JSON: {error}.", None) from None


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
