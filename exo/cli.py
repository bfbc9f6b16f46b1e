"""The `exo` command: `exo node` runs a node, `exo replay` rebuilds a state from a log,
`exo models` manages the hub models in this machine's cache, `exo bench` measures a node,
`exo status` shows the cluster as a node sees it, `exo service` installs a node as a service."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from exo import models_cli, service_cli, status_cli
from exo.api.access import API_KEY_ENV, AccessError, check_origin, node_keys
from exo.bench import cli as bench_cli
from exo.events.ids import ModelId
from exo.models.cards import BUNDLED_MODEL

if TYPE_CHECKING:
    from exo.node import NodeConfig

DEFAULT_HOME = Path.home() / ".exo"


def _home(value: str | None) -> Path:
    return Path(value or os.environ.get("EXO_HOME") or DEFAULT_HOME).expanduser()


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a number of at least {least}, got {value}")
    return value


def _env_flag(name: str) -> bool:
    """An on/off flag's default from the environment: on when `name` is 1, true or yes."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node":
        return _node(args)
    if args.command == "models":
        return models_cli.run(args)
    if args.command == "bench":
        return bench_cli.run(args)
    if args.command == "status":
        return status_cli.run(args)
    if args.command == "service":
        return service_cli.run(args)
    return _replay(args)


