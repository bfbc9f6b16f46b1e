"""What must hold in every simulated run, checked all along and at the end.

- Ballots: no two nodes ever take office with the same ballot (term, node); a log's terms
  never go back.
- Log matching: an entry of one ballot at one index is the same in every log that holds
  it, at every moment (so followers' logs are prefixes of their master's within a term).
- After healing and a quiet period: one master, every node following it, in sync, with
  the same last index and state hash, and no request counted in flight (no request
  outlives its client or the nodes serving it).
- Every client request is answered or failed within its bound; every answer is right.
- A command is decided once: its events are one run of consecutive entries of one term
  in the final log (a retry, however late, is answered, never decided again).
- A decision acknowledged to a client (an instance placed or deleted) is in the final log
  unless every node that ever held it has left the cluster for good (a master cut off
  from all others acknowledges alone: liveness before quorum)
  (its records, or, for those compaction cut off, the entries of the same ballots seen
  in any log while the run went on). A deletion also holds when the final log never
  created the instance (a deposed side's replacement for a node it marked down, which
  adoption drops where the winner runs the model): it is gone, as the client asked. An
  instance whose deletion a client was told of is not in the final state.
- No actor crashed (a crash is a bug, not a fault the simulator injected).
- Two nodes lead at once only on sides of a partition: never both linked (both ways)
  with one node for longer than `SHARED_PEER_FOR`.
- Every placement a master decides fits: no shard takes more than its node had free,
  less what earlier placements not loaded yet had committed.
- Every instance in a master's state is on nodes that state holds as live, or stops
  being there within `STRANDED_FOR` (it is deleted and placed again, or its node
  registers again), while that master hears half the nodes (with fewer it moves nothing).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio
from attrs import define, field

from exo.actors.history import Ballot, segments_of
from exo.actors.placement import shard_bytes, with_commitments
from exo.events.events import (
    IndexedEvent,
    InstanceCreated,
    InstanceDeleted,
    MasterElected,
    SuffixAdopted,
)
from exo.events.facts import Instance
from exo.events.ids import CommandId, InstanceId, NodeId
from exo.events.log import EventLog
from exo.events.state import ApplyError, State, apply
from simulations.cluster import Cluster
from simulations.workload import Workload

# Simulated seconds an instance may sit on a node its master's state has marked down.
STRANDED_FOR = 5.0
# Simulated seconds two masters may both be linked with one node (a failover in progress).
SHARED_PEER_FOR = 6.0


Key = TypeVar("Key")


@define
class _Lasting(Generic[Key]):
    """Conditions that may hold for a moment but must not last: since when each holds."""

    _since: dict[Key, float] = field(factory=dict)

    def lasting(self, holding: set[Key], limit: float) -> list[Key]:
        """Those of `holding` that have held for longer than `limit` simulated seconds."""
        now = trio.current_time()
        for key in [k for k in self._since if k not in holding]:
            del self._since[key]
        for key in holding:
            self._since.setdefault(key, now)
        return sorted((k for k in holding if now - self._since[k] > limit), key=str)


@define
class _LogCursor:
    log_id: int
    truncations: int
    compactions: int = 0
    checked: int = 0
    master: NodeId | None = None
    term: int = 0
    # The state at `checked`, while the cursor has seen every entry from the start.
    state: State | None = field(factory=State)


@define
class Invariants:
    violations: list[str] = field(factory=list)
    _entries: dict[tuple[int, NodeId, int], IndexedEvent] = field(factory=dict)
    # The nodes whose logs held each instance's creation and deletion (any entry).
    _holders: dict[tuple[str, InstanceId], set[NodeId]] = field(factory=dict)
    _cursors: dict[int, _LogCursor] = field(factory=dict)
    _offices: dict[Ballot, NodeId] = field(factory=dict)
    _stranded: _Lasting[tuple[NodeId, InstanceId]] = field(factory=lambda: _Lasting())
    _shared: _Lasting[tuple[NodeId, NodeId, NodeId]] = field(factory=lambda: _Lasting())

    def fail(self, message: str) -> None:
        if message not in self.violations:
            self.violations.append(message)

    def check(self, cluster: Cluster) -> None:
        """The invariants that hold at every moment."""
        for node in cluster.nodes:
            for running in node.incarnations:
                for ballot in running.control.offices:
                    holder = self._offices.setdefault(ballot, node.node_id)
                    if holder != node.node_id:
                        self.fail(f"ballot {ballot} taken by both {holder} and {node.node_id}")
            if node.running is not None:
                self._check_log(node.index, node.node_id, node.running.event_log)
        self._check_stranded(cluster)
        self._check_shared_peers(cluster)
        self._check_intruder(cluster)
        self._check_sealed(cluster)

    def _check_sealed(self, cluster: Cluster) -> None:
        """Every sealed frame opens: the simulated network never damages bytes, so one
        that fails means the two ends' keys or frame counters disagree."""
        for node in cluster.nodes:
            for running in node.incarnations:
                if running.links is not None and running.links.stats.unsealed:
                    self.fail(f"a frame to {node.node_id} failed its integrity check")

    def _check_intruder(self, cluster: Cluster) -> None:
        """A node with the wrong cluster key never gets a link to a member, nor a place
        in any member's state (nor they in its)."""
        intruder = cluster.intruder
        if intruder is None:
            return
        members = {n.node_id for n in cluster.nodes}
        for node in cluster.nodes:
            running = node.running
            if running is None:
                continue
            if intruder.node_id in running.replica.state.nodes:
                self.fail(f"the intruder {intruder.node_id} is in {node.node_id}'s state")
            if running.links is not None and intruder.node_id in running.links.linked():
                self.fail(f"the intruder {intruder.node_id} is linked with {node.node_id}")
        if intruder.running is not None:
            joined = members.intersection(intruder.running.replica.state.nodes)
            if joined:
                self.fail(f"the intruder's state holds members: {sorted(joined)}")

    def _check_shared_peers(self, cluster: Cluster) -> None:
        """Two masters may coexist only on sides that cannot both reach one node."""
        leaders = sorted(
            n.node_id for n in cluster.nodes if n.running is not None and n.running.control.leading
        )
        shared = {
            (first, second, node.node_id)
            for position, first in enumerate(leaders)
            for second in leaders[position + 1 :]
            for node in cluster.nodes
            if node.running is not None
            and node.node_id not in (first, second)
            and cluster.linked(first, node.node_id)
            and cluster.linked(second, node.node_id)
        }
        for first, second, peer in self._shared.lasting(shared, SHARED_PEER_FOR):
            self.fail(
                f"two masters, {first} and {second}, both linked with {peer} "
                f"for over {SHARED_PEER_FOR:g} s"
            )

    def _check_stranded(self, cluster: Cluster) -> None:
        stranded: dict[tuple[NodeId, InstanceId], NodeId] = {}
        for node in cluster.nodes:
            if node.running is None or not node.running.control.leading:
                continue
            if not node.running.control.core.peers.hears_half:
                continue  # it moves nothing: it may be the side cut off (PeerViews.to_mark_down)
            state = node.running.replica.state
            for instance in state.instances.values():
                down = [s.node_id for s in instance.shards if s.node_id not in state.nodes]
                if down:
                    stranded[(node.node_id, instance.instance_id)] = down[0]
        for leader, instance_id in self._stranded.lasting(set(stranded), STRANDED_FOR):
            self.fail(
                f"{leader}: instance {instance_id} sits on {stranded[(leader, instance_id)]}, "
                f"which its state has marked down, for over {STRANDED_FOR:g} s"
            )

    def _check_log(self, index: int, node_id: NodeId, log: EventLog) -> None:
        cursor = self._cursors.get(index)
        if cursor is None or cursor.log_id != id(log) or cursor.truncations != log.truncations:
            cursor = self._cursors[index] = _LogCursor(id(log), log.truncations, log.compactions)
        if cursor.compactions != log.compactions or cursor.checked < log.first_index - 1:
            cursor.compactions = log.compactions
            if cursor.checked < log.first_index - 1:
                # Records cut off (a peer's snapshot installed) before they were checked:
                # carry on from the ballot the log holds at its first record.
                cursor.checked = log.first_index - 1
                cursor.state = None
                opener = _opener_at(log, cursor.checked)
                cursor.term = opener.term if opener is not None else 0
                cursor.master = (
                    opener.event.node_id
                    if opener is not None and isinstance(opener.event, MasterElected)
                    else None
                )
        for event in log.since(cursor.checked):
            if event.term < cursor.term:
                self.fail(f"{node_id}: index {event.index} has term {event.term} < {cursor.term}")
            if event.term != cursor.term:
                cursor.term = event.term
                cursor.master = (
                    event.event.node_id if isinstance(event.event, MasterElected) else None
                )
                if cursor.master is None:
                    self.fail(f"{node_id}: term {event.term} does not start with MasterElected")
            key = (event.term, cursor.master or NodeId("?"), event.index)
            seen = self._entries.setdefault(key, event)
            for kind, instance_id in _instance_decisions(event):
                self._holders.setdefault((kind, instance_id), set()).add(node_id)
            if seen != event:
                self.fail(
                    f"{node_id}: index {event.index} of ballot {event.term}/{cursor.master} "
                    "differs from the same entry in another log"
                )
            if cursor.state is not None:
                if seen is event and isinstance(event.event, InstanceCreated):
                    self._check_fits(cursor.state, event.event.instance)
                try:
                    cursor.state = apply(cursor.state, event)
                except ApplyError:
                    cursor.state = None
            cursor.checked = event.index

    def _check_fits(self, before: State, instance: Instance) -> None:
        """A placement takes no more of a node than its master knew free, less what it had
        committed to instances not loaded yet (adopted placements are not decided here)."""
        view = with_commitments(before)
        for shard in instance.shards:
            need = shard_bytes(before, instance, shard)
            profile = view.nodes.get(shard.node_id)
            if need is not None and profile is not None and need > profile.memory_available:
                self.fail(
                    f"{instance.instance_id} commits {need} bytes on {shard.node_id}, which "
                    f"had {profile.memory_available} free after earlier placements"
                )

    def converged(self, cluster: Cluster) -> str | None:
        """None when the cluster agrees; otherwise what still differs."""
        up = [n for n in cluster.nodes if n.running is not None]
        leaders = [n for n in up if n.running is not None and n.running.control.leading]
        if len(leaders) != 1:
            return f"{len(leaders)} masters: {[n.node_id for n in leaders]}"
        assert leaders[0].running is not None
        ballot = leaders[0].running.control.ballot
        views = []
        for node in up:
            assert node.running is not None
            control, replica = node.running.control, node.running.replica
            views.append((control.ballot == ballot, control.synced, replica.hash()))
            if control.ballot != ballot or not control.synced:
                return f"{node.node_id} follows {control.ballot} (synced {control.synced}), master {ballot}"
        for node in up:
            assert node.running is not None
            state = node.running.replica.state
            if node.node_id not in state.nodes:
                return f"{node.node_id} is not registered"
            # Every client is done: no request may still be counted in flight anywhere.
            if state.in_flight:
                return f"requests still counted in flight: {dict(state.in_flight)}"
            if state.requests:
                return f"request records still open: {sorted(state.requests)}"
            # Local facts in the state match the nodes' reality (re-asserted after loss).
            for instance_id, handle in node.running.runners.handles.items():
                if state.runner_status(instance_id, node.node_id) != handle.status:
                    return f"{node.node_id}: runner of {instance_id} is {handle.status.phase}, state says otherwise"
        hashes = {v[2] for v in views}
        if len(hashes) != 1:
            indexes = [n.running.replica.state.last_index for n in up if n.running is not None]
            return f"state hashes differ (indexes {indexes})"
        return None

    def check_final(self, cluster: Cluster, workload: Workload) -> None:
        for node in cluster.nodes:
            for running in node.incarnations:
                for actor in running.supervisor.statistics():
                    if actor.crashes:
                        self.fail(f"{node.node_id}: actor {actor.name} crashed: {actor.last_error}")
        for result in workload.results:
            if result.outcome in ("hung", "wrong"):
                self.fail(f"client op {result.op} {result.outcome}: {result.detail}")
        leader = next(
            (n for n in cluster.nodes if n.running is not None and n.running.control.leading),
            None,
        )
        if leader is None or leader.running is None:
            return
        created, deleted = decisions(leader.running.event_log, self._entries)
        for problem in decided_twice(history_of(leader.running.event_log, self._entries)):
            self.fail(problem)
        gone = {n.node_id for n in cluster.nodes if n.gone}
        for kind, acked, kept in (
            ("placement", workload.acked_created, created),
            ("deletion", workload.acked_deleted, deleted),
        ):
            for instance_id in acked:
                holders = self._holders.get(
                    ("created" if kind == "placement" else "deleted", instance_id)
                )
                if instance_id in kept or (holders and holders <= gone):
                    # Liveness before quorum: a master cut off from every other node
                    # acknowledges alone; if it then leaves for good, so does the decision.
                    continue
                if kind == "deletion" and instance_id not in created:
                    # The history that won never had the instance (the deposed side's own
                    # replacement for a node it marked down, dropped): it is gone, as asked.
                    continue
                self.fail(f"acknowledged {kind} of {instance_id} is lost")
        final = leader.running.replica.state.instances
        for instance_id in workload.acked_deleted:
            if instance_id in final:
                self.fail(f"acknowledged deletion of {instance_id}, yet it runs at the end")


