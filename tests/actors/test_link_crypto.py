"""Encrypted peer links: the handshake's keys, sealed frames, and what a wire tap sees."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing
from attrs import evolve
from trio_websocket import WebSocketConnection
from wsproto.frame_protocol import FrameProtocol

from exo.actors.link_auth import AuthError, Hello, LinkAuth, Session, TokenHex, cluster_secret
from exo.actors.links import LinkNetwork
from exo.actors.wire import PeerMessage, Ping, RelayRequest, RelayToken
from exo.engine.protocol import ChatMessage, GenerateRequest, SamplingParams, TokenOut
from exo.events.codec import decode, encode
from exo.events.ids import InstanceId, NodeId
from exo.link_cipher import FrameError, LinkCipher, link_cipher
from simulations.network import LinkModel
from simulations.sockets import SimSockets, _Pipe
from tests.actors.test_links import linked_node

SECRET = cluster_secret("home", "key")
DIALER = LinkAuth("home", NodeId("node-a"), SECRET, 1)
LISTENER = LinkAuth("home", NodeId("node-b"), SECRET, 2)
PROMPT = "the launch code is 0451, tell nobody"
REPLY = "understood, my lips are sealed"


def tokens(seed: int) -> TokenHex:
    """Seeded randomness, as the simulator's `Environment` gives it."""
    rng = random.Random(seed)
    return lambda n: rng.getrandbits(8 * n).to_bytes(n, "big").hex()


class _End:
    """One end of an in-memory WebSocket as the handshake uses it; what it sends is kept."""

    def __init__(
        self,
        send: trio.MemorySendChannel[str | bytes],
        receive: trio.MemoryReceiveChannel[str | bytes],
    ) -> None:
        self._send, self._receive = send, receive
        self.sent: list[str | bytes] = []

    async def send_message(self, message: str | bytes) -> None:
        self.sent.append(message)
        await self._send.send(message)

    async def get_message(self) -> str | bytes:
        return await self._receive.receive()


def _pair() -> tuple[_End, _End]:
    to_b, at_b = trio.open_memory_channel[str | bytes](16)
    to_a, at_a = trio.open_memory_channel[str | bytes](16)
    return _End(to_b, at_a), _End(to_a, at_b)


def _ws(end: _End) -> WebSocketConnection:
    return cast(WebSocketConnection, end)


async def _handshake(
    dialer: LinkAuth, listener: LinkAuth, ends: tuple[_End, _End], seed: int = 0
) -> dict[str, Session | AuthError]:
    """Both sides of one handshake: each side's session, or the `AuthError` it raised."""
    outcome: dict[str, Session | AuthError] = {}

    async def side(name: str, run: Awaitable[Session]) -> None:
        try:
            outcome[name] = await run
        except AuthError as exc:
            outcome[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "dialer", dialer.as_dialer(_ws(ends[0]), tokens(seed)))
        nursery.start_soon(side, "listener", listener.as_listener(_ws(ends[1]), tokens(seed + 1)))
    return outcome


async def _sessions(seed: int = 0) -> tuple[Session, Session]:
    outcome = await _handshake(DIALER, LISTENER, _pair(), seed)
    dialer, listener = outcome["dialer"], outcome["listener"]
    assert isinstance(dialer, Session) and isinstance(listener, Session)
    return dialer, listener


async def test_a_handshake_agrees_a_fresh_key_for_each_direction() -> None:
    dialer, listener = await _sessions()
    assert (dialer.peer, listener.peer) == ("node-b", "node-a")
    for size in (200, 64 * 1024):
        frame = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        sealed = dialer.cipher.seal(frame)
        assert len(sealed) == size + 16 and frame[:32] not in sealed
        assert listener.cipher.open(sealed) == frame
        assert dialer.cipher.open(listener.cipher.seal(frame)) == frame
    # One key per direction: a frame the dialer sealed does not open as the listener's.
    with pytest.raises(FrameError):
        dialer.cipher.open(dialer.cipher.seal(b"reflected"))
    # Another handshake between the same nodes draws other keys.
    again, _ = await _sessions(seed=7)
    _, listener = await _sessions()
    with pytest.raises(FrameError):
        listener.cipher.open(again.cipher.seal(b"from another link"))


def _ciphers() -> tuple[LinkCipher, LinkCipher]:
    shared, context = bytes(range(32)), b"a|b|n1|n2|e1|e2"
    return (
        link_cipher(shared, SECRET, context, dialer=True),
        link_cipher(shared, SECRET, context, dialer=False),
    )


