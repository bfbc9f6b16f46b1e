"""Single-stream decode tok/s and TTFT: `exo node` over HTTP against raw mlx-lm.

Both sides run in this session, on the same model directory, greedy, same prompt and
token budget, with the same BLAS (the raw side re-executes itself with the runner's
environment) and the same float32 preparation the CPU runner does. They alternate, so
machine noise hits both; the report gives medians and the ratios.

    .venv/bin/python benchmarks/api_vs_raw.py [--reps 5] [--max-tokens 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exo.engine.blas import runner_env
from exo.models.bundled import ensure_bundled_model
from tests.integration.nodes import NodeProcess

PROMPT = "Count from 1 to 300, separated by commas."
MODEL = "smollm2-135m"


class RawMlx:
    """Raw mlx-lm in this process, prepared as the CPU runner prepares its model."""

    def __init__(self, model_dir: Path) -> None:
        import mlx_lm
        from mlx_lm.sample_utils import make_sampler

        from exo.engine.mlx_engine import _device_kind, dequantize_to_float32

        self.model, self.tokenizer = mlx_lm.load(str(model_dir))  # type: ignore[misc]
        if _device_kind() == "cpu":
            dequantize_to_float32(self.model)
        self.sampler = make_sampler(temp=0.0)

    def run(self, max_tokens: int) -> dict[str, Any]:
        import mlx.core as mx
        import mlx_lm

        from exo.engine.blas import loaded_blas

        start = time.perf_counter()
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
        )
        prompt = self.tokenizer.encode(str(text), add_special_tokens=False)
        times = [
            time.perf_counter()
            for _ in mlx_lm.stream_generate(
                self.model,
                self.tokenizer,
                mx.array(prompt),
                max_tokens=max_tokens,
                sampler=self.sampler,
            )
        ]
        return _measure(start, times, len(times), loaded_blas())


def _measure(start: float, times: list[float], tokens: int, blas: str = "") -> dict[str, Any]:
    decode_time = times[-1] - times[0]
    return {
        "ttft_ms": (times[0] - start) * 1000,
        "decode_tok_s": (tokens - 1) / decode_time if decode_time > 0 else 0.0,
        "tokens": tokens,
        "blas": blas,
    }


def api_run(url: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    times: list[float] = []
    tokens = 0
    with httpx.Client(timeout=300) as client:
        start = time.perf_counter()
        with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    times.append(time.perf_counter())
    return _measure(start, times, tokens)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # The raw side runs in this process: give it the BLAS a runner gets, by re-executing
    # with the runner's environment (the node, which never imports MLX, inherits it harmlessly).
    env = runner_env(os.environ)
    if env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    work = Path(tempfile.mkdtemp(prefix="exo-bench-"))
    model_dir = ensure_bundled_model(work / "models")
    node = NodeProcess(work / "home", work / "models").start()
    raw: list[dict[str, Any]] = []
    api: list[dict[str, Any]] = []
    try:
        baseline = RawMlx(model_dir)
        node.wait_ready()
        # One unmeasured pass each: compile and first-call costs, as the runner's warm-up.
        baseline.run(8)
        api_run(node.url, 8)
        for _ in range(args.reps):
            raw.append(baseline.run(args.max_tokens))
            api.append(api_run(node.url, args.max_tokens))
    finally:
        node.stop()

    def median(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    report = {
        "reps": args.reps,
        "max_tokens": args.max_tokens,
        "blas": raw[0]["blas"],
        "raw": {
            "decode_tok_s": median(raw, "decode_tok_s"),
            "ttft_ms": median(raw, "ttft_ms"),
            "tokens": raw[0]["tokens"],
        },
        "api": {
            "decode_tok_s": median(api, "decode_tok_s"),
            "ttft_ms": median(api, "ttft_ms"),
            "tokens": api[0]["tokens"],
        },
        "runs": {"raw": raw, "api": api},
    }
    report["decode_ratio"] = report["api"]["decode_tok_s"] / report["raw"]["decode_tok_s"]
    report["ttft_overhead_ms"] = report["api"]["ttft_ms"] - report["raw"]["ttft_ms"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(f"BLAS: {report['blas']}; {args.reps} alternating runs, {args.max_tokens} tokens, greedy")
    print("| path | decode tok/s (median) | TTFT ms (median) | tokens |")
    print("| --- | --- | --- | --- |")
    for name in ("raw", "api"):
        row = report[name]
        print(f"| {name} | {row['decode_tok_s']:.1f} | {row['ttft_ms']:.0f} | {row['tokens']} |")
    print(
        f"decode ratio api/raw: {report['decode_ratio']:.3f}; TTFT overhead: {report['ttft_overhead_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
