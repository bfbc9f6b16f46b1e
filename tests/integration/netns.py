"""Network namespaces on a bridge: several "hosts" on one machine, for tests of what
crosses a real network (multicast discovery). Traffic stays inside the namespaces; all
of them are deleted afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

SUBNET = "10.77.0"


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def bridged_namespaces(count: int) -> Iterator[list[tuple[str, str]]]:
    """`count` namespaces with one interface each on a shared bridge; yields
    (namespace, address) pairs. The bridge lives in a namespace of its own."""
    tag = f"{os.getpid()}"
    bridge = f"exo-br-{tag}"
    hosts = [f"exo-h{i}-{tag}" for i in range(count)]
    made: list[str] = []
    try:
        for name in (bridge, *hosts):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", bridge, "link", "set", "br0", "up")
        pairs = []
        for i, host in enumerate(hosts):
            address = f"{SUBNET}.{i + 1}"
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                host,
                "type",
                "veth",
                "peer",
                "name",
                f"port{i}",
                "netns",
                bridge,
            )
            _ip("-n", bridge, "link", "set", f"port{i}", "master", "br0", "up")
            _ip("-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            pairs.append((host, address))
        yield pairs
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
