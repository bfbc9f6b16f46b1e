import json

import pytest
from hypothesis import given

from exo.actors.wire import PeerMessage
from exo.events.codec import CodecError, decode, encode
from exo.events.commands import Command, Envelope
from exo.events.events import Event, IndexedEvent
from tests.events.strategies import commands, envelopes, events, indexed_events, peer_messages


@given(events)
def test_every_event_round_trips(event: Event) -> None:
    assert decode(encode(event, Event), Event) == event


@given(commands)
def test_every_command_round_trips(command: Command) -> None:
    assert decode(encode(command, Command), Command) == command


@given(indexed_events)
def test_indexed_events_round_trip_byte_for_byte(indexed: IndexedEvent) -> None:
    raw = encode(indexed)
    again = decode(raw, IndexedEvent)
    assert again == indexed
    assert encode(again) == raw


@given(envelopes)
def test_envelopes_round_trip(envelope: Envelope) -> None:
    assert decode(encode(envelope), Envelope) == envelope


GOOD = {
    "index": 1,
    "term": 1,
    "command_id": None,
    "event": {"type": "MasterElected", "node_id": "n", "term": 1},
}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["event"].update(type="Nonsense"), "unknown type 'Nonsense'"),
        (lambda d: d.update(extra=1), "Extra fields"),
        (lambda d: d.update(index="1"), "index: expected int, got str"),
        (lambda d: d.update(index=True), "index: expected int, got bool"),
        (lambda d: d["event"].pop("node_id"), "node_id"),
        (lambda d: d["event"].pop("type"), "type"),
    ],
)
def test_malformed_records_are_rejected_with_a_clear_error(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    with pytest.raises(CodecError, match=message):
        decode(json.dumps(data), IndexedEvent)


def test_literal_fields_reject_unknown_values() -> None:
    raw = encode(
        {
            "type": "RunnerStatusChanged",
            "instance_id": "i",
            "node_id": "n",
            "status": {"phase": "dancing", "detail": "", "restarts": 0},
        }
    )
    with pytest.raises(CodecError, match="status"):
        decode(raw, Event)


def test_non_json_is_rejected() -> None:
    with pytest.raises(CodecError, match="not JSON"):
        decode(b'{"index": 1', IndexedEvent)


@given(peer_messages)
def test_every_peer_message_round_trips_byte_for_byte(message: PeerMessage) -> None:
    raw = encode(message, PeerMessage)
    assert decode(raw, PeerMessage) == message
    assert encode(decode(raw, PeerMessage), PeerMessage) == raw


def test_nesting_past_the_recursion_limit_is_a_codec_error() -> None:
    """Found by fuzzing: msgspec raised `RecursionError`, which escaped every reader's
    `CodecError` handler (a peer link's, the runner pipe's both ways, the log's)."""
    with pytest.raises(CodecError, match="nested too deeply"):
        decode(b"[" * 5000 + b"]" * 5000, PeerMessage)
