"""One cattrs converter for every record that crosses a boundary: log, wire, runner pipe.

Unions are tagged by class name in a `type` field; unknown tags, unknown fields and
wrongly typed scalars are rejected with a `CodecError` that says what and where.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

import cattrs
import msgspec
from cattrs.strategies import configure_tagged_union
from immutables import Map

from exo.events.commands import Command, Envelope
from exo.events.events import AdoptableEvent, Event, IndexedEvent


class CodecError(ValueError):
    """A record that does not decode to the expected type."""


def _strict_scalar(kind: type) -> Any:
    def structure(value: object, _: type) -> object:
        if type(value) is kind:
            return value
        # bool is an int subclass in Python; refuse it where a number is wanted.
        if kind is float and type(value) is int:
            return float(value)  # type: ignore[arg-type]
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")

    return structure


def _scalar_newtype(kind: Any) -> bool:
    """An id type such as `NodeId`: a NewType over a scalar."""
    return getattr(kind, "__supertype__", None) in (int, float, str, bool)


# The unions that travel tagged by class name: the log's own here; the runner pipe's and the
# peer wire's are added by the modules that define them (`register_tagged_union`), so this
# bottom layer names nothing above it.
_TAGGED_UNIONS: list[Any] = [AdoptableEvent, Event, Command]


def register_tagged_union(union: Any) -> None:
    """Encode `union`'s records with their class name in a `type` field, and decode them by it.

    Called once, by the module that defines the union, right after defining it: whoever
    decodes one has imported that module, so the union is known before its first record.
    """
    if union in _TAGGED_UNIONS:
        return
    _TAGGED_UNIONS.append(union)
    for each in (converter, _fast_converter):
        configure_tagged_union(union, each, tag_name="type")


def make_converter(*, detailed: bool = True) -> cattrs.Converter:
    """The converter; `detailed=False` gives the same rules with cheaper bookkeeping,
    which cannot say where a record went wrong (see `from_plain`)."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=detailed)
    for kind in (int, float, str, bool):
        converter.register_structure_hook(kind, _strict_scalar(kind))
    # Ids structure as their scalar directly: cattrs' own NewType hook adds a call per id,
    # a fifth of the time a log record takes to decode.
    converter.register_structure_hook_factory(
        _scalar_newtype, lambda kind: _strict_scalar(kind.__supertype__)
    )
    _register_maps(converter)
    for union in _TAGGED_UNIONS:
        configure_tagged_union(union, converter, tag_name="type")
    return converter


def _register_maps(converter: cattrs.Converter) -> None:
    """The state's persistent maps travel as plain JSON objects (same bytes as a dict)."""

    def is_map(kind: Any) -> bool:
        return kind is Map or getattr(kind, "__origin__", None) is Map

    def unstructure(value: Map[Any, Any]) -> dict[Any, Any]:
        return {key: converter.unstructure(item) for key, item in value.items()}

    def structure(data: object, kind: Any) -> Map[Any, Any]:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        key_type, value_type = getattr(kind, "__args__", (Any, Any))
        return Map(
            {
                converter.structure(key, key_type): converter.structure(item, value_type)
                for key, item in data.items()
            }
        )

    converter.register_unstructure_hook_func(is_map, unstructure)
    converter.register_unstructure_hook(Map, unstructure)
    converter.register_structure_hook_func(is_map, structure)


converter = make_converter()
# Decodes a valid record in 85% of the time (docs/benchmarks.md); an invalid one is decoded
# again by `converter` for the message.
_fast_converter = make_converter(detailed=False)


def to_plain(value: object, as_type: Any = None) -> Any:
    """Plain JSON-ready data for a record; pass the union as `as_type` to get its tag."""
    return converter.unstructure(value, unstructure_as=as_type)


def from_plain(data: object, kind: Any) -> Any:
    """The record of type `kind` that `data` encodes, or `CodecError`."""
    try:
        return _fast_converter.structure(data, kind)
    except Exception:  # the detailed pass below says what is wrong
        pass
    try:
        return converter.structure(data, kind)
    except Exception as exc:
        raise CodecError(f"cannot decode {_type_name(kind)}: {_describe(exc)}") from exc


def _type_name(kind: Any) -> str:
    args = getattr(kind, "__args__", None)
    if args and type(kind).__name__ == "UnionType":
        return " | ".join(getattr(a, "__name__", str(a)) for a in args)
    return str(getattr(kind, "__name__", kind))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in path if p) or '<root>'}: {_describe(err)}"
            for err, path in _flatten(exc, ())
        )
    if isinstance(exc, KeyError):
        return f"unknown type {exc}"
    if isinstance(exc, TypeError | ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _flatten(
    exc: BaseException, path: tuple[object, ...]
) -> list[tuple[BaseException, tuple[object, ...]]]:
    if isinstance(exc, cattrs.BaseValidationError):
        out: list[tuple[BaseException, tuple[object, ...]]] = []
        for sub in exc.exceptions:
            note = next((n for n in getattr(sub, "__notes__", []) if isinstance(n, str)), None)
            out.extend(_flatten(sub, (*path, _note_path(note))))
        return out
    return [(exc, path)]


def _note_path(note: str | None) -> str:
    if note is None:
        return ""
    # cattrs notes look like "Structuring class Foo @ attribute bar" or "@ index 3".
    return note.rsplit(" ", 1)[-1]


def canonical_json(data: object) -> bytes:
    """The one byte encoding used for hashing and the log: sorted keys, no spaces, no NaN."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def encode(value: object, as_type: Any = None) -> bytes:
    return canonical_json(to_plain(value, as_type))


def decode(raw: bytes | str, kind: Any) -> Any:
    return from_plain(parse_json(raw), kind)


def parse_json(raw: bytes | str) -> Any:
    """JSON text as plain data: msgspec parses a log record in a sixth of the stdlib's
    time, integers of any size exactly, and refuses NaN and infinities as JSON does.
    Nesting deeper than the interpreter's recursion limit is refused too: msgspec raises
    `RecursionError` for it, which would escape every reader's `CodecError` handler."""
    try:
        return _json_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise CodecError(f"not JSON: {exc}") from exc
    except RecursionError:
        raise CodecError("not JSON: nested too deeply") from None


_json_decoder = msgspec.json.Decoder()


def frame(body: bytes) -> bytes:
    """One record as it is stored (log, archive, snapshot): `<crc32 hex> <body>\\n`."""
    return b"%08x %s\n" % (zlib.crc32(body), body)


def unframe(line: bytes) -> bytes:
    """The body of one stored record (without its newline) whose checksum verifies;
    `CodecError` with the reason otherwise."""
    head, sep, body = line.partition(b" ")
    if not sep or len(head) != 8:
        raise CodecError("record has no checksum prefix")
    try:
        expected = int(head, 16)
    except ValueError as exc:
        raise CodecError(f"bad checksum field {head!r}") from exc
    if zlib.crc32(body) != expected:
        raise CodecError("checksum mismatch")
    return body


def digest(value: object) -> str:
    """sha256 of the canonical encoding: the state hash and the trace hash."""
    return hashlib.sha256(encode(value)).hexdigest()


__all__ = [
    "CodecError",
    "Envelope",
    "IndexedEvent",
    "canonical_json",
    "converter",
    "decode",
    "digest",
    "encode",
    "frame",
    "from_plain",
    "parse_json",
    "register_tagged_union",
    "to_plain",
    "unframe",
]
