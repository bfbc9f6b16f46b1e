"""Hostile input for decoders: arbitrary bytes, and valid encodings damaged as a torn
write, a flipped bit or a peer that lies in well-formed JSON would damage them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

# Deterministic and database-free, so CI reruns the same examples and leaves no files.
FUZZ = settings(max_examples=250, derandomize=True, database=None, deadline=None)

# Values that are wrong wherever they land: wrong types, huge and non-finite-looking
# numbers, unknown tags, nesting past any recursion limit.
_DEEP = 5000
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    -1,
    2**64,
    10**400,
    -(10**400),
    1e308,
    "",
    "\udcff",
    "é" * 3,
    "x" * 10_000,
    [],
    {},
    {"type": "NoSuchRecord"},
    {"type": 7},
    [[[[[]]]]],
]
HOSTILE_TEXTS: list[bytes] = [
    b"[" * _DEEP + b"]" * _DEEP,
    b'{"a":' * _DEEP + b"1" + b"}" * _DEEP,
    b"[" * _DEEP,
    b"9" * 5000,
    b"1e999",
    b"-1e999",
    b"NaN",
    b"Infinity",
    b'"\\ud800"',
    b"\xff\xfe\x00",
    b"",
    b"\n",
]


def _replace_somewhere(data: Any, value: Any, path: list[int]) -> Any:
    """`data` with one node (chosen by `path`, indices into each level) set to `value`."""
    if not path or not isinstance(data, dict | list) or not data:
        return value
    step, rest = path[0], path[1:]
    if isinstance(data, dict):
        key = sorted(data)[step % len(data)]
        return {**data, key: _replace_somewhere(data[key], value, rest)}
    at = step % len(data)
    return [*data[:at], _replace_somewhere(data[at], value, rest), *data[at + 1 :]]


@st.composite
def json_mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` JSON with one value replaced by a hostile or differently typed one, a key
    added, or a `type` tag changed."""
    data = json.loads(valid)
    path = draw(st.lists(st.integers(0, 50), max_size=6))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        value = draw(st.sampled_from(HOSTILE_VALUES) | st.integers() | st.text(max_size=5))
        data = _replace_somewhere(data, value, path)
    elif choice == 1 and isinstance(data, dict):
        data = {**data, draw(st.text(max_size=8)): draw(st.sampled_from(HOSTILE_VALUES))}
    else:
        data = _replace_somewhere(data, {"type": draw(st.text(max_size=12))}, path)
    return json.dumps(data, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def byte_mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    """`valid` with bytes flipped, cut off, inserted or appended."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        match draw(st.integers(0, 3)):
            case 0 if data:
                data[at % len(data)] ^= 1 << draw(st.integers(0, 7))
            case 1:
                del data[at:]
            case 2:
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            case _:
                data += draw(st.sampled_from(HOSTILE_TEXTS) | st.binary(max_size=16))
    return bytes(data)


def hostile(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, hostile JSON texts, and structure-aware damage to `valid`."""
    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from(HOSTILE_TEXTS),
        valid.flatmap(byte_mutations),
        valid.flatmap(json_mutations),
    )
