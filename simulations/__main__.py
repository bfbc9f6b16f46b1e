"""`python -m simulations run --seeds A..B | --seed S [--nodes N]`: see docs/simulation.md."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from simulations.run import SeedResult, configure_worker, run_job, run_seed
from simulations.scenario import MAX_NODES, Transport


def parse_seeds(text: str) -> range:
    first, sep, last = text.partition("..")
    try:
        if not sep:
            return range(int(first), int(first) + 1)
        return range(int(first), int(last) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A..B (inclusive), got {text!r}") from None


def parse_nodes(text: str) -> int:
    try:
        nodes = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of nodes, got {text!r}") from None
    if not 2 <= nodes <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"expected 2 to {MAX_NODES} nodes, got {nodes}")
    return nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run simulated clusters, one per seed")
    which = run.add_mutually_exclusive_group(required=True)
    which.add_argument("--seeds", type=parse_seeds, help="an inclusive range A..B")
    which.add_argument("--seed", type=int, help="one seed; prints its trace hash")
    run.add_argument(
        "--nodes",
        type=parse_nodes,
        help=f"nodes in every simulated cluster, 2 to {MAX_NODES} (default: drawn per seed, 2 to 7)",
    )
    run.add_argument(
        "--transport",
        choices=("messages", "links"),
        help="messages: the seeded message queue; links: simulated TCP under the real link "
        "layer (default: drawn per seed, half each)",
    )
    run.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="seeds run in parallel processes"
    )
    run.add_argument(
        "--keep",
        type=Path,
        default=Path("sim-failures"),
        help="where a failing seed's node homes (event logs) are kept (default: sim-failures)",
    )
    run.add_argument(
        "--keep-always", action="store_true", help="keep the homes of passing seeds too"
    )
    run.add_argument("--log-level", default="critical", help="log level of the simulated nodes")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(levelname)-5s [%(exo_context)s] %(name)s: %(message)s",
    )
    from exo.logs import install_context_filter

    install_context_filter()
    if args.seed is not None:
        result = run_seed(
            args.seed,
            keep_dir=args.keep,
            keep_always=args.keep_always,
            nodes=args.nodes,
            transport=args.transport,
        )
        report(result)
        print(f"simulated {result.simulated_seconds:.1f} s: {result.description}")
        if result.links is not None:
            print(f"over links: {result.links}")
        print(f"trace-hash: {result.trace_hash}")
        return 0 if result.passed else 1
    started = time.perf_counter()
    results = list(
        run_many(args.seeds, args.jobs, args.keep, args.keep_always, args.nodes, args.transport)
    )
    wall = time.perf_counter() - started
    simulated = sum(r.simulated_seconds for r in results)
    failed = [r for r in results if not r.passed]
    print(
        f"simulated {simulated:.0f} s in {wall:.1f} s wall with {args.jobs} jobs "
        f"({simulated / wall:.0f} simulated s per wall s)"
    )
    print(
        f"seeds: {len(results)} passed: {len(results) - len(failed)} failed: {len(failed)} "
        f"faults: {sum(r.faults for r in results)} elections: {sum(r.elections for r in results)}"
    )
    over_links = [r.links for r in results if r.links is not None]
    if over_links:
        print(
            f"over links: {len(over_links)} seeds, "
            f"{sum(c.links for c in over_links)} links, "
            f"{sum(c.duplicates for c in over_links)} duplicates closed, "
            f"{sum(c.replaced for c in over_links)} replaced, "
            f"{sum(c.refused for c in over_links)} handshakes refused, "
            f"{sum(c.resets for c in over_links)} resets, "
            f"{sum(c.relayed for c in over_links)} requests relayed, "
            f"{sum(c.multi_node for c in over_links)} served across 2-3 nodes, "
            f"{sum(c.http for c in over_links)} chats answered over HTTP"
        )
    return 1 if failed else 0


def run_many(
    seeds: range,
    jobs: int,
    keep: Path,
    keep_always: bool,
    nodes: int | None = None,
    transport: Transport | None = None,
) -> Iterable[SeedResult]:
    work: list[tuple[int, Path, bool, int | None, Transport | None]] = [
        (seed, keep, keep_always, nodes, transport) for seed in seeds
    ]
    if jobs <= 1:
        for job in work:
            result = run_job(job)
            report(result)
            yield result
        return
    level = logging.getLogger().level
    with multiprocessing.get_context("spawn").Pool(jobs, configure_worker, (level,)) as pool:
        for result in pool.imap(run_job, work):
            report(result)
            yield result


def report(result: SeedResult) -> None:
    if result.passed:
        return
    print(f"FAILED {result.description}", flush=True)
    for violation in result.violations:
        print(f"  - {violation}", flush=True)
    size = f" --nodes {result.forced_nodes}" if result.forced_nodes is not None else ""
    size += f" --transport {result.forced_transport}" if result.forced_transport else ""
    print(f"  replay: python -m simulations run --seed {result.seed}{size}", flush=True)
    if result.kept is not None:
        print(f"  node logs: {result.kept}/node-*/events.log (exo replay --home DIR)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
