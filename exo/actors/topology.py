"""The topology actor: reports this node's profile, and again when it changes enough to matter."""

from __future__ import annotations

from attrs import evolve

from exo.actors.command_client import CommandClient
from exo.actors.environment import Environment
from exo.events.commands import RegisterNode
from exo.events.facts import NodeProfile

# Free memory moves constantly; only a change this large is worth an event.
MEMORY_REPORT_STEP = 256 * 1024 * 1024


def read_profile(env: Environment, api_port: int, peer_port: int) -> NodeProfile:
    facts = env.host_facts()
    total, available = facts.memory()
    return NodeProfile(
        hostname=facts.hostname,
        platform=facts.platform,
        cpu_cores=facts.cpu_cores,
        memory_total=total,
        memory_available=available,
        accelerator=facts.accelerator,
        api_port=api_port,
        peer_port=peer_port,
    )


def worth_reporting(previous: NodeProfile | None, current: NodeProfile) -> bool:
    if previous is None:
        return True
    if abs(previous.memory_available - current.memory_available) >= MEMORY_REPORT_STEP:
        return True
    return evolve(previous, memory_available=current.memory_available) != current


async def run_topology(
    env: Environment, commands: CommandClient, api_port: int, peer_port: int, interval: float
) -> None:
    reported: NodeProfile | None = None
    while True:
        profile = read_profile(env, api_port, peer_port)
        if worth_reporting(reported, profile):
            await commands.send(RegisterNode(profile))
            reported = profile
        await env.sleep(interval)
