"""Opening a damaged log and snapshot, as a node does at start: the log opens (a torn
tail dropped, with the reason kept for the node's warning) or refuses with
`LogCorrupted`; with `recover` (a node with peers) it always opens, saying why it
recovered. Never another exception: a node that crashes on open restarts into the same
crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from exo.events.codec import frame, unframe
from exo.events.log import EventLog, LogCorrupted, snapshot_path
from exo.events.replay import replay
from tests.events.test_log import sample_events, write_log
from tests.fuzz.mutations import FUZZ, byte_mutations, json_mutations


def _stored(home: Path) -> Path:
    """A log of 8 records, compacted to a snapshot at 8 and the last 3 records."""
    path = home / "events.log"
    write_log(path, sample_events(8))
    with EventLog.open(path) as log:
        log.compact(replay(log), keep=3)
    return path


@st.composite
def _damage(draw: st.DrawFn, data: bytes) -> bytes:
    """Bytes flipped, cut or added; or one record rewritten with a valid checksum."""
    lines = data.split(b"\n")
    at = draw(st.integers(0, max(0, len(lines) - 2)))
    if draw(st.booleans()) and lines[at]:
        lines[at] = frame(draw(json_mutations(unframe(lines[at]))))[:-1]
        return b"\n".join(lines)
    return draw(byte_mutations(data))


@FUZZ
@given(st.data(), st.booleans())
def test_a_damaged_log_or_snapshot_opens_or_is_refused(data: st.DataObject, snapshot: bool) -> None:
    with tempfile.TemporaryDirectory() as home:
        path = _stored(Path(home))
        target = snapshot_path(path) if snapshot else path
        target.write_bytes(data.draw(_damage(target.read_bytes())))
        try:
            EventLog.open(path).close()
        except LogCorrupted as exc:
            event("refused")
            assert str(exc)
        with EventLog.open(path, recover=True) as log:
            event("recovered" if log.recovered_from else "opened")
            assert log.last_index >= 0
