"""The control core without a network, a clock or Trio: inputs in, effects out, the log
an in-memory list that the test's driver writes as the shell would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from exo.actors.control_core import ControlCore
from exo.actors.control_effects import (
    Broadcast,
    Effect,
    Persist,
    Resolve,
    ResubmitAll,
    Send,
    StartAdoption,
    StartLeading,
    Steps,
    StopLeading,
    SubmitNew,
    TruncateAfter,
)
from exo.actors.control_sync import ADOPT_CHUNK
from exo.actors.history import Ballot
from exo.actors.network import ControlTimings
from exo.actors.wire import Append, AppendAck, Beat, Outcome, SyncReply, SyncRequest
from exo.events.commands import AdoptSuffix, CommandOutcome, MarkNodeDown
from exo.events.events import IndexedEvent, InstanceDeleted, MasterElected
from exo.events.ids import CommandId, InstanceId, NodeId

ME = NodeId("node-me")
PEER = NodeId("node-peer")
MASTER = NodeId("node-master")
TIMINGS = ControlTimings()
M = TypeVar("M")


class MemoryLog:
    """A `StoredLog` in memory; `drive` writes it as the shell writes the real one."""

    def __init__(self, events: list[IndexedEvent] | None = None) -> None:
        self.events = list(events or [])
        self.truncations = 0
        self.snapshot_index = 0
        self.snapshot_digest = ""
        self.snapshot_bytes = b""
        self.recovered_from: str | None = None

    @property
    def first_index(self) -> int:
        return self.events[0].index if self.events else 1

    @property
    def last_index(self) -> int:
        return self.events[-1].index if self.events else 0

    @property
    def last_term(self) -> int:
        return self.events[-1].term if self.events else 0

    def history(self) -> Iterator[IndexedEvent]:
        return iter(self.events)

    def since(
        self, index: int, limit: int | None = None, max_bytes: int | None = None
    ) -> list[IndexedEvent]:
        later = [e for e in self.events if e.index > index]
        return later if limit is None else later[:limit]

    def adoptable_since(self, index: int) -> list[IndexedEvent]:
        return self.since(index)


def drive(steps: Steps, stored: MemoryLog) -> list[Effect]:
    """Every effect of one step, performing the log's writes before resuming it."""
    effects: list[Effect] = []
    result: object = None
    while True:
        try:
            effect = steps.send(result)
        except StopIteration:
            return effects
        effects.append(effect)
        result = None
        if isinstance(effect, Persist):
            stored.events.extend(effect.events)
        elif isinstance(effect, TruncateAfter):
            result = [e for e in stored.events if e.index > effect.index]
            stored.events = [e for e in stored.events if e.index <= effect.index]
            stored.truncations += 1


def entry(index: int, term: int, master: NodeId = MASTER) -> IndexedEvent:
    if index == 1 or index % 10 == 0:
        return IndexedEvent(index, term, MasterElected(master, term))
    return IndexedEvent(
        index, term, InstanceDeleted(InstanceId(f"i{index}")), CommandId(f"c{index}")
    )


def sends(effects: list[Effect], kind: type[M]) -> list[tuple[NodeId, M]]:
    """The messages of `kind` sent, with their addressees."""
    return [
        (e.to, e.message) for e in effects if isinstance(e, Send) and isinstance(e.message, kind)
    ]


def follower(stored: MemoryLog, ballot: Ballot, now: float = 0.0) -> ControlCore:
    """A core that follows `ballot`, in sync with a master whose log equals `stored`."""
    core = ControlCore(ME, stored, TIMINGS)
    core.started(now)
    drive(
        core.receive(
            ballot.master,
            SyncReply(ballot, stored.last_index, stored.last_index, (), stored.last_index),
            now,
        ),
        stored,
    )
    assert core.ballot == ballot and core.synced
    return core


def test_a_lone_node_takes_office_on_its_first_tick() -> None:
    stored = MemoryLog()
    core = ControlCore(ME, stored, TIMINGS)
    core.started(0.0)
    effects = drive(core.tick(0.0, [], False, []), stored)
    [beat, start] = effects
    assert isinstance(beat, Broadcast) and isinstance(beat.message, Beat)
    assert beat.message.seeking and not beat.message.leading
    assert start == StartLeading(Ballot(1, ME))
    assert core.leading and core.offices == [Ballot(1, ME)]


def test_a_node_that_expects_peers_waits_a_failure_timeout_before_standing() -> None:
    stored = MemoryLog([entry(1, 3)])
    core = ControlCore(ME, stored, TIMINGS)
    core.started(10.0)
    waiting = drive(core.tick(10.0 + TIMINGS.failure_timeout / 2, [], True, []), stored)
    assert not any(isinstance(e, StartLeading) for e in waiting)
    standing = drive(core.tick(10.0 + TIMINGS.failure_timeout, [], True, []), stored)
    # Above every term its log has seen.
    assert StartLeading(Ballot(4, ME)) in standing


