import random
from pathlib import Path

import trio

from exo.actors.command_client import CommandClient
from exo.actors.decide import decide
from exo.actors.link_probe import PADDING_BYTES, LinkProbe, worth_reporting
from exo.actors.wire import PeerMessage, Ping, Pong
from exo.environment import RealEnvironment
from exo.events.commands import Envelope, ReportLinks
from exo.events.events import LinksMeasured
from exo.events.facts import LinkStats
from exo.events.ids import CommandId, NodeId
from exo.events.state import State

A, B = NodeId("a"), NodeId("b")


def test_small_changes_are_not_reported() -> None:
    old = LinkStats(B, 1000, 10**9)
    assert not worth_reporting(old, LinkStats(B, 1100, 10**9))
    assert worth_reporting(old, LinkStats(B, 1300, 10**9))
    assert worth_reporting(old, LinkStats(B, 1000, 5 * 10**8))
    assert worth_reporting(None, old)
    assert not worth_reporting(LinkStats(B, 100, None), LinkStats(B, 250, None))  # < 200 µs


def test_reports_become_state_only_when_they_change() -> None:
    links = (LinkStats(B, 500, None),)
    [event] = decide(State(), Envelope(CommandId("c"), A, ReportLinks(links)))  # type: ignore[misc]
    assert event == LinksMeasured(A, links)


async def test_round_trips_become_latency_and_throughput(
    autojump_clock: trio.testing.MockClock,
) -> None:
    env = RealEnvironment(Path("."), random.Random(0))
    sent: list[tuple[NodeId, PeerMessage]] = []
    commands = CommandClient(A, random.Random(0), lambda e: None, trio.current_time)
    probe = LinkProbe(env, commands, lambda to, m: sent.append((to, m)), lambda: [B])
    probe._ping(B, 0, trio.current_time())
    probe._ping(B, PADDING_BYTES, trio.current_time())
    small, big = (m for _, m in sent)
    assert isinstance(small, Ping) and isinstance(big, Ping) and len(big.padding) == PADDING_BYTES
    await trio.sleep(0.001)
    probe.on_pong(B, Pong(small.nonce, 0))
    await trio.sleep(0.002)  # the padded one took 2 ms more
    probe.on_pong(B, Pong(big.nonce, PADDING_BYTES))
    measured = probe._measured[B]
    assert measured.latency_us == 1000
    assert measured.bandwidth_bps is not None
    assert abs(measured.bandwidth_bps - PADDING_BYTES * 8 / 0.002) < 0.01 * measured.bandwidth_bps
