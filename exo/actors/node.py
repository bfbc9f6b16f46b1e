"""A node: wires the actors together under one supervisor and serves the API."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import trio
from attrs import field, frozen

from exo.actors.api_host import NodeBackend
from exo.actors.command_client import CommandClient
from exo.actors.download import Downloader
from exo.actors.environment import Environment
from exo.actors.identity import load_or_create_node_id
from exo.actors.master import Master
from exo.actors.replica import Replica
from exo.actors.runners import RunnerSupervisor
from exo.actors.runtime import Mailbox, RestartPolicy, Supervisor
from exo.actors.topology import run_topology
from exo.api.app import create_app, serve
from exo.events.commands import CommandOutcome, Envelope, PlaceInstance
from exo.events.events import IndexedEvent
from exo.events.ids import ModelId, NodeId
from exo.events.log import EventLog
from exo.events.replay import replay
from exo.logs import set_log_context

log = logging.getLogger("exo.node")

LOG_FILE = "events.log"


@frozen
class NodeConfig:
    home: Path
    api_host: str = "127.0.0.1"
    api_port: int = 52415
    peer_port: int = 52416
    models_dir: Path | None = None
    # Models placed at start-up (when the cluster has no instance of them yet).
    preload: tuple[ModelId, ...] = ()
    # How long a request waits for a model to be placed, prepared and loaded.
    ready_timeout: float = 300.0
    profile_interval: float = 5.0
    restart_policy: RestartPolicy = field(factory=RestartPolicy)


@frozen
class RunningNode:
    node_id: NodeId
    api_host: str
    api_port: int


async def run_node(
    config: NodeConfig,
    env: Environment,
    *,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    node_id = load_or_create_node_id(config.home, env.random)
    event_log = EventLog.open(config.home / LOG_FILE)
    if event_log.dropped_tail:
        log.warning("event log: dropped a torn last record: %s", event_log.dropped_tail)
    replica = Replica(replay(event_log))
    set_log_context(lambda: (node_id, replica.state.term, replica.state.last_index))
    log.info("node %s starting at index %d", node_id, replica.state.last_index)

    commands = Mailbox[Envelope](1024)
    events = Mailbox[list[IndexedEvent]](1024)
    client = CommandClient(node_id, env.random, commands.send)

    def answer(origin: NodeId, outcome: CommandOutcome) -> None:
        if origin == node_id:
            client.resolve(outcome)

    master = Master(node_id, env, event_log, events.send.send, answer)
    downloader = Downloader(
        node_id, env, replica, client, config.models_dir or config.home / "models"
    )
    runners = RunnerSupervisor(node_id, env, replica, client, downloader.model_dir)
    backend = NodeBackend(node_id, replica, client, runners, env.random, config.ready_timeout)

    try:
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(env, nursery, config.restart_policy)
            supervisor.start("replica", lambda: replica.run(events.receive))
            supervisor.start("master", lambda: master.run(commands.receive))
            supervisor.start(
                "topology",
                lambda: run_topology(
                    env, client, config.api_port, config.peer_port, config.profile_interval
                ),
            )
            supervisor.start("download", downloader.run)
            supervisor.start("runners", runners.run)
            if config.preload:
                supervisor.start(
                    "preload", lambda: _preload(replica, client, node_id, config.preload)
                )
            app = create_app(backend, node_label=node_id)
            host, port = await nursery.start(
                partial(serve, app, config.api_host, config.api_port, listen=env.listen_tcp)
            )
            log.info("node %s serving http://%s:%d", node_id, host, port)
            task_status.started(RunningNode(node_id, host, port))
    finally:
        event_log.close()


async def _preload(
    replica: Replica, client: CommandClient, node_id: NodeId, models: tuple[ModelId, ...]
) -> None:
    """Place each preloaded model once this node is known to the master."""
    await replica.wait_until(lambda s: True if node_id in s.nodes else None)
    for model in models:
        outcome = await client.call(PlaceInstance(model, if_absent=True))
        if not outcome.accepted:
            log.warning("preload of %s rejected: %s", model, outcome.reason)
