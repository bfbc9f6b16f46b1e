"""The simulated outside world of one node incarnation: the Trio clock (virtual under
`MockClock`), a seeded random generator, a home directory kept across restarts,
synchronous disk work, fake runner processes, fixed host facts, and, on seeds whose
transport is "links", TCP through the simulated sockets (`sockets.py`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import trio
from attrs import define

from exo.environment import ChildProcess, HostFacts, Multicast
from exo.events.facts import Accelerator
from simulations.engine import SimProcess
from simulations.sockets import SimHostSockets

T = TypeVar("T")
# What a simulated wall clock reads at simulated time 0 (2027-01-15): timestamps the API
# sends are this plus the node's clock, the same on every run of a seed.
SIM_EPOCH = 1_800_000_000.0


@define
class SimHost:
    hostname: str
    platform: str
    cpu_cores: int
    accelerator: Accelerator
    memory_total: int
    memory_available: int
    # This node's clock: `clock_offset + clock_rate * simulated time`.
    clock_rate: float = 1.0
    clock_offset: float = 0.0

    def memory(self) -> tuple[int, int]:
        return self.memory_total, self.memory_available


class SimEnvironment:
    def __init__(
        self,
        home: Path,
        rng: random.Random,
        host: SimHost,
        processes: trio.Nursery,
        sockets: SimHostSockets | None = None,
    ) -> None:
        self.home = home
        self.random = rng
        self._host = host
        self._processes = processes
        self.sockets = sockets
        self.spawned: list[SimProcess] = []

    def now(self) -> float:
        return self._host.clock_offset + self._host.clock_rate * trio.current_time()

    def wall_time(self) -> float:
        return SIM_EPOCH + self.now()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(max(0.0, seconds) / self._host.clock_rate)

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> ChildProcess:
        process = SimProcess(self._processes, self.sockets)
        self.spawned.append(process)
        await trio.lowlevel.checkpoint()
        return process

    async def run_blocking(self, fn: Callable[[], T], abandon_on_cancel: bool = False) -> T:
        # Synchronous on purpose: a thread would finish at a wall-clock moment and make
        # the schedule depend on the machine.
        result = fn()
        await trio.lowlevel.checkpoint()
        return result

    def host_facts(self) -> HostFacts:
        return self._host

    async def open_tcp_stream(self, host: str, port: int) -> trio.abc.Stream:
        return await self._sockets().open_tcp_stream(host, port)

    async def open_tcp_listener(self, host: str, port: int) -> trio.abc.Listener[trio.abc.Stream]:
        return await self._sockets().open_tcp_listener(host, port)

    async def open_multicast(self, group: str, port: int) -> Multicast:
        return await self._sockets().open_multicast(group, port)

    def token_hex(self, nbytes: int) -> str:
        return self.random.getrandbits(8 * nbytes).to_bytes(nbytes, "big").hex()

    def _sockets(self) -> SimHostSockets:
        if self.sockets is None:
            raise RuntimeError("this seed's nodes talk through the message network: no sockets")
        return self.sockets

    def environ(self) -> dict[str, str]:
        return {}
