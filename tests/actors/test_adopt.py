from exo.actors.decide import Rejected, adopt, decide
from exo.events.commands import AdoptSuffix, Envelope, MarkNodeDown
from exo.events.events import (
    AdoptedEvent,
    DownloadStatusChanged,
    IndexedEvent,
    InstanceCreated,
    InstanceDeleted,
    MasterElected,
    NodeDown,
    NodeProfiled,
    SuffixAdopted,
)
from exo.events.facts import DownloadStatus, Instance, NodeProfile, Shard
from exo.events.ids import CommandId, InstanceId, ModelId, NodeId
from exo.events.state import State, apply

WINNER, LOSER, OTHER = NodeId("w"), NodeId("l"), NodeId("o")
PROFILE = NodeProfile("h", "linux-x86_64", 2, 16 * 2**30, 8 * 2**30, "cpu", 1, 2)


def instance(name: str) -> Instance:
    return Instance(InstanceId(name), ModelId("m"), "pipeline", (Shard(LOSER, 0, 0, 30),))


def winner_state(*events: object) -> State:
    """The winning master's state; it knows the loser's node (which hosts `instance`)."""
    state = apply(State(), IndexedEvent(1, 3, MasterElected(WINNER, 3)))
    state = apply(state, IndexedEvent(2, 3, NodeProfiled(LOSER, PROFILE)))
    for event in events:
        state = apply(state, IndexedEvent(state.last_index + 1, 3, event))  # type: ignore[arg-type]
    return state


def suffix(*events: object, term: int = 2, first: int = 5) -> tuple[IndexedEvent, ...]:
    return tuple(
        IndexedEvent(first + k, term, e, CommandId(f"c{first + k}"))  # type: ignore[arg-type]
        for k, e in enumerate(events)
    )


def adopt_command(events: tuple[IndexedEvent, ...], to_master: NodeId = WINNER) -> AdoptSuffix:
    return AdoptSuffix(2, LOSER, events, 3, to_master)


def test_client_decisions_are_kept_and_local_facts_left_to_their_owners() -> None:
    events = suffix(
        InstanceCreated(instance("i1")),
        NodeProfiled(LOSER, PROFILE),
        DownloadStatusChanged(LOSER, ModelId("m"), DownloadStatus("complete")),
        InstanceCreated(instance("i2")),
        InstanceDeleted(InstanceId("i2")),
    )
    decision = adopt(winner_state(), adopt_command(events))
    assert not isinstance(decision, Rejected)
    [adopted] = decision
    assert isinstance(adopted, SuffixAdopted)
    assert adopted.through_index == 9
    assert [a.event for a in adopted.events] == [
        InstanceCreated(instance("i1")),
        InstanceCreated(instance("i2")),
        InstanceDeleted(InstanceId("i2")),
    ]
    assert adopted.events[0].command_id == "c5"


def test_adopting_the_same_suffix_again_changes_nothing() -> None:
    events = suffix(InstanceCreated(instance("i1")), InstanceDeleted(InstanceId("i1")))
    first = adopt(winner_state(), adopt_command(events))
    assert not isinstance(first, Rejected)
    state = winner_state(*first)
    assert dict(state.adopted) == {"2/l": 6}
    assert adopt(state, adopt_command(events)) == []
    # A longer copy of the same suffix (from the deposed master itself) adds only the rest.
    longer = suffix(
        InstanceCreated(instance("i1")),
        InstanceDeleted(InstanceId("i1")),
        InstanceCreated(instance("i3")),
    )
    [rest] = adopt(state, adopt_command(longer))  # type: ignore[misc]
    assert isinstance(rest, SuffixAdopted)
    assert [a.event for a in rest.events] == [InstanceCreated(instance("i3"))]


def test_decisions_this_log_already_made_are_not_repeated() -> None:
    """A creation this log made is not made again; a deletion of an instance already gone
    here is kept as a record (it changes nothing now, but holds if a later adoption
    undoes what made it redundant)."""
    state = winner_state(InstanceCreated(instance("i1")))
    events = suffix(InstanceCreated(instance("i1")), InstanceDeleted(InstanceId("gone")))
    [adopted] = adopt(state, adopt_command(events))  # type: ignore[misc]
    assert isinstance(adopted, SuffixAdopted)
    assert [a.event for a in adopted.events] == [InstanceDeleted(InstanceId("gone"))]
    assert winner_state(InstanceCreated(instance("i1")), adopted).instances == state.instances


# The deposed master's failure detector marks OTHER down: deletes the instance on it and
# places it again, in one command; then a client's own placement.
ON_OTHER = Instance(InstanceId("i1"), ModelId("m"), "pipeline", (Shard(OTHER, 0, 0, 30),))
OTHER_MARKED_DOWN = (
    IndexedEvent(5, 2, NodeDown(OTHER), CommandId("mark-o")),
    IndexedEvent(6, 2, InstanceDeleted(InstanceId("i1")), CommandId("mark-o")),
    IndexedEvent(7, 2, InstanceCreated(instance("i1-again")), CommandId("mark-o")),
    IndexedEvent(8, 2, InstanceCreated(instance("asked")), CommandId("c8")),
)


def test_what_the_deposed_side_did_to_a_node_live_here_is_dropped() -> None:
    """The deposed master, cut off, marked OTHER down, which the winner holds live: it
    deleted OTHER's instance, placed it again on itself, all in one command. None of it
    is adopted (the instance still serves here); a client's placement is."""
    state = winner_state(NodeProfiled(OTHER, PROFILE), InstanceCreated(ON_OTHER))
    [adopted] = adopt(state, adopt_command(OTHER_MARKED_DOWN))  # type: ignore[misc]
    assert isinstance(adopted, SuffixAdopted)
    assert [a.event for a in adopted.events] == [InstanceCreated(instance("asked"))]


