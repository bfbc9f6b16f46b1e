"""The on-disk event log: one record per line, `<crc32 hex> <canonical json>\\n`.

Appends are flushed and fsynced before the master broadcasts. A crash can tear only the
last record; `EventLog.open` detects that (no newline, bad checksum or bad JSON on the
last line) and truncates it away. Damage anywhere else is reported, never skipped.

Compaction (`EventLog.compact`) writes a snapshot of the state at the last index
(`events.snapshot` beside the log) and cuts the records older than a kept tail off the
log, appending them to `events.archive` first when the node keeps one. Opening a log
loads the snapshot and the records after it; memory and start-up time are bounded by the
snapshot interval, not by history.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from exo.events.codec import CodecError, decode, encode, frame, unframe
from exo.events.events import IndexedEvent
from exo.events.replay import collector_paused, replay
from exo.events.snapshot import (
    Snapshot,
    SnapshotCorrupted,
    body_digest,
    commands_through,
    decisions_through,
    encode_snapshot,
    fsync_directory,
    openers_through,
    read_snapshot,
    write_atomically,
)
from exo.events.state import State


class LogCorrupted(Exception):
    """A record before the last one is damaged or out of order, or the snapshot does not
    verify: the log cannot be trusted."""


def encode_record(event: IndexedEvent) -> bytes:
    return frame(encode(event))


def decode_record(line: bytes) -> IndexedEvent:
    """One record (without its newline); raises `CodecError` with the reason."""
    event: IndexedEvent = decode(unframe(line), IndexedEvent)
    return event


def read_records(path: Path) -> tuple[list[IndexedEvent], int, str | None]:
    """Whole records, the byte length they span, and why the tail was dropped (if it was)."""
    events, _sizes, offset, dropped = _read_sized(path)
    return events, offset, dropped


def _read_sized(
    path: Path, *, stop_at_damage: bool = False
) -> tuple[list[IndexedEvent], list[int], int, str | None]:
    """Records, their sizes, the byte length they span, and why reading stopped before
    the end: a torn last record, or with `stop_at_damage` any record that does not
    verify or follow (instead of `LogCorrupted`)."""
    data = path.read_bytes() if path.exists() else b""
    events: list[IndexedEvent] = []
    sizes: list[int] = []
    offset = 0
    lines = data.split(b"\n")
    # A file ending in "\n" splits into a trailing empty string: not a record.
    complete, tail = lines[:-1], lines[-1]
    with collector_paused():
        for number, line in enumerate(complete, start=1):
            last = number == len(complete) and not tail
            try:
                event = decode_record(line)
            except CodecError as exc:
                if last:
                    return events, sizes, offset, f"record {number} is torn ({exc})"
                after = f" (after index {events[-1].index})" if events else ""
                reason = f"{path}: record {number}{after}: {exc}"
                if stop_at_damage:
                    return events, sizes, offset, reason
                raise LogCorrupted(reason) from exc
            expected = events[-1].index + 1 if events else event.index
            if event.index != expected:
                reason = f"{path}: record {number} has index {event.index}, expected {expected}"
                if stop_at_damage:
                    return events, sizes, offset, reason
                raise LogCorrupted(reason)
            events.append(event)
            sizes.append(len(line) + 1)
            offset += len(line) + 1
    if tail:
        return events, sizes, offset, f"record {len(complete) + 1} is torn (no newline)"
    return events, sizes, offset, None


def snapshot_path(log_path: Path) -> Path:
    return log_path.with_suffix(".snapshot")


def archive_path(log_path: Path) -> Path:
    return log_path.with_suffix(".archive")


class EventLog:
    """An append-only log file of indexed events after an optional snapshot. Not
    thread-safe; one writer."""

    def __init__(
        self,
        path: Path,
        events: list[IndexedEvent],
        dropped_tail: str | None,
        sizes: list[int] | None = None,
        snapshot: tuple[Snapshot, bytes] | None = None,
        *,
        archive: bool = False,
    ) -> None:
        self.path = path
        self._events = events
        # Each record's encoded length, so a catch-up batch is bounded in bytes for free.
        self._sizes = sizes if sizes is not None else [len(encode_record(e)) for e in events]
        self.dropped_tail = dropped_tail
        # How many times a divergent suffix was cut off (observers re-read after a change).
        self.truncations = 0
        # How many times records were cut off the front (compaction or a peer's snapshot).
        self.compactions = 0
        self.snapshot: Snapshot | None = snapshot[0] if snapshot else None
        # The snapshot's framed bytes, as written and as a peer far behind receives them.
        self.snapshot_bytes: bytes = snapshot[1] if snapshot else b""
        self._digest, self._digest_of = "", b"-"
        self.archive = archive
        # Bytes of the records after the snapshot: what a compaction by size looks at.
        self._unsnapshotted_bytes = self._bytes_after(self.snapshot_index)
        # Why the log was cut back to what verifies on open (`open(recover=True)`), if it was.
        self.recovered_from: str | None = None
        self._file = open(path, "ab")  # noqa: SIM115 — held for the log's lifetime

    @classmethod
    def open(cls, path: Path, *, archive: bool = False, recover: bool = False) -> EventLog:
        """Open (creating) the log and its snapshot, truncating a torn last record.

        Damage raises `LogCorrupted`, or with `recover` moves the damaged files aside
        (`*.damaged`) and keeps what verifies: the records before the damage, or nothing
        when the snapshot is damaged. The node then catches up from a peer.
        """
        try:
            return cls._open(path, archive)
        except LogCorrupted as exc:
            if not recover:
                raise
            reason = str(exc)
        try:
            snapshot = read_snapshot(snapshot_path(path))
        except SnapshotCorrupted:
            snapshot = None
            _set_aside(snapshot_path(path))
        kept = _read_sized(path, stop_at_damage=True)[0]
        if snapshot_path(path).exists() and (
            snapshot is None or (kept and kept[0].index > snapshot[0].index + 1)
        ):
            _set_aside(snapshot_path(path))
        if not snapshot_path(path).exists() and kept and kept[0].index != 1:
            kept = []  # records that only continue a snapshot that is gone
        _set_aside(path)
        write_atomically(path, b"".join(encode_record(e) for e in kept))
        opened = cls._open(path, archive)
        opened.recovered_from = reason
        return opened

    @classmethod
    def _open(cls, path: Path, archive: bool) -> EventLog:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            snapshot = read_snapshot(snapshot_path(path))
        except SnapshotCorrupted as exc:
            raise LogCorrupted(str(exc)) from exc
        events, sizes, good_length, dropped = _read_sized(path)
        if snapshot is not None and events and events[0].index > snapshot[0].index + 1:
            raise LogCorrupted(
                f"{path}: starts at index {events[0].index}, after the snapshot at "
                f"{snapshot[0].index}: records {snapshot[0].index + 1}..{events[0].index - 1} "
                "are missing"
            )
        if dropped is not None:
            with open(path, "r+b") as f:
                f.truncate(good_length)
                f.flush()
                os.fsync(f.fileno())
        opened = cls(path, events, dropped, sizes, snapshot, archive=archive)
        if snapshot is not None and events and events[-1].index < snapshot[0].index:
            # Left by a crash while installing a peer's snapshot: records it replaces.
            opened._rewrite([], [])
        return opened

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0

    @property
    def snapshot_digest(self) -> str:
        """sha256 of the snapshot's bytes, computed once per snapshot (each chunk sent
        carries it)."""
        if self._digest_of is not self.snapshot_bytes:
            self._digest, self._digest_of = body_digest(self.snapshot_bytes), self.snapshot_bytes
        return self._digest

    @property
    def bytes_since_snapshot(self) -> int:
        """The encoded size of the records after the snapshot."""
        return self._unsnapshotted_bytes

    def _bytes_after(self, index: int) -> int:
        first = self.first_index
        return sum(self._sizes[max(0, index + 1 - first) :])

    @property
    def first_index(self) -> int:
        """The oldest index this log can still send; older ones are in the snapshot."""
        return self._events[0].index if self._events else self.snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self._events[-1].index if self._events else self.snapshot_index

    @property
    def last_term(self) -> int:
        if self._events:
            return self._events[-1].term
        return self.snapshot.term if self.snapshot is not None else 0

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[IndexedEvent]:
        """The records held (those after the last compaction's kept tail began)."""
        return iter(self._events)

    def history(self) -> Iterator[IndexedEvent]:
        """Enough of the log to read its ballots from: the snapshot's term openers, then
        the records held."""
        if self.snapshot is not None:
            yield from (e for e in self.snapshot.openers if e.index < self.first_index)
        yield from self._events

    def state(self) -> State:
        """The state after the last index: the snapshot's, then the records after it."""
        return replay(self._events, start=self.snapshot.state if self.snapshot else None)

    def since(
        self, index: int, limit: int | None = None, max_bytes: int | None = None
    ) -> list[IndexedEvent]:
        """Events with an index greater than `index` (from the first held, when `index` is
        older): at most `limit` of them, and no more than fit in `max_bytes` of records
        (always at least one). Copies only what it returns."""
        first = self._events[0].index if self._events else 1
        start = max(0, index + 1 - first)
        end = len(self._events) if limit is None else min(len(self._events), start + limit)
        if max_bytes is not None:
            total = 0
            for position in range(start, end):
                total += self._sizes[position]
                if total > max_bytes and position > start:
                    end = position
                    break
        return self._events[start:end]

    def adoptable_since(self, index: int) -> list[IndexedEvent]:
        """What a divergent log hands the new master past `index`: the decisions its
        snapshot retained of records already cut off, then the records it holds."""
        retained = self.snapshot.decisions if self.snapshot is not None else ()
        first = self.first_index
        return [e for e in retained if index < e.index < first] + self.since(index)

    def append(self, events: Iterable[IndexedEvent]) -> None:
        """Write, flush and fsync `events`, which must continue the log."""
        batch = list(events)
        expected = self.last_index + 1
        for event in batch:
            if event.index != expected:
                raise ValueError(f"append of index {event.index}, expected {expected}")
            expected += 1
        records = [encode_record(e) for e in batch]
        self._file.write(b"".join(records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._events.extend(batch)
        self._sizes.extend(len(r) for r in records)
        self._unsnapshotted_bytes += sum(len(r) for r in records)

    def compact(self, state: State, keep: int, keep_bytes: int | None = None) -> int:
        """Snapshot `state` (the state at the last index) and cut the log down to its last
        `keep` records (fewer where they would pass `keep_bytes`), archiving the ones cut
        off when the log keeps an archive.

        Order makes every crash safe: the snapshot is durable before any record goes, the
        archive holds the records before the log drops them. Returns how many were cut.
        """
        if state.last_index != self.last_index:
            raise ValueError(f"snapshot of index {state.last_index}, log at {self.last_index}")
        old = self.snapshot
        covered = self.since(self.snapshot_index)
        openers = openers_through(old.openers if old else (), covered)
        # Every decision the snapshot covers, kept records' too: a follower that installs
        # it receives no records at or before its index.
        decisions = decisions_through(old.decisions if old else (), covered)
        commands = commands_through(old.commands if old else (), covered)
        cut = max(0, len(self._events) - keep)
        if keep_bytes is not None:
            kept_bytes = sum(self._sizes[cut:])
            while cut < len(self._events) and kept_bytes > keep_bytes:
                kept_bytes -= self._sizes[cut]
                cut += 1
        snapshot = Snapshot(state, openers, decisions, commands)
        data = encode_snapshot(snapshot)
        write_atomically(snapshot_path(self.path), data)
        self.snapshot, self.snapshot_bytes = snapshot, data
        self._unsnapshotted_bytes = 0
        if cut:
            self._cut_front(cut)
        return cut

    def install(self, snapshot: Snapshot, data: bytes) -> None:
        """Start over from a peer's snapshot (this log is a prefix of the peer's and too far
        behind it): the snapshot replaces every record."""
        self._rewrite([], [])
        write_atomically(snapshot_path(self.path), data)
        self.snapshot, self.snapshot_bytes = snapshot, data
        self._unsnapshotted_bytes = 0
        self.compactions += 1

    def _cut_front(self, count: int) -> None:
        cut_bytes = sum(self._sizes[:count])
        self._file.flush()
        with open(self.path, "rb") as f:
            head = f.read(cut_bytes)
            tail = f.read()
        if self.archive:
            _append_whole_records(archive_path(self.path), head)
        self._replace_file(tail)
        self._events = self._events[count:]
        self._sizes = self._sizes[count:]
        self.compactions += 1

    def _rewrite(self, keep: list[IndexedEvent], sizes: list[int]) -> None:
        self._replace_file(b"".join(encode_record(e) for e in keep))
        self._events = keep
        self._sizes = sizes
        self._unsnapshotted_bytes = self._bytes_after(self.snapshot_index)

    def _replace_file(self, data: bytes) -> None:
        """Swap the log file for one holding `data`, through a temporary copy and a rename,
        so a crash leaves either the old file or the new one."""
        self._file.close()
        write_atomically(self.path, data)
        self._file = open(self.path, "ab")  # noqa: SIM115 — held for the log's lifetime

    def truncate_after(self, index: int) -> list[IndexedEvent]:
        """Drop the records after `index` (a suffix that diverges from the master's log).

        When `index` is older than the snapshot, the snapshot (a state past the cut) goes
        too and the log starts over empty: the node catches up from the master. Returns
        the dropped events.
        """
        if index < self.snapshot_index:
            dropped = self.since(index)
            if self.archive:
                _cut_archive_after(archive_path(self.path), index)
            snapshot_path(self.path).unlink(missing_ok=True)
            fsync_directory(self.path.parent)
            self.snapshot, self.snapshot_bytes = None, b""
            self._rewrite([], [])
            self.truncations += 1
            return dropped
        keep = [e for e in self._events if e.index <= index]
        dropped = self._events[len(keep) :]
        if not dropped:
            return []
        self._rewrite(keep, self._sizes[: len(keep)])
        self.truncations += 1
        return dropped

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _set_aside(path: Path) -> None:
    """Move a damaged file out of the way (kept for a person to look at)."""
    if not path.exists():
        return
    target = path.with_name(path.name + ".damaged")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.damaged-{number}")
    os.replace(path, target)


def _append_whole_records(path: Path, records: bytes) -> None:
    """Append to a file of records, first cutting off a torn last line a crash left."""
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(max(0, size - 1))
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.seek(0, os.SEEK_END)
        f.write(records)
        f.flush()
        os.fsync(f.fileno())


def _cut_archive_after(path: Path, index: int) -> None:
    """Drop an archive's records after `index` (they belong to a branch that lost)."""
    if not path.exists():
        return
    kept = b"".join(line + b"\n" for line, event in _archived(path) if event.index <= index)
    write_atomically(path, kept)


def _archived(path: Path) -> Iterator[tuple[bytes, IndexedEvent]]:
    """Each whole record of a file of records, with its line; damage is `LogCorrupted`."""
    if not path.exists():
        return
    lines = path.read_bytes().split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        try:
            yield line, decode_record(line)
        except CodecError as exc:
            raise LogCorrupted(f"{path}: record {number}: {exc}") from exc


def read_archive(log_path: Path) -> list[IndexedEvent]:
    """Every record a log ever held, from its archive and then the log itself: for `exo
    replay --archive`. Records an interrupted compaction archived twice appear once;
    a gap (the node installed a peer's snapshot) raises `LogCorrupted`."""
    events: list[IndexedEvent] = []
    for path in (archive_path(log_path), log_path):
        for _, event in _archived(path):
            if events and event.index <= events[-1].index:
                continue
            if events and event.index != events[-1].index + 1:
                raise LogCorrupted(
                    f"{path}: index {event.index} follows {events[-1].index}: the archive "
                    "has a gap (the node installed a peer's snapshot there)"
                )
            events.append(event)
    return events
