"""One rank of the tensor-tolerance test: `python -m tests.engine.tensor_logits DIR HOSTS RANK`.

Every rank shards the model across the ring and runs one forward pass on the same prompt;
rank 0 also runs the whole model and prints the largest absolute difference between the
two last-position logit vectors, and the largest logit, as `max_abs_diff D M`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm

from exo.engine import pipeline, tensor
from exo.engine.mlx_engine import dequantize_to_float32

PROMPT = "The capital of France is"


def main(model_dir: Path, hosts: list[str], rank: int) -> None:
    group, _ = pipeline.init_ring(rank, hosts, "tensor")
    sharded, tokenizer = mlx_lm.load(str(model_dir), lazy=True)  # type: ignore[misc]
    dequantize_to_float32(sharded)
    tensor.shard_model(sharded, group)
    tokens = mx.array([tokenizer.encode(PROMPT)])
    logits = sharded(tokens)[0, -1]
    mx.eval(logits)
    if rank == 0:
        whole, _ = mlx_lm.load(str(model_dir), lazy=True)  # type: ignore[misc]
        dequantize_to_float32(whole)
        reference = whole(tokens)[0, -1]
        diff = mx.max(mx.abs(logits - reference)).item()
        print(f"max_abs_diff {diff:.3e} {mx.max(mx.abs(reference)).item():.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]))
