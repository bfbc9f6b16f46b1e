"""The topology actor: keeps this node's profile in the replicated state.

It compares the state with the machine: a profile missing (a new master that never heard
of us, a node marked down, a log cut back) or out of date by enough to matter is
reported again.
"""

from __future__ import annotations

import trio
from attrs import evolve

from exo.actors.command_client import CommandClient
from exo.actors.replica import Replica
from exo.environment import Environment
from exo.events.commands import RegisterNode
from exo.events.facts import NodeProfile
from exo.events.ids import NodeId

# Free memory moves constantly; only a change this large is worth an event.
MEMORY_REPORT_STEP = 256 * 1024 * 1024


def read_profile(
    env: Environment, api_port: int, peer_port: int, worker: bool = True, ring_port: int = 31700
) -> NodeProfile:
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
        worker=worker,
        ring_port=ring_port,
    )


def worth_reporting(previous: NodeProfile | None, current: NodeProfile) -> bool:
    if previous is None:
        return True
    if abs(previous.memory_available - current.memory_available) >= MEMORY_REPORT_STEP:
        return True
    return evolve(previous, memory_available=current.memory_available) != current


async def run_topology(
    env: Environment,
    replica: Replica,
    commands: CommandClient,
    node_id: NodeId,
    api_port: int,
    peer_port: int,
    interval: float,
    worker: bool = True,
    ring_port: int = 31700,
) -> None:
    while True:
        profile = read_profile(env, api_port, peer_port, worker, ring_port)
        if worth_reporting(replica.state.nodes.get(node_id), profile):
            # Waiting for the answer keeps one report in flight, through elections too.
            outcome = await commands.call(RegisterNode(profile))
            if not outcome.accepted:
                await env.sleep(interval)
        with trio.move_on_after(interval):
            await replica.wait_changed()
