"""Link measurements: round-trip time to every linked peer, and now and then a cheap
throughput estimate, reported to the master when they change enough to matter.

A small ping measures latency; a ping padded with 256 KiB, timed the same way, measures
how long the extra bytes took: size / (big round trip - small round trip). Both are
answered by the peer's link layer as soon as they arrive, so they time the link, not
the peer's actors. Placement (issue 5) reads the results from `state.links`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from attrs import define, frozen

from exo.actors.command_client import CommandClient
from exo.actors.wire import PeerMessage, Ping, Pong
from exo.environment import Environment
from exo.events.commands import ReportLinks
from exo.events.facts import LinkStats
from exo.events.ids import NodeId

log = logging.getLogger("exo.links")

INTERVAL = 5.0
# How long a round waits for its pongs before reporting.
ANSWER_WAIT = 1.0
BANDWIDTH_EVERY = 6  # rounds: a large ping every 30 s
PADDING_BYTES = 256 * 1024
# A change smaller than this fraction (or, for latency, than 200 µs) is not reported.
REPORT_CHANGE = 0.25
MIN_LATENCY_CHANGE_US = 200


@frozen
class _Sent:
    peer: NodeId
    at: float
    size: int


@define
class _Measured:
    latency_us: int | None = None
    bandwidth_bps: int | None = None


def worth_reporting(old: LinkStats | None, new: LinkStats) -> bool:
    if old is None or old.address != new.address:
        return True
    latency_delta = abs(new.latency_us - old.latency_us)
    if latency_delta >= max(MIN_LATENCY_CHANGE_US, REPORT_CHANGE * old.latency_us):
        return True
    if (new.bandwidth_bps is None) != (old.bandwidth_bps is None):
        return True
    if new.bandwidth_bps is not None and old.bandwidth_bps is not None:
        return abs(new.bandwidth_bps - old.bandwidth_bps) >= REPORT_CHANGE * old.bandwidth_bps
    return False


class LinkProbe:
    def __init__(
        self,
        env: Environment,
        commands: CommandClient,
        send: Callable[[NodeId, PeerMessage], None],
        linked: Callable[[], list[NodeId]],
        address_of: Callable[[NodeId], str] = lambda _: "",
    ) -> None:
        self._env = env
        self._commands = commands
        self._send = send
        self._linked = linked
        self._address_of = address_of
        self._nonce = 0
        self._sent: dict[int, _Sent] = {}
        self._measured: dict[NodeId, _Measured] = {}
        self._reported: dict[NodeId, LinkStats] = {}

    def on_pong(self, peer: NodeId, pong: Pong) -> None:
        sent = self._sent.pop(pong.nonce, None)
        if sent is None or sent.peer != peer:
            return
        rtt = self._env.now() - sent.at
        measured = self._measured.setdefault(peer, _Measured())
        if sent.size == 0:
            measured.latency_us = max(1, int(rtt * 1e6))
        elif measured.latency_us is not None:
            extra = max(rtt - measured.latency_us / 1e6, 1e-6)
            measured.bandwidth_bps = int(sent.size * 8 / extra)

    async def run(self) -> None:
        rounds = 0
        while True:
            peers = self._linked()
            now = self._env.now()
            self._sent = {n: s for n, s in self._sent.items() if now - s.at < INTERVAL}
            for peer in peers:
                self._ping(peer, 0, now)
                if rounds % BANDWIDTH_EVERY == 1:
                    self._ping(peer, PADDING_BYTES, now)
            # Report this round's answers (a new link is placeable within a second).
            await self._env.sleep(ANSWER_WAIT)
            await self._report(self._linked())
            rounds += 1
            await self._env.sleep(INTERVAL - ANSWER_WAIT)

    def _ping(self, peer: NodeId, size: int, now: float) -> None:
        self._nonce += 1
        self._sent[self._nonce] = _Sent(peer, now, size)
        self._send(peer, Ping(self._nonce, "x" * size))

    async def _report(self, peers: list[NodeId]) -> None:
        current: dict[NodeId, LinkStats] = {}
        for peer in sorted(peers):
            measured = self._measured.get(peer)
            if measured is not None and measured.latency_us is not None:
                current[peer] = LinkStats(
                    peer, measured.latency_us, measured.bandwidth_bps, self._address_of(peer)
                )
        changed = set(current) != set(self._reported) or any(
            worth_reporting(self._reported.get(p), s) for p, s in current.items()
        )
        if changed:
            self._reported = current
            await self._commands.send(ReportLinks(tuple(current.values())))
