"""Rebuild the state from a log: the debugging tool and the node's start-up path."""

from __future__ import annotations

from collections.abc import Iterable

from exo.events.events import IndexedEvent
from exo.events.state import State, apply


def replay(
    events: Iterable[IndexedEvent], until: int | None = None, start: State | None = None
) -> State:
    """The state after every event up to and including index `until` (all when None),
    from `start` (a snapshot's state; events it already covers are skipped)."""
    state = start if start is not None else State()
    for event in events:
        if event.index <= state.last_index:
            continue
        if until is not None and event.index > until:
            break
        state = apply(state, event)
    return state
