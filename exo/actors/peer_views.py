"""What a node last heard from each peer, and when: failure detection, and the readings of
peers' heartbeats that elections and answers rest on. Pure: the time is passed in."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from exo.actors.history import Ballot, election_key
from exo.actors.wire import Beat
from exo.events.ids import NodeId

ElectionKey = tuple[object, ...]


class PeerViews:
    def __init__(self, failure_timeout: float) -> None:
        self._failure_timeout = failure_timeout
        self._heard: dict[NodeId, float] = {}
        self._beats: dict[NodeId, Beat] = {}
        self._beat_at: dict[NodeId, float] = {}
        # Since when each unregistered node holding a shard has been watched, and when
        # the master last swept (a gap means it stopped leading: the watch starts over).
        self._unregistered_since: dict[NodeId, float] = {}
        self._swept_at = float("-inf")
        # Nodes marked down and not heard since, each with whether it was registered
        # then: marked once, until it registers or leaves the state (or is adopted back).
        self._marked: dict[NodeId, bool] = {}
        # Whether the last sweep heard half the nodes or more (it marked none down if not).
        self.hears_half = True

    def heard(self, peer: NodeId, now: float) -> None:
        self._heard[peer] = now
        if peer not in self._unregistered_since:  # heard or not, it must register
            self._marked.pop(peer, None)

    def beat(self, peer: NodeId, beat: Beat, now: float) -> None:
        self._beats[peer] = beat
        self._beat_at[peer] = now

    def alive(self, peer: NodeId, now: float) -> bool:
        heard = self._heard.get(peer)
        return heard is not None and now - heard < self._failure_timeout

    def last_beat(self, peer: NodeId) -> tuple[Beat | None, float]:
        """The peer's latest heartbeat and when it came (never: None, -inf)."""
        return self._beats.get(peer), self._beat_at.get(peer, float("-inf"))

    def master_alive(self, ballot: Ballot, followed_at: float, now: float) -> bool:
        """The master of `ballot` (a peer) is heard, and has not said it stopped leading
        it since we began to follow it: a master that only says it is alive (it stepped
        down, or restarted) must not keep its followers from electing."""
        if not self.alive(ballot.master, now):
            return False
        beat, heard_at = self.last_beat(ballot.master)
        return beat is None or heard_at < followed_at or not resigned(beat, ballot)

    def to_mark_down(
        self, nodes: Iterable[NodeId], me: NodeId, now: float, unregistered: Iterable[NodeId] = ()
    ) -> list[NodeId]:
        """The nodes among `nodes` to mark down now, sorted: the silent ones not marked
        yet. None while fewer than half of them and `me` are heard (`me` counts): this
        side may be the one cut off, its mark-downs would end the instances the other
        side keeps serving, and its log may win the heal. Two nodes: the survivor hears
        half, and still takes over.

        `unregistered` nodes hold a shard the state adopted from a partition's other
        side but have not registered again: each is marked down when silent, or when it
        has not registered within the failure timeout though heard (cut off one way, it
        may never learn that it must)."""
        registered, waiting = set(nodes), set(unregistered)
        if now - self._swept_at > self._failure_timeout:
            self._unregistered_since.clear()  # not leading since: the watch starts over
        self._swept_at = now
        since = {n: self._unregistered_since.get(n, now) for n in waiting}
        self._unregistered_since = since
        known = {*registered, *waiting, me}
        # A mark holds while the node stays as it was marked (a node marked down and
        # then given an adopted shard is watched afresh).
        marked = {n: r for n, r in self._marked.items() if n in known and r == (n in registered)}
        heard = {n for n in known if n == me or self.alive(n, now)}
        self.hears_half = 2 * len(heard) >= len(known)
        if not self.hears_half:
            self._marked = marked
            return []
        overdue = {n for n, t in since.items() if now - t >= self._failure_timeout}
        lost = sorted(n for n in known - marked.keys() - {me} if n not in heard or n in overdue)
        self._marked = {**marked, **{n: n in registered for n in lost}}
        return lost

    def blocked_by_live_master(self, peers: Sequence[NodeId], me: NodeId, now: float) -> bool:
        """A peer we reach follows a live master other than us: standing would make a
        second master sharing that peer."""
        for peer in peers:
            beat = self._beats.get(peer)
            if beat is not None and self.alive(peer, now) and _follows_live_master(beat, me):
                return True
        return False

    def best_candidate(
        self, peers: Sequence[NodeId], mine: ElectionKey, patient: bool, now: float
    ) -> ElectionKey:
        """The highest election key among us and the live peers that stand. While
        `patient`, peers that follow the master we lost count too: they are about to
        notice. After that only peers that say they seek do, so a peer that still hears
        the old master (a one-way partition) cannot stall an election."""
        best = mine
        for peer in peers:
            beat = self._beats.get(peer)
            if beat is None or not self.alive(peer, now):
                continue
            lost_same = beat.following is not None and not self.alive(beat.following.master, now)
            if beat.seeking or (patient and (beat.following is None or lost_same)):
                best = max(best, election_key(beat.log_ballot, beat.last_index, peer))
        return best

    def refused_by_seeking_peer(self, ballot: Ballot, now: float) -> bool:
        """A reachable peer without a master whose log or ballot is newer than `ballot`
        will never follow it; the cure is a ballot above it."""
        for peer, beat in self._beats.items():
            if not beat.seeking or not self.alive(peer, now):
                continue
            if (beat.log_ballot is not None and beat.log_ballot > ballot) or (
                beat.following is not None and beat.following > ballot
            ):
                return True
        return False

    def lagging_followers(
        self, ballot: Ballot, match: Mapping[NodeId, int], index: int, now: float
    ) -> bool:
        """A live follower of `ballot` has not confirmed holding `index` yet."""
        for peer, beat in self._beats.items():
            following = beat.following == ballot or peer in match
            if following and self.alive(peer, now) and match.get(peer, 0) < index:
                return True
        return False


def resigned(beat: Beat, ballot: Ballot) -> bool:
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


def follows_newer_live_master(beat: Beat, me: NodeId, ballot: Ballot) -> bool:
    """The peer hears a master newer than `ballot` (ours): two masters must never share
    a peer, so we step down."""
    return _follows_live_master(beat, me) and beat.following is not None and beat.following > ballot