def test_a_peer_with_a_longer_log_wins_the_election() -> None:
    stored = MemoryLog([entry(1, 1)])
    core = ControlCore(ME, stored, TIMINGS)
    core.started(0.0)
    drive(core.receive(PEER, Beat(None, False, True, Ballot(1, MASTER), 5, False), 0.0), stored)
    effects = drive(core.tick(0.0, [PEER], False, []), stored)
    assert not any(isinstance(e, StartLeading) for e in effects)
    assert not core.leading


def test_a_follower_acknowledges_only_what_is_written() -> None:
    stored = MemoryLog([entry(1, 1)])
    ballot = Ballot(1, MASTER)
    core = ControlCore(ME, stored, TIMINGS)
    first = drive(core.receive(MASTER, Append(ballot, (entry(2, 1),)), 0.0), stored)
    # A new master: catch up first (the Append is fetched by the catch-up, not taken).
    [(to, request)] = sends(first, SyncRequest)
    assert to == MASTER and request.last_index == 1
    assert ResubmitAll() in first and not any(isinstance(e, Persist) for e in first)
    reply = SyncReply(ballot, 1, 1, (entry(2, 1), entry(3, 1)), 3)
    effects = drive(core.receive(MASTER, reply, 0.1), stored)
    persist = effects.index(Persist((entry(2, 1), entry(3, 1))))
    acks = [
        i
        for i, e in enumerate(effects)
        if isinstance(e, Send) and e.message == AppendAck(ballot, 3)
    ]
    assert acks and acks[0] > persist
    assert core.synced and stored.last_index == 3


def test_appends_past_a_gap_wait_for_it_then_go_to_disk_in_one_write() -> None:
    ballot = Ballot(1, MASTER)
    stored = MemoryLog([entry(1, 1), entry(2, 1)])
    core = follower(stored, ballot)
    ahead = drive(core.receive(MASTER, Append(ballot, (entry(4, 1),)), 0.1), stored)
    assert not any(isinstance(e, Persist) for e in ahead)
    assert sends(ahead, AppendAck) == [(MASTER, AppendAck(ballot, 2))]
    filled = drive(core.receive(MASTER, Append(ballot, (entry(3, 1),)), 0.2), stored)
    assert [e for e in filled if isinstance(e, Persist)] == [Persist((entry(3, 1), entry(4, 1)))]
    assert sends(filled, AppendAck) == [(MASTER, AppendAck(ballot, 4))]


def test_a_master_of_an_older_ballot_is_fenced_off() -> None:
    stored = MemoryLog([entry(1, 2)])
    core = follower(stored, Ballot(2, MASTER))
    stale = Append(Ballot(1, PEER), (entry(2, 1, PEER),))
    assert drive(core.receive(PEER, stale, 0.1), stored) == []
    assert core.ballot == Ballot(2, MASTER) and stored.last_index == 1


def leader_with_follower(stored: MemoryLog) -> tuple[ControlCore, Ballot]:
    """A core that took office at time 0, and PEER following it, holding nothing yet."""
    core = ControlCore(ME, stored, TIMINGS)
    drive(core.tick(0.0, [], False, []), stored)
    ballot = Ballot(1, ME)
    drive(core.receive(PEER, Beat(ballot, False, False, None, 0, True), 0.0), stored)
    return core, ballot


def test_the_master_answers_once_every_live_follower_holds_the_events() -> None:
    stored = MemoryLog()
    core, ballot = leader_with_follower(stored)
    indexed = core.index(ballot, [(InstanceDeleted(InstanceId("i")), CommandId("c"))])
    assert indexed is not None and indexed[0].index == 1
    stored.events.extend(indexed)  # what the shell writes before `committed`
    assert drive(core.committed(ballot, indexed), stored) == [Broadcast(Append(ballot, indexed))]
    outcome = CommandOutcome(CommandId("c"), True, "", 1)
    assert drive(core.answer(PEER, outcome, 0.1), stored) == []  # the follower lacks index 1
    acked = drive(core.receive(PEER, AppendAck(ballot, 1), 0.2), stored)
    assert acked == [Send(PEER, Outcome(outcome))]
    # A refusal decided nothing to wait for.
    refused = CommandOutcome(CommandId("d"), False, "no")
    assert drive(core.answer(ME, refused, 0.3), stored) == [Resolve(refused)]


