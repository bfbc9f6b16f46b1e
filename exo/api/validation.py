"""Checks on decoded JSON request bodies, shared by every dialect.

Each raises `InvalidRequest` naming the offending field in `param`, so every dialect can
answer a violation with a 400 in its own error shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from exo.api.backend import InvalidRequest

MAX_STOP_SEQUENCES = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise invalid(
            f"The request body is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno}).",
            None,
        ) from None
    except (ValueError, RecursionError) as error:
        raise invalid(f"The request body is not valid JSON: {error}.", None) from None


def optional_number(
    body: Mapping[str, Any], name: str, low: float, high: float, *, low_open: bool = False
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if not is_number(value) or not math.isfinite(value):
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


def parse_stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_STOP_SEQUENCES:
        raise invalid(
            f"'stop' must be a string or a list of up to {MAX_STOP_SEQUENCES} strings.", "stop"
        )
    stops: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item:
            raise invalid("Each 'stop' sequence must be a non-empty string.", "stop")
        stops.append(item)
    return tuple(stops)
