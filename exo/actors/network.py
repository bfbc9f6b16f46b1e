"""What the control actor needs from the network: best-effort sends to peers by node id,
and the set of peers it may hear from. Inbound messages arrive on the control actor's
mailbox as (sender, message). The simulator and real peer links both implement this."""

from __future__ import annotations

from typing import Protocol

from attrs import frozen

from exo.actors.wire import PeerMessage
from exo.events.ids import NodeId


class PeerNetwork(Protocol):
    def send(self, to: NodeId, message: PeerMessage) -> None:
        """Queue `message` for `to`; never blocks, may be lost (the protocol retries)."""
        ...

    def peers(self) -> list[NodeId]:
        """Peers known to exist (configured, discovered or heard from), sorted."""
        ...

    def expecting_peers(self) -> bool:
        """Whether peers may show up: if so, a starting node waits one failure timeout
        to hear from them before it stands for election."""
        ...


class PeerLost(Exception):
    """No live link to the peer (or it broke while sending)."""


class DataLinks(Protocol):
    """What the data plane needs: reliable, ordered sends (real peer links have them)."""

    async def send_data(self, to: NodeId, message: PeerMessage) -> None:
        """Send in order with the link's backpressure; raises `PeerLost` without a link."""
        ...


class NoPeers:
    """A node on its own: it leads at once and sends nothing."""

    def send(self, to: NodeId, message: PeerMessage) -> None:
        pass

    def peers(self) -> list[NodeId]:
        return []

    def expecting_peers(self) -> bool:
        return False


@frozen
class ControlTimings:
    """Every timing of election, failure detection and replication, in seconds."""

    heartbeat_interval: float = 0.5
    # A peer silent this long is down; a master silent this long starts an election.
    failure_timeout: float = 2.0
    sync_retry_initial: float = 0.25
    sync_retry_max: float = 4.0
    command_retry: float = 1.0
    # Events per catch-up reply, and their records' bytes at most (a reply is one frame,
    # and the link's frames stop at 16 MiB): a node 1,000,000 events behind asks ~250 times.
    sync_batch: int = 4096
    sync_batch_bytes: int = 4 * 1024 * 1024
    # Every this many events, or once the records after the snapshot pass
    # `snapshot_bytes`, the log is snapshotted and cut down to its last `snapshot_keep`
    # records and `snapshot_keep_bytes` (the snapshot keeps the command ids of what it
    # cut, for the master's outcome memory); a node further behind receives the snapshot
    # in chunks.
    snapshot_every: int = 10_000
    snapshot_bytes: int = 32 * 1024 * 1024
    snapshot_keep: int = 8192
    snapshot_keep_bytes: int = 16 * 1024 * 1024
    # A snapshot travels in chunks of this many bytes, at most `snapshot_window` bytes
    # asked for at once (the follower asks again while half of that is in flight).
    snapshot_chunk: int = 1024 * 1024
    snapshot_window: int = 4 * 1024 * 1024
    # Out-of-order events a follower keeps while it asks for the gap.
    buffer_limit: int = 4096
