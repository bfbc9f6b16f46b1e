"""The control actor: heartbeats, failure detection, election and log replication.

Every node runs one. It owns the node's event log: as master it sequences commands into
it (persist, then broadcast); as follower it appends what the master sends, in order,
once each. Liveness comes before quorum (a two-node cluster survives losing either
node), so the two sides of a partition may each elect a master; ballots
(`history.Ballot`) keep their terms distinct, and when they meet the higher ballot wins.
A node whose log diverges from the winner's sends the divergent events to be adopted
(`decide.adopt`), then truncates and catches up, so no node keeps a divergent log and no
decision a client was told about is dropped.

The pure parts (ballots, common prefixes, candidate order, adoption, command decisions)
live in `history.py`, `decide.py` and `master.py`; this module does the I/O and timing.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import groupby

import trio
from attrs import define, frozen

from exo.actors.command_client import CommandClient
from exo.actors.history import (
    Ballot,
    Segment,
    common_prefix,
    election_key,
    extend_segments,
    last_ballot,
    segments_of,
)
from exo.actors.master import MAX_BATCH, REMEMBERED_OUTCOMES, Sequencer
from exo.actors.network import ControlTimings, PeerNetwork
from exo.actors.replica import Replica
from exo.actors.snapshot_transfer import IncomingSnapshot, snapshot_chunks
from exo.actors.wire import (
    Append,
    AppendAck,
    Beat,
    Outcome,
    PeerMessage,
    SnapshotChunk,
    Submit,
    SyncReply,
    SyncRequest,
)
from exo.environment import Environment
from exo.events.commands import AdoptSuffix, CommandOutcome, Envelope, MarkNodeDown
from exo.events.events import (
    AdoptableEvent,
    Event,
    IndexedEvent,
    MasterElected,
    SuffixAdopted,
)
from exo.events.ids import CommandId, NodeId, new_command_id
from exo.events.log import EventLog
from exo.events.snapshot import SnapshotCorrupted

log = logging.getLogger("exo.control")

ADOPTABLE_TYPES: tuple[type, ...] = (
    *AdoptableEvent.__args__,  # type: ignore[attr-defined]
    SuffixAdopted,
)
# Commands queued for the sequencer; beyond this they are dropped and their senders retry.
QUEUE_CAPACITY = 4096
# Events per adoption command, so one message stays small.
ADOPT_CHUNK = 256

Inbound = tuple[NodeId, PeerMessage]


@frozen
class ControlStatistics:
    ballot: Ballot | None
    leading: bool
    synced: bool
    elections: int
    truncated_events: int
    adopted_commands: int


@define
class _PendingAck:
    index: int
    committed_at: float
    origin: NodeId
    outcome: CommandOutcome


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
        self._env = env
        self._log = event_log
        self._replica = replica
        self._network = network
        self._commands = commands
        self._timings = timings
        self._segments: list[Segment] = segments_of(event_log.history())
        self.ballot: Ballot | None = None
        self.leading = False
        self.synced = False
        # Every ballot this node took office with, in order (the simulator checks them).
        self.offices: list[Ballot] = []
        self.truncated_events = 0
        self.adopted_commands = 0
        self._max_term = event_log.last_term
        self._started_at = 0.0
        self._masterless_since: float | None = None
        # (last index, truncations) of the latest catch-up request: only a reply to it
        # can show that the log diverges.
        self._asked: tuple[int, int] | None = None
        self._heard: dict[NodeId, float] = {}
        self._beats: dict[NodeId, Beat] = {}
        self._beat_at: dict[NodeId, float] = {}
        self._followed_at = 0.0
        self._buffer: dict[int, IndexedEvent] = {}
        # The master's last index as its heartbeats tell it.
        self._master_last = 0
        self._sync_at = 0.0
        self._sync_backoff = timings.sync_retry_initial
        self._adopting: trio.CancelScope | None = None
        self._incoming: IncomingSnapshot | None = None
        self.snapshots_installed = 0
        # A log cut back to what verified on open: never lead before a master has been
        # followed to the end, or the damage would be served as the truth.
        self.recovering = event_log.recovered_from is not None
        self._lead_scope: trio.CancelScope | None = None
        self._led_since = 0.0
        self._match: dict[NodeId, int] = {}
        self._acks: deque[_PendingAck] = deque()
        self._marked_down: set[NodeId] = set()
        self._queue_send, self._queue_receive = trio.open_memory_channel[Envelope](QUEUE_CAPACITY)
        self._log_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None

    def statistics(self) -> ControlStatistics:
        return ControlStatistics(
            self.ballot,
            self.leading,
            self.synced,
            len(self.offices),
            self.truncated_events,
            self.adopted_commands,
        )

    # -- commands ------------------------------------------------------------------

    def submit(self, envelope: Envelope) -> None:
        """Route a command to the master: ours to sequence, or sent to the one we follow.

        With no master known it goes nowhere: the client resubmits everything unanswered
        when one takes office.
        """
        if self.leading:
            try:
                self._queue_send.send_nowait(envelope)
            except trio.WouldBlock:
                log.warning("command queue full; %s waits for a retry", envelope.command_id)
        elif self.ballot is not None:
            self._network.send(self.ballot.master, Submit(envelope))

    # -- the loop ------------------------------------------------------------------

    async def run(self, inbox: trio.MemoryReceiveChannel[Inbound]) -> None:
        self._started_at = self._env.now()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                next_tick = self._env.now()
                while True:
                    now = self._env.now()
                    if now >= next_tick:
                        await self._tick(now)
                        next_tick = now + self._timings.heartbeat_interval
                    item: Inbound | None = None
                    with trio.move_on_after(max(0.0, next_tick - self._env.now())):
                        item = await inbox.receive()
                    if item is not None:
                        await self._handle(*item)
        finally:
            self._nursery = None
            self.leading = False
            self._lead_scope = None
            self._adopting = None

    async def _tick(self, now: float) -> None:
        beat = self._beat(now)
        for peer in self._network.peers():
            self._network.send(peer, beat)
        if self.leading:
            self._release_acks(now)
            self._mark_silent_nodes(now)
            if self._refused_by_seeking_peer(now):
                log.info("a peer holds a newer ballot than %s; taking office above it", self.ballot)
                self._take_office(now)
            return
        if not self._master_alive(now):
            self._maybe_elect(now)
            return
        self._masterless_since = None
        behind = not self.synced or self._buffer or self._master_last > self._log.last_index
        if behind and self._adopting is None and now >= self._sync_at:
            self._request_sync(now)

    async def _handle(self, sender: NodeId, message: PeerMessage) -> None:
        now = self._env.now()
        self._heard[sender] = now
        self._marked_down.discard(sender)
        match message:
            case Beat():
                self._on_beat(sender, message, now)
            case Append(ballot=ballot, events=events):
                if sender == ballot.master and self._consider_master(ballot, now):
                    await self._on_append(events)
            case AppendAck(ballot=ballot, last_index=last_index):
                if self.leading and ballot == self.ballot:
                    self._match[sender] = max(self._match.get(sender, 0), last_index)
                    self._release_acks(now)
            case SyncRequest():
                self._on_sync_request(sender, message)
            case SyncReply(ballot=ballot):
                if sender == ballot.master and self._consider_master(ballot, now):
                    await self._on_sync_reply(message, now)
            case Submit(envelope=envelope):
                if self.leading:
                    self.submit(envelope)
            case Outcome(outcome=outcome):
                self._commands.resolve(outcome)

    # -- election ------------------------------------------------------------------

    def _beat(self, now: float) -> Beat:
        # A recovering node does not vouch for its log: it must never outrank a candidate.
        vouched = not self.recovering
        return Beat(
            following=self.ballot,
            leading=self.leading,
            seeking=not self.leading and not self._master_alive(now),
            log_ballot=last_ballot(self._segments) if vouched else None,
            last_index=self._log.last_index if vouched else 0,
            synced=self.synced,
        )

    def _alive(self, peer: NodeId, now: float) -> bool:
        heard = self._heard.get(peer)
        return heard is not None and now - heard < self._timings.failure_timeout

    def _master_alive(self, now: float) -> bool:
        if self.ballot is None:
            return False
        if self.ballot.master == self.node_id:
            return self.leading
        if not self._alive(self.ballot.master, now):
            return False
        # Heard, but no longer leading this ballot (it stepped down, or restarted): a
        # master that only says it is alive must not keep its followers from electing.
        beat = self._beats.get(self.ballot.master)
        heard_at = self._beat_at.get(self.ballot.master, float("-inf"))
        return beat is None or heard_at < self._followed_at or not _resigned(beat, self.ballot)

    def _on_beat(self, sender: NodeId, beat: Beat, now: float) -> None:
        self._beats[sender] = beat
        self._beat_at[sender] = now
        for ballot in (beat.following, beat.log_ballot):
            if ballot is not None:
                self._max_term = max(self._max_term, ballot.term)
        leads = beat.leading and beat.following is not None and beat.following.master == sender
        if leads and beat.following is not None and self._consider_master(beat.following, now):
            # A lost Append shows here: the master's log is longer than ours.
            self._master_last = max(self._master_last, beat.last_index)
        if self.leading and beat.following == self.ballot and beat.synced:
            self._match[sender] = max(self._match.get(sender, 0), beat.last_index)
            self._release_acks(now)
        if (
            self.leading
            and self.ballot is not None
            and _follows_live_master(beat, self.node_id)
            and beat.following is not None
            and beat.following > self.ballot
        ):
            # A peer we reach follows a newer master it hears: two masters must never
            # share a peer (a partition that is not transitive). Step down; the rule in
            # `_maybe_elect` keeps us from standing again while that lasts.
            log.info(
                "stepping down: %s follows %s, newer than %s", sender, beat.following, self.ballot
            )
            self._stop_leading()
            self._follow(beat.following, now)

    def _maybe_elect(self, now: float) -> None:
        if self.recovering:
            return
        peers = self._network.peers()
        for peer in peers:
            beat = self._beats.get(peer)
            if (
                beat is not None
                and self._alive(peer, now)
                and _follows_live_master(beat, self.node_id)
            ):
                # A master is alive, and a peer we reach follows it: standing would make
                # a second master sharing that peer. Wait for it (or for the peer to lose it).
                return
        expecting = self._network.expecting_peers()
        if expecting and now - self._started_at < self._timings.failure_timeout:
            return  # give peers one timeout to be heard from before standing
        if self._masterless_since is None:
            self._masterless_since = now
        # At first, peers that follow the master we lost count as candidates too: they
        # are about to notice. After a timeout only peers that say they seek do, so a
        # peer that still hears the old master (a one-way partition) cannot stall us.
        patient = now - self._masterless_since < self._timings.failure_timeout
        mine = election_key(last_ballot(self._segments), self._log.last_index, self.node_id)
        best = mine
        for peer in peers:
            beat = self._beats.get(peer)
            if beat is None or not self._alive(peer, now):
                continue
            lost_same = beat.following is not None and not self._alive(beat.following.master, now)
            if beat.seeking or (patient and (beat.following is None or lost_same)):
                best = max(best, election_key(beat.log_ballot, beat.last_index, peer))
        if best == mine:
            self._take_office(now)

    def _refused_by_seeking_peer(self, now: float) -> bool:
        """A reachable peer without a master whose log or ballot is newer than ours will
        never follow us; the cure is a ballot above it."""
        assert self.ballot is not None
        for peer, beat in self._beats.items():
            if not beat.seeking or not self._alive(peer, now):
                continue
            if (beat.log_ballot is not None and beat.log_ballot > self.ballot) or (
                beat.following is not None and beat.following > self.ballot
            ):
                return True
        return False

    def _take_office(self, now: float) -> None:
        term = max(self._max_term, self._log.last_term) + 1
        ballot = Ballot(term, self.node_id)
        self._stop_leading()
        self._stop_adopting()
        self.ballot = ballot
        self.leading = True
        self.synced = True
        self._max_term = term
        self._buffer.clear()
        self._match.clear()
        self._acks.clear()
        self._led_since = now
        self._masterless_since = None
        self.offices.append(ballot)
        log.info("taking office: ballot %s at index %d", ballot, self._log.last_index)
        scope = self._lead_scope = trio.CancelScope()
        assert self._nursery is not None
        self._nursery.start_soon(self._lead, ballot, scope)

    def _consider_master(self, ballot: Ballot, now: float) -> bool:
        """Whether to act on a message from the master of `ballot`; follows it if newer.

        Fencing: a ballot older than the one followed, or than the last entry of our own
        log, is ignored.
        """
        self._max_term = max(self._max_term, ballot.term)
        if ballot == self.ballot:
            return True
        floor = last_ballot(self._segments)
        if (self.ballot is not None and ballot < self.ballot) or (
            floor is not None and ballot < floor
        ):
            return False
        self._follow(ballot, now)
        return True

    def _follow(self, ballot: Ballot, now: float) -> None:
        if self.leading:
            log.info("stepping down: %s is newer than %s", ballot, self.ballot)
        self._stop_leading()
        self._stop_adopting()
        self.ballot = ballot
        self._followed_at = now
        self.synced = False
        self._masterless_since = None
        self._master_last = 0
        self._buffer.clear()
        self._sync_backoff = self._timings.sync_retry_initial
        log.info("following %s", ballot)
        self._request_sync(now)
        self._commands.resubmit_all()

    def _stop_leading(self) -> None:
        if self._lead_scope is not None:
            self._lead_scope.cancel()
            self._lead_scope = None
        self.leading = False
        self._acks.clear()
        self._match.clear()

    def _stop_adopting(self) -> None:
        if self._adopting is not None:
            self._adopting.cancel()
            self._adopting = None

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
                    self._answer(envelope.origin, outcome, now)

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
                if self.ballot != ballot or not self.leading:
                    return False
                start = self._log.last_index + 1
                indexed = [
                    IndexedEvent(start + offset, ballot.term, event, command_id)
                    for offset, (event, command_id) in enumerate(events)
                ]
                await self._env.run_blocking(lambda: self._log.append(indexed))
                self._applied(indexed)
                sequencer.remember(indexed)
                await self._maybe_compact()
                message = Append(ballot, tuple(indexed))
                for peer in self._network.peers():
                    self._network.send(peer, message)
        return True

    def _answer(self, origin: NodeId, outcome: CommandOutcome, now: float) -> None:
        """Answer once every live follower holds the command's events, so that a failover
        to any of them keeps what the client was told; a follower that does not confirm
        within the failure timeout is not waited for."""
        if outcome.accepted and self._lagging_followers(outcome.index, now):
            self._acks.append(_PendingAck(outcome.index, now, origin, outcome))
        else:
            self._deliver(origin, outcome)

    def _lagging_followers(self, index: int, now: float) -> bool:
        assert self.ballot is not None
        for peer, beat in self._beats.items():
            following = beat.following == self.ballot or peer in self._match
            if following and self._alive(peer, now) and self._match.get(peer, 0) < index:
                return True
        return False

    def _release_acks(self, now: float) -> None:
        while self._acks:
            ack = self._acks[0]
            timed_out = now - ack.committed_at >= self._timings.failure_timeout
            if not timed_out and self._lagging_followers(ack.index, now):
                # Answers go out in index order; later ones wait behind this one.
                return
            self._acks.popleft()
            self._deliver(ack.origin, ack.outcome)

    def _deliver(self, origin: NodeId, outcome: CommandOutcome) -> None:
        if origin == self.node_id:
            self._commands.resolve(outcome)
        else:
            self._network.send(origin, Outcome(outcome))

    def _mark_silent_nodes(self, now: float) -> None:
        if now - self._led_since < self._timings.failure_timeout:
            return
        for node in sorted(self._replica.state.nodes):
            if node == self.node_id or node in self._marked_down or self._alive(node, now):
                continue
            self._marked_down.add(node)
            log.info("node %s is silent; marking it down", node)
            command_id = new_command_id(self._env.random)
            self.submit(Envelope(command_id, self.node_id, MarkNodeDown(node)))

    def _on_sync_request(self, sender: NodeId, request: SyncRequest) -> None:
        ballot = self.ballot
        if not self.leading or ballot is None or request.ballot != ballot:
            return
        common = common_prefix(
            self._segments, self._log.last_index, request.segments, request.last_index
        )
        if common == request.last_index and common + 1 < self._log.first_index:
            # A prefix of this log, older than its oldest record: send the snapshot.
            for chunk in self._snapshot_chunks(request):
                reply = SyncReply(
                    ballot, request.last_index, common, (), self._log.last_index, chunk
                )
                self._network.send(sender, reply)
            return
        events = tuple(
            self._log.since(common, self._timings.sync_batch, self._timings.sync_batch_bytes)
        )
        self._network.send(
            sender, SyncReply(ballot, request.last_index, common, events, self._log.last_index)
        )

    def _snapshot_chunks(self, request: SyncRequest) -> list[SnapshotChunk]:
        index, timings = self._log.snapshot_index, self._timings
        start, until = request.snapshot_offset, request.snapshot_until
        if request.snapshot_index != index:
            start, until = 0, timings.snapshot_window
        return snapshot_chunks(
            self._log.snapshot_bytes,
            index,
            self._log.snapshot_digest,
            start,
            until,
            chunk=timings.snapshot_chunk,
            window=timings.snapshot_window,
        )

    # -- follower ------------------------------------------------------------------

    def _request_sync(self, now: float) -> None:
        if self.ballot is None or self.leading:
            return
        self._sync_at = now + self._sync_backoff
        self._sync_backoff = min(self._sync_backoff * 2, self._timings.sync_retry_max)
        incoming = self._incoming
        if incoming is None:
            self._send_sync_request(0, 0, self._timings.snapshot_window)
        else:
            self._send_sync_request(
                incoming.index, *incoming.resume_range(self._timings.snapshot_window)
            )

    def _send_sync_request(self, snapshot_index: int, start: int, until: int) -> None:
        assert self.ballot is not None
        if self._incoming is not None:
            self._incoming.asked_until = max(self._incoming.asked_until, until)
        request = SyncRequest(
            self.ballot,
            tuple(self._segments),
            self._log.last_index,
            snapshot_index,
            start,
            until,
        )
        self._asked = (self._log.last_index, self._log.truncations)
        self._network.send(self.ballot.master, request)

    async def _on_append(self, events: tuple[IndexedEvent, ...]) -> None:
        if self.leading or not self.synced:
            return  # a catch-up in progress fetches these itself
        last = self._log.last_index
        for event in events:
            if event.index > last and len(self._buffer) < self._timings.buffer_limit:
                self._buffer[event.index] = event
        await self._drain_buffer()
        self._acknowledge()

    async def _drain_buffer(self) -> None:
        run: list[IndexedEvent] = []
        index = self._log.last_index + 1
        while index in self._buffer:
            run.append(self._buffer.pop(index))
            index += 1
        for stale in [i for i in self._buffer if i < index]:
            del self._buffer[stale]
        if run:
            await self._append_as_follower(run)
        if not self._buffer:
            self._sync_backoff = self._timings.sync_retry_initial

    async def _on_sync_reply(self, reply: SyncReply, now: float) -> None:
        if self.leading or self._adopting is not None:
            return
        if reply.common_index < reply.asked_at:
            if self._asked == (reply.asked_at, self._log.truncations):
                self._start_adoption(reply.common_index)
            return  # else a reply about a log that has been cut back since: ignore
        if reply.snapshot is not None:
            if reply.asked_at == self._log.last_index:
                await self._receive_snapshot(reply.snapshot, now)
            return
        fresh = [e for e in reply.events if e.index > self._log.last_index]
        if fresh and fresh[0].index == self._log.last_index + 1:
            await self._append_as_follower(fresh)
        if self._log.last_index >= reply.last_index:
            if not self.synced:
                log.info("in sync with %s at index %d", self.ballot, self._log.last_index)
            if self.recovering:
                log.warning("recovered the damaged log from %s", self.ballot)
                self.recovering = False
            self.synced = True
            await self._drain_buffer()
            self._acknowledge()
        else:
            self._sync_backoff = self._timings.sync_retry_initial
            self._request_sync(now)

    async def _append_as_follower(self, events: list[IndexedEvent]) -> None:
        async with self._log_lock:
            with trio.CancelScope(shield=True):
                if self.leading:
                    return
                await self._env.run_blocking(lambda: self._log.append(events))
                self._applied(events)
                await self._maybe_compact()

    def _applied(self, events: list[IndexedEvent]) -> None:
        self._replica.apply_batch(events)
        extend_segments(self._segments, events)

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

    async def _receive_snapshot(self, chunk: SnapshotChunk, now: float) -> None:
        """Gather the master's snapshot, asking for more while it streams in; once whole
        and verified, start over from it and ask for the tail."""
        window = self._timings.snapshot_window
        incoming = self._incoming
        if incoming is None or not incoming.matches(chunk):
            # The first request of a catch-up, or one after the master's snapshot moved
            # on, asked for a window from the start.
            incoming = self._incoming = IncomingSnapshot.starting_with(chunk, window)
        try:
            grew = incoming.add(chunk)
        except SnapshotCorrupted as exc:
            log.warning("dropping a snapshot chunk from %s: %s", self.ballot, exc)
            return
        if not grew:
            return  # a duplicate, or early: the sync timer asks again if one is lost
        self._sync_backoff = self._timings.sync_retry_initial
        self._sync_at = now + self._sync_backoff  # progress: no stall to repair
        if not incoming.complete:
            more = incoming.next_range(window)
            if more is not None:
                self._send_sync_request(incoming.index, *more)
            return
        self._incoming = None
        try:
            snapshot, data = incoming.finish(f"snapshot {chunk.index} from {self.ballot}")
        except SnapshotCorrupted as exc:
            log.warning("refusing the master's snapshot: %s", exc)
            return
        if snapshot.index != chunk.index or snapshot.index <= self._log.last_index:
            return
        async with self._log_lock:
            with trio.CancelScope(shield=True):
                if self.leading:
                    return
                await self._env.run_blocking(lambda: self._log.install(snapshot, data))
                self._segments = segments_of(self._log.history())
                self._replica.reset(snapshot.state)
                self.snapshots_installed += 1
        log.info("installed the master's snapshot at index %d", snapshot.index)
        self._request_sync(now)

    def _acknowledge(self) -> None:
        if self.ballot is not None and not self.leading:
            ack = AppendAck(self.ballot, self._log.last_index)
            self._network.send(self.ballot.master, ack)

    # -- divergence ----------------------------------------------------------------

    def _start_adoption(self, common: int) -> None:
        assert self.ballot is not None and self._nursery is not None
        scope = self._adopting = trio.CancelScope()
        self._nursery.start_soon(self._adopt_then_truncate, self.ballot, common, scope)

    async def _adopt_then_truncate(
        self, ballot: Ballot, common: int, scope: trio.CancelScope
    ) -> None:
        """Hand the events past the common prefix to the master, then cut them off."""
        try:
            await self._adopt_suffix(ballot, common, scope)
        finally:
            if self._adopting is scope:
                self._adopting = None

    async def _adopt_suffix(self, ballot: Ballot, common: int, scope: trio.CancelScope) -> None:
        with scope:
            suffix = self._log.adoptable_since(common)
            log.warning(
                "log diverges from %s after index %d: adopting %d events, then truncating",
                ballot,
                common,
                len(suffix),
            )
            for term, group in groupby(suffix, key=lambda e: e.term):
                events = list(group)
                if not any(isinstance(e.event, ADOPTABLE_TYPES) for e in events):
                    continue
                master = self._master_of_term(term)
                for start in range(0, len(events), ADOPT_CHUNK):
                    chunk = tuple(events[start : start + ADOPT_CHUNK])
                    command = AdoptSuffix(term, master, chunk, ballot.term, ballot.master)
                    outcome = await self._commands.call(command)
                    self.adopted_commands += 1
                    if not outcome.accepted:
                        # Only a master other than `ballot` refuses; this task is being
                        # cancelled, and the suffix stays until the next master adopts it.
                        log.warning("adoption refused: %s", outcome.reason)
                        return
            dropped: list[IndexedEvent] = []
            async with self._log_lock:
                with trio.CancelScope(shield=True):
                    if self.ballot != ballot or self.leading:
                        return
                    dropped = await self._env.run_blocking(lambda: self._log.truncate_after(common))
                    self.truncated_events += len(dropped)
                    self._segments = segments_of(self._log.history())
                    self._replica.reset(self._log.state())
            log.warning("truncated %d divergent events after index %d", len(dropped), common)
            self._sync_backoff = self._timings.sync_retry_initial
            self._request_sync(self._env.now())

    def _master_of_term(self, term: int) -> NodeId:
        for segment in reversed(self._segments):
            if segment.term == term:
                return segment.master
        raise LookupError(f"no segment of term {term}")


def _resigned(beat: Beat, ballot: Ballot) -> bool:
    """The master of `ballot` says it no longer leads it (a beat about an older ballot is
    one sent before it took office, delivered late: it says nothing)."""
    following = beat.following
    if following is None:
        # A node with no ballot restarted, unless this beat left before it took office
        # and arrived late: its log then ends before the ballot (a restarted master's log
        # holds what it wrote as master; a recovering one vouches for none).
        return beat.log_ballot is None or beat.log_ballot >= ballot
    if following > ballot:
        return True
    return following == ballot and not beat.leading


def _follows_live_master(beat: Beat, me: NodeId) -> bool:
    """The peer follows a master other than `me` and hears it (it does not seek)."""
    return (
        beat.following is not None
        and beat.following.master != me
        and not beat.leading
        and not beat.seeking
    )


__all__ = ["Control", "ControlStatistics", "ControlTimings", "Inbound"]
