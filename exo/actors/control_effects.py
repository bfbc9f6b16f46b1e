"""What the control core asks of its shell: the effects it yields, and the stored log it
reads. The core decides; the shell (`control.py`) performs, in the order yielded.

Effects that touch the disk are performed before the core resumes, and `TruncateAfter`
sends back what it cut; every other effect is fire and forget.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Protocol

from attrs import frozen

from exo.actors.history import Ballot
from exo.actors.wire import PeerMessage
from exo.events.commands import Command, CommandOutcome, Envelope
from exo.events.events import IndexedEvent
from exo.events.ids import NodeId
from exo.events.snapshot import Snapshot


@frozen
class Send:
    """Queue a message for one peer (best effort: the protocol retries)."""

    to: NodeId
    message: PeerMessage


@frozen
class Broadcast:
    """Queue a message for every peer the network knows now."""

    message: PeerMessage


@frozen
class Persist:
    """Append to the log (durably), then apply to the replica and compact if due."""

    events: tuple[IndexedEvent, ...]


@frozen
class InstallSnapshot:
    """Replace the log by the master's snapshot, and the replica's state by its state."""

    snapshot: Snapshot
    data: bytes


@frozen
class TruncateAfter:
    """Cut the log after `index` and reset the replica to what is left; sends back the
    events cut."""

    index: int


@frozen
class StartLeading:
    """Run the sequencer for `ballot`: commands in, committed events out (`Control._lead`)."""

    ballot: Ballot


@frozen
class StopLeading:
    pass


@frozen
class StartAdoption:
    """Hand the log's suffix after `common` to the master of `ballot`, then truncate it.
    `ticket` tells this adoption from a later one when it ends."""

    ballot: Ballot
    common: int
    ticket: int


@frozen
class StopAdoption:
    pass


@frozen
class Enqueue:
    """A command for this node's own sequencer."""

    envelope: Envelope


@frozen
class SubmitNew:
    """Submit a command of this node's own, under a fresh command id."""

    command: Command


@frozen
class Resolve:
    """An outcome for a command this node's client sent."""

    outcome: CommandOutcome


@frozen
class ResubmitAll:
    """A new master: send every unanswered command again."""


Effect = (
    Send
    | Broadcast
    | Persist
    | InstallSnapshot
    | TruncateAfter
    | StartLeading
    | StopLeading
    | StartAdoption
    | StopAdoption
    | Enqueue
    | SubmitNew
    | Resolve
    | ResubmitAll
)
# A core step: effects out, and what each disk effect gives back in (`send`).
Steps = Generator[Effect, object, None]


class StoredLog(Protocol):
    """The reads the core makes of the node's event log (an `EventLog`)."""

    @property
    def first_index(self) -> int: ...
    @property
    def last_index(self) -> int: ...
    @property
    def last_term(self) -> int: ...
    @property
    def truncations(self) -> int: ...
    @property
    def snapshot_index(self) -> int: ...
    @property
    def snapshot_digest(self) -> str: ...
    @property
    def snapshot_bytes(self) -> bytes: ...
    @property
    def recovered_from(self) -> str | None: ...

    def history(self) -> Iterator[IndexedEvent]: ...

    def since(
        self, index: int, limit: int | None = None, max_bytes: int | None = None
    ) -> list[IndexedEvent]: ...

    def adoptable_since(self, index: int) -> list[IndexedEvent]: ...