@pytest.mark.parametrize("position", [0, 100, -1])
def test_a_flipped_byte_does_not_open(position: int) -> None:
    dialer, listener = _ciphers()
    sealed = bytearray(dialer.seal(b"p" * 200))
    sealed[position] ^= 0x01
    with pytest.raises(FrameError, match="failed its integrity check"):
        listener.open(bytes(sealed))


def test_a_replayed_or_reordered_frame_does_not_open() -> None:
    dialer, listener = _ciphers()
    first = dialer.seal(b"first")
    assert listener.open(first) == b"first"
    with pytest.raises(FrameError):
        listener.open(first)  # replayed
    dialer, listener = _ciphers()
    dialer.seal(b"first")
    with pytest.raises(FrameError):
        listener.open(dialer.seal(b"second"))  # the first was held back


def test_keys_need_the_cluster_secret() -> None:
    shared, context = bytes(range(32)), b"a|b|n1|n2|e1|e2"
    dialer = link_cipher(shared, SECRET, context, dialer=True)
    outsider = link_cipher(shared, cluster_secret("home", "other"), context, dialer=False)
    with pytest.raises(FrameError):
        outsider.open(dialer.seal(b"hello"))


async def test_a_replayed_dialer_handshake_is_refused() -> None:
    """An eavesdropper replays a dialer's hello and proof to the listener: the listener's
    fresh nonce and ephemeral key make the old proof wrong."""
    ends = _pair()
    await _handshake(DIALER, LISTENER, ends)
    hello, answer = ends[0].sent
    replayer, listener_end = _pair()
    await replayer.send_message(hello)
    await replayer.send_message(answer)
    with pytest.raises(AuthError, match="does not hold our cluster key"):
        await LISTENER.as_listener(_ws(listener_end), tokens(99))
    assert listener_end.sent[-1] == "wrong cluster key"
    # What refused it is the listener's fresh randomness: drawn again, the replay passes.
    replayer, listener_end = _pair()
    await replayer.send_message(hello)
    await replayer.send_message(answer)
    assert isinstance(await LISTENER.as_listener(_ws(listener_end), tokens(1)), Session)


async def test_a_man_in_the_middle_cannot_swap_the_ephemeral_keys() -> None:
    """One without the key who puts its own ephemeral key in the dialer's hello (to read
    the link) is caught: the listener's proof covers the key the listener saw."""
    dialer_end, at_middle = _pair()
    to_listener, listener_end = _pair()

    async def middle() -> None:
        hello = decode(await at_middle.get_message(), Hello)
        swapped = evolve(hello, ephemeral=tokens(42)(32))
        await to_listener.send_message(encode(swapped).decode())
        while True:  # the rest as it is
            await at_middle.send_message(await to_listener.get_message())
            await to_listener.send_message(await at_middle.get_message())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(middle)
        outcome = await _handshake(DIALER, LISTENER, (dialer_end, listener_end))
        nursery.cancel_scope.cancel()
    assert "does not hold our cluster key" in str(outcome["dialer"])
    assert isinstance(outcome["listener"], AuthError)


async def test_a_wrong_key_is_still_refused_on_both_sides() -> None:
    outsider = LinkAuth("home", NodeId("node-a"), cluster_secret("home", "other"), 1)
    outcome = await _handshake(outsider, LISTENER, _pair())
    assert all(isinstance(o, AuthError) for o in outcome.values()), outcome
    assert "does not hold our cluster key" in str(outcome["dialer"])


async def test_a_hello_without_an_ephemeral_key_is_refused() -> None:
    """An exo from before encrypted links: refused, saying why."""
    old, listener_end = _pair()
    await old.send_message(encode(Hello("home", "node-a", "00" * 16, 1)).decode())
    with pytest.raises(AuthError, match="no ephemeral key"):
        await LISTENER.as_listener(_ws(listener_end), tokens(1))


# -- whole links over simulated TCP --------------------------------------------------


class _Tapped(SimSockets):
    """Simulated TCP with a wire tap: every byte sent, per direction; and it can flip a
    byte of the next send from one host to another."""

    def __init__(self) -> None:
        super().__init__(random.Random(0), LinkModel(), lambda a, b: True, lambda line: None)
        self.wire: dict[tuple[str, str], bytearray] = {}
        self.damage: tuple[str, str] | None = None

    def _send(self, pipe: _Pipe, data: bytes) -> None:
        if (pipe.source, pipe.target) == self.damage:
            data, self.damage = data[:-1] + bytes([data[-1] ^ 0x01]), None
        self.wire.setdefault((pipe.source, pipe.target), bytearray()).extend(data)
        super()._send(pipe, data)


