"""The state's hand-written copy-with-changes keeps every field (apply's hot path)."""

import attrs
import pytest
from immutables import Map

from exo.events.codec import decode, encode
from exo.events.ids import NodeId
from exo.events.state import State, _replace


def test_replace_changes_exactly_the_named_field_of_every_field() -> None:
    base = State(last_index=4, term=2, master=NodeId("node-a"))
    for number, field in enumerate(attrs.fields(State)):
        value = Map({f"key-{number}": number}) if field.type != "int" else 100 + number
        if field.name == "master":
            value = NodeId("node-b")
        replaced = _replace(base, **{field.name: value})
        assert replaced == attrs.evolve(base, **{field.name: value}), field.name
        assert getattr(replaced, field.name) == value
    assert _replace(base) == base


def test_replace_rejects_unknown_names_like_evolve() -> None:
    # A misspelt change must not vanish silently.
    with pytest.raises(TypeError, match="last_indx"):
        _replace(State(), last_indx=3)


def test_a_decoded_state_equals_the_encoded_one() -> None:
    state = _replace(State(), last_index=7, term=3, master=NodeId("node-c"))
    assert decode(encode(state), State) == state
