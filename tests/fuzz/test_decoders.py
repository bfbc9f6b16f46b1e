"""Every decoder of input from a peer, a rank, a runner, the network or the disk, fed arbitrary
bytes and damaged valid encodings: it returns a record or raises its own error, never
another exception and never hangs (each example is bounded by `FUZZ`'s example count
and the per-call alarm below)."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from exo.actors.discovery import Beacon, decode_beacon, encode_beacon
from exo.actors.link_auth import Hello
from exo.actors.wire import PeerMessage
from exo.engine import protocol
from exo.engine.doorbell_guard import admit
from exo.engine.sealed_socket import receive_sealed
from exo.events.codec import CodecError, decode, encode, frame
from exo.events.log import decode_record
from exo.events.snapshot import Snapshot, SnapshotCorrupted, decode_snapshot, from_text
from exo.events.state import State
from exo.link_cipher import FrameError, link_cipher
from tests.events.strategies import indexed_events, peer_messages
from tests.fuzz.mutations import FUZZ, hostile

# One decode of at most a few KiB takes microseconds; a second means a hang.
_HANG_SECONDS = 2


@contextmanager
def _bounded() -> Iterator[None]:
    def hang(*_: object) -> None:
        raise TimeoutError("the decoder hung")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(_HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _decodes_or_refuses(
    decoder: Callable[[bytes], Any], raw: bytes, kind: Any, errors: tuple[type[BaseException], ...]
) -> None:
    with _bounded():
        try:
            value = decoder(raw)
        except errors:
            return
    assert isinstance(value, kind)


def _records(types: tuple[type, ...], union: Any) -> st.SearchStrategy[bytes]:
    return st.one_of([st.from_type(t) for t in types]).map(lambda m: encode(m, union))


_peer_frames = peer_messages.map(lambda m: encode(m, PeerMessage))
_to_runner = _records(protocol.ToRunner.__args__, protocol.ToRunner)  # type: ignore[attr-defined]
_from_runner = _records(protocol.FromRunner.__args__, protocol.FromRunner)  # type: ignore[attr-defined]
_words = st.text(max_size=12)
_hellos = st.builds(Hello, _words, _words, _words, st.integers(0, 70000), _words, _words).map(
    encode
)
_records_bodies = indexed_events.map(encode)
_snapshots = st.builds(
    Snapshot,
    state=st.builds(State, last_index=st.integers(0, 2**40), term=st.integers(0, 99)),
    openers=st.lists(indexed_events, max_size=2).map(tuple),
    commands=st.lists(st.tuples(st.text(max_size=6), st.integers(0, 99)), max_size=2).map(tuple),
).map(encode)
_beacons = st.builds(Beacon, _words, _words, st.integers(-1, 70000), _words).map(encode_beacon)


@FUZZ
@given(hostile(_peer_frames))
def test_peer_frames(raw: bytes) -> None:
    _decodes_or_refuses(lambda r: decode(r, PeerMessage), raw, PeerMessage, (CodecError,))


@FUZZ
@given(hostile(_from_runner))
def test_runner_stdout_lines(raw: bytes) -> None:
    kind = protocol.FromRunner
    _decodes_or_refuses(lambda r: decode(r, kind), raw, kind, (CodecError,))


@FUZZ
@given(hostile(_to_runner))
def test_runner_stdin_lines(raw: bytes) -> None:
    kind = protocol.ToRunner
    _decodes_or_refuses(lambda r: decode(r, kind), raw, kind, (CodecError,))


@FUZZ
@given(hostile(_hellos))
def test_link_hellos(raw: bytes) -> None:
    _decodes_or_refuses(lambda r: decode(r, Hello), raw, Hello, (CodecError,))


@FUZZ
@given(hostile(_records_bodies), st.booleans())
def test_log_records(raw: bytes, checksummed: bool) -> None:
    """Damage the checksum catches, and damage written with a valid checksum (a bug or a
    hand edit), which only the decoder can catch."""
    line = frame(raw)[:-1] if checksummed else raw
    _decodes_or_refuses(decode_record, line, object, (CodecError,))


@FUZZ
@given(hostile(_snapshots), st.booleans())
def test_snapshot_files(raw: bytes, checksummed: bool) -> None:
    data = frame(raw) if checksummed else raw
    _decodes_or_refuses(lambda d: decode_snapshot(d, "fuzz"), data, Snapshot, (SnapshotCorrupted,))


@FUZZ
@given(st.text(max_size=64) | st.binary(max_size=48).map(lambda b: b.hex()))
def test_snapshot_chunks_text(text: str) -> None:
    _decodes_or_refuses(lambda t: from_text(t.decode()), text.encode(), bytes, (SnapshotCorrupted,))


@FUZZ
@given(hostile(_beacons))
def test_discovery_beacons(raw: bytes) -> None:
    """A beacon or None: other software shares multicast groups, so junk is not an error."""
    _decodes_or_refuses(decode_beacon, raw, Beacon | None, ())


_SHARED = bytes(range(32))


@FUZZ
@given(
    st.lists(st.binary(max_size=64), min_size=1, max_size=3),
    st.integers(0, 2),
    st.binary(max_size=80) | st.just(b""),
)
def test_sealed_frames(frames: list[bytes], damaged: int, damage: bytes) -> None:
    """A sealed frame replaced, cut or extended does not open; the intact ones before it do."""
    sender = link_cipher(_SHARED, b"secret", b"transcript", dialer=True)
    receiver = link_cipher(_SHARED, b"secret", b"transcript", dialer=False)
    sealed = [sender.seal(f) for f in frames]
    at = damaged % len(sealed)
    bad = damage if damage != sealed[at] else sealed[at] + b"\0"
    for good, plain in zip(sealed[:at], frames, strict=False):
        assert receiver.open(good) == plain
    _decodes_or_refuses(receiver.open, bad, bytes, (FrameError,))


def _over_tcp(read: Callable[[socket.socket], Any], raw: bytes) -> Any:
    """What `read` makes of `raw` arriving on a loopback TCP connection that then ends."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname(), timeout=2)
        reader, _ = server.accept()
        with sender, reader:
            sender.sendall(raw)
            sender.shutdown(socket.SHUT_WR)
            with _bounded():
                return read(reader)


