from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo.events.codec import CodecError
from exo.events.events import IndexedEvent, MasterElected, NodeProfiled
from exo.events.facts import NodeProfile
from exo.events.ids import NodeId
from exo.events.log import EventLog, LogCorrupted, decode_record, encode_record, read_records
from exo.events.replay import replay
from exo.events.state import ApplyError, State, apply, state_hash
from tests.events.strategies import events


def profile(memory: int) -> NodeProfile:
    return NodeProfile("h", "linux-x86_64", 2, memory * 2, memory, "cpu", 52415, 52416)


def sample_events(count: int) -> list[IndexedEvent]:
    out = [IndexedEvent(1, 1, MasterElected(NodeId("a"), 1))]
    for i in range(2, count + 1):
        out.append(IndexedEvent(i, 1, NodeProfiled(NodeId(f"n{i % 3}"), profile(i * 1000))))
    return out


def write_log(path: Path, items: list[IndexedEvent]) -> None:
    with EventLog.open(path) as log:
        log.append(items)


def test_reopen_gives_the_same_events(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    items = sample_events(10)
    write_log(path, items)
    with EventLog.open(path) as log:
        assert list(log) == items
        assert log.dropped_tail is None
        assert log.last_index == 10
        assert log.since(7) == items[7:]


@given(st.lists(events, min_size=1, max_size=20))
def test_replaying_a_log_twice_gives_the_same_hash(
    tmp_path_factory: pytest.TempPathFactory, drawn: list
) -> None:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("log") / "events.log"
    items = [IndexedEvent(i + 1, 1, e) for i, e in enumerate(drawn)]
    write_log(path, items)
    first = replay(read_records(path)[0])
    with EventLog.open(path) as log:
        second = replay(log)
    assert first == second
    assert state_hash(first) == state_hash(second)


@settings(max_examples=60)
@given(st.integers(1, 10**6))
def test_a_torn_tail_is_dropped_on_open(
    tmp_path_factory: pytest.TempPathFactory, cut_seed: int
) -> None:
    path = tmp_path_factory.mktemp("torn") / "events.log"
    items = sample_events(6)
    write_log(path, items)
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    # Cut anywhere inside the last record, newline included.
    cut = last_start + cut_seed % (len(data) - last_start)
    path.write_bytes(data[:cut])
    with EventLog.open(path) as log:
        assert list(log) == items[:-1]
        if cut > last_start:
            assert log.dropped_tail is not None
        # The file was truncated to the last whole record and appends continue from it.
        log.append([items[-1]])
    assert path.read_bytes() == data


def test_a_flipped_byte_in_the_last_record_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    items = sample_events(4)
    write_log(path, items)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with EventLog.open(path) as log:
        assert list(log) == items[:-1]
        assert "checksum" in (log.dropped_tail or "")


def test_damage_before_the_tail_is_an_error_not_a_skip(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    write_log(path, sample_events(4))
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:-3] + b"xx}"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LogCorrupted, match=r"record 2 \(after index 1\): checksum mismatch"):
        EventLog.open(path)


def test_a_gap_in_indexes_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    items = sample_events(4)
    path.write_bytes(b"".join(encode_record(e) for e in [items[0], items[2], items[3]]))
    with pytest.raises(LogCorrupted, match="index 3, expected 2"):
        EventLog.open(path)


def test_append_refuses_a_gap(tmp_path: Path) -> None:
    with (
        EventLog.open(tmp_path / "events.log") as log,
        pytest.raises(ValueError, match="expected 1"),
    ):
        log.append([IndexedEvent(2, 1, MasterElected(NodeId("a"), 1))])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "no checksum"),
        (b"zzzzzzzz {}", "bad checksum"),
        (b"00000000 {}", "checksum mismatch"),
    ],
)
def test_malformed_records(line: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_record(line)


def test_apply_refuses_gaps_repeats_and_older_terms() -> None:
    state = apply(State(), IndexedEvent(1, 2, MasterElected(NodeId("a"), 2)))
    with pytest.raises(ApplyError, match="does not follow"):
        apply(state, IndexedEvent(3, 2, MasterElected(NodeId("a"), 2)))
    with pytest.raises(ApplyError, match="does not follow"):
        apply(state, IndexedEvent(1, 2, MasterElected(NodeId("a"), 2)))
    with pytest.raises(ApplyError, match="term 1 < current 2"):
        apply(state, IndexedEvent(2, 1, MasterElected(NodeId("a"), 1)))


def test_replay_until_stops_at_the_index() -> None:
    items = sample_events(8)
    assert replay(items, until=5).last_index == 5
    assert replay(items, until=5) == replay(items[:5])


def test_truncate_after_drops_the_suffix_durably(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    items = sample_events(10)
    write_log(path, items)
    with EventLog.open(path) as log:
        assert log.truncate_after(6) == items[6:]
        assert log.truncations == 1
        assert log.last_index == 6
        assert log.truncate_after(6) == []
        # Appends continue from the cut, and the file says the same.
        log.append([IndexedEvent(7, 2, MasterElected(NodeId("b"), 2))])
    assert read_records(path)[0] == [*items[:6], IndexedEvent(7, 2, MasterElected(NodeId("b"), 2))]
    assert not (tmp_path / "events.truncating").exists()
