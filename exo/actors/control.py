"""The control actor: the Trio shell around the control core (`control_core.py`).

Every node runs one. It owns the node's event log. It feeds the core its inputs (ticks
every heartbeat interval, peers' messages, commands) and performs what the core asks,
in order: messages to the network, log writes in a worker thread under the log lock,
the sequencer (as master: commands in, committed events out) and adoptions as tasks.
Everything it decides is in the core; this module only waits, writes and sends.
"""

from __future__ import annotations

import logging

import trio
from attrs import frozen

from exo.actors.command_client import CommandClient
from exo.actors.control_core import ControlCore
from exo.actors.control_effects import (
    Broadcast,
    Effect,
    Enqueue,
    InstallSnapshot,
    Persist,
    Resolve,
    ResubmitAll,
    Send,
    StartAdoption,
    StartLeading,
    Steps,
    StopAdoption,
    StopLeading,
    SubmitNew,
    TruncateAfter,
)
from exo.actors.history import Ballot
from exo.actors.master import MAX_BATCH, REMEMBERED_OUTCOMES, Sequencer
from exo.actors.network import ControlTimings, PeerNetwork
from exo.actors.replica import Replica
from exo.actors.wire import PeerMessage
from exo.environment import Environment
from exo.events.commands import Envelope, RegisterNode
from exo.events.events import Event, MasterElected
from exo.events.ids import CommandId, NodeId, new_command_id
from exo.events.log import EventLog

log = logging.getLogger("exo.control")

# Commands queued for the sequencer; beyond this they are dropped and their senders retry.
QUEUE_CAPACITY = 4096

Inbound = tuple[NodeId, PeerMessage]


@frozen
class ControlStatistics:
    ballot: Ballot | None
    leading: bool
    synced: bool
    elections: int
    truncated_events: int
    adopted_commands: int


