"""The replica keeps its recent events for watchers (`GET /events`): what was applied
after an index, in order, or None where a watcher must start again from the state (it
fell further behind than the buffer, asked past the end, or the log was cut back)."""

from __future__ import annotations

import pytest

from exo.actors import replica as replica_module
from exo.actors.replica import Replica
from exo.events.events import IndexedEvent, NodeDown
from exo.events.ids import NodeId
from exo.events.state import State


def events(first: int, last: int) -> list[IndexedEvent]:
    return [IndexedEvent(i, 1, NodeDown(NodeId(f"node-{i}"))) for i in range(first, last + 1)]


def test_events_after_an_index_in_order_and_none_where_they_are_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica_module, "RECENT_EVENTS", 5)
    replica = Replica(State())
    replica.apply_batch(events(1, 3))
    assert [e.index for e in replica.events_after(0) or []] == [1, 2, 3]
    assert [e.index for e in replica.events_after(2) or []] == [3]
    assert replica.events_after(3) == []
    assert replica.events_after(4) is None  # past the end
    replica.apply_batch(events(2, 8))  # 2 and 3 again: duplicates, skipped
    assert [e.index for e in replica.events_after(3) or []] == [4, 5, 6, 7, 8]
    assert replica.events_after(2) is None  # 3 is no longer kept
    replica.reset(replica.state)
    assert replica.events_after(5) is None  # after a reset only the state itself is sure
    assert replica.events_after(8) == []