def test_adoptions_inside_a_suffix_are_carried_on() -> None:
    inner = SuffixAdopted(
        1, OTHER, 4, (AdoptedEvent(CommandId("x"), InstanceCreated(instance("i9"))),)
    )
    [adopted] = adopt(winner_state(), adopt_command(suffix(inner)))  # type: ignore[misc]
    assert isinstance(adopted, SuffixAdopted)
    assert [a.event for a in adopted.events] == [InstanceCreated(instance("i9"))]
    assert adopted.nested == ((1, OTHER, 4),)
    state = winner_state(adopted)
    assert dict(state.adopted) == {"2/l": 5, "1/o": 4}
    assert InstanceId("i9") in state.instances


def test_an_adoption_meant_for_another_master_is_refused() -> None:
    decision = adopt(winner_state(), adopt_command(suffix(InstanceCreated(instance("i1"))), OTHER))
    assert isinstance(decision, Rejected)


def test_only_the_master_marks_nodes_down() -> None:
    state = winner_state(NodeProfiled(LOSER, PROFILE))
    assert decide(state, Envelope(CommandId("a"), WINNER, MarkNodeDown(LOSER))) == [NodeDown(LOSER)]
    refused = decide(state, Envelope(CommandId("b"), OTHER, MarkNodeDown(LOSER)))
    assert isinstance(refused, Rejected)
    assert LOSER not in winner_state(NodeProfiled(LOSER, PROFILE), NodeDown(LOSER)).nodes


def test_an_adopted_instance_on_a_node_marked_down_waits_for_the_failure_detector() -> None:
    """The deposed side placed an instance on a node the winner has since marked down:
    the placement is kept (a client was told of it) and the node is watched again. If it
    does not register again, marking it down deletes the instance, fails the request adopted on it
    and places the instance again on the nodes left, as losing any node does."""
    from exo.actors.decide import node_down
    from exo.events.events import RequestStarted
    from exo.events.facts import RequestRecord
    from exo.events.ids import RequestId
    from exo.models.cards import BUNDLED_MODEL

    stranded = Instance(InstanceId("i1"), BUNDLED_MODEL, "pipeline", (Shard(LOSER, 0, 0, 30),))
    state = winner_state(NodeProfiled(OTHER, PROFILE), NodeDown(LOSER))
    assert state.unregistered() == set()
    request = RequestRecord(RequestId("r1"), InstanceId("i1"), OTHER, BUNDLED_MODEL)
    events = suffix(InstanceCreated(stranded), RequestStarted(request))
    decision = adopt(state, adopt_command(events))
    assert not isinstance(decision, Rejected)
    assert [type(e).__name__ for e in decision] == ["SuffixAdopted"]
    after = apply(state, IndexedEvent(state.last_index + 1, 3, decision[0]))
    assert InstanceId("i1") in after.instances and after.unregistered() == {LOSER}
    lost = node_down(after, CommandId("down-1"), LOSER)
    assert [type(e).__name__ for e in lost] == [
        "NodeDown",
        "RequestFailed",
        "InstanceDeleted",
        "InstanceCreated",
    ]
    replacement = lost[-1]
    assert isinstance(replacement, InstanceCreated)
    assert [s.node_id for s in replacement.instance.shards] == [OTHER]
    for event in lost:
        after = apply(after, IndexedEvent(after.last_index + 1, 3, event))
    assert not after.requests
    assert after.unregistered() == set()
    assert node_down(after, CommandId("down-2"), LOSER) == []  # nothing left to end


def test_a_replacement_the_deposed_side_placed_is_dropped_where_the_model_runs() -> None:
    """The deposed master marked OTHER down: it deleted OTHER's instance and placed it
    again on itself, in one command. Where the winner runs the model already, that
    replacement would be a second instance nobody asked for: dropped. The deletion, and
    a placement a client asked of the deposed side, are adopted."""
    runs_it = winner_state(InstanceCreated(ON_OTHER), InstanceCreated(instance("winners")))
    [adopted] = adopt(runs_it, adopt_command(OTHER_MARKED_DOWN))  # type: ignore[misc]
    assert isinstance(adopted, SuffixAdopted)
    assert [a.event for a in adopted.events] == [
        InstanceDeleted(InstanceId("i1")),
        InstanceCreated(instance("asked")),
    ]
    # Where the model has no other instance here, the replacement stays.
    alone = winner_state(InstanceCreated(ON_OTHER))
    [adopted] = adopt(alone, adopt_command(OTHER_MARKED_DOWN))  # type: ignore[misc]
    assert isinstance(adopted, SuffixAdopted)
    assert [a.event for a in adopted.events] == [
        InstanceDeleted(InstanceId("i1")),
        InstanceCreated(instance("i1-again")),
        InstanceCreated(instance("asked")),
    ]


def test_an_instance_this_log_deleted_is_not_created_again_by_an_adoption() -> None:
    """A branch that never saw the deletion hands over the instance's creation (the same
    placement decided there too): the deletion a client was told of holds."""
    state = winner_state(InstanceCreated(instance("i1")), InstanceDeleted(InstanceId("i1")))
    [adopted] = adopt(state, adopt_command(suffix(InstanceCreated(instance("i1")))))  # type: ignore[misc]
    assert isinstance(adopted, SuffixAdopted) and adopted.events == ()
