"""Serving many users from one runner: continuous batching, chunked prefill, the prompt
cache, against raw mlx-lm and the machine's memory bandwidth, all in one process.

Everything runs in this process on the bundled model, prepared as the CPU runner
prepares it (float32, OpenBLAS preloaded: the script re-executes itself with the
runner's environment), greedy, with `ignore_eos` so every stream generates exactly its
budget. Figures (medians over `--reps`):

- ceiling: memory read bandwidth from every core (numpy `max`, one thread per core) over
  the bytes of the weights one decode step reads: the tok/s no single stream can pass;
- raw: mlx-lm's `stream_generate`, one stream (the baseline);
- today: exo's one-at-a-time path (`MlxEngine.generate`, what every runner ran before
  batching);
- batch of 1, batch of N: exo's `BatchScheduler` as a runner builds it (streams on the
  fused native step's lanes, `exo/engine/native_lanes.py`), decode tok/s from each
  stream's first token to its last, aggregate over the streams for N; and the same with
  the lanes off (mlx-lm's batch step, what runners ran before them);
- sampled: N streams again, at temperature 0.7 and top-p 0.9 (each its own seed), with
  the lanes (numpy's sampling, `exo/engine/row_sampling.py`) and without (mlx-lm's);
- join: a request arriving while N-1 streams decode, its TTFT against the same request
  on an idle runner, and the largest gap between two tokens of the N-1 meanwhile;
- cache: the second turn of a conversation with a long history, TTFT with the prompt
  cache against the first turn's (and against the same turn with the cache off).

    .venv/bin/python benchmarks/serving.py [--reps 3] [--streams 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exo.engine import protocol
from exo.engine.blas import runner_env
from exo.models.bundled import ensure_bundled_model

GEN_TOKENS = 128
STORY = "Write a long story about a lighthouse keeper and the sea."
HISTORY = "Here is some background for our talk. " + " ".join(
    f"Fact {n}: the lighthouse on the hill has stood for {n + 10} years." for n in range(35)
)


def greedy(max_tokens: int, **extra: Any) -> protocol.SamplingParams:
    return protocol.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **extra)


# Sampled streams: a temperature and top-p, as chat clients send them, each its own seed.
TEMPERATURE, TOP_P = 0.7, 0.9


def ask(
    request_id: str, text: str, max_tokens: int = GEN_TOKENS, sampled: bool = False
) -> protocol.GenerateRequest:
    params = greedy(max_tokens)
    if sampled:
        params = protocol.SamplingParams(
            temperature=TEMPERATURE,
            top_p=TOP_P,
            max_tokens=max_tokens,
            ignore_eos=True,
            seed=zlib.crc32(request_id.encode()),
        )
    return protocol.GenerateRequest(request_id, (protocol.ChatMessage("user", text),), params)


def bandwidth_gbs(seconds: float = 2.0) -> float:
    """Bytes per second read by one numpy `max` per core over arrays larger than any
    cache (`max` streams at the memory's speed; `sum` measured half of it here, limited
    by its arithmetic)."""
    import numpy as np

    cores = os.cpu_count() or 1
    arrays = [np.ones(64 * 2**20, dtype=np.float32) for _ in range(cores)]  # 256 MiB each
    counts = [0] * cores

    def read(n: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            arrays[n].max()
            counts[n] += 1

    threads = [threading.Thread(target=read, args=(n,)) for n in range(cores)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return sum(counts) * arrays[0].nbytes / elapsed / 1e9


def weight_bytes(model: Any) -> int:
    from mlx.utils import tree_flatten

    arrays: Any = tree_flatten(model.parameters())
    return sum(int(v.nbytes) for _, v in arrays)


def raw_decode(engine: Any) -> float:
    """mlx-lm's own loop on the same model: decode tok/s of one stream."""
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    prompt = engine.encode_chat((protocol.ChatMessage("user", STORY),))
    times: list[float] = []
    for _ in mlx_lm.stream_generate(
        engine.model,
        engine.tokenizer,
        mx.array(prompt),
        max_tokens=GEN_TOKENS,
        sampler=make_sampler(temp=0.0),
    ):
        times.append(time.perf_counter())
    return (len(times) - 1) / (times[-1] - times[0])


