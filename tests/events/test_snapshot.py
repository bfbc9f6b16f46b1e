"""Snapshots and compaction: the state at every index is the same with or without them,
a restart reads snapshot + tail, damage is named, crashes between the steps are safe."""

from pathlib import Path

import pytest

from exo.events.events import IndexedEvent, InstanceCreated, InstanceDeleted
from exo.events.log import EventLog, LogCorrupted, archive_path, read_archive, snapshot_path
from exo.events.replay import replay
from exo.events.snapshot import decode_snapshot, encode_snapshot
from exo.events.state import State, apply, state_hash
from simulations.traffic import request_traffic

EVENTS = list(request_traffic(3000, in_flight=40, seed=7))


def hashes_by_index(events: list[IndexedEvent]) -> dict[int, str]:
    state, out = State(), {}
    for event in events:
        state = apply(state, event)
        out[event.index] = state_hash(state)
    return out


def write_compacting(path: Path, every: int, keep: int, *, archive: bool = False) -> EventLog:
    """Append EVENTS in batches, compacting every `every` events as the control actor does."""
    log = EventLog.open(path, archive=archive)
    state = State()
    for start in range(0, len(EVENTS), 97):
        batch = EVENTS[start : start + 97]
        log.append(batch)
        for event in batch:
            state = apply(state, event)
        if log.last_index - log.snapshot_index >= every:
            log.compact(state, keep)
    return log


def test_compaction_leaves_the_state_hash_at_every_index_unchanged(tmp_path: Path) -> None:
    expected = hashes_by_index(EVENTS)
    path = tmp_path / "events.log"
    write_compacting(path, every=500, keep=200).close()
    with EventLog.open(path) as log:
        assert log.snapshot is not None and log.snapshot_index > 2000
        assert len(log) < 500 + 200  # memory bounded by the interval, not the history
        assert state_hash(log.state()) == expected[len(EVENTS)]
        # From the snapshot on, the tail reproduces every later index's hash.
        state = log.snapshot.state
        assert state_hash(state) == expected[log.snapshot_index]
        for event in log.since(log.snapshot_index):
            state = apply(state, event)
            assert state_hash(state) == expected[event.index]


def test_the_archive_and_the_log_together_replay_all_history(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    write_compacting(path, every=400, keep=100, archive=True).close()
    assert archive_path(path).exists()
    assert read_archive(path) == EVENTS
    assert state_hash(replay(read_archive(path), until=1234)) == hashes_by_index(EVENTS)[1234]


def test_a_snapshot_keeps_the_decisions_of_the_records_it_covers(tmp_path: Path) -> None:
    with write_compacting(tmp_path / "events.log", every=400, keep=50) as log:
        assert log.snapshot is not None
        decisions = [
            e
            for e in EVENTS
            if isinstance(e.event, InstanceCreated | InstanceDeleted)
            and e.index <= log.snapshot_index
        ]
        assert decisions and list(log.snapshot.decisions) == decisions
        adoptable = log.adoptable_since(3)
        assert [e for e in adoptable if e.index < log.first_index] == [
            e for e in decisions if e.index > 3 and e.index < log.first_index
        ]
        assert adoptable[-len(log) :] == list(log)


def test_a_damaged_snapshot_is_named_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    write_compacting(path, every=500, keep=100).close()
    data = bytearray(snapshot_path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    snapshot_path(path).write_bytes(bytes(data))
    with pytest.raises(LogCorrupted, match=r"events\.snapshot: checksum mismatch"):
        EventLog.open(path)


def test_a_log_that_does_not_reach_back_to_its_snapshot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    write_compacting(path, every=500, keep=10).close()
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[20:]))  # records cut from the front
    with pytest.raises(LogCorrupted, match="are missing"):
        EventLog.open(path)


def test_a_crash_between_the_snapshot_and_the_cut_loses_nothing(tmp_path: Path) -> None:
    """The snapshot is written first; if the log is not cut yet, it still holds every
    record, and opening gives the same state."""
    path = tmp_path / "events.log"
    with EventLog.open(path) as log:
        log.append(EVENTS[:1000])
    full = path.read_bytes()
    with EventLog.open(path) as log:
        log.compact(log.state(), keep=10)
    path.write_bytes(full)  # as if the crash came before the log was rewritten
    with EventLog.open(path) as log:
        assert log.snapshot_index == 1000 and len(log) == 1000
        assert log.state() == replay(EVENTS[:1000])
        log.append(EVENTS[1000:1010])
        assert log.last_index == 1010


