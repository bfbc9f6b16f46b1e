"""Single-stream CPU decode by BLAS setup, against the memory-bandwidth ceiling.

The BLAS a runner uses is fixed when its process starts (LD_PRELOAD), so every setup runs
in its own child process, the setups alternating for `--reps` rounds so that machine
noise hits each of them; the figures are medians. Each child loads the bundled model as
a CPU runner does (float32) and measures, greedy, 128 tokens after a short prompt:

- raw: mlx-lm's `stream_generate`, decode tok/s;
- exo: exo's `BatchScheduler` with one stream, as a runner builds it (the stream takes a
  lane of the fused native step, `exo/engine/native_lanes.py`), decode tok/s;
- exo batch step: the same with the lanes off (mlx-lm's batch step, what runners ran
  before them), decode tok/s;
- native: the fused step alone (`exo/engine/native_decode.py`, one native call per token
  over the same float32 weights, greedy argmax in numpy), decode tok/s.

Setups, each adding one change to the one before (exo/engine/blas.py, table_rope.py):
- openblas: Debian's OpenBLAS as it detects the CPU, `mx.fast.rope` (`EXO_BLAS=openblas`;
  what runners ran before these changes, the baseline);
- + coretype: `OPENBLAS_CORETYPE` from the CPU flags;
- + gemv forward: the shim that sends single-row sgemm calls to sgemv;
- + table rope: RoPE from precomputed tables (exo's default).

The ceiling: memory read bandwidth from every core over the bytes one decode step reads.

    .venv/bin/python benchmarks/cpu_decode.py [--reps 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exo.engine import blas


def setups(base: dict[str, str]) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Each setup's environment and child arguments."""
    plain = {k: v for k, v in base.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE")}
    openblas = blas.runner_env({**plain, blas.BLAS_ENV: "openblas"})
    coretype = blas.openblas_coretype(blas.cpu_flags(), platform.machine())
    mlx_rope = ["--mlx-rope"]
    found: dict[str, tuple[dict[str, str], list[str]]] = {"openblas": (openblas, mlx_rope)}
    if coretype is not None:
        found["+ coretype"] = ({**openblas, "OPENBLAS_CORETYPE": coretype}, mlx_rope)
    if blas.gemv_forward_library() is not None:
        found["+ gemv forward"] = (blas.runner_env(plain), mlx_rope)
    found["+ table rope"] = (blas.runner_env(plain), [])
    return found


def mlx_rope(model: Any) -> None:
    """Put MLX's own `nn.RoPE` back where the engine installed tables."""
    import mlx.nn as nn

    from exo.engine.table_rope import TableRoPE, swap

    def untabled(rope: Any) -> nn.Module:
        return nn.RoPE(rope.dims, rope.traditional, rope.base, rope.scale)

    swap(model, lambda child: isinstance(child, TableRoPE), untabled)


def native_decode(engine: Any) -> float:
    """The fused native step on the same model: the prompt fed token by token, then
    decode tok/s of GEN_TOKENS greedy tokens."""
    import time

    from serving import GEN_TOKENS, STORY

    from exo.engine import protocol
    from exo.engine.native_decode import NativeDecoder

    prompt = engine.encode_chat((protocol.ChatMessage("user", STORY),))
    decoder = NativeDecoder(engine.full_model, len(prompt) + GEN_TOKENS + 1)
    logits = decoder.step(prompt[0])
    for token in prompt[1:]:
        logits = decoder.step(token)
    start = time.perf_counter()
    for _ in range(GEN_TOKENS):
        logits = decoder.step(int(logits.argmax()))
    return GEN_TOKENS / (time.perf_counter() - start)


def child(with_mlx_rope: bool) -> None:
    """Measure in this process (started with one setup's environment); print JSON."""
    from serving import GEN_TOKENS, batch_decode, raw_decode, weight_bytes

    from exo.engine.blas import loaded_blas
    from exo.engine.mlx_engine import MlxEngine
    from exo.engine.runner import prefill_step
    from exo.models.bundled import ensure_bundled_model

    with tempfile.TemporaryDirectory() as models:
        engine = MlxEngine.load(ensure_bundled_model(Path(models)), 0, 30)
    if with_mlx_rope:
        mlx_rope(engine.model)
    raw_decode(engine)  # warm-up
    figures = {
        "blas": loaded_blas(),
        "gen_tokens": GEN_TOKENS,
        "weight_bytes": weight_bytes(engine.full_model),
        "raw_tok_s": raw_decode(engine),
        "exo_tok_s": batch_decode(engine, 1, prefill_step(engine))["aggregate_tok_s"],
        "exo_batch_step_tok_s": batch_decode(engine, 1, prefill_step(engine), lane=False)[
            "aggregate_tok_s"
        ],
        "native_tok_s": native_decode(engine),
    }
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU decode by BLAS setup (module docstring)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mlx-rope", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.mlx_rope)
        return
    from serving import bandwidth_gbs

    envs = setups(dict(os.environ))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in envs}
    bandwidth: list[float] = []
    for _ in range(args.reps):
        bandwidth.append(bandwidth_gbs())
        for name, (env, extra) in envs.items():
            done = subprocess.run(
                [sys.executable, __file__, "--child", *extra],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    gb = statistics.median(bandwidth)
    weights = runs["openblas"][0]["weight_bytes"]
    ceiling = gb * 1e9 / weights
    report: dict[str, Any] = {
        "bandwidth_gb_s": gb,
        "weight_bytes": weights,
        "ceiling_tok_s": ceiling,
        "setups": {},
    }
    baseline = statistics.median(r["exo_batch_step_tok_s"] for r in runs["openblas"])
    print(
        f"memory bandwidth {gb:.1f} GB/s over {weights / 1e6:.0f} MB of weights per token: "
        f"ceiling {ceiling:.1f} tok/s; medians of {args.reps}"
    )
    for name, rows in runs.items():
        raw = statistics.median(r["raw_tok_s"] for r in rows)
        exo = statistics.median(r["exo_tok_s"] for r in rows)
        native = statistics.median(r["native_tok_s"] for r in rows)
        stepped = statistics.median(r["exo_batch_step_tok_s"] for r in rows)
        report["setups"][name] = {
            "blas": rows[0]["blas"],
            "raw_tok_s": raw,
            "exo_tok_s": exo,
            "exo_batch_step_tok_s": stepped,
            "native_tok_s": native,
        }
        print(
            f"{name:15} raw {raw:5.1f}, exo {exo:5.1f} tok/s "
            f"({exo / baseline:.2f}x openblas, {exo / ceiling:.2f} of the ceiling), "
            f"exo batch step {stepped:5.1f} ({exo / stepped:.2f}x), native {native:5.1f} "
            f"({native / ceiling:.2f} of the ceiling)  [{rows[0]['blas']}]"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
