"""How fast the simulator runs: simulated seconds per wall-clock second.

The baseline is real time (1 simulated second per wall second, what a test on real
processes and real sockets gets). Seeds run one after another in this process, so the
figure is per core; `--jobs` runs the CLI's process pool as CI does, for throughput.

    .venv/bin/python benchmarks/simulation_speed.py --seeds 0..49
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from simulations.__main__ import parse_seeds, run_many
from simulations.run import run_seed


def main() -> None:
    parser = argparse.ArgumentParser(description="Simulated seconds per wall-clock second.")
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0..49"))
    parser.add_argument("--jobs", type=int, default=2, help="processes for the pool figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the nodes' own warnings are not figures

    per_seed: list[tuple[float, float, int, int]] = []
    serial_started = time.perf_counter()
    for seed in args.seeds:
        started = time.perf_counter()
        result = run_seed(seed)
        wall = time.perf_counter() - started
        per_seed.append((result.simulated_seconds, wall, result.messages, result.elections))
        if not result.passed:
            raise SystemExit(f"seed {seed} failed: {result.violations}")
    serial_wall = time.perf_counter() - serial_started
    simulated = sum(s for s, _, _, _ in per_seed)
    messages = sum(m for _, _, m, _ in per_seed)
    ratios = [s / w for s, w, _, _ in per_seed]

    pool_started = time.perf_counter()
    pool_results = list(run_many(args.seeds, args.jobs, Path("sim-failures"), False))
    pool_wall = time.perf_counter() - pool_started
    pool_simulated = sum(r.simulated_seconds for r in pool_results)

    figures = {
        "seeds": len(per_seed),
        "simulated_seconds": round(simulated, 1),
        "serial_wall_seconds": round(serial_wall, 2),
        "serial_simulated_per_wall": round(simulated / serial_wall, 1),
        "per_seed_simulated_per_wall_median": round(statistics.median(ratios), 1),
        "per_seed_simulated_per_wall_min": round(min(ratios), 1),
        "messages_delivered_per_wall_second": round(messages / serial_wall),
        "pool_jobs": args.jobs,
        "pool_wall_seconds": round(pool_wall, 2),
        "pool_simulated_per_wall": round(pool_simulated / pool_wall, 1),
        "wall_seconds_per_seed_pool": round(pool_wall / len(per_seed), 3),
    }
    for name, value in figures.items():
        print(f"{name:40} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
