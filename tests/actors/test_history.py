from exo.actors.history import (
    Ballot,
    Segment,
    common_prefix,
    election_key,
    last_ballot,
    segments_of,
)
from exo.events.events import IndexedEvent, MasterElected, NodeDown
from exo.events.ids import NodeId

A, B, C = NodeId("a"), NodeId("b"), NodeId("c")


def log_of(*terms: tuple[int, NodeId, int]) -> list[IndexedEvent]:
    """A log with `count` entries per (term, master), each term opened by MasterElected."""
    events: list[IndexedEvent] = []
    for term, master, count in terms:
        for k in range(count):
            event = MasterElected(master, term) if k == 0 else NodeDown(NodeId(f"x{k}"))
            events.append(IndexedEvent(len(events) + 1, term, event))
    return events


def test_segments_start_at_each_term() -> None:
    assert segments_of(log_of((1, A, 3), (2, B, 2))) == [Segment(1, A, 1), Segment(2, B, 4)]
    assert last_ballot(segments_of(log_of((1, A, 3), (2, B, 2)))) == Ballot(2, B)
    assert last_ballot([]) is None


def prefix(mine: list[IndexedEvent], theirs: list[IndexedEvent]) -> int:
    return common_prefix(segments_of(mine), len(mine), segments_of(theirs), len(theirs))


def test_common_prefix() -> None:
    base = log_of((1, A, 5))
    assert prefix(base, base) == 5
    assert prefix(log_of((1, A, 3)), base) == 3  # a prefix
    assert prefix(log_of((1, A, 5), (2, B, 4)), log_of((1, A, 5), (3, C, 2))) == 5
    # Same term number, different masters (the two sides of a partition): they differ
    # from the term's first entry.
    assert prefix(log_of((1, A, 4), (2, B, 3)), log_of((1, A, 4), (2, C, 3))) == 4
    # One side has more of term 1 than the other before the next term started.
    assert prefix(log_of((1, A, 6), (2, B, 2)), log_of((1, A, 4), (2, C, 3))) == 4
    assert prefix([], base) == 0


def test_ballots_order_by_term_then_node() -> None:
    assert Ballot(2, A) > Ballot(1, C)
    assert Ballot(2, B) > Ballot(2, A)


def test_the_most_complete_log_is_the_best_candidate() -> None:
    assert election_key(Ballot(2, A), 10, A) > election_key(Ballot(1, C), 50, C)
    assert election_key(Ballot(2, A), 10, A) > election_key(Ballot(2, A), 9, C)
    assert election_key(Ballot(2, A), 10, C) > election_key(Ballot(2, A), 10, B)
    assert election_key(None, 0, C) < election_key(Ballot(1, A), 1, A)
