"""Network namespaces on a bridge: several "hosts" on one machine, for tests of what
crosses a real network (multicast discovery, rings between distinct addresses, delays,
losses, partitions). Traffic stays inside the namespaces unless the test's own (root)
namespace is asked onto the bridge; all of them are deleted afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUBNET = "10.77.0"


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextmanager
def bridged_namespaces(count: int, impairable: bool = False) -> Iterator[list[tuple[str, str]]]:
    """`count` namespaces with one interface (eth0) each on a shared bridge; yields
    (namespace, address) pairs. The bridge lives in a namespace of its own.

    With `impairable`, the test's own (root) namespace joins the bridge too (address .254
    of a subnet of this process's own, so that concurrent runs do not share a route) and
    reaches the hosts' addresses directly; and each host's wire runs through a relay
    (relay.py) whose delay, loss or cut `impaired` sets: this kernel may lack netem."""
    tag = f"{os.getpid()}"
    subnet = f"10.78.{os.getpid() % 250}" if impairable else SUBNET
    bridge = _bridge()
    hosts = [f"exo-h{i}-{tag}" for i in range(count)]
    made: list[str] = []
    relays: list[subprocess.Popen[str]] = []
    try:
        for name in (bridge, *hosts):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", bridge, "link", "set", "br0", "up")
        pairs = []
        for i, host in enumerate(hosts):
            address = f"{subnet}.{i + 1}"
            _veth("eth0", host, f"port{i}", bridge)
            _ip("-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            if impairable:
                relays.append(_relay(bridge, host, i))
            else:
                _ip("-n", bridge, "link", "set", f"port{i}", "master", "br0", "up")
            pairs.append((host, address))
        if impairable:
            # Deleting the bridge's namespace deletes this pair too.
            root = f"exo-r-{tag}"
            _ip("link", "add", root, "type", "veth", "peer", "name", "root", "netns", bridge)
            _ip("-n", bridge, "link", "set", "root", "master", "br0", "up")
            _ip("addr", "add", f"{subnet}.254/24", "dev", root)
            _ip("link", "set", root, "up")
        yield pairs
    finally:
        died = [relay.args for relay in relays if relay.poll() is not None]
        for relay in relays:
            relay.kill()
            relay.wait(10)
        for name in reversed(made):
            control = _CONTROLS.pop(name, None)
            if control is not None:
                shutil.rmtree(control.parent, ignore_errors=True)
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
    if died:  # a wire that stopped mid-test explains whatever failed after it
        raise RuntimeError(f"relays died during the test (stderr has why): {died}")


def _veth(name: str, namespace: str, peer: str, peer_namespace: str) -> None:
    _ip(
        "link",
        "add",
        name,
        "netns",
        namespace,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        peer_namespace,
    )


def in_namespace(namespace: str, *argv: str) -> list[str]:
    """The command line that runs `argv` inside network namespace `namespace`."""
    return ["ip", "netns", "exec", namespace, *argv]


# The relay control file of each impairable host.
_CONTROLS: dict[str, Path] = {}


def _relay(bridge: str, host: str, index: int) -> subprocess.Popen[str]:
    """port{index} (the host's wire) relayed to up{index}, whose peer is on the bridge."""
    _veth(f"up{index}", bridge, f"wire{index}", bridge)
    _ip("-n", bridge, "link", "set", f"wire{index}", "master", "br0", "up")
    for device in (f"port{index}", f"up{index}"):
        _ip("-n", bridge, "link", "set", device, "up")
    control = Path(tempfile.mkdtemp(prefix="exo-relay-")) / "rule"
    _write_rule(control, "0 0 0")
    _CONTROLS[host] = control
    sides = (f"port{index}", f"up{index}", str(control))
    relay = subprocess.Popen(
        in_namespace(bridge, sys.executable, "-m", "tests.integration.relay", *sides),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert relay.stdout is not None
    with relay.stdout:
        started = relay.stdout.readline().strip() == "ready"
    if not started:
        relay.kill()
        relay.wait(10)
        raise RuntimeError(f"the relay of {host} did not start")
    return relay


def _bridge() -> str:
    return f"exo-br-{os.getpid()}"


@contextmanager
def impaired(
    namespace: str, delay_ms: float = 0, loss_percent: float = 0, cut: bool = False
) -> Iterator[None]:
    """What the host of `namespace` sends waits `delay_ms` and is lost with `loss_percent`
    probability (as `tc qdisc add dev eth0 root netem delay D loss L` there would do);
    `cut` drops everything it sends and is sent, silently (no reset, no unreachable).
    The wire is whole again on exit. Needs `bridged_namespaces(..., impairable=True)`."""
    control = _CONTROLS[namespace]
    _write_rule(control, f"{delay_ms} {loss_percent} {int(cut)}")
    try:
        yield
    finally:
        _write_rule(control, "0 0 0")


def _write_rule(control: Path, rule: str) -> None:
    """Whole or not at all: the relay never reads a half-written rule."""
    partial = control.with_suffix(".new")
    partial.write_text(rule)
    partial.replace(control)
