"""Formation and failover time of a 3-node cluster of real `exo node` processes.

Each repetition starts three nodes on 127.0.0.1 with fresh homes and `--peers`, times
from launch until all three agree (same master, term and hash, three nodes known), then
SIGKILLs the master and times until the other two agree on a new master. The baseline is
the failure timeout (2 s by default): the least any failover that waits to be sure a
master is gone can take.

    .venv/bin/python benchmarks/cluster_failover.py --reps 5
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exo.actors.network import ControlTimings
from tests.integration.nodes import NodeProcess, agreement, wait_for


def once(root: Path) -> tuple[float, float]:
    nodes = [NodeProcess(root / f"n{i}", root / "models") for i in range(3)]
    for node in nodes:
        peers = ",".join(f"127.0.0.1:{o.peer_port}" for o in nodes if o is not node)
        node.extra = ("--peers", peers, "--peer-host", "127.0.0.1", "--preload", "")
    try:
        launched = time.monotonic()
        for node in nodes:
            node.start()
        first = wait_for(lambda: agreement(nodes, 3), 60, "formation")
        formation = time.monotonic() - launched
        master = next(n for n in nodes if n.state()["node_id"] == first["master"])
        assert master.process is not None
        master.process.kill()
        killed = time.monotonic()
        others = [n for n in nodes if n is not master]

        def new_master() -> bool | None:
            states = [n.state() for n in others]
            views = {(s["master"], s["term"]) for s in states}
            return True if len(views) == 1 and states[0]["master"] != first["master"] else None

        wait_for(new_master, 30, "failover")
        return formation, time.monotonic() - killed
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description="3-node formation and failover times")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    formations, failovers = [], []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="exo-bench-") as tmp:
            formation, failover = once(Path(tmp))
        formations.append(formation)
        failovers.append(failover)
        print(f"rep {rep}: formation {formation:.2f} s, failover {failover:.2f} s", flush=True)
    timeout = ControlTimings().failure_timeout
    figures = {
        "reps": args.reps,
        "formation_median_s": round(statistics.median(formations), 2),
        "formation_max_s": round(max(formations), 2),
        "failover_median_s": round(statistics.median(failovers), 2),
        "failover_max_s": round(max(failovers), 2),
        "failure_timeout_s": timeout,
        "failover_over_failure_timeout": round(statistics.median(failovers) / timeout, 2),
    }
    for name, value in figures.items():
        print(f"{name:32} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
