"""The replica: applies indexed events in order, once each, and lets tasks wait on the state."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import trio

from exo.events.events import IndexedEvent
from exo.events.state import State, apply, state_hash

log = logging.getLogger("exo.replica")

T = TypeVar("T")

# Applied events kept for watchers that fell behind (`GET /events`): a watcher further
# behind than this gets a fresh snapshot instead.
RECENT_EVENTS = 4096


class Replica:
    def __init__(self, state: State) -> None:
        self.state = state
        self._changed = trio.Event()
        self._hash: tuple[int, str] | None = None
        # Counts `reset`s: a state that went back (a divergent suffix cut off).
        self.resets = 0
        self._recent: deque[IndexedEvent] = deque(maxlen=RECENT_EVENTS)

    def apply_batch(self, events: list[IndexedEvent]) -> None:
        """Apply the events that continue the state; older ones are duplicates and are skipped."""
        before = self.state.last_index
        for event in events:
            if event.index <= self.state.last_index:
                continue
            self.state = apply(self.state, event)
            self._recent.append(event)
        if self.state.last_index != before:
            self._changed.set()
            self._changed = trio.Event()

    def reset(self, state: State) -> None:
        """Replace the state wholesale (after the log was truncated and replayed)."""
        self.state = state
        self._hash = None
        self.resets += 1
        self._recent.clear()
        self._changed.set()
        self._changed = trio.Event()

    def events_after(self, index: int) -> list[IndexedEvent] | None:
        """The events applied after `index`, in order; None when they are no longer all
        kept (or `index` is not a point of this state's history), so a watcher must start
        again from the state itself."""
        last = self.state.last_index
        if index == last:
            return []
        if index > last or not self._recent or self._recent[0].index > index + 1:
            return None
        return [event for event in self._recent if event.index > index]

    def hash(self) -> str:
        """The state hash at the current index, computed once per index."""
        if self._hash is None or self._hash[0] != self.state.last_index:
            self._hash = (self.state.last_index, state_hash(self.state))
        return self._hash[1]

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def wait_until(self, check: Callable[[State], T | None]) -> T:
        """The first non-None `check(state)`, re-checked after each change."""
        while True:
            result = check(self.state)
            if result is not None:
                return result
            await self._changed.wait()