def test_an_answer_waits_no_longer_than_the_failure_timeout() -> None:
    stored = MemoryLog()
    core, ballot = leader_with_follower(stored)
    outcome = CommandOutcome(CommandId("c"), True, "", 1)
    assert drive(core.answer(ME, outcome, 0.0), stored) == []
    # The follower goes on beating without the events: answered after the timeout.
    drive(core.receive(PEER, Beat(ballot, False, False, None, 0, True), 1.9), stored)
    assert Resolve(outcome) not in drive(core.tick(1.9, [PEER], False, [ME, PEER]), stored)
    assert Resolve(outcome) in drive(core.tick(TIMINGS.failure_timeout, [PEER], False, []), stored)


def test_the_master_marks_a_silent_node_down_once() -> None:
    stored = MemoryLog()
    core = ControlCore(ME, stored, TIMINGS)
    drive(core.tick(0.0, [], False, []), stored)
    later = TIMINGS.failure_timeout
    assert SubmitNew(MarkNodeDown(PEER)) in drive(core.tick(later, [], False, [ME, PEER]), stored)
    assert SubmitNew(MarkNodeDown(PEER)) not in drive(
        core.tick(later + 0.5, [], False, [ME, PEER]), stored
    )


def test_a_master_that_hears_fewer_than_half_the_nodes_marks_nobody_down() -> None:
    """Cut off alone from two others, a master cannot tell whether it or they are lost:
    it marks nobody down. Once it hears one of them (two of three), it marks the other."""
    stored = MemoryLog()
    core = ControlCore(ME, stored, TIMINGS)
    drive(core.tick(0.0, [], False, []), stored)
    assert core.ballot is not None
    later = TIMINGS.failure_timeout
    nodes = [ME, PEER, MASTER]
    effects = drive(core.tick(later, [], False, nodes), stored)
    assert not any(isinstance(e, SubmitNew) for e in effects)
    drive(core.receive(PEER, Beat(core.ballot, False, False, None, 0, True), later), stored)
    effects = drive(core.tick(later + 0.5, [PEER], False, nodes), stored)
    assert [e for e in effects if isinstance(e, SubmitNew)] == [SubmitNew(MarkNodeDown(MASTER))]


def test_an_unregistered_node_holding_a_shard_is_marked_down_if_it_does_not_register() -> None:
    """A shard adopted onto a node the state lacks (marked down while the partition's
    logs were apart): heard, the node has the failure timeout to register again, and is
    marked down once if it does not, though heard (cut off one way, it would never know
    it must); one that registers in time is left alone. A node marked down while silent
    and then given an adopted shard is watched afresh, not taken as marked already."""
    stored = MemoryLog()
    core = ControlCore(ME, stored, TIMINGS)
    drive(core.tick(0.0, [], False, []), stored)
    assert core.ballot is not None
    timeout = TIMINGS.failure_timeout
    effects = drive(core.tick(timeout, [], False, [ME, PEER]), stored)
    assert [e for e in effects if isinstance(e, SubmitNew)] == [SubmitNew(MarkNodeDown(PEER))]
    # PEER left the state; an adoption gives it a shard again while it is still silent.
    effects = drive(core.tick(timeout + 0.5, [], False, [ME], [PEER]), stored)
    assert [e for e in effects if isinstance(e, SubmitNew)] == [SubmitNew(MarkNodeDown(PEER))]

    def marks(now: float, nodes: list[NodeId], unregistered: list[NodeId]) -> list[Effect]:
        beat = Beat(core.ballot, False, False, None, 0, True)
        drive(core.receive(PEER, beat, now), stored)
        drive(core.receive(MASTER, beat, now), stored)
        effects = drive(core.tick(now, [PEER, MASTER], False, nodes, unregistered), stored)
        return [e for e in effects if isinstance(e, SubmitNew)]

    start = timeout + 1.0
    assert marks(start, [ME, PEER], [MASTER]) == []  # heard: given time to register
    assert marks(start + timeout - 0.5, [ME, PEER], [MASTER]) == []
    assert marks(start + timeout, [ME, PEER], [MASTER]) == [SubmitNew(MarkNodeDown(MASTER))]
    assert marks(start + timeout + 0.5, [ME, PEER], [MASTER]) == []  # once
    # Registered in time, a node is not marked.
    later = start + 2 * timeout
    assert marks(later, [ME, MASTER], [PEER]) == []
    assert marks(later + timeout - 0.5, [ME, MASTER, PEER], []) == []
    assert marks(later + 2 * timeout, [ME, MASTER, PEER], []) == []


