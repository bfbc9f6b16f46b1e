"""The control plane at scale: apply throughput, a restart over 1,000,000 events, and a
node 1,000,000 events behind catching up.

- apply: events per second of `exo.events.state.apply` over request traffic with 16 and
  with 10,000 requests in flight (`simulations/traffic.py`).
- restart: a log of N events written as a node writes it (batches, fsync), then opened
  and its state rebuilt, twice: with exo's default snapshots (every 10,000 events,
  8,192 records kept) and without (the whole log replayed). Peak memory of each.
- requests: a simulated 2-node cluster serving R chat requests, 8 at a time, through one
  node's API (the real `NodeBackend`, fake runner): log records written per request,
  and records held and bytes on disk at the end, under exo's default snapshots.
- catch-up: two simulated nodes (the production control actor, `MockClock`), one with
  that log and one empty; simulated and wall seconds until the empty one is in sync, the
  messages it sent, the records it holds, and its peak memory; with and without
  snapshots.

Each phase runs in a fresh process, so peak memory (ru_maxrss) is that phase's own.

    .venv/bin/python benchmarks/control_plane.py [--events 1000000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exo.actors.network import ControlTimings
from exo.events.log import EventLog
from exo.events.state import State, apply, state_hash
from simulations.traffic import request_traffic

BATCH = 64  # events per append, about what a busy master commits at once
NO_SNAPSHOTS = 10**12


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def apply_rate(in_flight: int, count: int) -> dict[str, Any]:
    events = list(request_traffic(count, in_flight=in_flight))
    started = time.perf_counter()
    state = State()
    for event in events:
        state = apply(state, event)
    seconds = time.perf_counter() - started
    return {
        "in_flight": in_flight,
        "events": count,
        "events_per_s": round(count / seconds),
        "open_requests_at_end": len(state.requests),
    }


def write_log(path: Path, count: int, snapshot_every: int) -> dict[str, Any]:
    """Write `count` events as a master does: append batches, compact when due."""
    keep = ControlTimings().snapshot_keep
    started = time.perf_counter()
    state = State()
    with EventLog.open(path) as log:
        batch: list[Any] = []
        for event in request_traffic(count, in_flight=64):
            batch.append(event)
            state = apply(state, event)
            if len(batch) == BATCH:
                log.append(batch)
                batch = []
                if log.last_index - log.snapshot_index >= snapshot_every:
                    log.compact(state, keep)
        log.append(batch)
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.stem)]
    return {
        "write_seconds": round(time.perf_counter() - started, 1),
        "bytes_on_disk": sum(p.stat().st_size for p in files),
        "state_hash": state_hash(state),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def restart(path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    with EventLog.open(path) as log:
        opened = time.perf_counter() - started
        state = log.state()
        held = len(log)
    return {
        "open_seconds": round(opened, 2),
        "restart_seconds": round(time.perf_counter() - started, 2),
        "records_in_memory": held,
        "state_hash": state_hash(state),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def catch_up(path: Path, snapshot_every: int) -> dict[str, Any]:
    """Node 0 starts with the log at `path`, node 1 empty; until node 1 is in sync."""
    import shutil

    import trio
    from attrs import evolve

    from simulations.cluster import Cluster
    from simulations.network import LinkModel
    from simulations.run import run_simulated
    from simulations.scenario import GIB, NodeSpec, Scenario

    spec = NodeSpec(16 * GIB, 12 * GIB, 8)
    scenario = Scenario(0, (spec, spec), LinkModel(), 600.0, 0.0, (), (), snapshot_every)
    defaults = ControlTimings()
    scenario = evolve(
        scenario,
        snapshot_keep=defaults.snapshot_keep,
        # The baseline compacts by size no more than by count.
        snapshot_bytes=NO_SNAPSHOTS if snapshot_every == NO_SNAPSHOTS else defaults.snapshot_bytes,
    )
    sent: Counter[str] = Counter()

    def record(line: str) -> None:
        parts = line.split(" ")
        if len(parts) == 3 and ">" in parts[1]:
            sender = parts[1].split(">")[0]
            sent[f"{sender} {parts[2]}"] += 1

    async def run(root: Path) -> dict[str, Any]:
        cluster = Cluster(scenario, root, record)
        full, empty = cluster.nodes
        for suffix in (".log", ".snapshot"):
            source = path.with_suffix(suffix)
            if source.exists():
                shutil.copy(source, full.home / f"events{suffix}")
        wall = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster.run)
            started = trio.current_time()
            assert full.running is not None and empty.running is not None
            target = full.running.event_log
            while True:
                follower = empty.running
                if (
                    follower.control.synced
                    and follower.event_log.last_index >= target.last_index
                    and full.running.control.leading
                ):
                    break
                await trio.sleep(0.05)
            simulated = trio.current_time() - started
            cluster.shutdown()
            nursery.cancel_scope.cancel()
        mine = {k.split(" ")[1]: v for k, v in sent.items() if k.startswith(empty.node_id)}
        return {
            "simulated_seconds": round(simulated, 2),
            "wall_seconds": round(time.perf_counter() - wall, 1),
            "follower_messages_sent": sum(mine.values()),
            "follower_sync_requests": mine.get("SyncRequest", 0),
            "follower_records_in_memory": len(follower.event_log),
            "snapshots_installed": follower.control.snapshots_installed,
            "caught_up_to_index": follower.event_log.last_index,
            "peak_rss_mib": round(peak_rss_mib()),
        }

    return run_simulated(0, run)


def requests_footprint(count: int, concurrency: int = 8) -> dict[str, Any]:

    import trio

    from exo.engine.protocol import ChatMessage, SamplingParams
    from exo.events.commands import PlaceInstance
    from exo.models.cards import BUNDLED_MODEL
    from simulations.cluster import Cluster
    from simulations.network import LinkModel
    from simulations.run import run_simulated
    from simulations.scenario import GIB, NodeSpec, Scenario

    spec = NodeSpec(16 * GIB, 12 * GIB, 8)
    scenario = Scenario(0, (spec, spec), LinkModel(), 10**6, 0.0, (), ())

    async def run(root: Path) -> dict[str, Any]:
        cluster = Cluster(scenario, root, lambda _: None)
        async with trio.open_nursery() as nursery:
            await nursery.start(cluster.run)
            api = cluster.nodes[0]
            await trio.sleep(5)  # elected, registered
            assert api.running is not None
            running = api.running
            outcome = await running.commands.call(
                PlaceInstance(BUNDLED_MODEL, nodes=(api.node_id,))
            )
            assert outcome.accepted, outcome.reason
            leader = next(n for n in cluster.nodes if n.running and n.running.control.leading)
            assert leader.running is not None
            before = leader.running.event_log.last_index
            wall = time.perf_counter()
            simulated = trio.current_time()
            params = SamplingParams(temperature=0.0, max_tokens=8)

            async def client(number: int) -> None:
                for k in range(number, count, concurrency):
                    messages = (ChatMessage("user", f"request {k}"),)
                    async with running.backend.generate(BUNDLED_MODEL, messages, params) as chunks:
                        async for _ in chunks:
                            pass

            async with trio.open_nursery() as clients:
                for number in range(concurrency):
                    clients.start_soon(client, number)
            await trio.sleep(3)  # the last tallies land
            log = leader.running.event_log
            written = log.last_index - before
            files = [p for p in leader.home.iterdir() if p.name.startswith("events.")]
            result = {
                "requests": count,
                "concurrency": concurrency,
                "records_written": written,
                "records_per_request": round(written / count, 4),
                "records_held_at_end": len(log),
                "bytes_on_disk_at_end": sum(p.stat().st_size for p in files),
                "finished_counted": sum(
                    c.finished for c in leader.running.replica.state.request_counters.values()
                ),
                "simulated_seconds": round(trio.current_time() - simulated, 1),
                "wall_seconds": round(time.perf_counter() - wall, 1),
                "peak_rss_mib": round(peak_rss_mib()),
            }
            cluster.shutdown()
            nursery.cancel_scope.cancel()
        return result

    return run_simulated(0, run)


def in_fresh_process(function: Any, *args: Any) -> Any:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description="The control plane at scale.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--apply-events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    report: dict[str, Any] = {"events": args.events}
    report["apply"] = [
        in_fresh_process(apply_rate, in_flight, args.apply_events) for in_flight in (16, 10_000)
    ]
    for row in report["apply"]:
        print(f"apply: {row['events_per_s']:,} events/s with {row['in_flight']:,} in flight")
    served = in_fresh_process(requests_footprint, args.requests)
    report["requests"] = served
    print(
        f"requests: {served['requests']:,} served, {served['records_written']:,} log records "
        f"written ({served['records_per_request']} per request), {served['records_held_at_end']:,} "
        f"held and {served['bytes_on_disk_at_end'] / 2**20:.1f} MiB on disk at the end"
    )
    with tempfile.TemporaryDirectory(prefix="exo-control-plane-") as work:
        for label, every in (
            ("snapshots", ControlTimings().snapshot_every),
            ("none", NO_SNAPSHOTS),
        ):
            path = Path(work) / label / "events.log"
            path.parent.mkdir()
            written = in_fresh_process(write_log, path, args.events, every)
            started = in_fresh_process(restart, path)
            assert started["state_hash"] == written["state_hash"]
            caught = in_fresh_process(catch_up, path, every)
            report[f"with_{label}"] = {"write": written, "restart": started, "catch_up": caught}
            print(
                f"{label}: {args.events:,} events written in {written['write_seconds']} s "
                f"({written['bytes_on_disk'] / 2**20:.0f} MiB on disk); restart "
                f"{started['restart_seconds']} s, {started['records_in_memory']:,} records "
                f"held, peak {started['peak_rss_mib']} MiB"
            )
            print(
                f"{label}: a node {args.events:,} events behind caught up in "
                f"{caught['simulated_seconds']} simulated s ({caught['wall_seconds']} s wall), "
                f"sending {caught['follower_messages_sent']:,} messages "
                f"({caught['follower_sync_requests']:,} catch-up requests), holding "
                f"{caught['follower_records_in_memory']:,} records, peak "
                f"{caught['peak_rss_mib']} MiB"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