def sequential_decode(engine: Any) -> float:
    """exo's one-at-a-time path: decode tok/s of one stream."""
    times = [
        time.perf_counter()
        for m in engine.generate(ask("today", STORY), lambda: False)
        if isinstance(m, protocol.TokenOut)
    ]
    return (len(times) - 1) / (times[-1] - times[0])


class Timed:
    """A scheduler run to idle, with the arrival time of every message per request."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.tokens: dict[str, list[float]] = {}
        self.submitted: dict[str, float] = {}
        self.finished: dict[str, protocol.Finished] = {}

    def submit(self, request: protocol.GenerateRequest) -> None:
        self.submitted[request.request_id] = time.perf_counter()
        self.tokens[request.request_id] = []
        self.scheduler.submit(request)

    def step(self) -> None:
        for message in self.scheduler.step():
            now = time.perf_counter()
            if isinstance(message, protocol.TokenOut):
                self.tokens[message.request_id].append(now)
            elif isinstance(message, protocol.Finished):
                self.finished[message.request_id] = message
            else:
                raise RuntimeError(f"{message!r}")

    def run(self, until: Callable[[], bool] | None = None) -> None:
        while self.scheduler.busy and not (until is not None and until()):
            self.step()

    def ttft(self, request_id: str) -> float:
        return self.tokens[request_id][0] - self.submitted[request_id]

    def decode_rate(self, request_id: str) -> float:
        times = self.tokens[request_id]
        return (len(times) - 1) / (times[-1] - times[0])


_NATIVE: dict[tuple[int, int], Any] = {}


def scheduler(
    engine: Any, batch: int, prefill_step: int, cache: bool = False, lane: bool = True
) -> Any:
    """A batch scheduler as a runner builds it: with the native lanes where the runner
    would have them (`lane=False`: every stream on mlx-lm's batch step)."""
    from exo.engine.batching import BatchScheduler
    from exo.engine.native_lanes import native_decoder_for

    if lane and (id(engine), batch) not in _NATIVE:
        _NATIVE[(id(engine), batch)] = native_decoder_for(engine, batch)
    return BatchScheduler(
        engine,
        batch_size=batch,
        prefill_step=prefill_step,
        kv_budget_tokens=engine.info.context_length,
        prompt_cache=cache,
        native=_NATIVE[(id(engine), batch)] if lane else None,
    )


def batch_decode(
    engine: Any, streams: int, prefill_step: int, lane: bool = True, sampled: bool = False
) -> dict[str, float]:
    """N streams started together (greedy, or `SAMPLED`): aggregate tok/s while all
    decode, and per stream."""
    timed = Timed(scheduler(engine, max(streams, 1), prefill_step, lane=lane))
    for n in range(streams):
        timed.submit(ask(f"s{n}", f"{STORY} Chapter {n + 1}.", sampled=sampled))
    timed.run()
    firsts = [t[0] for t in timed.tokens.values()]
    lasts = [t[-1] for t in timed.tokens.values()]
    # All streams decoding: from the last first token to the first last token.
    start, end = max(firsts), min(lasts)
    together = sum(sum(start <= x <= end for x in t) for t in timed.tokens.values())
    return {
        "aggregate_tok_s": together / (end - start),
        "per_stream_tok_s": statistics.median(timed.decode_rate(r) for r in timed.tokens),
    }


def join_under_load(engine: Any, streams: int, prefill_step: int, prompt: str) -> dict[str, float]:
    """A request arriving while `streams - 1` decode, against the same on an idle runner."""
    idle = Timed(scheduler(engine, streams, prefill_step))
    idle.submit(ask("late", prompt, 8))
    idle.run()
    busy = Timed(scheduler(engine, streams, prefill_step))
    for n in range(streams - 1):
        busy.submit(ask(f"s{n}", f"{STORY} Chapter {n + 1}.", GEN_TOKENS * 2))
    busy.run(until=lambda: all(len(busy.tokens[f"s{n}"]) >= 16 for n in range(streams - 1)))
    busy.submit(ask("late", prompt, 8))
    busy.run(until=lambda: bool(busy.tokens["late"]))
    arrived, first = busy.submitted["late"], busy.tokens["late"][0]
    gaps: list[float] = []
    steady: list[float] = []
    for n in range(streams - 1):
        times = busy.tokens[f"s{n}"]
        during = [t for t in times if arrived - 1.0 <= t <= first + 1.0]
        gaps += [b - a for a, b in itertools.pairwise(during)]
        steady += [b - a for a, b in itertools.pairwise(times[:16])]
    busy.run()
    return {
        "ttft_idle_s": idle.ttft("late"),
        "ttft_under_load_s": busy.ttft("late"),
        "largest_gap_s": max(gaps),
        "steady_gap_s": statistics.median(steady),
        "prompt_tokens": idle.finished["late"].prompt_tokens,
    }


def second_turn(engine: Any, prefill_step: int) -> dict[str, float]:
    """TTFT of a conversation's second turn with the prompt cache, against its first turn
    and against the same second turn with the cache off."""
    cached = Timed(scheduler(engine, 8, prefill_step, cache=True))
    first = (protocol.ChatMessage("user", HISTORY + " How old is the lighthouse?"),)
    cached.submit(protocol.GenerateRequest("t1", first, greedy(16)))
    cached.run()
    reply = protocol.ChatMessage("assistant", "It has stood for many years.")
    turn = (*first, reply, protocol.ChatMessage("user", "And who keeps it?"))
    cached.submit(protocol.GenerateRequest("t2", turn, greedy(16)))
    cached.run()
    fresh = Timed(scheduler(engine, 8, prefill_step, cache=False))
    fresh.submit(protocol.GenerateRequest("t2", turn, greedy(16)))
    fresh.run()
    return {
        "history_tokens": cached.finished["t1"].prompt_tokens,
        "second_turn_tokens": cached.finished["t2"].prompt_tokens,
        "cached_tokens": cached.finished["t2"].cached_tokens,
        "ttft_first_turn_s": cached.ttft("t1"),
        "ttft_second_turn_s": cached.ttft("t2"),
        "ttft_second_turn_uncached_s": fresh.ttft("t2"),
    }


def median_of(reps: int, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    runs = [measure() for _ in range(reps)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    env = runner_env(os.environ)
    if env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    parser = argparse.ArgumentParser(description="serving benchmark (see the module docstring)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--prefill-steps", default="64,128,256,512")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from exo.engine.blas import loaded_blas
    from exo.engine.mlx_engine import MlxEngine
    from exo.engine.runner import prefill_step

    with tempfile.TemporaryDirectory() as models:
        engine = MlxEngine.load(ensure_bundled_model(Path(models)), 0, 30)
    step = prefill_step(engine)
    report: dict[str, Any] = {"blas": loaded_blas(), "streams": args.streams}
    gb = statistics.median(bandwidth_gbs() for _ in range(args.reps))
    per_token = weight_bytes(engine.full_model)
    report["ceiling"] = {
        "bandwidth_gb_s": gb,
        "weight_bytes": per_token,
        "tok_s": gb * 1e9 / per_token,
    }
    singles = {"raw": raw_decode, "today": sequential_decode}
    names = (*singles, "batch_of_1_without_lanes", "batch_of_1")
    single: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.reps):  # alternate, so machine noise hits every side
        for name, measure in singles.items():
            single[name].append(measure(engine))
        unlaned = batch_decode(engine, 1, step, lane=False)["aggregate_tok_s"]
        single["batch_of_1_without_lanes"].append(unlaned)
        single["batch_of_1"].append(batch_decode(engine, 1, step)["aggregate_tok_s"])
    report["single_stream_tok_s"] = {k: statistics.median(v) for k, v in single.items()}
    report["batch_without_lanes"] = median_of(
        args.reps, lambda: batch_decode(engine, args.streams, step, lane=False)
    )
    report["batch"] = median_of(args.reps, lambda: batch_decode(engine, args.streams, step))
    report["batch_sampled_without_lanes"] = median_of(
        args.reps, lambda: batch_decode(engine, args.streams, step, lane=False, sampled=True)
    )
    report["batch_sampled"] = median_of(
        args.reps, lambda: batch_decode(engine, args.streams, step, sampled=True)
    )
    long_prompt = HISTORY + " Tell me about it."
    report["join"] = {
        chunk: median_of(
            args.reps,
            lambda chunk=chunk: join_under_load(engine, args.streams, chunk, long_prompt),
        )
        for chunk in (int(s) for s in args.prefill_steps.split(","))
    }
    report["second_turn"] = median_of(args.reps, lambda: second_turn(engine, step))
    print_report(report, step)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def print_report(report: dict[str, Any], prefill_step: int) -> None:
    ceiling = report["ceiling"]
    single = report["single_stream_tok_s"]
    print(
        f"BLAS {report['blas']}; memory bandwidth {ceiling['bandwidth_gb_s']:.1f} GB/s over "
        f"{ceiling['weight_bytes'] / 1e6:.0f} MB of weights: ceiling {ceiling['tok_s']:.1f} tok/s"
    )
    for name, rate in single.items():
        print(
            f"one stream, {name}: {rate:.1f} tok/s ({rate / single['raw']:.2f}x raw, "
            f"{rate / single['today']:.2f}x today, {rate / ceiling['tok_s']:.2f} of the ceiling)"
        )
    batch, unlaned = report["batch"], report["batch_without_lanes"]
    print(
        f"{report['streams']} streams: {batch['aggregate_tok_s']:.1f} tok/s aggregate "
        f"({batch['aggregate_tok_s'] / single['batch_of_1']:.2f}x one stream, "
        f"{batch['aggregate_tok_s'] / unlaned['aggregate_tok_s']:.2f}x without lanes: "
        f"{unlaned['aggregate_tok_s']:.1f}), {batch['per_stream_tok_s']:.1f} per stream"
    )
    sampled, sampled_unlaned = report["batch_sampled"], report["batch_sampled_without_lanes"]
    print(
        f"{report['streams']} streams sampled (temperature {TEMPERATURE}, top-p {TOP_P}): "
        f"{sampled['aggregate_tok_s']:.1f} "
        f"tok/s aggregate ({sampled['aggregate_tok_s'] / batch['aggregate_tok_s']:.2f}x greedy, "
        f"{sampled['aggregate_tok_s'] / sampled_unlaned['aggregate_tok_s']:.2f}x without lanes: "
        f"{sampled_unlaned['aggregate_tok_s']:.1f})"
    )
    for step, join in report["join"].items():
        mark = " (exo's)" if int(step) == prefill_step else ""
        print(
            f"prefill chunk {step}{mark}: a {join['prompt_tokens']:.0f}-token request joining "
            f"{report['streams'] - 1} streams: TTFT {join['ttft_under_load_s']:.2f} s vs "
            f"{join['ttft_idle_s']:.2f} s idle ({join['ttft_under_load_s'] / join['ttft_idle_s']:.2f}x); "
            f"largest gap of the others {join['largest_gap_s']:.2f} s (steady "
            f"{join['steady_gap_s']:.3f} s)"
        )
    turn = report["second_turn"]
    print(
        f"second turn ({turn['second_turn_tokens']:.0f} tokens, {turn['cached_tokens']:.0f} "
        f"cached): TTFT {turn['ttft_second_turn_s']:.3f} s vs first turn "
        f"{turn['ttft_first_turn_s']:.3f} s ({turn['ttft_second_turn_s'] / turn['ttft_first_turn_s']:.2f}x)"
        f", vs uncached {turn['ttft_second_turn_uncached_s']:.3f} s"
    )


if __name__ == "__main__":
    main()