def test_a_master_steps_down_when_a_peer_follows_a_newer_live_master() -> None:
    stored = MemoryLog()
    core = ControlCore(ME, stored, TIMINGS)
    drive(core.tick(0.0, [], False, []), stored)
    newer = Ballot(2, MASTER)
    effects = drive(core.receive(PEER, Beat(newer, False, False, newer, 3, True), 0.5), stored)
    assert effects[0] == StopLeading()
    assert not core.leading and core.ballot == newer
    assert [to for to, _ in sends(effects, SyncRequest)] == [MASTER]


def test_a_divergent_log_is_adopted_then_truncated() -> None:
    # Our log: term 1 from MASTER, then term 2 in which we led and decided index 3.
    mine = [entry(1, 1), entry(2, 1), IndexedEvent(3, 2, MasterElected(ME, 2))]
    mine.append(IndexedEvent(4, 2, InstanceDeleted(InstanceId("x")), CommandId("x")))
    stored = MemoryLog(mine)
    core = ControlCore(ME, stored, TIMINGS)
    winner = Ballot(3, MASTER)
    drive(core.receive(MASTER, Append(winner, ()), 0.0), stored)
    # The master's log shares only the first two entries.
    effects = drive(core.receive(MASTER, SyncReply(winner, 4, 2, (), 5), 0.1), stored)
    assert effects == [StartAdoption(winner, 2, 1)]
    # While it adopts, the tick asks the master for nothing.
    drive(core.receive(MASTER, Beat(winner, True, False, winner, 5, True), 0.15), stored)
    assert sends(drive(core.tick(0.5, [MASTER], False, []), stored), SyncRequest) == []
    [command] = core.adoption_commands(winner, 2)
    assert command == AdoptSuffix(2, ME, tuple(mine[2:]), 3, MASTER)
    assert core.adopted(CommandOutcome(CommandId("a"), True, "", 6))
    truncated = drive(core.truncate(winner, 2, 0.2), stored)
    assert truncated[0] == TruncateAfter(2) and stored.last_index == 2
    [(_, request)] = sends(truncated, SyncRequest)
    assert request.last_index == 2
    assert core.truncated_events == 2
    core.adoption_ended(1)
    # With the adoption over, the tick repairs a stalled catch-up again.
    drive(core.receive(MASTER, Beat(winner, True, False, winner, 5, True), 1.0), stored)
    assert sends(drive(core.tick(1.0, [MASTER], False, []), stored), SyncRequest)


def test_adoption_commands_never_split_one_commands_events() -> None:
    """A long suffix goes in chunks of about ADOPT_CHUNK events, but one command's run
    (a node marked down, then its instances deleted and placed again) stays whole, so the
    master judges it together."""
    mine = [entry(1, 1), IndexedEvent(2, 2, MasterElected(ME, 2))]
    run = range(ADOPT_CHUNK - 5, ADOPT_CHUNK + 10)  # across the first chunk's boundary
    for index in range(3, ADOPT_CHUNK + 20):
        command = CommandId("mark" if index in run else f"c{index}")
        mine.append(IndexedEvent(index, 2, InstanceDeleted(InstanceId(f"i{index}")), command))
    stored = MemoryLog(mine)
    core = ControlCore(ME, stored, TIMINGS)
    first, second = core.adoption_commands(Ballot(3, MASTER), 1)
    assert first.events + second.events == tuple(mine[1:])
    assert first.events[-1].index == run[-1]
    assert "mark" not in {e.command_id for e in second.events}


def test_a_sync_reply_about_a_log_that_grew_with_another_terms_entries_is_asked_again() -> None:
    """A thawed master's last batch reached its disk after it stepped down and asked the
    new master to catch it up (found between namespaced hosts, SIGSTOP then SIGCONT): the
    reply matched the log as it was when asked, and appending its events after the stale
    ones left a log that differed for good. Such a reply is stale: ask again."""
    stored = MemoryLog([entry(1, 1, ME), entry(2, 1, ME)])
    core = ControlCore(ME, stored, TIMINGS)
    new = Ballot(2, MASTER)
    asked = drive(core.receive(MASTER, Append(new, (entry(10, 2),)), 0.0), stored)
    [(_, request)] = sends(asked, SyncRequest)
    assert request.last_index == 2
    stale = (entry(3, 1, ME), entry(4, 1, ME))  # the old term's batch, written late
    stored.events.extend(stale)
    drive(core.committed(Ballot(1, ME), stale), stored)
    reply = SyncReply(new, 2, 2, (entry(3, 2), entry(4, 2), entry(5, 2)), 5)
    effects = drive(core.receive(MASTER, reply, 0.1), stored)
    assert not any(isinstance(e, Persist) for e in effects)
    assert [r.last_index for _, r in sends(effects, SyncRequest)] == [4]
    assert not core.synced and stored.last_index == 4
