"""State snapshots: the state at one index, so that neither a restart nor a node far behind
has to replay the whole history.

A snapshot also keeps the first entry of every term up to its index (the `MasterElected`
that opens it): the log's ballots, which catch-up and election compare, survive
compaction. And it keeps the client-visible decisions (models added, instances created
and deleted) of the records cut off: without a quorum, a log can turn out to diverge
from a new master's at any depth, and its decisions must still be adoptable then. On disk it is one record framed like a log record, `<crc32 hex> <json>\\n`,
written through a temporary file and a rename, so a crash leaves the old snapshot or the
new one, never half of one.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from attrs import evolve, frozen

from exo.events.codec import CodecError, decode, encode, frame, unframe
from exo.events.events import (
    IndexedEvent,
    InstanceCreated,
    InstanceDeleted,
    ModelAdded,
    SuffixAdopted,
)
from exo.events.state import State

# Decisions a snapshot keeps for adoption; beyond this the oldest go (docs/architecture.md).
RETAINED_DECISIONS = 4096
# Command ids a snapshot keeps, so a master that takes office after compaction still
# answers a late retry instead of deciding it again (the master's outcome memory).
RETAINED_COMMANDS = 4096
DECISION_TYPES = (ModelAdded, InstanceCreated, InstanceDeleted)


class SnapshotCorrupted(Exception):
    """A snapshot whose checksum, digest or contents do not verify."""


@frozen
class Snapshot:
    state: State
    # The first entry of each term through `state.last_index`, in order.
    openers: tuple[IndexedEvent, ...] = ()
    # The decisions among the records through `state.last_index` (adoptions trimmed to
    # them), in order, the newest RETAINED_DECISIONS.
    decisions: tuple[IndexedEvent, ...] = ()
    # (command id, index) of the newest RETAINED_COMMANDS commands decided through it.
    commands: tuple[tuple[str, int], ...] = ()

    @property
    def index(self) -> int:
        return self.state.last_index

    @property
    def term(self) -> int:
        return self.state.term


def openers_through(
    previous: tuple[IndexedEvent, ...], events: Iterable[IndexedEvent]
) -> tuple[IndexedEvent, ...]:
    """`previous` openers plus the first entry of each term that `events` start."""
    openers = list(previous)
    for event in events:
        if not openers or openers[-1].term != event.term:
            openers.append(event)
    return tuple(openers)


def decisions_through(
    previous: tuple[IndexedEvent, ...], cut: Iterable[IndexedEvent]
) -> tuple[IndexedEvent, ...]:
    """`previous` retained decisions plus those among the records `cut` (now covered by
    a snapshot), the newest `RETAINED_DECISIONS` of them."""
    kept = list(previous)
    for indexed in cut:
        event = indexed.event
        if isinstance(event, DECISION_TYPES):
            kept.append(indexed)
        elif isinstance(event, SuffixAdopted):
            inner = tuple(a for a in event.events if isinstance(a.event, DECISION_TYPES))
            if inner:
                kept.append(evolve(indexed, event=evolve(event, events=inner)))
    return tuple(kept[-RETAINED_DECISIONS:])


def commands_through(
    previous: tuple[tuple[str, int], ...], covered: Iterable[IndexedEvent]
) -> tuple[tuple[str, int], ...]:
    """`previous` command ids plus those of the records `covered` (adopted ones too),
    once each, the newest `RETAINED_COMMANDS`."""
    seen = dict(previous)
    for indexed in covered:
        ids = [indexed.command_id]
        if isinstance(indexed.event, SuffixAdopted):
            ids += [a.command_id for a in indexed.event.events]
        for command_id in ids:
            if command_id is not None:
                seen.pop(command_id, None)
                seen[command_id] = indexed.index
    return tuple(seen.items())[-RETAINED_COMMANDS:]


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return frame(encode(snapshot))


def decode_snapshot(data: bytes, source: str) -> Snapshot:
    """The snapshot `data` frames; `SnapshotCorrupted` naming `source` and the reason."""
    if not data.endswith(b"\n"):
        raise SnapshotCorrupted(f"{source}: not a snapshot record (torn or truncated)")
    try:
        snapshot: Snapshot = decode(unframe(data[:-1]), Snapshot)
    except CodecError as exc:
        raise SnapshotCorrupted(f"{source}: {exc}") from exc
    return snapshot


def body_digest(data: bytes) -> str:
    """What a snapshot sent in chunks is checked against once its bytes are together."""
    return hashlib.sha256(data).hexdigest()


def read_snapshot(path: Path) -> tuple[Snapshot, bytes] | None:
    """The snapshot at `path` and its framed bytes, or None when there is none."""
    if not path.exists():
        return None
    data = path.read_bytes()
    return decode_snapshot(data, str(path)), data


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` through a temporary file, fsync, rename and a directory
    fsync, so a crash leaves the old contents or the new ones (snapshots, log rewrites)."""
    tmp = path.with_name(path.name + ".writing")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def to_text(chunk: bytes) -> str:
    """Snapshot bytes as they travel in a JSON frame."""
    return base64.b64encode(chunk).decode("ascii")


def from_text(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError as exc:
        raise SnapshotCorrupted(f"snapshot chunk is not base64: {exc}") from exc
