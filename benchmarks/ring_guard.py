"""What the ring guard costs: MLX `all_sum` between two ranks, direct and through the
guard's relays (`exo/engine/ring_guard.py`), in the same session on 127.0.0.1.

Each repetition starts two rank processes with `init_ring` (direct, then guarded with
`EXO_RING_GUARD=always`), times `--rounds` all-sums of each size after a warm-up, and
reports the median time per all-sum and the guarded/direct ratio (guarded: through the
relays, which seal each chunk and open it; `rank handshake_us`: the admission handshake
that gives each connection its keys). The sizes are those of
a decode step of the bundled model (one token's hidden states, 896 float32) and of a
prefill (512 tokens' hidden states). Then the end-to-end cost: greedy decode speed of
the bundled model through two pipeline ranks and three tensor ranks (real runners), direct
and guarded, as `pipeline_ranks.py` measures it (three tensor ranks: the model's 9
attention heads do not split in two).

On one machine both ranks and both relays share its cores, and MLX's ring threads spin
while they wait: the relays' share of the cores is what is measured as much as their
work. Between hosts each host's relays compete with one rank only.

    .venv/bin/python benchmarks/ring_guard.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exo.models.bundled import ensure_bundled_model

SIZES = {"decode (1 x 896 float32)": 896, "prefill (512 x 896 float32)": 512 * 896}


def rank_main(rank: int, hosts: list[str], rounds: int) -> None:
    import mlx.core as mx

    from exo.engine.pipeline import init_ring

    group, _ = init_ring(rank, hosts, "tensor", b"k" * 32)
    timings = {}
    for name, count in SIZES.items():
        x = mx.ones((count,), dtype=mx.float32)
        for _ in range(20):
            mx.eval(mx.distributed.all_sum(x, group=group))
        started = time.perf_counter()
        for _ in range(rounds):
            mx.eval(mx.distributed.all_sum(x, group=group))
        timings[name] = (time.perf_counter() - started) / rounds
    if rank == 0:
        print(json.dumps(timings), flush=True)


def once(guarded: bool, rounds: int) -> dict[str, float]:
    from tests.integration.nodes import free_port

    hosts = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    env = {k: v for k, v in os.environ.items() if k != "EXO_RING_GUARD"}
    if guarded:
        env["EXO_RING_GUARD"] = "always"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--rank",
                str(r),
                "--hosts",
                ",".join(hosts),
                "--rounds",
                str(rounds),
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    out, _ = processes[0].communicate(timeout=300)
    processes[1].wait(timeout=60)
    if processes[0].returncode or processes[1].returncode:
        raise RuntimeError("a rank failed")
    return json.loads(out.strip().splitlines()[-1])


def decode(model_dir: Path, logs: Path, strategy: str, guarded: bool) -> float:
    """Greedy decode tokens per second through two pipeline or three tensor ranks."""
    from benchmarks.pipeline_ranks import measure
    from exo.engine import protocol
    from tests.engine.helpers import RunnerProcess
    from tests.integration.nodes import free_port

    os.environ.pop("EXO_RING_GUARD", None)
    if guarded:
        os.environ["EXO_RING_GUARD"] = "always"
    count = 2 if strategy == "pipeline" else 3  # the model's 9 heads split in 3, not 2
    hosts = tuple(f"127.0.0.1:{free_port()}" for _ in range(count))
    processes = [RunnerProcess(logs / f"{strategy}-{r}.log", ranked=True) for r in range(count)]
    try:
        for rank, process in enumerate(processes):
            start, end = ((0, 15), (15, 30))[rank] if strategy == "pipeline" else (0, 30)
            process.send(
                protocol.Load(str(model_dir), start, end, rank=rank, hosts=hosts, strategy=strategy)
            )
        for process in processes:
            assert isinstance(process.recv(), protocol.Loading)
        for process in processes:
            assert isinstance(process.recv(timeout=300), protocol.Ready), process.stderr()
        measure(processes[0], "warm")
        return measure(processes[0], "measured")[1]
    finally:
        for process in processes:
            process.close()
        os.environ.pop("EXO_RING_GUARD", None)


def handshake_us(rounds: int = 300) -> float:
    """The median time of one rank handshake (`admit` against `prove`, X25519 and both
    proofs) on a loopback connection already open, the acceptor in a thread as in a rank."""
    import socket
    import threading

    from exo.engine.doorbell_guard import admit, prove

    hosts = [frozenset({"127.0.0.1"})] * 2
    times = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        for _ in range(rounds):
            with socket.create_connection(server.getsockname()) as connector:
                acceptor, _ = server.accept()
                with acceptor:
                    started = time.perf_counter()
                    thread = threading.Thread(target=admit, args=(acceptor, b"k" * 32, 1, hosts))
                    thread.start()
                    prove(connector, b"k" * 32, 0, 1, 5.0)
                    thread.join()
                    times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description="all_sum through the ring guard vs direct")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hosts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        rank_main(args.rank, args.hosts.split(","), args.rounds)
        return
    runs: dict[str, dict[str, list[float]]] = {"direct": {}, "guarded": {}}
    for rep in range(args.reps):
        for kind in ("direct", "guarded"):
            for name, seconds in once(kind == "guarded", args.rounds).items():
                runs[kind].setdefault(name, []).append(seconds)
        print(f"rep {rep} done", flush=True)
    figures: dict[str, float] = {"rank handshake_us": round(handshake_us(), 1)}
    for name in SIZES:
        direct = statistics.median(runs["direct"][name]) * 1e6
        guarded = statistics.median(runs["guarded"][name]) * 1e6
        figures[f"{name} direct_us"] = round(direct, 1)
        figures[f"{name} guarded_us"] = round(guarded, 1)
        figures[f"{name} guarded_over_direct"] = round(guarded / direct, 2)
    with tempfile.TemporaryDirectory(prefix="exo-bench-") as tmp:
        root = Path(tmp)
        model_dir = ensure_bundled_model(root / "models")
        for strategy in ("pipeline", "tensor"):
            speeds: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.reps):
                for guarded in (False, True):
                    speeds[guarded].append(decode(model_dir, root, strategy, guarded))
            direct, guarded = (statistics.median(speeds[g]) for g in (False, True))
            figures[f"{strategy} decode direct_tok_s"] = round(direct, 2)
            figures[f"{strategy} decode guarded_tok_s"] = round(guarded, 2)
            figures[f"{strategy} decode guarded_over_direct"] = round(guarded / direct, 3)
            print(f"{strategy} done", flush=True)
    for name, value in figures.items():
        print(f"{name:48} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
