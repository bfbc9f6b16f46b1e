"""The link handshake fed hostile hellos and answers, as anyone who reaches the peer
port can send them: the handshake refuses (`AuthError`, or `CodecError` for a hello that
does not decode: both close the connection in `links.py`), never raises anything else,
and never waits past its own timeout."""

from __future__ import annotations

import trio
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st

from exo.actors.link_auth import AuthError, Hello
from exo.events.codec import CodecError, encode
from tests.actors.test_link_crypto import DIALER, LISTENER, _pair, _ws, tokens
from tests.fuzz.mutations import FUZZ, hostile

_REFUSALS = (AuthError, CodecError)
_BOUND = 3.0  # seconds; the handshake's own timeout is 5 s and no example waits on it


def _valid_hello(seed: int) -> bytes:
    nonce = tokens(seed)(16)
    return encode(Hello("home", "node-a", nonce, 1, "ab" * 32))


_texts = st.text(max_size=80) | st.sampled_from(["\u00e9" * 64, "0" * 64, ""])


@FUZZ
@given(hostile(st.integers(0, 99).map(_valid_hello)), _texts)
def test_the_listener_refuses_hostile_hellos_and_answers(hello: bytes, answer: str) -> None:
    async def attempt() -> None:
        attacker, listener_end = _pair()
        await attacker.send_message(hello.decode("utf-8", "replace"))
        await attacker.send_message(answer)
        try:
            with trio.fail_after(_BOUND):
                await LISTENER.as_listener(_ws(listener_end), tokens(1))
        except _REFUSALS:
            return
        raise AssertionError("a hostile handshake was accepted")

    trio.run(attempt)


@FUZZ
@given(_texts, _texts)
def test_the_dialer_refuses_a_listener_with_a_hostile_proof(ephemeral: str, claimed: str) -> None:
    """The listener's hello is the one message a dialer decodes and checks."""

    async def attempt() -> None:
        dialer_end, listener_end = _pair()
        their = Hello("home", "node-b", "ff" * 16, 2, ephemeral)
        forged = evolve(their, proof=claimed)
        await listener_end.send_message(encode(forged).decode())
        await listener_end.send_message("ok")
        try:
            with trio.fail_after(_BOUND):
                await DIALER.as_dialer(_ws(dialer_end), tokens(3))
        except _REFUSALS:
            return
        raise AssertionError(f"a forged proof {claimed!r} was accepted")

    trio.run(attempt)