class Control:
    def __init__(
        self,
        node_id: NodeId,
        env: Environment,
        event_log: EventLog,
        replica: Replica,
        network: PeerNetwork,
        commands: CommandClient,
        timings: ControlTimings,
    ) -> None:
        self.node_id = node_id
        self.core = ControlCore(node_id, event_log, timings)
        self._env = env
        self._log = event_log
        self._replica = replica
        self._network = network
        self._commands = commands
        self._timings = timings
        self._lead_scope: trio.CancelScope | None = None
        self._adoption_scope: trio.CancelScope | None = None
        self._queue_send, self._queue_receive = trio.open_memory_channel[Envelope](QUEUE_CAPACITY)
        self._log_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    # What the simulator and the metrics read.
    @property
    def ballot(self) -> Ballot | None:
        return self.core.ballot

    @property
    def leading(self) -> bool:
        return self.core.leading

    @property
    def synced(self) -> bool:
        return self.core.synced

    @property
    def offices(self) -> list[Ballot]:
        return self.core.offices

    @property
    def snapshots_installed(self) -> int:
        return self.core.snapshots_installed

    def statistics(self) -> ControlStatistics:
        core = self.core
        return ControlStatistics(
            core.ballot,
            core.leading,
            core.synced,
            len(core.offices),
            core.truncated_events,
            core.adopted_commands,
        )

    def submit(self, envelope: Envelope) -> None:
        """Route a command to the master (see `ControlCore.route`); never blocks."""
        for effect in self.core.route(envelope):
            self._perform_now(effect)

    # -- the loop ------------------------------------------------------------------

    async def run(self, inbox: trio.MemoryReceiveChannel[Inbound]) -> None:
        self.core.started(self._env.now())
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                next_tick = self._env.now()
                while True:
                    now = self._env.now()
                    if now >= next_tick:
                        state = self._replica.state
                        peers = self._network.peers()
                        expecting = self._network.expecting_peers()
                        await self._perform(
                            self.core.tick(now, peers, expecting, state.nodes, state.unregistered())
                        )
                        next_tick = now + self._timings.heartbeat_interval
                    item: Inbound | None = None
                    with trio.move_on_after(max(0.0, next_tick - self._env.now())):
                        item = await inbox.receive()
                    if item is not None:
                        sender, message = item
                        await self._perform(self.core.receive(sender, message, self._env.now()))
        finally:
            self._nursery = None
            self._lead_scope = None
            self._adoption_scope = None
            self.core.stopped()

    # -- effects -------------------------------------------------------------------

    async def _perform(self, steps: Steps) -> None:
        """Drive a core step: disk effects under the log lock, shielded so a write that
        began completes, each resuming the step with its result."""
        result: object = None
        while True:
            try:
                effect = steps.send(result)
            except StopIteration:
                return
            result = None
            match effect:
                case Persist() | InstallSnapshot() | TruncateAfter():
                    async with self._log_lock:
                        with trio.CancelScope(shield=True):
                            result = await self._write(effect)
                case _:
                    self._perform_now(effect)

    async def _write(self, effect: Persist | InstallSnapshot | TruncateAfter) -> object:
        """One change to the log and the replica (the caller holds the lock)."""
        stored, replica = self._log, self._replica
        match effect:
            case Persist(events=events):
                await self._env.run_blocking(lambda: stored.append(events))
                replica.apply_batch(list(events))
                await self._maybe_compact()
                return None
            case InstallSnapshot(snapshot=snapshot, data=data):
                await self._env.run_blocking(lambda: stored.install(snapshot, data))
                replica.reset(snapshot.state)
                return None
            case TruncateAfter(index=index):
                dropped = await self._env.run_blocking(lambda: stored.truncate_after(index))
                replica.reset(stored.state())
                return dropped

    def _perform_now(self, effect: Effect) -> None:
        match effect:
            case Send(to=to, message=message):
                self._network.send(to, message)
            case Broadcast(message=message):
                for peer in self._network.peers():
                    self._network.send(peer, message)
            case Enqueue(envelope=envelope):
                try:
                    self._queue_send.send_nowait(envelope)
                except trio.WouldBlock:
                    log.warning("command queue full; %s waits for a retry", envelope.command_id)
            case SubmitNew(command=command):
                command_id = new_command_id(self._env.random)
                self.submit(Envelope(command_id, self.node_id, command))
            case Resolve(outcome=outcome):
                self._commands.resolve(outcome)
            case ResubmitAll():
                self._commands.resubmit_all()
            case StartLeading(ballot=ballot):
                scope = self._lead_scope = trio.CancelScope()
                assert self._nursery is not None
                self._nursery.start_soon(self._lead, ballot, scope)
            case StopLeading():
                if self._lead_scope is not None:
                    self._lead_scope.cancel()
                    self._lead_scope = None
            case StartAdoption(ballot=ballot, common=common, ticket=ticket):
                scope = self._adoption_scope = trio.CancelScope()
                assert self._nursery is not None
                self._nursery.start_soon(self._adopt, ballot, common, ticket, scope)
            case StopAdoption():
                if self._adoption_scope is not None:
                    self._adoption_scope.cancel()
                    self._adoption_scope = None
            case Persist() | InstallSnapshot() | TruncateAfter():
                raise AssertionError(f"{type(effect).__name__} outside a step that may wait")

    async def _maybe_compact(self) -> None:
        """Snapshot and cut the log every `snapshot_every` events or `snapshot_bytes` of
        records (caller holds the lock)."""
        timings, log_ = self._timings, self._log
        state = self._replica.state
        due_by_count = log_.last_index - log_.snapshot_index >= timings.snapshot_every
        if not due_by_count and log_.bytes_since_snapshot < timings.snapshot_bytes:
            return
        if state.last_index != log_.last_index:
            return  # the replica lags the log only inside an adoption's reset
        cut = await self._env.run_blocking(
            lambda: log_.compact(state, timings.snapshot_keep, timings.snapshot_keep_bytes)
        )
        log.info("snapshot at index %d; %d records cut from the log", state.last_index, cut)

    # -- master --------------------------------------------------------------------

    async def _lead(self, ballot: Ballot, scope: trio.CancelScope) -> None:
        with scope:
            recent = self._log.since(max(0, self._log.last_index - 2 * REMEMBERED_OUTCOMES))
            snapshot = self._log.snapshot
            sequencer = Sequencer(ballot.term, recent, snapshot.commands if snapshot else ())
            await self._commit(
                ballot, [(MasterElected(self.node_id, ballot.term), None)], sequencer
            )
            self._commands.resubmit_all()
            while True:
                batch = [await self._queue_receive.receive()]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._queue_receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                decided = sequencer.decide_batch(self._replica.state, batch)
                if decided.events and not await self._commit(ballot, decided.events, sequencer):
                    return  # deposed before the events were written: answer nothing
                now = self._env.now()
                for envelope, outcome in decided.answers:
                    await self._perform(self.core.answer(envelope.origin, outcome, now))

    async def _commit(
        self,
        ballot: Ballot,
        events: list[tuple[Event, CommandId | None]],
        sequencer: Sequencer,
    ) -> bool:
        """Persist, apply, then broadcast: nothing leaves this node before it is on disk.

        False when this term ended first (nothing was written).
        """
        async with self._log_lock:
            with trio.CancelScope(shield=True):
                indexed = self.core.index(ballot, events)
                if indexed is None:
                    return False
                await self._write(Persist(indexed))
                sequencer.remember(indexed)
                for effect in self.core.committed(ballot, indexed):
                    self._perform_now(effect)
        return True

    # -- divergence ----------------------------------------------------------------

    async def _adopt(
        self, ballot: Ballot, common: int, ticket: int, scope: trio.CancelScope
    ) -> None:
        """Hand the events past the common prefix to the master, then cut them off.

        This node first registers again with the profile its own log holds: the other
        side may have marked it down while the logs were apart, and the master keeps an
        adopted instance only if its nodes are live, so an instance this node placed on
        itself while cut off stays, under the id its client was given."""
        try:
            with scope:
                own = self._replica.state.nodes.get(self.node_id)
                if own is not None:
                    await self._commands.call(RegisterNode(own))
                for command in self.core.adoption_commands(ballot, common):
                    if not self.core.adopted(await self._commands.call(command)):
                        return  # this task is being cancelled
                await self._perform(self.core.truncate(ballot, common, self._env.now()))
        finally:
            self.core.adoption_ended(ticket)
            if self._adoption_scope is scope:
                self._adoption_scope = None


__all__ = ["Control", "ControlStatistics", "ControlTimings", "Inbound"]
