"""Rebuild the state from a log: the debugging tool and the node's start-up path."""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from exo.events.events import IndexedEvent
from exo.events.state import State, apply


def replay(
    events: Iterable[IndexedEvent], until: int | None = None, start: State | None = None
) -> State:
    """The state after every event up to and including index `until` (all when None),
    from `start` (a snapshot's state; events it already covers are skipped)."""
    state = start if start is not None else State()
    with collector_paused():
        for event in events:
            if event.index <= state.last_index:
                continue
            if until is not None and event.index > until:
                break
            state = apply(state, event)
    return state


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while records are decoded or states built in bulk.

    Neither makes cycles, but every full collection walks all the objects made so far: a
    fifth of a 300,000-record restart's time (docs/benchmarks.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
