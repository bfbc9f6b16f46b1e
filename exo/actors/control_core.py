"""The control core: failure detection, election, replication, catch-up and adoption as a
state machine without I/O (docs/architecture.md, "Election and replication"). Each input
(a tick, a peer's message, a command to route, a commit) carries the time and is a
generator of effects (`control_effects.py`) that the Trio shell (`control.py`) performs
in order; a step that writes the log resumes once the write is durable, and reads the
stored log as it then is. Pure parts of it: `peer_views.py` (failure detection and
candidates), `held_answers.py`, `control_sync.py`, `history.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Sequence
from typing import cast

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
    StoredLog,
    SubmitNew,
    TruncateAfter,
)
from exo.actors.control_sync import AheadBuffer, adoption_commands, sync_reply
from exo.actors.held_answers import HeldAnswers
from exo.actors.history import (
    Ballot,
    Segment,
    election_key,
    extend_segments,
    grown_by_another_term,
    last_ballot,
    segments_of,
)
from exo.actors.network import ControlTimings
from exo.actors.peer_views import PeerViews, follows_newer_live_master
from exo.actors.snapshot_transfer import IncomingSnapshot
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
from exo.events.commands import AdoptSuffix, CommandOutcome, Envelope, MarkNodeDown
from exo.events.events import Event, IndexedEvent
from exo.events.ids import CommandId, NodeId
from exo.events.snapshot import SnapshotCorrupted

log = logging.getLogger("exo.control")


class ControlCore:
    """One node's view of the election and of replication, driven from one Trio thread."""

    def __init__(self, node_id: NodeId, stored: StoredLog, timings: ControlTimings) -> None:
        self.node_id = node_id
        self._log = stored
        self._timings = timings
        self._segments: list[Segment] = segments_of(stored.history())
        self.ballot: Ballot | None = None
        self.leading = False
        self.synced = False
        # Every ballot this node took office with, in order (the simulator checks them).
        self.offices: list[Ballot] = []
        self.truncated_events = 0
        self.adopted_commands = 0
        self.snapshots_installed = 0
        self._max_term = stored.last_term
        self._started_at = 0.0
        self._masterless_since: float | None = None
        # (last index, truncations) of the latest catch-up request: only a reply to it
        # can show that the log diverges.
        self._asked: tuple[int, int] | None = None
        self.peers = PeerViews(timings.failure_timeout)  # read by the simulator's checks
        self._followed_at = 0.0
        self._buffer = AheadBuffer(timings.buffer_limit)
        # The master's last index as its heartbeats tell it.
        self._master_last = 0
        self._sync_at = 0.0
        self._sync_backoff = timings.sync_retry_initial
        # The ticket of the adoption under way, if one is.
        self._adopting: int | None = None
        self._tickets = 0
        self._incoming: IncomingSnapshot | None = None
        # A log cut back to what verified on open: never lead before a master has been
        # followed to the end, or the damage would be served as the truth.
        self.recovering = stored.recovered_from is not None
        self._led_since = 0.0
        self._answers = HeldAnswers(timings.failure_timeout)

    # -- the shell's calls -----------------------------------------------------------

    def started(self, now: float) -> None:
        """The shell's loop (re)starts: peers get one timeout to be heard from."""
        self._started_at = now

    def stopped(self) -> None:
        """The shell's loop ended, and with it the sequencer and any adoption."""
        self.leading = False
        self._adopting = None

    def route(self, envelope: Envelope) -> Steps:
        """A command to the master: ours to sequence, or sent to the one we follow. With no
        master known it goes nowhere: the client resubmits what is unanswered to the next."""
        if self.leading:
            yield Enqueue(envelope)
        elif self.ballot is not None:
            yield Send(self.ballot.master, Submit(envelope))

    def tick(
        self,
        now: float,
        peers: Sequence[NodeId],
        expecting: bool,
        nodes: Iterable[NodeId],
        unregistered: Iterable[NodeId] = (),
    ) -> Steps:
        """Every heartbeat interval: beat, detect failures, elect, repair a stalled sync.
        `peers`: the network's (`expecting` more); `nodes`: the state's; `unregistered`:
        the nodes its instances hold shards on that it lacks (`State.unregistered`)."""
        yield Broadcast(self._beat(now))
        if self.leading:
            yield from self._release_acks(now)
            if now - self._led_since >= self._timings.failure_timeout:
                for node in self.peers.to_mark_down(nodes, self.node_id, now, unregistered):
                    log.info("node %s is silent or unregistered; marking it down", node)
                    yield SubmitNew(MarkNodeDown(node))
            assert self.ballot is not None
            if self.peers.refused_by_seeking_peer(self.ballot, now):
                log.info("a peer holds a newer ballot than %s; taking office above it", self.ballot)
                yield from self._take_office(now)
            return
        if not self._master_alive(now):
            yield from self._maybe_elect(now, peers, expecting)
            return
        self._masterless_since = None
        behind = not self.synced or self._buffer or self._master_last > self._log.last_index
        if behind and self._adopting is None and now >= self._sync_at:
            yield from self._request_sync(now)

    def receive(self, sender: NodeId, message: PeerMessage, now: float) -> Steps:
        self.peers.heard(sender, now)
        match message:
            case Beat():
                yield from self._on_beat(sender, message, now)
            case Append(ballot=ballot, events=events):
                if sender == ballot.master and (yield from self._consider_master(ballot, now)):
                    yield from self._on_append(events)
            case AppendAck(ballot=ballot, last_index=last_index):
                if self.leading and ballot == self.ballot:
                    self._answers.confirm(sender, last_index)
                    yield from self._release_acks(now)
            case SyncRequest():
                ballot = self.ballot
                if self.leading and ballot is not None and message.ballot == ballot:
                    replies = sync_reply(self._log, self._segments, ballot, message, self._timings)
                    for reply in replies:
                        yield Send(sender, reply)
            case SyncReply(ballot=ballot):
                if sender == ballot.master and (yield from self._consider_master(ballot, now)):
                    yield from self._on_sync_reply(message, now)
            case Submit(envelope=envelope):
                if self.leading:
                    yield from self.route(envelope)
            case Outcome(outcome=outcome):
                yield Resolve(outcome)

    # -- the sequencer's calls ---------------------------------------------------------

    def index(
        self, ballot: Ballot, events: list[tuple[Event, CommandId | None]]
    ) -> tuple[IndexedEvent, ...] | None:
        """The next log entries for a batch the sequencer of `ballot` decided, or None
        when this term ended first (nothing may be written). Under the log lock."""
        if self.ballot != ballot or not self.leading:
            return None
        start = self._log.last_index + 1
        return tuple(
            IndexedEvent(start + offset, ballot.term, event, command_id)
            for offset, (event, command_id) in enumerate(events)
        )

    def committed(self, ballot: Ballot, indexed: tuple[IndexedEvent, ...]) -> Steps:
        """The entries are on disk and applied: now, and not before, they go out."""
        extend_segments(self._segments, indexed)
        yield Broadcast(Append(ballot, indexed))

    def answer(self, origin: NodeId, outcome: CommandOutcome, now: float) -> Steps:
        """Answer once every live follower holds the command's events, so that a failover
        to any of them keeps what the client was told; a follower that does not confirm
        within the failure timeout is not waited for."""
        if outcome.accepted and self._lagging_followers(outcome.index, now):
            self._answers.hold(origin, outcome, now)
        else:
            yield from self._deliver(origin, outcome)

    # -- the adoption's calls ----------------------------------------------------------

    def adoption_commands(self, ballot: Ballot, common: int) -> list[AdoptSuffix]:
        """The commands that hand the master of `ballot` the decisions past `common`."""
        return adoption_commands(self._log, self._segments, ballot, common)

    def adopted(self, outcome: CommandOutcome) -> bool:
        """One adoption command answered; whether to go on. Only another master refuses:
        this adoption is being stopped, and the suffix waits for the next master."""
        self.adopted_commands += 1
        if not outcome.accepted:
            log.warning("adoption refused: %s", outcome.reason)
        return outcome.accepted

    def truncate(self, ballot: Ballot, common: int, now: float) -> Steps:
        """Every decision past `common` is adopted: cut it off and catch up."""
        if self.ballot != ballot or self.leading:
            return
        dropped = cast(list[IndexedEvent], (yield TruncateAfter(common)))
        self.truncated_events += len(dropped)
        self._segments = segments_of(self._log.history())
        log.warning("truncated %d divergent events after index %d", len(dropped), common)
        self._sync_backoff = self._timings.sync_retry_initial
        yield from self._request_sync(now)

    def adoption_ended(self, ticket: int) -> None:
        if self._adopting == ticket:
            self._adopting = None

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

    def _master_alive(self, now: float) -> bool:
        if self.ballot is None:
            return False
        if self.ballot.master == self.node_id:
            return self.leading
        return self.peers.master_alive(self.ballot, self._followed_at, now)

    def _on_beat(self, sender: NodeId, beat: Beat, now: float) -> Steps:
        self.peers.beat(sender, beat, now)
        for ballot in (beat.following, beat.log_ballot):
            if ballot is not None:
                self._max_term = max(self._max_term, ballot.term)
        leads = beat.leading and beat.following is not None and beat.following.master == sender
        following = beat.following
        if leads and following is not None and (yield from self._consider_master(following, now)):
            # A lost Append shows here: the master's log is longer than ours.
            self._master_last = max(self._master_last, beat.last_index)
        if self.leading and beat.following == self.ballot and beat.synced:
            self._answers.confirm(sender, beat.last_index)
            yield from self._release_acks(now)
        if (
            self.leading
            and self.ballot is not None
            and beat.following is not None
            and follows_newer_live_master(beat, self.node_id, self.ballot)
        ):
            # A peer we reach follows a newer master it hears: two masters must never
            # share a peer (a partition that is not transitive). Step down; the rule in
            # `_maybe_elect` keeps us from standing again while that lasts.
            log.info(
                "stepping down: %s follows %s, newer than %s", sender, beat.following, self.ballot
            )
            yield from self._stop_leading()
            yield from self._follow(beat.following, now)

    def _maybe_elect(self, now: float, peers: Sequence[NodeId], expecting_peers: bool) -> Steps:
        if self.recovering or self.peers.blocked_by_live_master(peers, self.node_id, now):
            return  # wait for that master (or for the peer to lose it)
        if expecting_peers and now - self._started_at < self._timings.failure_timeout:
            return  # give peers one timeout to be heard from before standing
        if self._masterless_since is None:
            self._masterless_since = now
        patient = now - self._masterless_since < self._timings.failure_timeout
        mine = election_key(last_ballot(self._segments), self._log.last_index, self.node_id)
        if self.peers.best_candidate(peers, mine, patient, now) == mine:
            yield from self._take_office(now)

    def _take_office(self, now: float) -> Steps:
        term = max(self._max_term, self._log.last_term) + 1
        ballot = Ballot(term, self.node_id)
        yield from self._stop_leading()
        yield from self._stop_adopting()
        self.ballot = ballot
        self.leading = True
        self.synced = True
        self._max_term = term
        self._buffer.clear()
        self._answers.clear()
        self._led_since = now
        self._masterless_since = None
        self.offices.append(ballot)
        log.info("taking office: ballot %s at index %d", ballot, self._log.last_index)
        yield StartLeading(ballot)

    def _consider_master(self, ballot: Ballot, now: float) -> Generator[Effect, object, bool]:
        """Whether to act on a message from the master of `ballot`; follows it if newer.
        Fencing: a ballot older than the one followed, or than our log's last, is ignored."""
        self._max_term = max(self._max_term, ballot.term)
        if ballot == self.ballot:
            return True
        floor = last_ballot(self._segments)
        if (self.ballot is not None and ballot < self.ballot) or (
            floor is not None and ballot < floor
        ):
            return False
        yield from self._follow(ballot, now)
        return True

    def _follow(self, ballot: Ballot, now: float) -> Steps:
        if self.leading:
            log.info("stepping down: %s is newer than %s", ballot, self.ballot)
        yield from self._stop_leading()
        yield from self._stop_adopting()
        self.ballot = ballot
        self._followed_at = now
        self.synced = False
        self._masterless_since = None
        self._master_last = 0
        self._buffer.clear()
        self._sync_backoff = self._timings.sync_retry_initial
        log.info("following %s", ballot)
        yield from self._request_sync(now)
        yield ResubmitAll()

    def _stop_leading(self) -> Steps:
        if self.leading:
            yield StopLeading()
        self.leading = False
        self._answers.clear()

    def _stop_adopting(self) -> Steps:
        if self._adopting is not None:
            yield StopAdoption()
            self._adopting = None

    def _lagging_followers(self, index: int, now: float) -> bool:
        assert self.ballot is not None
        return self.peers.lagging_followers(self.ballot, self._answers.match, index, now)

    def _release_acks(self, now: float) -> Steps:
        for origin, outcome in self._answers.due(now, lambda i: self._lagging_followers(i, now)):
            yield from self._deliver(origin, outcome)

    def _deliver(self, origin: NodeId, outcome: CommandOutcome) -> Steps:
        if origin == self.node_id:
            yield Resolve(outcome)
        else:
            yield Send(origin, Outcome(outcome))

    # -- master and follower ---------------------------------------------------------

    def _request_sync(self, now: float) -> Steps:
        if self.ballot is None or self.leading:
            return
        self._sync_at = now + self._sync_backoff
        self._sync_backoff = min(self._sync_backoff * 2, self._timings.sync_retry_max)
        incoming = self._incoming
        if incoming is None:
            yield from self._send_sync_request(0, 0, self._timings.snapshot_window)
        else:
            yield from self._send_sync_request(
                incoming.index, *incoming.resume_range(self._timings.snapshot_window)
            )

    def _send_sync_request(self, snapshot_index: int, start: int, until: int) -> Steps:
        assert self.ballot is not None
        if self._incoming is not None:
            self._incoming.asked_until = max(self._incoming.asked_until, until)
        last = self._log.last_index
        request = SyncRequest(
            self.ballot, tuple(self._segments), last, snapshot_index, start, until
        )
        self._asked = (self._log.last_index, self._log.truncations)
        yield Send(self.ballot.master, request)

    def _on_append(self, events: tuple[IndexedEvent, ...]) -> Steps:
        if self.leading or not self.synced:
            return  # a catch-up in progress fetches these itself
        self._buffer.add(events, self._log.last_index)
        yield from self._drain_buffer()
        yield from self._acknowledge()

    def _drain_buffer(self) -> Steps:
        run = self._buffer.take_run(self._log.last_index)
        if run:
            yield from self._append_as_follower(run)
        if not self._buffer:
            self._sync_backoff = self._timings.sync_retry_initial

    def _on_sync_reply(self, reply: SyncReply, now: float) -> Steps:
        if self.leading or self._adopting is not None:
            return
        if grown_by_another_term(self._segments, self._log, reply.asked_at, reply.ballot.term):
            yield from self._request_sync(now)  # a reply about the log as it was: ask again
            return
        if reply.common_index < reply.asked_at:
            if self._asked == (reply.asked_at, self._log.truncations):
                yield from self._start_adoption(reply.common_index)
            return  # else a reply about a log that has been cut back since: ignore
        if reply.snapshot is not None:
            if reply.asked_at == self._log.last_index:
                yield from self._receive_snapshot(reply.snapshot, now)
            return
        fresh = [e for e in reply.events if e.index > self._log.last_index]
        if fresh and fresh[0].index == self._log.last_index + 1:
            yield from self._append_as_follower(fresh)
        if self._log.last_index >= reply.last_index:
            if not self.synced:
                log.info("in sync with %s at index %d", self.ballot, self._log.last_index)
            if self.recovering:
                log.warning("recovered the damaged log from %s", self.ballot)
                self.recovering = False
            self.synced = True
            yield from self._drain_buffer()
            yield from self._acknowledge()
        else:
            self._sync_backoff = self._timings.sync_retry_initial
            yield from self._request_sync(now)

    def _append_as_follower(self, events: list[IndexedEvent]) -> Steps:
        if self.leading:
            return
        yield Persist(tuple(events))
        extend_segments(self._segments, events)

    def _receive_snapshot(self, chunk: SnapshotChunk, now: float) -> Steps:
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
                yield from self._send_sync_request(incoming.index, *more)
            return
        self._incoming = None
        try:
            snapshot, data = incoming.finish(f"snapshot {chunk.index} from {self.ballot}")
        except SnapshotCorrupted as exc:
            log.warning("refusing the master's snapshot: %s", exc)
            return
        if snapshot.index != chunk.index or snapshot.index <= self._log.last_index:
            return
        if self.leading:
            return
        yield InstallSnapshot(snapshot, data)
        self._segments = segments_of(self._log.history())
        self.snapshots_installed += 1
        log.info("installed the master's snapshot at index %d", snapshot.index)
        yield from self._request_sync(now)

    def _acknowledge(self) -> Steps:
        if self.ballot is not None and not self.leading:
            yield Send(self.ballot.master, AppendAck(self.ballot, self._log.last_index))

    def _start_adoption(self, common: int) -> Steps:
        assert self.ballot is not None
        self._tickets += 1
        self._adopting = self._tickets
        yield StartAdoption(self.ballot, common, self._tickets)
