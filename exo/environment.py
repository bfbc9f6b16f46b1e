"""The one door to the outside world: clock, randomness, filesystem root, processes, host
facts, nonces and the network (TCP streams and listeners, UDP multicast).

Actors take an `Environment` and touch nothing else, so the simulator can pass its own:
its streams run through a seeded network, so the real link layer, data plane and MLX
ring set-up run in simulation too.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import psutil
import trio

from exo.events.facts import Accelerator

T = TypeVar("T")

log = logging.getLogger("exo.environment")


class ChildProcess(Protocol):
    """What actors use of a child process (a `trio.Process`, or the simulator's fake)."""

    @property
    def stdin(self) -> trio.abc.SendStream | None: ...
    @property
    def stdout(self) -> trio.abc.ReceiveStream | None: ...
    @property
    def stderr(self) -> trio.abc.ReceiveStream | None: ...
    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


class Environment(Protocol):
    home: Path
    random: random.Random

    def now(self) -> float:
        """Seconds on the Trio clock (monotonic; virtual under the simulator)."""
        ...

    def wall_time(self) -> float:
        """Seconds since the epoch, for timestamps shown to people and clients; never
        for measuring time (`now` is for that)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> ChildProcess:
        """Start a child process with pipes on stdin, stdout and stderr."""
        ...

    async def run_blocking(self, fn: Callable[[], T], abandon_on_cancel: bool = False) -> T:
        """Run blocking disk work (fsync, model conversion) off the event loop. With
        `abandon_on_cancel`, a cancelled caller returns at once and the thread runs on
        (it must end by itself: a stopped download's worker raises at its next chunk)."""
        ...

    def host_facts(self) -> HostFacts: ...

    async def open_tcp_stream(self, host: str, port: int) -> trio.abc.Stream:
        """A connected TCP stream to host:port (OSError when refused or unreachable)."""
        ...

    async def open_tcp_listener(self, host: str, port: int) -> trio.abc.Listener[trio.abc.Stream]:
        """A TCP listener on host:port (port 0: any free port; `listener_port` says which).
        OSError when the port is taken."""
        ...

    async def open_multicast(self, group: str, port: int) -> Multicast:
        """Membership of a UDP multicast group on every IPv4 interface that is up
        (OSError where the network has no multicast)."""
        ...

    def token_hex(self, nbytes: int) -> str:
        """Random bytes as hex, for nonces and the links' ephemeral keys: from the OS's
        secure source in production, seeded in simulation (they only have to be fresh there)."""
        ...

    def environ(self) -> dict[str, str]:
        """Environment variables handed to child processes."""
        ...


class Multicast(Protocol):
    """A multicast group joined on every interface: datagrams out on each, in from all."""

    async def send(self, data: bytes) -> None:
        """Send to the group on every interface (best effort, as UDP is)."""
        ...

    async def receive(self, max_bytes: int) -> tuple[bytes, str]:
        """The next datagram and the address it came from."""
        ...

    def close(self) -> None: ...


class HostFacts(Protocol):
    hostname: str
    platform: str
    cpu_cores: int
    accelerator: Accelerator

    def memory(self) -> tuple[int, int]:
        """(total, available) bytes of memory."""
        ...


class RealHost:
    """Facts about this machine, read from the OS."""

    def __init__(self) -> None:
        self.hostname: str = socket.gethostname()
        self.platform = f"{platform.system().lower()}-{platform.machine()}"
        self.cpu_cores = os.cpu_count() or 1
        self.accelerator: Accelerator = detect_accelerator()

    def memory(self) -> tuple[int, int]:
        return read_memory()


class RealEnvironment:
    """Production: the Trio clock, OS randomness seeded once, real processes."""

    def __init__(self, home: Path, rng: random.Random | None = None) -> None:
        self.home = home
        self.random = rng or random.Random(int.from_bytes(os.urandom(16), "big"))
        self._host = RealHost()

    def now(self) -> float:
        return trio.current_time()

    def wall_time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> trio.Process:
        return await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )

    async def run_blocking(self, fn: Callable[[], T], abandon_on_cancel: bool = False) -> T:
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=abandon_on_cancel)

    def host_facts(self) -> HostFacts:
        return self._host

    async def open_tcp_stream(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    async def open_tcp_listener(self, host: str, port: int) -> trio.abc.Listener[trio.abc.Stream]:
        return await open_tcp_listener(host, port)

    async def open_multicast(self, group: str, port: int) -> Multicast:
        return await SocketMulticast.open(group, port)

    def token_hex(self, nbytes: int) -> str:
        return secrets.token_hex(nbytes)

    def environ(self) -> dict[str, str]:
        return dict(os.environ)


def read_memory() -> tuple[int, int]:
    """(total, available) memory in bytes, as the OS counts them (psutil: MemAvailable on
    Linux, free + inactive + purgeable pages on macOS)."""
    memory = psutil.virtual_memory()
    return int(memory.total), int(memory.available)


def detect_accelerator(
    installed: Callable[[], Iterable[str]] | None = None, nvidia_driver: bool | None = None
) -> Accelerator:
    """Which MLX device a runner here will use, without importing MLX in the node: Metal
    on Apple silicon; CUDA only where MLX's CUDA backend is installed in this environment
    and an NVIDIA driver is loaded (an NVIDIA machine with the CPU wheel computes on the
    CPU); else the CPU. `installed` (distribution names) and `nvidia_driver` are for tests."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal"
    names = installed() if installed is not None else _distributions()
    has_backend = any(n.lower().replace("_", "-").startswith("mlx-cuda") for n in names)
    if nvidia_driver is None:
        nvidia_driver = Path("/proc/driver/nvidia/version").exists()
    return "cuda" if has_backend and nvidia_driver else "cpu"


def _distributions() -> list[str]:
    return [d.metadata["Name"] or "" for d in importlib.metadata.distributions()]


LISTEN_BACKLOG = 128


async def open_tcp_listener(host: str, port: int) -> trio.SocketListener:
    """A TCP listener on one socket bound to host:port (port 0: any free port), with
    SO_REUSEADDR so a restarted node gets its port back at once. A taken port is a plain
    OSError (trio's own `open_tcp_listeners` would bind every address a name resolves to)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def remote_host(stream: trio.abc.Stream) -> str:
    """The IP address at the other end of a stream from an `Environment` ("" when unknown):
    a socket's peer address, or the `remote_host` a simulated stream carries."""
    if isinstance(stream, trio.SocketStream):
        return str(stream.socket.getpeername()[0])
    return str(getattr(stream, "remote_host", ""))


def listener_port(listener: trio.abc.Listener[trio.abc.Stream]) -> int:
    """The port a listener from `open_tcp_listener` is bound to."""
    if isinstance(listener, trio.SocketListener):
        return int(listener.socket.getsockname()[1])
    port = getattr(listener, "port", None)
    if not isinstance(port, int):
        raise TypeError(f"{listener!r} says no port")
    return port


def interface_addresses() -> list[str]:
    """IPv4 addresses of the interfaces that are up (loopback included, so that nodes on
    one machine find each other too), on every OS (psutil)."""
    stats = psutil.net_if_stats()
    addresses = {
        entry.address
        for name, entries in psutil.net_if_addrs().items()
        if name in stats and stats[name].isup
        for entry in entries
        if entry.family == socket.AF_INET
    }
    return sorted(addresses)


class SocketMulticast:
    """`Multicast` over real sockets: one bound to the group's port and joined on every
    interface, one sending with TTL 1 (the local network only) and loopback on."""

    def __init__(
        self,
        group: str,
        port: int,
        receiver: trio.socket.SocketType,
        sender: trio.socket.SocketType,
    ) -> None:
        self._group = group
        self._port = port
        self._receiver = receiver
        self._sender = sender

    @classmethod
    async def open(cls, group: str, port: int) -> SocketMulticast:
        receiver = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        sender = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        try:
            receiver.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            if hasattr(trio.socket, "SO_REUSEPORT"):
                receiver.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            await receiver.bind(("", port))
            for address in interface_addresses():
                mreq = socket.inet_aton(group) + socket.inet_aton(address)
                try:
                    receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                except OSError as exc:
                    log.debug("cannot join %s on %s: %s", group, address, exc)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        except BaseException:
            receiver.close()
            sender.close()
            raise
        return cls(group, port, receiver, sender)

    async def send(self, data: bytes) -> None:
        for address in interface_addresses():
            try:
                self._sender.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address)
                )
                await self._sender.sendto(data, (self._group, self._port))
            except OSError as exc:
                log.debug("no datagram to %s on %s: %s", self._group, address, exc)

    async def receive(self, max_bytes: int) -> tuple[bytes, str]:
        data, (host, _) = await self._receiver.recvfrom(max_bytes)
        return data, str(host)

    def close(self) -> None:
        self._receiver.close()
        self._sender.close()
