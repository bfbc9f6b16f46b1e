"""Hypothesis strategies for every record of the core vocabulary."""

from __future__ import annotations

from hypothesis import strategies as st

from exo.actors.wire import PEER_MESSAGE_TYPES
from exo.events.commands import COMMAND_TYPES, Envelope
from exo.events.events import EVENT_TYPES, IndexedEvent

# JSON has no NaN or infinity; the codec refuses them on purpose.
st.register_type_strategy(float, st.floats(allow_nan=False, allow_infinity=False))

events = st.one_of([st.from_type(t) for t in EVENT_TYPES])
commands = st.one_of([st.from_type(t) for t in COMMAND_TYPES])
indexed_events = st.builds(
    IndexedEvent,
    index=st.integers(1, 2**40),
    term=st.integers(0, 2**20),
    event=events,
    command_id=st.none() | st.text(max_size=12),
)
envelopes = st.builds(
    Envelope, command_id=st.text(max_size=12), origin=st.text(max_size=12), command=commands
)

peer_messages = st.one_of([st.from_type(t) for t in PEER_MESSAGE_TYPES])
