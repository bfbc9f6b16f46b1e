"""Snapshot transfer: chunks cover what is asked, within the window; a follower gathers
a snapshot over a lossy, duplicating, reordering channel, keeps a window in flight, and
never has more than a window and a half outstanding."""

import random

import pytest

from exo.actors.snapshot_transfer import IncomingSnapshot, snapshot_chunks
from exo.actors.wire import SnapshotChunk
from exo.events.snapshot import Snapshot, SnapshotCorrupted, body_digest, encode_snapshot, from_text
from exo.events.state import State

CHUNK, WINDOW = 300, 1200
DATA = encode_snapshot(Snapshot(State(), commands=tuple((f"cmd-{n:06d}", n) for n in range(1000))))
DIGEST = body_digest(DATA)


def chunks(start: int, until: int) -> list[SnapshotChunk]:
    return snapshot_chunks(DATA, 7, DIGEST, start, until, chunk=CHUNK, window=WINDOW)


def test_chunks_cover_the_range_asked_for_within_the_window() -> None:
    assert len(DATA) > 10 * WINDOW
    sent = chunks(600, 1500)
    assert [c.offset for c in sent] == [600, 900, 1200]
    assert b"".join(from_text(c.data) for c in sent) == DATA[600:1500]
    # At most a window however much is asked; at least one chunk however little.
    assert sum(len(from_text(c.data)) for c in chunks(0, 10**9)) == WINDOW
    assert [c.offset for c in chunks(600, 0)] == [600]
    # The end of the snapshot cuts the last chunk short; a start beyond it starts over.
    last = chunks(len(DATA) - 100, len(DATA) + WINDOW)
    assert len(last) == 1 and from_text(last[0].data) == DATA[-100:]
    assert chunks(len(DATA), len(DATA) + 1)[0].offset == 0


def gather(seed: int, drop: float, duplicate: float) -> tuple[bytes, int, int]:
    """Run a follower against a master over a channel that loses, repeats and reorders;
    the follower re-asks from what it holds when nothing arrives (its sync timer).
    Returns the bytes gathered, the requests sent, and the most bytes outstanding."""
    rng = random.Random(seed)
    incoming: IncomingSnapshot | None = None
    in_flight: list[SnapshotChunk] = []
    requests, worst = 0, 0

    def ask(start: int, until: int) -> None:
        nonlocal requests
        requests += 1
        if incoming is not None:
            incoming.asked_until = max(incoming.asked_until, until)
        for chunk in chunks(start, until):
            if rng.random() >= drop:
                in_flight.append(chunk)
            if rng.random() < duplicate:
                in_flight.append(chunk)
        rng.shuffle(in_flight)

    ask(0, WINDOW)
    for _ in range(10_000):
        if not in_flight:  # a stall: the timer asks again from what is held
            assert incoming is not None
            ask(*incoming.resume_range(WINDOW))
            continue
        chunk = in_flight.pop()
        if incoming is None:
            incoming = IncomingSnapshot.starting_with(chunk, WINDOW)
        if not incoming.add(chunk):
            continue
        if incoming.complete:
            snapshot, data = incoming.finish("test")
            assert snapshot.commands[-1] == ("cmd-000999", 999)
            return data, requests, worst
        worst = max(worst, incoming.asked_until - incoming.held)
        more = incoming.next_range(WINDOW)
        if more is not None:
            ask(*more)
    raise AssertionError("the snapshot never arrived")


def test_a_clean_channel_keeps_a_window_in_flight_with_one_request_per_half_window() -> None:
    data, requests, worst = gather(seed=1, drop=0.0, duplicate=0.0)
    assert data == DATA
    assert requests <= len(DATA) // (WINDOW // 2) + 2  # not one round trip per chunk
    assert worst <= WINDOW * 3 // 2


@pytest.mark.parametrize("seed", range(20))
def test_a_lossy_reordering_channel_still_delivers_the_whole_snapshot(seed: int) -> None:
    data, _, worst = gather(seed, drop=0.2, duplicate=0.2)
    assert data == DATA
    assert worst <= WINDOW * 3 // 2


def test_a_chunk_of_another_snapshot_or_bad_base64_is_refused() -> None:
    first = chunks(0, CHUNK)[0]
    incoming = IncomingSnapshot.starting_with(first, WINDOW)
    other = SnapshotChunk(8, "other", 0, len(DATA), first.data)
    assert not incoming.matches(other)
    with pytest.raises(SnapshotCorrupted, match="base64"):
        incoming.add(SnapshotChunk(7, DIGEST, 0, len(DATA), "not base64!"))
    assert incoming.add(first) and incoming.held == CHUNK


def test_a_snapshot_whose_bytes_do_not_match_the_digest_is_refused() -> None:
    incoming = IncomingSnapshot(7, "0" * 64, len(DATA), len(DATA))
    for chunk in snapshot_chunks(DATA, 7, "0" * 64, 0, len(DATA), chunk=CHUNK, window=len(DATA)):
        incoming.add(chunk)
    assert incoming.complete
    with pytest.raises(SnapshotCorrupted, match="digest mismatch"):
        incoming.finish("test")