def history_of(
    log: EventLog, seen: dict[tuple[int, NodeId, int], IndexedEvent] | None = None
) -> list[IndexedEvent]:
    """A log's history as far as it can be told: the entries of its ballots that `seen`
    holds from before its first record (compaction cut them), then its records."""
    history: list[IndexedEvent] = []
    if seen and log.first_index > 1:
        segments = segments_of(log.history())
        for position, segment in enumerate(segments):
            end = (
                segments[position + 1].first_index - 1
                if position + 1 < len(segments)
                else log.last_index
            )
            for index in range(segment.first_index, min(end, log.first_index - 1) + 1):
                entry = seen.get((segment.term, segment.master, index))
                if entry is not None:
                    history.append(entry)
    return history + list(log)


def decisions(
    log: EventLog, seen: dict[tuple[int, NodeId, int], IndexedEvent] | None = None
) -> tuple[set[InstanceId], set[InstanceId]]:
    """Instances created and deleted anywhere in a log's history, adopted ones included,
    and among the decisions its snapshot retained of records cut off."""
    history = history_of(log, seen)
    if log.snapshot is not None:
        history.extend(log.snapshot.decisions)
    found = [decision for indexed in history for decision in _instance_decisions(indexed)]
    created = {instance_id for kind, instance_id in found if kind == "created"}
    deleted = {instance_id for kind, instance_id in found if kind == "deleted"}
    return created, deleted


