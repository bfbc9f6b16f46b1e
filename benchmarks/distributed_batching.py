"""Batching on distributed instances: one stream against N streams sent together, on one
runner holding the whole model, a 2-rank pipeline and a 3-rank tensor group (the bundled
model's 9 attention and 3 key-value heads split three ways, not two).

Runner processes (`python -m exo.engine.runner`, the real engine) joined by the MLX ring
over 127.0.0.1, each rank with an equal share of the bundled model (pipeline: 15 of its
30 layers; tensor: a third of every layer); rank 0 batches with mlx-lm's `BatchGenerator`
and the other ranks mirror its caches (`exo/engine/mirror.py`). Greedy with
`ignore_eos`, 64 generated tokens a stream. One stream: decode tok/s from its first token
to its last. N streams: aggregate tok/s while all decode (from the last first token to
the first last token), the same window as `benchmarks/serving.py`. Each configuration
starts afresh, alone on the machine; one unmeasured warm-up request; medians.

    .venv/bin/python benchmarks/distributed_batching.py --reps 3 --streams 8
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

PROMPT = "Write a long story about a lighthouse keeper. Chapter {n}."
TOKENS = 64
LAYERS = 30
CONFIGS = (("one runner", "pipeline", 1), ("pipeline", "pipeline", 2), ("tensor", "tensor", 3))


def start(model_dir: Path, strategy: str, ranks: int, logs: Path) -> list[RunnerProcess]:
    hosts = tuple(f"127.0.0.1:{free_port()}" for _ in range(ranks)) if ranks > 1 else ()
    share = LAYERS // ranks
    processes = [
        RunnerProcess(logs / f"{strategy}-{ranks}-rank{r}.log", ranks > 1) for r in range(ranks)
    ]
    for rank, process in enumerate(processes):
        if strategy == "tensor":
            layers = (0, LAYERS)
        else:
            layers = (rank * share, LAYERS if rank == ranks - 1 else (rank + 1) * share)
        process.send(
            protocol.Load(
                str(model_dir), *layers, rank=rank, hosts=hosts, strategy=strategy, batch_size=8
            )
        )
    for process in processes:
        assert isinstance(process.recv(), protocol.Loading)
    for process in processes:
        ready = process.recv(timeout=300)
        assert isinstance(ready, protocol.Ready), process.stderr()
    return processes


def streams(rank0: RunnerProcess, count: int, tag: str) -> list[list[float]]:
    """Send `count` requests at once; each one's token arrival times."""
    for n in range(count):
        rank0.send(chat(f"{tag}-{n}", PROMPT.format(n=n + 1), max_tokens=TOKENS, ignore_eos=True))
    times: dict[str, list[float]] = {f"{tag}-{n}": [] for n in range(count)}
    finished = 0
    while finished < count:
        message = rank0.recv(600)
        if isinstance(message, protocol.TokenOut):
            times[message.request_id].append(time.perf_counter())
        elif isinstance(message, protocol.Finished):
            finished += 1
        else:
            raise AssertionError(f"unexpected {message!r}")
    return list(times.values())


def aggregate(times: list[list[float]]) -> float:
    """Tokens per second over every stream while all of them decode."""
    if len(times) == 1:
        return (len(times[0]) - 1) / (times[0][-1] - times[0][0])
    begin, end = max(t[0] for t in times), min(t[-1] for t in times)
    together = sum(sum(begin <= x <= end for x in t) for t in times)
    return together / (end - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description="batching on distributed instances")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[float]]] = {
        name: {"one": [], "many": []} for name, _, _ in CONFIGS
    }
    with tempfile.TemporaryDirectory(prefix="exo-bench-") as tmp:
        root = Path(tmp)
        model_dir = ensure_bundled_model(root / "models")
        for rep in range(args.reps):
            for name, strategy, ranks in CONFIGS:
                processes = start(model_dir, strategy, ranks, root)
                try:
                    streams(processes[0], 1, f"warm{rep}")  # unmeasured
                    runs[name]["one"].append(aggregate(streams(processes[0], 1, f"one{rep}")))
                    many = streams(processes[0], args.streams, f"many{rep}")
                    runs[name]["many"].append(aggregate(many))
                finally:
                    for process in processes:
                        process.close()
    figures: dict[str, dict[str, float]] = {}
    for name, measured in runs.items():
        one, many = (statistics.median(measured[k]) for k in ("one", "many"))
        figures[name] = {
            "one_stream_tok_s": round(one, 2),
            f"{args.streams}_streams_tok_s": round(many, 2),
            "batching_ratio": round(many / one, 2),
        }
        print(
            f"{name}: one stream {one:.2f} tok/s, {args.streams} streams {many:.2f} tok/s "
            f"aggregate ({many / one:.2f}x)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
