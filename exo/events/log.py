"""The on-disk event log: one record per line, `<crc32 hex> <canonical json>\\n`.

Appends are flushed and fsynced before the master broadcasts. A crash can tear only the
last record; `EventLog.open` detects that (no newline, bad checksum or bad JSON on the
last line) and truncates it away. Damage anywhere else is reported, never skipped.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from exo.events.codec import CodecError, decode, encode
from exo.events.events import IndexedEvent


class LogCorrupted(Exception):
    """A record before the last one is damaged or out of order: the log cannot be trusted."""


def encode_record(event: IndexedEvent) -> bytes:
    body = encode(event)
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_record(line: bytes) -> IndexedEvent:
    """One record (without its newline); raises `CodecError` with the reason."""
    head, sep, body = line.partition(b" ")
    if not sep or len(head) != 8:
        raise CodecError("record has no checksum prefix")
    try:
        expected = int(head, 16)
    except ValueError as exc:
        raise CodecError(f"bad checksum field {head!r}") from exc
    if zlib.crc32(body) != expected:
        raise CodecError("checksum mismatch")
    event: IndexedEvent = decode(body, IndexedEvent)
    return event


def read_records(path: Path) -> tuple[list[IndexedEvent], int, str | None]:
    """Whole records, the byte length they span, and why the tail was dropped (if it was)."""
    events, sizes, offset, dropped = _read_sized(path)
    return events, offset, dropped


def _read_sized(path: Path) -> tuple[list[IndexedEvent], list[int], int, str | None]:
    data = path.read_bytes() if path.exists() else b""
    events: list[IndexedEvent] = []
    sizes: list[int] = []
    offset = 0
    lines = data.split(b"\n")
    # A file ending in "\n" splits into a trailing empty string: not a record.
    complete, tail = lines[:-1], lines[-1]
    for number, line in enumerate(complete, start=1):
        last = number == len(complete) and not tail
        try:
            event = decode_record(line)
        except CodecError as exc:
            if last:
                return events, sizes, offset, f"record {number} is torn ({exc})"
            raise LogCorrupted(f"{path}: record {number}: {exc}") from exc
        expected = events[-1].index + 1 if events else event.index
        if event.index != expected:
            raise LogCorrupted(
                f"{path}: record {number} has index {event.index}, expected {expected}"
            )
        events.append(event)
        sizes.append(len(line) + 1)
        offset += len(line) + 1
    if tail:
        return events, sizes, offset, f"record {len(complete) + 1} is torn (no newline)"
    return events, sizes, offset, None


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """An append-only log file of indexed events. Not thread-safe; one writer."""

    def __init__(
        self,
        path: Path,
        events: list[IndexedEvent],
        dropped_tail: str | None,
        sizes: list[int] | None = None,
    ) -> None:
        self.path = path
        self._events = events
        # Each record's encoded length, so a catch-up batch is bounded in bytes for free.
        self._sizes = sizes if sizes is not None else [len(encode_record(e)) for e in events]
        self.dropped_tail = dropped_tail
        # How many times a divergent suffix was cut off (observers re-read after a change).
        self.truncations = 0
        self._file = open(path, "ab")  # noqa: SIM115 — held for the log's lifetime

    @classmethod
    def open(cls, path: Path) -> EventLog:
        """Open (creating) the log, truncating a torn last record."""
        path.parent.mkdir(parents=True, exist_ok=True)
        events, sizes, good_length, dropped = _read_sized(path)
        if dropped is not None:
            with open(path, "r+b") as f:
                f.truncate(good_length)
                f.flush()
                os.fsync(f.fileno())
        return cls(path, events, dropped, sizes)

    @property
    def last_index(self) -> int:
        return self._events[-1].index if self._events else 0

    @property
    def last_term(self) -> int:
        return self._events[-1].term if self._events else 0

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[IndexedEvent]:
        return iter(self._events)

    def since(
        self, index: int, limit: int | None = None, max_bytes: int | None = None
    ) -> list[IndexedEvent]:
        """Events with an index greater than `index`: at most `limit` of them, and no more
        than fit in `max_bytes` of records (always at least one). Copies only what it returns."""
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

    def truncate_after(self, index: int) -> list[IndexedEvent]:
        """Drop the records after `index` (a suffix that diverges from the master's log).

        Rewrites the file through a temporary copy and a rename, so a crash leaves either
        the old log or the new one. Returns the dropped events.
        """
        keep = [e for e in self._events if e.index <= index]
        dropped = self._events[len(keep) :]
        if not dropped:
            return []
        tmp = self.path.with_suffix(".truncating")
        with open(tmp, "wb") as f:
            f.write(b"".join(encode_record(e) for e in keep))
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        _fsync_directory(self.path.parent)
        self._file = open(self.path, "ab")  # noqa: SIM115 — held for the log's lifetime
        self._events = keep
        self._sizes = self._sizes[: len(keep)]
        self.truncations += 1
        return dropped

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
