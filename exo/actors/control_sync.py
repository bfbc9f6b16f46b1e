"""What a log hands over when logs meet: the master's answer to a catch-up request, the
appends a follower holds until the gap before them fills, and a divergent follower's
suffix as adoption commands. Pure: reads of the stored log only."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from itertools import groupby

from exo.actors.control_effects import StoredLog
from exo.actors.history import Ballot, Segment, common_prefix
from exo.actors.network import ControlTimings
from exo.actors.snapshot_transfer import snapshot_chunks
from exo.actors.wire import SnapshotChunk, SyncReply, SyncRequest
from exo.events.commands import AdoptSuffix
from exo.events.events import AdoptableEvent, IndexedEvent, SuffixAdopted
from exo.events.ids import NodeId

log = logging.getLogger("exo.control")

ADOPTABLE_TYPES: tuple[type, ...] = (
    *AdoptableEvent.__args__,  # type: ignore[attr-defined]
    SuffixAdopted,
)
# Events per adoption command, so one message stays small.
ADOPT_CHUNK = 256


def sync_reply(
    stored: StoredLog,
    segments: Sequence[Segment],
    ballot: Ballot,
    request: SyncRequest,
    timings: ControlTimings,
) -> list[SyncReply]:
    """The master's replies to a follower's catch-up request: the events after the
    common prefix, or, when the follower's log ends before this log's oldest record, the
    snapshot in chunks."""
    common = common_prefix(segments, stored.last_index, request.segments, request.last_index)
    if common == request.last_index and common + 1 < stored.first_index:
        return [
            SyncReply(ballot, request.last_index, common, (), stored.last_index, chunk)
            for chunk in _snapshot_chunks(stored, request, timings)
        ]
    events = tuple(stored.since(common, timings.sync_batch, timings.sync_batch_bytes))
    return [SyncReply(ballot, request.last_index, common, events, stored.last_index)]


def _snapshot_chunks(
    stored: StoredLog, request: SyncRequest, timings: ControlTimings
) -> list[SnapshotChunk]:
    index = stored.snapshot_index
    start, until = request.snapshot_offset, request.snapshot_until
    if request.snapshot_index != index:
        start, until = 0, timings.snapshot_window
    return snapshot_chunks(
        stored.snapshot_bytes,
        index,
        stored.snapshot_digest,
        start,
        until,
        chunk=timings.snapshot_chunk,
        window=timings.snapshot_window,
    )


class AheadBuffer:
    """Appended events past the end of a follower's log (an earlier Append was lost or is
    late), held until the events before them arrive; at most `limit`, beyond which the
    follower's catch-up fetches them instead."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._events: dict[int, IndexedEvent] = {}

    def __bool__(self) -> bool:
        return bool(self._events)

    def clear(self) -> None:
        self._events.clear()

    def add(self, events: Iterable[IndexedEvent], last_index: int) -> None:
        for event in events:
            if event.index > last_index and len(self._events) < self._limit:
                self._events[event.index] = event

    def take_run(self, last_index: int) -> list[IndexedEvent]:
        """The events that continue a log ending at `last_index`, in order, taken out;
        those the log already holds are dropped."""
        run: list[IndexedEvent] = []
        index = last_index + 1
        while index in self._events:
            run.append(self._events.pop(index))
            index += 1
        for stale in [i for i in self._events if i < index]:
            del self._events[stale]
        return run


def adoption_commands(
    stored: StoredLog, segments: Sequence[Segment], ballot: Ballot, common: int
) -> list[AdoptSuffix]:
    """The commands that hand the master of `ballot` the decisions past `common`: one
    run per term of this log that holds any, in chunks of `ADOPT_CHUNK` events."""
    suffix = stored.adoptable_since(common)
    log.warning(
        "log diverges from %s after index %d: adopting %d events, then truncating",
        ballot,
        common,
        len(suffix),
    )
    commands: list[AdoptSuffix] = []
    for term, group in groupby(suffix, key=lambda e: e.term):
        events = list(group)
        if not any(isinstance(e.event, ADOPTABLE_TYPES) for e in events):
            continue
        master = _master_of_term(segments, term)
        for chunk in _chunks(events):
            commands.append(AdoptSuffix(term, master, chunk, ballot.term, ballot.master))
    return commands


def _chunks(events: list[IndexedEvent]) -> Iterator[tuple[IndexedEvent, ...]]:
    """`events` in runs of about `ADOPT_CHUNK`, never splitting one command's events:
    the master judges what a command did (a node marked down and what followed) whole."""
    chunk: list[IndexedEvent] = []
    for event in events:
        if len(chunk) >= ADOPT_CHUNK and (
            event.command_id is None or event.command_id != chunk[-1].command_id
        ):
            yield tuple(chunk)
            chunk = []
        chunk.append(event)
    if chunk:
        yield tuple(chunk)


def _master_of_term(segments: Sequence[Segment], term: int) -> NodeId:
    for segment in reversed(segments):
        if segment.term == term:
            return segment.master
    raise LookupError(f"no segment of term {term}")
