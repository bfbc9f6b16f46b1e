"""A snapshot sent to a follower behind the master's oldest record, in pipelined chunks.

The follower asks for a byte range of the master's framed snapshot; the master answers
with the chunks that cover it, at most `window` bytes per request. The follower asks for
the next range while half of the last one is still in flight, so a slow or distant link
stays busy without a round trip per chunk, and never more than about a window and a half
of chunks is outstanding. Chunks that arrive early are held (within the range asked for);
lost ones are asked for again by the follower's sync timer, from the bytes it holds.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from attrs import define, field

from exo.actors.wire import SnapshotChunk
from exo.events.snapshot import (
    Snapshot,
    SnapshotCorrupted,
    body_digest,
    decode_snapshot,
    from_text,
    to_text,
)


def snapshot_chunks(
    data: bytes, index: int, digest: str, start: int, until: int, *, chunk: int, window: int
) -> list[SnapshotChunk]:
    """The chunks of `data` (the snapshot at `index`) covering bytes [start, until), at
    least one and at most `window` bytes of them; a range outside `data` starts at 0."""
    if not 0 <= start < len(data):
        start = 0
    end = min(len(data), max(start + chunk, min(until, start + window)))
    return [
        SnapshotChunk(index, digest, at, len(data), to_text(data[at : min(at + chunk, end)]))
        for at in range(start, end, chunk)
    ]


@define
class IncomingSnapshot:
    """A master's snapshot being gathered: the bytes held from its start, chunks that came
    early, and how far the requests sent so far reach."""

    index: int
    digest: str
    total: int
    asked_until: int
    data: bytearray = field(factory=bytearray)
    ahead: dict[int, bytes] = field(factory=dict)

    @classmethod
    def starting_with(cls, chunk: SnapshotChunk, asked_until: int) -> IncomingSnapshot:
        return cls(chunk.index, chunk.digest, chunk.total, asked_until)

    def matches(self, chunk: SnapshotChunk) -> bool:
        return (self.index, self.digest, self.total) == (chunk.index, chunk.digest, chunk.total)

    @property
    def held(self) -> int:
        return len(self.data)

    @property
    def complete(self) -> bool:
        return self.held >= self.total

    def add(self, chunk: SnapshotChunk) -> bool:
        """Take `chunk` in; whether the bytes held grew. A duplicate, or one beyond what
        was asked for, is ignored; bad base64 raises `SnapshotCorrupted`."""
        if chunk.offset < self.held or chunk.offset >= max(self.asked_until, self.held + 1):
            return False
        piece = from_text(chunk.data)
        if chunk.offset > self.held:
            self.ahead[chunk.offset] = piece
            return False
        self.data += piece
        while self.held in self.ahead:
            self.data += self.ahead.pop(self.held)
        for stale in [offset for offset in self.ahead if offset < self.held]:
            del self.ahead[stale]
        return True

    def next_range(self, window: int) -> tuple[int, int] | None:
        """The range to ask for now, when less than half a window is still in flight."""
        if self.asked_until >= self.total or self.asked_until - self.held > window // 2:
            return None
        return self.asked_until, min(self.total, self.held + window)

    def resume_range(self, window: int) -> tuple[int, int]:
        """The range to ask for after a stall: from the bytes held."""
        return self.held, min(self.total, self.held + window)

    def finish(self, source: str) -> tuple[Snapshot, bytes]:
        """The whole snapshot, verified against its digest and checksum."""
        data = bytes(self.data[: self.total])
        if body_digest(data) != self.digest:
            raise SnapshotCorrupted(f"{source}: digest mismatch")
        return decode_snapshot(data, source), data