def build_parser() -> argparse.ArgumentParser:
    """Every `exo` command and its flags."""
    parser = argparse.ArgumentParser(prog="exo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run a node of the cluster")
    node.add_argument(
        "--home", help="node home: identity, event log, models (env EXO_HOME; default ~/.exo)"
    )
    node.add_argument(
        "--api-host",
        default=os.environ.get("EXO_API_HOST", "127.0.0.1"),
        help="address the HTTP API listens on (env EXO_API_HOST; default 127.0.0.1)",
    )
    node.add_argument(
        "--api-port",
        type=int,
        default=int(os.environ.get("EXO_API_PORT", "52415")),
        help="port of the HTTP API (env EXO_API_PORT; default 52415)",
    )
    node.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="a key clients of the API must send (Authorization: Bearer KEY or x-api-key: "
        f"KEY); repeat for several (env {API_KEY_ENV}, comma-separated; default none: "
        "no key asked)",
    )
    node.add_argument(
        "--api-key-file",
        type=Path,
        metavar="PATH",
        help="more keys, one a line; blank lines and # comments are left out",
    )
    node.add_argument(
        "--insecure-api",
        action="store_true",
        default=_env_flag("EXO_INSECURE_API"),
        help="serve the API beyond this machine (--api-host not loopback) with no key: "
        "anyone who can reach it can use the node (env EXO_INSECURE_API=1)",
    )
    node.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser origin (https://host:port, or *) whose pages may call the API; "
        "repeat for several (default none: no CORS headers)",
    )
    node.add_argument(
        "--port", type=int, default=52416, help="peer port for node-to-node links (default 52416)"
    )
    node.add_argument(
        "--ring-port",
        type=int,
        default=int(os.environ.get("EXO_RING_PORT", "31700")),
        help="first of 64 TCP ports offered to the MLX rings of multi-node instances "
        "(env EXO_RING_PORT; default 31700)",
    )
    node.add_argument(
        "--peer-host",
        default=os.environ.get("EXO_PEER_HOST", "0.0.0.0"),
        help="address peer links listen on (env EXO_PEER_HOST; default all interfaces)",
    )
    node.add_argument(
        "--peers",
        default=os.environ.get("EXO_PEERS", ""),
        help="comma-separated HOST:PORT of other nodes' peer ports to dial (env EXO_PEERS)",
    )
    node.add_argument(
        "--discovery-port",
        type=int,
        default=int(os.environ.get("EXO_DISCOVERY_PORT", "52417")),
        help="UDP port of multicast discovery beacons (env EXO_DISCOVERY_PORT; default 52417)",
    )
    node.add_argument(
        "--no-discovery",
        action="store_true",
        help="do not announce this node or listen for others (use --peers)",
    )
    node.add_argument(
        "--archive-log",
        action="store_true",
        help="keep the records compaction cuts off the log in HOME/events.archive "
        "(exo replay --archive replays all history from it)",
    )
    node.add_argument(
        "--snapshot-every",
        type=_positive_int,
        default=10_000,
        help="snapshot the state and compact the log every N events (default %(default)s)",
    )
    node.add_argument(
        "--snapshot-bytes",
        type=_positive_int,
        default=32 * 1024 * 1024,
        metavar="N",
        help="also snapshot once the records since the last snapshot pass N bytes "
        "(default %(default)s)",
    )
    node.add_argument(
        "--no-worker",
        action="store_true",
        help="coordinator only: take part in election and serve the API, host no runners",
    )
    node.add_argument(
        "--namespace",
        default=os.environ.get("EXO_NAMESPACE", "exo"),
        help="cluster name: nodes of other namespaces never join (env EXO_NAMESPACE)",
    )
    node.add_argument(
        "--cluster-key",
        default=os.environ.get("EXO_CLUSTER_KEY"),
        help="shared secret every node of the cluster holds; without one, any node that "
        "knows the namespace may join (env EXO_CLUSTER_KEY)",
    )
    node.add_argument(
        "--models-dir", help="where model weights live (default HOME/models; env EXO_MODELS_DIR)"
    )
    node.add_argument(
        "--preload",
        default=BUNDLED_MODEL,
        help=f"comma-separated models to place at start (default {BUNDLED_MODEL}; '' for none)",
    )
    node.add_argument(
        "--ready-timeout", type=float, default=300.0, help="seconds a request waits for its model"
    )
    node.add_argument(
        "--batch-size",
        type=_positive_int,
        default=8,
        metavar="N",
        help="sequences each runner decodes together (default %(default)s)",
    )
    node.add_argument(
        "--queue-limit",
        type=_non_negative_int,
        default=32,
        metavar="M",
        help="requests waiting per instance beyond the batch; more get 429 (default %(default)s)",
    )
    node.add_argument(
        "--log-level",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        default=os.environ.get("EXO_LOG_LEVEL", "info").lower(),
        help="log detail (env EXO_LOG_LEVEL; debug adds runner stderr)",
    )
    node.add_argument(
        "--log-format",
        type=str.lower,
        choices=["text", "json"],
        default=os.environ.get("EXO_LOG_FORMAT", "text").lower(),
        help="text lines for people, or one JSON object a line with node id, term, event "
        "index and request id (env EXO_LOG_FORMAT; default %(default)s)",
    )

    rep = sub.add_parser(
        "replay", help="rebuild the state from an event log and print it with its hash"
    )
    rep.add_argument("log", nargs="?", help="event log file (default: HOME/events.log)")
    rep.add_argument("--home", help="node home whose log to replay")
    rep.add_argument("--until", type=int, help="stop after this event index")
    rep.add_argument(
        "--archive",
        action="store_true",
        help="replay all history from HOME/events.archive and the log (exo node --archive-log), "
        "not from the snapshot",
    )

    models_cli.add_parser(sub)
    bench_cli.add_parser(sub)
    status_cli.add_parser(sub)
    service_cli.add_parser(sub)

    return parser


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The node's configuration from `exo node`'s flags (and their environment variables);
    an AccessError names the key, keys file, origin or address it cannot start with."""
    from attrs import evolve

    from exo.actors.network import ControlTimings
    from exo.actors.runner_handle import ServingLimits
    from exo.node import NodeConfig

    models_dir = args.models_dir or os.environ.get("EXO_MODELS_DIR")
    preload = tuple(ModelId(m.strip()) for m in args.preload.split(",") if m.strip())
    return NodeConfig(
        home=_home(args.home),
        api_host=args.api_host,
        api_port=args.api_port,
        peer_port=args.port,
        models_dir=Path(models_dir).expanduser() if models_dir else None,
        ready_timeout=args.ready_timeout,
        peers=tuple(p.strip() for p in args.peers.split(",") if p.strip()),
        namespace=args.namespace,
        cluster_key=args.cluster_key or None,
        peer_host=args.peer_host,
        discovery_port=None if args.no_discovery else args.discovery_port,
        worker=not args.no_worker,
        ring_port=args.ring_port,
        preload=() if args.no_worker else preload,
        archive_log=args.archive_log,
        serving=ServingLimits(args.batch_size, args.queue_limit),
        timings=evolve(
            ControlTimings(),
            snapshot_every=args.snapshot_every,
            snapshot_bytes=args.snapshot_bytes,
        ),
        api_keys=node_keys(args.api_key, os.environ.get(API_KEY_ENV), args.api_key_file),
        insecure_api=args.insecure_api,
        cors_origins=tuple(check_origin(origin) for origin in args.cors_origin or ()),
    )


def _node(args: argparse.Namespace) -> int:
    from exo.actors.runtime import CrashLoop, leaves
    from exo.environment import RealEnvironment
    from exo.events.log import LogCorrupted
    from exo.logs import configure_logging
    from exo.node import run_node

    configure_logging(args.log_level, args.log_format)
    try:
        config = node_config(args)
    except AccessError as error:
        print(f"exo node: {error}", file=sys.stderr)
        return 2
    if config.worker and sys.platform.startswith("linux"):
        from exo.engine.blas import gemv_forward_library

        gemv_forward_library()  # compiled here if needed, not inside the event loop
    try:
        trio.run(_run_until_signalled, run_node, config, RealEnvironment(config.home))
    except BaseExceptionGroup as group:
        # Failures a user can act on (a crash-looping actor, a taken port, an unwritable
        # home) get one line; anything else is a bug and keeps its traceback.
        known, rest = group.split((CrashLoop, OSError, LogCorrupted))
        if rest is not None or known is None:
            raise
        for error in leaves(known):
            print(f"exo node: stopping: {error}", file=sys.stderr)
            if isinstance(error, LogCorrupted):
                print(
                    "exo node: the log cannot be verified, so this node will not serve it; "
                    "move HOME/events.log and HOME/events.snapshot aside to start empty "
                    "and catch up from a peer",
                    file=sys.stderr,
                )
        return 1
    return 0


async def _run_until_signalled(run: Any, *args: Any) -> None:
    """Run the node until SIGINT or SIGTERM, then cancel it so every actor cleans up."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, *args)
            async for signum in signals:
                logging.getLogger("exo.node").info("stopping on %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _replay(args: argparse.Namespace) -> int:
    from exo.events.codec import to_plain
    from exo.events.log import LogCorrupted, read_archive, read_records, snapshot_path
    from exo.events.replay import replay
    from exo.events.snapshot import SnapshotCorrupted, read_snapshot
    from exo.events.state import ApplyError, State, state_hash

    path = Path(args.log) if args.log else _home(args.home) / "events.log"
    snapshot_file = snapshot_path(path)
    if not path.exists() and not snapshot_file.exists():
        print(f"exo replay: no log at {path}", file=sys.stderr)
        return 2
    dropped = None
    try:
        if args.archive:
            state = replay(read_archive(path), args.until)
        else:
            snapshot = read_snapshot(snapshot_file)
            state = snapshot[0].state if snapshot is not None else State()
            if args.until is not None and args.until < state.last_index:
                print(
                    f"exo replay: index {args.until} is before the snapshot at "
                    f"{state.last_index}; use --archive (a node keeps one with --archive-log)",
                    file=sys.stderr,
                )
                return 2
            events, _, dropped = read_records(path)
            state = replay(events, args.until, start=state)
    except (LogCorrupted, SnapshotCorrupted, ApplyError) as exc:
        print(f"exo replay: {exc}", file=sys.stderr)
        return 1
    if dropped:
        print(f"exo replay: ignored {dropped}", file=sys.stderr)
    print(json.dumps(to_plain(state), indent=2, sort_keys=True))
    print(f"state-hash: {state_hash(state)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