def _observed(stream: bytes | bytearray, *, from_dialer: bool) -> list[bytes]:
    """What a passive observer reads in one direction of a link: every WebSocket
    payload after the HTTP upgrade, unmasked (the mask travels in each frame)."""
    _, _, frames = stream.partition(b"\r\n\r\n")
    protocol = FrameProtocol(client=not from_dialer, extensions=[])
    protocol.receive_bytes(bytes(frames))
    payloads = [frame.payload for frame in protocol.received_frames()]
    return [p if isinstance(p, bytes) else str(p).encode() for p in payloads]


def _two_nodes(
    net: SimSockets, tmp_path: Path, b_key: str = "k"
) -> tuple[LinkNetwork, LinkNetwork]:
    """node-a listens at 10.0.0.1; node-b (with `b_key`) dials it from 10.0.0.2."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = linked_node(net, tmp_path / "a", "10.0.0.1", "node-a", ())
    b = linked_node(net, tmp_path / "b", "10.0.0.2", "node-b", ("10.0.0.1:7000",), b_key)
    return a, b


def test_a_relayed_request_crosses_the_wire_sealed(tmp_path: Path) -> None:
    """The prompt and the reply arrive, and a tap on the wire sees neither."""
    request = GenerateRequest("req-1", (ChatMessage("user", PROMPT),), SamplingParams())

    async def main() -> None:
        net = _Tapped()
        a, b = _two_nodes(net, tmp_path)
        heard: dict[NodeId, list[PeerMessage]] = {NodeId("node-a"): [], NodeId("node-b"): []}
        a.connect(a.node_id, lambda peer, m: heard[a.node_id].append(m))
        b.connect(b.node_id, lambda peer, m: heard[b.node_id].append(m))
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run, "0.0.0.0")
            await nursery.start(b.run, "0.0.0.0")
            await trio.sleep(1)
            await b.send_data(a.node_id, RelayRequest(InstanceId("i"), request))
            await a.send_data(b.node_id, RelayToken(TokenOut("req-1", REPLY, 7)))
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert heard[a.node_id] == [RelayRequest(InstanceId("i"), request)]
        assert heard[b.node_id] == [RelayToken(TokenOut("req-1", REPLY, 7))]
        assert a.stats.links == 1
        seen = _observed(net.wire["10.0.0.2", "10.0.0.1"], from_dialer=True)
        seen += _observed(net.wire["10.0.0.1", "10.0.0.2"], from_dialer=False)
        # The tap reads the hellos (namespace and node ids stay in clear) ...
        assert any(b'"node-b"' in payload for payload in seen)
        assert any(b'"node-a"' in payload for payload in seen)
        # ... and nothing of the prompt or the reply.
        for secret_text in (PROMPT, REPLY, "launch code", "sealed"):
            assert not any(secret_text.encode() in payload for payload in seen), secret_text

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_damaged_frame_closes_the_link_and_the_dialer_links_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        net = _Tapped()
        a, b = _two_nodes(net, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run, "0.0.0.0")
            await nursery.start(b.run, "0.0.0.0")
            await trio.sleep(1)
            assert a.linked() == ["node-b"]
            net.damage = ("10.0.0.2", "10.0.0.1")
            b.send(a.node_id, Ping(1))
            await trio.sleep(0.1)
            assert a.stats.unsealed == 1 and a.linked() == []
            await trio.sleep(2)
            assert a.stats.links == 2 and a.linked() == ["node-b"] and b.linked() == ["node-a"]
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="exo.links"):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert "link with node-b: frame 0 failed its integrity check" in caplog.text


def test_a_node_with_another_key_gets_no_link(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = _two_nodes(_Tapped(), tmp_path, b_key="other")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run, "0.0.0.0")
            await nursery.start(b.run, "0.0.0.0")
            await trio.sleep(3)
            assert a.linked() == [] and b.linked() == []
            assert a.stats.refused >= 1 and b.stats.refused >= 1
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_non_ascii_proof_is_refused_not_a_crash() -> None:
    """Found by fuzzing: `hmac.compare_digest` raised `TypeError` for a proof with a
    non-ASCII character, which escaped the listener's `AuthError` handler: anyone who
    reached the peer port could end the node's link listener with one message."""
    attacker, listener_end = _pair()
    await attacker.send_message(encode(DIALER._fresh(tokens(5))[1]).decode())
    await attacker.send_message("\u00e9" * 64)
    with pytest.raises(AuthError, match="does not hold our cluster key"):
        await LISTENER.as_listener(_ws(listener_end), tokens(6))
