"""Pure helpers for replication and election: ballots, log segments, common prefixes,
and the deterministic ordering that picks a master among reachable nodes.

A ballot is a term number plus the node that took office in it. Without a quorum, the
two sides of a partition may each start the same term number; the node id keeps the
ballots distinct and totally ordered (as ballot numbers do in Paxos), so "the higher term
wins" always has one answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from attrs import frozen

from exo.events.events import IndexedEvent, MasterElected
from exo.events.ids import NodeId


@frozen(order=True)
class Ballot:
    term: int
    master: NodeId

    def __str__(self) -> str:
        return f"{self.term}/{self.master}"


@frozen
class Segment:
    """A run of log entries written by one master in one term, from `first_index` on."""

    term: int
    master: NodeId
    first_index: int

    @property
    def ballot(self) -> Ballot:
        return Ballot(self.term, self.master)


# A term whose first entry is not `MasterElected` (never written by exo) matches nothing.
UNKNOWN_MASTER = NodeId("?")


def extend_segments(segments: list[Segment], events: Iterable[IndexedEvent]) -> None:
    """Add the segments that `events` (continuing the log) start, in place."""
    for event in events:
        last = segments[-1] if segments else None
        if last is not None and last.term == event.term:
            continue
        master = event.event.node_id if isinstance(event.event, MasterElected) else UNKNOWN_MASTER
        segments.append(Segment(event.term, master, event.index))


class LogEnd(Protocol):
    """Where a log ends: its last index and the term of its last entry."""

    @property
    def last_index(self) -> int: ...
    @property
    def last_term(self) -> int: ...


def grown_by_another_term(
    segments: Sequence[Segment], log: LogEnd, asked_at: int, term: int
) -> bool:
    """Whether a log (its `segments` and end) grew after `asked_at` with
    entries of a term other than `term`: a batch a node indexed as master that reached its
    disk after it stepped down and asked the master of `term` to catch it up. A reply to
    that request no longer continues the log. (Growth from that master's appends is fine.)"""
    if log.last_index <= asked_at:
        return False
    first = [s for s in segments if s.first_index <= asked_at + 1][-1:]
    # Terms never go down along a log: the first and last new entries bound the rest.
    return (first[0].term if first else 0) != term or log.last_term != term


def segments_of(events: Iterable[IndexedEvent]) -> list[Segment]:
    segments: list[Segment] = []
    extend_segments(segments, events)
    return segments


def last_ballot(segments: Sequence[Segment]) -> Ballot | None:
    return segments[-1].ballot if segments else None


def common_prefix(
    mine: Sequence[Segment], my_last: int, theirs: Sequence[Segment], their_last: int
) -> int:
    """The last index at which two logs agree.

    Entries of one ballot at one index are identical in every log (only that ballot's
    master wrote them, once), so comparing segments is enough.
    """
    common = 0
    for position, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            break
        end_a = mine[position + 1].first_index - 1 if position + 1 < len(mine) else my_last
        end_b = theirs[position + 1].first_index - 1 if position + 1 < len(theirs) else their_last
        common = min(end_a, end_b)
        if end_a != end_b:
            break
    return common


def election_key(log_ballot: Ballot | None, last_index: int, node_id: NodeId) -> tuple[object, ...]:
    """Higher is a better master: the most recent log first, then the longest, then the id.

    Preferring the most complete log means a failover keeps every event the old master
    had replicated, without adoption.
    """
    ballot = log_ballot or Ballot(0, NodeId(""))
    return (ballot.term, ballot.master, last_index, node_id)
