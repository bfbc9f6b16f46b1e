"""A node: wires the actors together under one supervisor and serves the API.

`run_node` is what `exo node` runs and what the simulator runs for each simulated node;
they differ only in the environment, the peer network and the model store passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio
from attrs import field, frozen

from exo.actors.api_host import NodeBackend
from exo.actors.command_client import CommandClient
from exo.actors.control import Control, Inbound
from exo.actors.data_plane import DataPlane
from exo.actors.discovery import DEFAULT_PORT as DEFAULT_DISCOVERY_PORT
from exo.actors.discovery import Discovery
from exo.actors.download import Downloader, ModelStore, NodeModelStore
from exo.actors.file_share import FileShare
from exo.actors.identity import load_or_create_node_id
from exo.actors.link_auth import cluster_secret
from exo.actors.link_probe import LinkProbe
from exo.actors.links import PEERS_FILE, LinkNetwork
from exo.actors.mesh import run_mesh
from exo.actors.network import ControlTimings, NoPeers, PeerNetwork
from exo.actors.node_metrics import state_metrics
from exo.actors.replica import Replica
from exo.actors.request_tally import RequestTallies, run_request_reports
from exo.actors.runner_handle import ServingLimits
from exo.actors.runners import RunnerSupervisor
from exo.actors.runtime import Mailbox, RestartPolicy, Supervisor
from exo.actors.topology import run_topology
from exo.actors.wire import DATA_MESSAGE_TYPES, FILE_MESSAGE_TYPES, PeerMessage
from exo.api.access import AccessError, exposure_error, exposure_warning
from exo.api.app import create_app, serve
from exo.api.clock import ApiClock
from exo.environment import Environment
from exo.events.commands import Envelope, PlaceInstance
from exo.events.facts import ModelCard
from exo.events.ids import ModelId, NodeId
from exo.events.log import EventLog
from exo.logs import set_log_context
from exo.metrics import NodeMetrics

log = logging.getLogger("exo.node")

LOG_FILE = "events.log"
# Peer messages waiting for the control actor; beyond this they are dropped (and retried).
PEER_INBOX = 4096

Deliver = Callable[[NodeId, PeerMessage], None]
# Joins the peer network as `node_id`; inbound messages go to `deliver`.
Connect = Callable[[NodeId, Deliver], PeerNetwork]


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
    timings: ControlTimings = field(factory=ControlTimings)
    serve_api: bool = True
    # Peer links (when `run_node` is given no network of its own).
    peers: tuple[str, ...] = ()
    namespace: str = "exo"
    cluster_key: str | None = None
    peer_host: str = "0.0.0.0"
    # UDP multicast discovery on this port; None turns it off.
    discovery_port: int | None = DEFAULT_DISCOVERY_PORT
    # False: a coordinator-only node (takes part in election, serves the API, no runners).
    worker: bool = True
    # First port offered to the MLX rings of multi-node instances (see placement).
    ring_port: int = 31700
    # Sequences each runner decodes together, and requests waiting beyond them.
    serving: ServingLimits = field(factory=ServingLimits)
    # Keep the records compaction cuts off the log in HOME/events.archive (exo replay
    # --archive replays the whole history from it).
    archive_log: bool = False
    # Keys the API requires (none: it is open to whoever reaches it), whether serving it
    # beyond loopback without one is meant, and the browser origins allowed (CORS).
    api_keys: tuple[str, ...] = ()
    insecure_api: bool = False
    cors_origins: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        problem = exposure_error(self.api_host, self.api_keys, self.insecure_api)
        if self.serve_api and problem is not None:
            raise AccessError(problem)


@frozen
class RunningNode:
    node_id: NodeId
    api_host: str
    api_port: int
    control: Control
    replica: Replica
    backend: NodeBackend
    runners: RunnerSupervisor
    commands: CommandClient
    supervisor: Supervisor
    event_log: EventLog
    # None where the node was given a network of its own (the simulator's message queue).
    links: LinkNetwork | None = None
    data_plane: DataPlane | None = None


def isolated(node_id: NodeId, deliver: Deliver) -> PeerNetwork:
    """A node with no peers at all (tests of one node's behaviour)."""
    return NoPeers()


async def run_node(
    config: NodeConfig,
    env: Environment,
    *,
    connect: Connect | None = None,
    store: ModelStore | None = None,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    node_id = load_or_create_node_id(config.home, env.random)
    # A node that was part of a cluster can recover a damaged log from its peers; a lone
    # one stops instead, naming the damage.
    has_peers = connect is not None or bool(config.peers) or (config.home / PEERS_FILE).exists()
    event_log = await env.run_blocking(
        lambda: EventLog.open(config.home / LOG_FILE, archive=config.archive_log, recover=has_peers)
    )
    if event_log.dropped_tail:
        log.warning("event log: dropped a torn last record: %s", event_log.dropped_tail)
    if event_log.recovered_from:
        log.error(
            "event log damaged (%s): kept the %d records that verify, set the damaged files "
            "aside as *.damaged, and will not lead until caught up from a peer",
            event_log.recovered_from,
            len(event_log),
        )
    replica = Replica(await env.run_blocking(event_log.state))
    set_log_context(lambda: (node_id, replica.state.term, replica.state.last_index))
    log.info("node %s starting at index %d", node_id, replica.state.last_index)

    inbox = Mailbox[Inbound](PEER_INBOX)

    def deliver(sender: NodeId, message: PeerMessage) -> None:
        if isinstance(message, DATA_MESSAGE_TYPES):
            if data_plane is not None:
                data_plane.deliver(sender, message)  # type: ignore[arg-type]
            return
        if isinstance(message, FILE_MESSAGE_TYPES):
            if file_share is not None:
                file_share.deliver(sender, message)  # type: ignore[arg-type]
            return
        try:
            inbox.send.send_nowait((sender, message))
        except trio.WouldBlock:
            log.warning("peer inbox full; dropped %s from %s", type(message).__name__, sender)

    links: LinkNetwork | None = None
    if connect is None:
        links = LinkNetwork(
            env,
            node_id,
            config.home,
            config.namespace,
            config.cluster_key,
            config.peer_port,
            config.peers,
        )
        connect = links.connect
    network = connect(node_id, deliver)
    control: Control | None = None
    data_plane: DataPlane | None = None
    file_share: FileShare | None = None

    def submit(envelope: Envelope) -> None:
        assert control is not None
        control.submit(envelope)

    client = CommandClient(node_id, env.random, submit, env.now, config.timings.command_retry)
    control = Control(node_id, env, event_log, replica, network, client, config.timings)
    models_dir = config.models_dir or config.home / "models"
    model_store: ModelStore = store or NodeModelStore(models_dir)
    if links is not None:
        file_share = FileShare(node_id, env, replica, links, model_store.model_dir)
    downloader = Downloader(node_id, env, replica, client, models_dir, model_store, file_share)

    async def describe(name: str) -> ModelCard:
        return await env.run_blocking(lambda: model_store.describe(name))

    async def describe_local(name: str, path: str) -> ModelCard:
        return await env.run_blocking(lambda: model_store.describe_directory(Path(path), name))

    secret = cluster_secret(config.namespace, config.cluster_key)
    runners = RunnerSupervisor(
        node_id, env, replica, client, downloader.model_dir, secret, config.serving
    )
    if links is not None:
        data_plane = DataPlane(node_id, replica, runners, links)
        links.on_link_lost = _both(
            data_plane.link_lost, file_share.link_lost if file_share else None
        )
    tallies = RequestTallies()
    metrics = NodeMetrics()
    metrics.add_collector(
        state_metrics(node_id, lambda: replica.state, runners, control.statistics)
    )
    backend = NodeBackend(
        node_id,
        replica,
        client,
        runners,
        env.random,
        config.ready_timeout,
        config.worker,
        data_plane,
        describe,
        describe_local,
        tallies,
        metrics,
    )

    try:
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(env, nursery, config.restart_policy)
            if links is not None:
                # Bound before anything else starts, so a taken peer port stops the node.
                peer_port = await nursery.start(links.run, config.peer_host)
                probe = LinkProbe(env, client, links.send, links.linked, links.address_of)
                links.on_pong = probe.on_pong
                supervisor.start("link-probe", probe.run)
                if data_plane is not None:
                    supervisor.start("data-plane", data_plane.run)
                if file_share is not None:
                    supervisor.start("file-share", file_share.run)
                supervisor.start(
                    "mesh", partial(run_mesh, replica, node_id, links.linked, links.dial)
                )
                if config.discovery_port is not None:
                    discovery = Discovery(
                        env,
                        node_id,
                        config.namespace,
                        secret,
                        peer_port,
                        config.discovery_port,
                        links.dial,
                    )
                    links.discovering = True
                    supervisor.start("discovery", discovery.run)
            supervisor.start("control", lambda: control.run(inbox.receive))
            supervisor.start("commands", lambda: client.run(env.sleep))
            supervisor.start(
                "request-reports",
                partial(run_request_reports, tallies, replica, node_id, client, env.sleep),
            )
            supervisor.start(
                "topology",
                lambda: run_topology(
                    env,
                    replica,
                    client,
                    node_id,
                    config.api_port,
                    config.peer_port,
                    config.profile_interval,
                    config.worker,
                    config.ring_port,
                ),
            )
            supervisor.start("download", downloader.run)
            supervisor.start("runners", runners.run)
            if config.preload:
                supervisor.start(
                    "preload", lambda: _preload(replica, client, node_id, config.preload)
                )
            host, port = config.api_host, config.api_port
            if config.serve_api:
                app = create_app(
                    backend,
                    node_label=node_id,
                    metrics=metrics,
                    clock=ApiClock(wall=env.wall_time, elapsed=env.now),
                    api_keys=config.api_keys,
                    cors_origins=config.cors_origins,
                )
                host, port = await nursery.start(
                    partial(
                        serve,
                        app,
                        config.api_host,
                        config.api_port,
                        open_listener=env.open_tcp_listener,
                    )
                )
                log.info("node %s serving http://%s:%d", node_id, host, port)
                if (warning := exposure_warning(host, port, config.api_keys)) is not None:
                    log.warning("node %s: %s", node_id, warning)
            task_status.started(
                RunningNode(
                    node_id,
                    host,
                    port,
                    control,
                    replica,
                    backend,
                    runners,
                    client,
                    supervisor,
                    event_log,
                    links,
                    data_plane,
                )
            )
    finally:
        event_log.close()


def _both(
    first: Callable[[NodeId], None], second: Callable[[NodeId], None] | None
) -> Callable[[NodeId], None]:
    def both(peer: NodeId) -> None:
        first(peer)
        if second is not None:
            second(peer)

    return both


async def _preload(
    replica: Replica, client: CommandClient, node_id: NodeId, models: tuple[ModelId, ...]
) -> None:
    """Place each preloaded model once this node is known to the master."""
    await replica.wait_until(lambda s: True if node_id in s.nodes else None)
    for model in models:
        outcome = await client.call(PlaceInstance(model, if_absent=True))
        if not outcome.accepted:
            log.warning("preload of %s rejected: %s", model, outcome.reason)
