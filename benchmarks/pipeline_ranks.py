"""Decode speed and time to first token through 1, 2 and 3 pipeline ranks on this machine.

Runner processes (`python -m exo.engine.runner`, the real engine) joined by the MLX ring
over 127.0.0.1, each holding an equal share of the bundled model's 30 layers; rank 0
streams. The baseline is one runner holding the whole model, measured in the same run.
Greedy, the prompt "Count from 1 to 300, separated by commas.", 64 tokens; each
repetition starts each configuration afresh, alone on the machine, in turn.

    .venv/bin/python benchmarks/pipeline_ranks.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exo.engine import protocol
from exo.models.bundled import ensure_bundled_model
from tests.engine.helpers import RunnerProcess, chat
from tests.integration.nodes import free_port

PROMPT = "Count from 1 to 300, separated by commas."
TOKENS = 64
LAYERS = 30


def start(model_dir: Path, ranks: int, logs: Path) -> list[RunnerProcess]:
    hosts = tuple(f"127.0.0.1:{free_port()}" for _ in range(ranks)) if ranks > 1 else ()
    share = LAYERS // ranks
    processes = [RunnerProcess(logs / f"{ranks}-rank{r}.log", ranks > 1) for r in range(ranks)]
    for rank, process in enumerate(processes):
        end = LAYERS if rank == ranks - 1 else (rank + 1) * share
        process.send(protocol.Load(str(model_dir), rank * share, end, rank=rank, hosts=hosts))
    for process in processes:
        assert isinstance(process.recv(), protocol.Loading)
    for process in processes:
        ready = process.recv(timeout=300)
        assert isinstance(ready, protocol.Ready), process.stderr()
    return processes


def measure(rank0: RunnerProcess, request_id: str) -> tuple[float, float]:
    """(TTFT seconds, decode tokens per second) of one greedy request."""
    sent = time.perf_counter()
    rank0.send(chat(request_id, PROMPT, max_tokens=TOKENS))
    times: list[float] = []
    while True:
        message = rank0.recv(300)
        if isinstance(message, protocol.TokenOut):
            times.append(time.perf_counter())
        elif isinstance(message, protocol.Finished):
            break
    return times[0] - sent, (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description="decode through 1, 2 and 3 pipeline ranks")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exo-bench-") as tmp:
        root = Path(tmp)
        model_dir = ensure_bundled_model(root / "models")
        results: dict[int, list[tuple[float, float]]] = {1: [], 2: [], 3: []}
        # One configuration alive at a time, so that none takes cores from another.
        for rep in range(args.reps):
            for ranks in results:
                processes = start(model_dir, ranks, root)
                try:
                    measure(processes[0], f"warm-{ranks}")  # unmeasured
                    results[ranks].append(measure(processes[0], f"r{rep}-{ranks}"))
                finally:
                    for process in processes:
                        process.close()
    baseline = statistics.median(tok for _, tok in results[1])
    figures = {}
    for ranks, runs in results.items():
        tok = statistics.median(t for _, t in runs)
        ttft = statistics.median(f for f, _ in runs)
        hops = ranks if ranks > 1 else 0
        per_hop_ms = (1 / tok - 1 / baseline) / hops * 1000 if hops else 0.0
        figures[ranks] = {
            "decode_tok_s": round(tok, 2),
            "ttft_ms": round(ttft * 1000),
            "ratio_to_one_runner": round(tok / baseline, 3),
            "per_hop_ms": round(per_hop_ms, 2),
        }
        print(
            f"{ranks} rank(s): decode {tok:.2f} tok/s ({tok / baseline:.3f}x), "
            f"TTFT {ttft * 1000:.0f} ms, per hop {per_hop_ms:.2f} ms"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