def decided_twice(history: list[IndexedEvent]) -> list[str]:
    """Commands whose events are not one run of consecutive entries of one term: a retry
    decided again (each command is decided once; its retries are answered, not applied)."""
    runs: dict[CommandId, tuple[int, int]] = {}  # command -> (term, last index)
    problems: list[str] = []
    for entry in history:
        if entry.command_id is None:
            continue
        previous = runs.get(entry.command_id)
        if previous is not None and previous != (entry.term, entry.index - 1):
            problems.append(
                f"command {entry.command_id} decided again at index {entry.index} "
                f"(term {entry.term}) after index {previous[1]} (term {previous[0]})"
            )
        runs[entry.command_id] = (entry.term, entry.index)
    return problems


def _instance_decisions(indexed: IndexedEvent) -> list[tuple[str, InstanceId]]:
    events = (
        [a.event for a in indexed.event.events]
        if isinstance(indexed.event, SuffixAdopted)
        else [indexed.event]
    )
    out: list[tuple[str, InstanceId]] = []
    for event in events:
        if isinstance(event, InstanceCreated):
            out.append(("created", event.instance.instance_id))
        elif isinstance(event, InstanceDeleted):
            out.append(("deleted", event.instance_id))
    return out


def _opener_at(log: EventLog, index: int) -> IndexedEvent | None:
    """The first entry of the term that holds `index` in `log`'s history."""
    opener = None
    for event in log.history():
        if event.index > index:
            break
        if opener is None or event.term != opener.term:
            opener = event
    return opener