def test_installing_a_peers_snapshot_replaces_the_records(tmp_path: Path) -> None:
    master = write_compacting(tmp_path / "master.log", every=500, keep=100)
    assert master.snapshot is not None
    follower = EventLog.open(tmp_path / "follower.log")
    follower.append(EVENTS[:50])
    old = (tmp_path / "follower.log").read_bytes()
    snapshot = decode_snapshot(master.snapshot_bytes, "test")
    follower.install(snapshot, master.snapshot_bytes)
    assert follower.last_index == snapshot.index and len(follower) == 0
    follower.append(master.since(snapshot.index))
    assert follower.state() == master.state()
    follower.close()
    # A crash after the new snapshot but with the old records back: they are dropped.
    (tmp_path / "follower.log").write_bytes(old)
    with EventLog.open(tmp_path / "follower.log") as reopened:
        assert reopened.last_index == snapshot.index and len(reopened) == 0
    master.close()


def test_truncating_before_the_snapshot_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    with write_compacting(path, every=500, keep=100, archive=True) as log:
        dropped = log.truncate_after(10)
        assert log.snapshot is None and log.last_index == 0 and dropped
        assert not snapshot_path(path).exists()
        assert [e.index for e in read_archive(path)] == list(range(1, 11))


def test_snapshot_bytes_round_trip(tmp_path: Path) -> None:
    with write_compacting(tmp_path / "events.log", every=500, keep=100) as log:
        assert log.snapshot is not None
        assert decode_snapshot(encode_snapshot(log.snapshot), "x") == log.snapshot


def test_recovery_keeps_what_verifies_and_sets_the_damage_aside(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    with EventLog.open(path) as log:
        log.append(EVENTS[:100])
    lines = path.read_bytes().split(b"\n")
    lines[40] = b"0" + lines[40][1:] if lines[40][:1] != b"0" else b"1" + lines[40][1:]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LogCorrupted, match=r"record 41 \(after index 40\)"):
        EventLog.open(path)
    with EventLog.open(path, recover=True) as log:
        assert log.recovered_from is not None and "record 41" in log.recovered_from
        assert list(log) == EVENTS[:40]
    assert (tmp_path / "events.log.damaged").exists()


def test_recovery_from_a_damaged_snapshot_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    write_compacting(path, every=500, keep=100).close()
    snapshot_path(path).write_bytes(b"00000000 {}\n")
    with EventLog.open(path, recover=True) as log:
        assert log.recovered_from is not None and "events.snapshot" in log.recovered_from
        assert log.last_index == 0 and log.snapshot is None
    assert (tmp_path / "events.snapshot.damaged").exists()
    assert (tmp_path / "events.log.damaged").exists()


def test_a_snapshot_keeps_the_ids_of_the_commands_it_covers(tmp_path: Path) -> None:
    """A master taking office after compaction still knows those commands were decided."""
    from exo.actors.master import Sequencer
    from exo.events.commands import Envelope, RegisterNode
    from exo.events.ids import CommandId, NodeId
    from tests.actors.test_mesh import profile

    with write_compacting(tmp_path / "events.log", every=500, keep=10) as log:
        assert log.snapshot is not None
        covered = [e.command_id for e in EVENTS if e.index <= log.snapshot_index]
        assert [c for c, _ in log.snapshot.commands] == covered[-len(log.snapshot.commands) :]
        old = EVENTS[5]
        assert old.command_id is not None and old.index < log.first_index
        sequencer = Sequencer(2, log.since(0), log.snapshot.commands)
        retry = Envelope(CommandId(old.command_id), NodeId("n"), RegisterNode(profile(1)))
        decided = sequencer.decide_batch(log.state(), [retry])
        assert decided.events == [] and decided.answers[0][1].index == old.index


def test_the_log_counts_the_bytes_since_its_snapshot_through_appends_cuts_and_reopens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.log"
    with EventLog.open(path) as log:
        log.append(EVENTS[:300])
        assert log.bytes_since_snapshot == path.stat().st_size
        log.compact(log.state(), keep=1000, keep_bytes=path.stat().st_size // 3)
        # The byte bound cut more than the record bound would have (it keeps all 300).
        assert 0 < len(log) < 110 and log.first_index > 190
        assert log.bytes_since_snapshot == 0
        log.append(EVENTS[300:400])
        grown = log.bytes_since_snapshot
        log.truncate_after(350)
    assert grown > 0
    with EventLog.open(path) as log:
        assert log.last_index == 350
        # The reopened log counts only the records past the snapshot at 300, not the tail.
        assert log.bytes_since_snapshot == sum(
            len(line) + 1 for line in path.read_bytes().split(b"\n")[:-1][-50:]
        )
        assert log.bytes_since_snapshot < path.stat().st_size
