from pathlib import Path

import pytest

from exo.cli import main
from exo.events.events import IndexedEvent, MasterElected, NodeProfiled
from exo.events.facts import NodeProfile
from exo.events.ids import NodeId
from exo.events.log import EventLog
from exo.events.replay import replay
from exo.events.state import state_hash

PROFILE = NodeProfile("h", "linux-x86_64", 2, 2**34, 2**33, "cpu", 1, 2)
EVENTS = [
    IndexedEvent(1, 1, MasterElected(NodeId("a"), 1)),
    IndexedEvent(2, 1, NodeProfiled(NodeId("a"), PROFILE)),
    IndexedEvent(3, 1, NodeProfiled(NodeId("b"), PROFILE)),
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    with EventLog.open(tmp_path / "events.log") as log:
        log.append(EVENTS)
    return tmp_path


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_replay_prints_the_state_hash(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--home", str(home)]) == 0
    assert last_line(capsys) == f"state-hash: {state_hash(replay(EVENTS))}"
    assert main(["replay", str(home / "events.log"), "--until", "2"]) == 0
    assert last_line(capsys) == f"state-hash: {state_hash(replay(EVENTS[:2]))}"


def test_replay_reports_a_damaged_log(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = (home / "events.log").read_bytes().split(b"\n")
    lines[0] = b"00000000" + lines[0][8:]
    (home / "events.log").write_bytes(b"\n".join(lines))
    assert main(["replay", "--home", str(home)]) == 1
    assert "record 1: checksum mismatch" in capsys.readouterr().err


def test_replay_of_a_missing_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--home", str(tmp_path)]) == 2
    assert "no log at" in capsys.readouterr().err


def test_replay_from_a_snapshot_and_from_the_archive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.traffic import request_traffic

    events = list(request_traffic(1500, seed=3))
    with EventLog.open(tmp_path / "events.log", archive=True) as log:
        log.append(events[:1200])
        log.compact(log.state(), keep=100)
        log.append(events[1200:])
    assert main(["replay", "--home", str(tmp_path)]) == 0
    assert last_line(capsys) == f"state-hash: {state_hash(replay(events))}"
    assert main(["replay", "--home", str(tmp_path), "--until", "1300"]) == 0
    assert last_line(capsys) == f"state-hash: {state_hash(replay(events, 1300))}"
    # Older than the snapshot: only the archive has it.
    assert main(["replay", "--home", str(tmp_path), "--until", "500"]) == 2
    assert "before the snapshot at 1200; use --archive" in capsys.readouterr().err
    assert main(["replay", "--home", str(tmp_path), "--archive", "--until", "500"]) == 0
    assert last_line(capsys) == f"state-hash: {state_hash(replay(events, 500))}"