@FUZZ
@given(st.binary(max_size=140))
def test_rank_handshake_answers(raw: bytes) -> None:
    """A doorbell or ring port's acceptor, answered with anything: admitted only with a
    proof of the key (which arbitrary bytes never are), refused otherwise, never raising."""
    hosts = [frozenset({"127.0.0.1"})] * 3
    assert _over_tcp(lambda sock: admit(sock, _SHARED, 1, hosts), raw) is None


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=3), st.integers(0, 200), st.binary(max_size=8))
def test_sealed_rank_messages(messages: list[bytes], cut: int, tail: bytes) -> None:
    """A rank's stream of sealed messages (`sealed_socket.py`), cut short or with bytes
    added: the intact messages open in order, then the stream ends (None) or the next
    piece is refused (`FrameError`)."""
    sender = link_cipher(_SHARED, b"key", b"transcript", dialer=True)
    stream = bytearray()
    for message in messages:
        sealed = sender.seal(message)
        stream += len(sealed).to_bytes(4, "big") + sealed
    raw = bytes(stream[: len(stream) - cut]) + tail if cut else bytes(stream) + tail

    def read_all(sock: socket.socket) -> list[bytes]:
        receiver = link_cipher(_SHARED, b"key", b"transcript", dialer=False)
        opened: list[bytes] = []
        try:
            while (message := receive_sealed(sock, receiver)) is not None:
                opened.append(message)
        except FrameError:
            pass
        return opened

    opened = _over_tcp(read_all, raw)
    assert opened == messages[: len(opened)]
    if not cut and not tail:
        assert opened == messages
