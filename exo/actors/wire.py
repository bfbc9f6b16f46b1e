"""Messages between nodes: the control actors' and the data plane's, one closed tagged union.

They cross the simulated network in the simulator and peer links between machines; every
one carries enough to be fenced by ballot and to update the sender's liveness.
"""

from __future__ import annotations

from attrs import frozen

from exo.actors.history import Ballot, Segment
from exo.engine.protocol import Finished, GenerateRequest, TokenOut
from exo.events.codec import register_tagged_union
from exo.events.commands import CommandOutcome, Envelope
from exo.events.events import IndexedEvent
from exo.events.ids import InstanceId, ModelId


@frozen
class Beat:
    """Sent by every node to every peer each heartbeat interval."""

    following: Ballot | None  # the ballot whose master this node follows (its own when leading)
    leading: bool
    seeking: bool  # no live master: this node takes part in an election
    log_ballot: Ballot | None  # ballot of the last entry in its log
    last_index: int
    synced: bool  # its log is a prefix of the followed master's


@frozen
class Append:
    """Master to followers: freshly committed events, in index order."""

    ballot: Ballot
    events: tuple[IndexedEvent, ...]


@frozen
class AppendAck:
    """Follower to master: its log holds everything up to `last_index`, persisted."""

    ballot: Ballot
    last_index: int


@frozen
class SyncRequest:
    """Follower to master: where my log stands; send what I lack (or tell me where we differ)."""

    ballot: Ballot
    segments: tuple[Segment, ...]
    last_index: int
    # A snapshot partly received: its index, and the byte range of it to send next
    # (`snapshot_until` 0: one chunk from `snapshot_offset`).
    snapshot_index: int = 0
    snapshot_offset: int = 0
    snapshot_until: int = 0


@frozen
class SnapshotChunk:
    """Part of the master's snapshot, for a follower behind the master's oldest record:
    `data` (base64) is bytes [offset, offset + len) of `total`, checked by `digest`."""

    index: int
    digest: str
    offset: int
    total: int
    data: str


@frozen
class SyncReply:
    """The logs agree through `common_index`; `events` continue from there (a bounded batch).

    `asked_at` echoes the request's `last_index`: the follower's log may have grown since
    it asked, and only entries it held then can have been found to diverge.
    """

    ballot: Ballot
    asked_at: int
    common_index: int
    events: tuple[IndexedEvent, ...]
    last_index: int
    snapshot: SnapshotChunk | None = None


@frozen
class Submit:
    """A command for the master, from the node that originated it (retried until answered)."""

    envelope: Envelope


@frozen
class Outcome:
    outcome: CommandOutcome


@frozen
class Ping:
    """Link measurement, answered by the peer's link layer at once (never by its actors).
    `padding` makes a large ping for the throughput estimate."""

    nonce: int
    padding: str = ""


@frozen
class Pong:
    nonce: int
    size: int  # bytes of padding the ping carried


# The data plane: a request relayed from the node whose API took it to the node running
# its instance's rank 0, and the tokens back. Never in the replicated log.


@frozen
class RelayRequest:
    instance_id: InstanceId
    request: GenerateRequest


@frozen
class RelayToken:
    chunk: TokenOut


@frozen
class RelayFinished:
    finished: Finished


@frozen
class RelayFailed:
    """The serving node could not finish the request; `invalid`: the request's own fault."""

    request_id: str
    message: str
    invalid: bool
    # Set when the instance was overloaded: seconds to wait before retrying (429).
    retry_after: float | None = None


@frozen
class RelayCancel:
    """The client left: stop generating."""

    request_id: str


@frozen
class RelayAlive:
    """The serving node is still working on the request (sent every few seconds while it
    runs, so the API node can bound how long it waits on a silent server)."""

    request_id: str


DataMessage = RelayRequest | RelayToken | RelayFinished | RelayFailed | RelayCancel | RelayAlive


# Weight files copied between nodes (exo/actors/file_share.py), so a cluster fetches each
# file from the hub once. Never in the replicated log.


@frozen
class FileRequest:
    """Send me `name` of `model` from byte `offset` (what my partial file holds)."""

    transfer_id: str
    model: ModelId
    name: str
    offset: int


@frozen
class FileChunk:
    """Bytes [offset, offset + len) of the file, base64 (frames are JSON text)."""

    transfer_id: str
    offset: int
    data: str


@frozen
class FileEnd:
    transfer_id: str
    size: int


@frozen
class FileRefused:
    """The peer does not hold the file (or will not serve it): fetch it elsewhere."""

    transfer_id: str
    reason: str


FileMessage = FileRequest | FileChunk | FileEnd | FileRefused
FILE_MESSAGE_TYPES: tuple[type, ...] = FileMessage.__args__  # type: ignore[attr-defined]
DATA_MESSAGE_TYPES: tuple[type, ...] = DataMessage.__args__  # type: ignore[attr-defined]

PeerMessage = (
    Beat
    | Append
    | AppendAck
    | SyncRequest
    | SyncReply
    | Submit
    | Outcome
    | Ping
    | Pong
    | RelayRequest
    | RelayToken
    | RelayFinished
    | RelayFailed
    | RelayCancel
    | RelayAlive
    | FileRequest
    | FileChunk
    | FileEnd
    | FileRefused
)
register_tagged_union(PeerMessage)
PEER_MESSAGE_TYPES: tuple[type, ...] = PeerMessage.__args__  # type: ignore[attr-defined]
