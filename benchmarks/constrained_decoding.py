"""What `response_format` constrained decoding (llguidance) costs: decode tok/s with and without it.

One process, the bundled model loaded as the CPU runner loads it (float32, and the runner's
OpenBLAS: the script re-executes itself with the runner's environment). Each rep samples a
json_schema-constrained reply at temperature 1.0 (it ends by EOS), then an unconstrained
reply to the same prompt with the same seed, capped at the same number of tokens; the report
gives medians and the ratio. It also times the one-time vocabulary setup, the schema
compile, and the processor's own per-token CPU time (matcher + mask + building the masked
logits).

    .venv/bin/python benchmarks/constrained_decoding.py [--reps 5] [--json out.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exo.engine.blas import runner_env

PROMPT = (
    "Describe a fictional user as JSON with name, age, role (admin, user or guest), "
    "address (city, zip), tags and active."
)
# Nested object, enum, pattern, bounded array, all keys required.
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 32},
            "age": {"type": "integer"},
            "role": {"type": "string", "enum": ["admin", "user", "guest"]},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 24},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
            "active": {"type": "boolean"},
        },
        "required": ["name", "age", "role", "address", "tags", "active"],
        "additionalProperties": False,
    }
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256, help="cap for constrained replies")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = runner_env(os.environ)
    if env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    start = time.perf_counter()
    import llguidance

    import_ms = (time.perf_counter() - start) * 1000

    from exo.engine import constrained, protocol
    from exo.engine.blas import loaded_blas
    from exo.engine.mlx_engine import MlxEngine
    from exo.models.bundled import ensure_bundled_model

    work = Path(tempfile.mkdtemp(prefix="exo-bench-"))
    engine = MlxEngine.load(ensure_bundled_model(work / "models"), 0, 30)
    tokenizer = engine.tokenizer

    start = time.perf_counter()
    constrained.ll_tokenizer_for(tokenizer)
    setup_ms = (time.perf_counter() - start) * 1000

    def compile_ms(schema: str) -> dict[str, float]:
        times = []
        for _ in range(10):  # the first call parses the schema; later ones reuse its grammar
            start = time.perf_counter()
            constrained.json_schema_processor(tokenizer, schema)
            times.append((time.perf_counter() - start) * 1000)
        return {"first": times[0], "median": statistics.median(times)}

    compiles = {
        "any_object": compile_ms(constrained.ANY_JSON_OBJECT),
        "schema": compile_ms(SCHEMA),
    }
    prompt = mx.array(engine.encode_chat([protocol.ChatMessage(role="user", content=PROMPT)]))

    def run(seed: int, max_tokens: int, processors: list[Any]) -> tuple[str, list[float]]:
        mx.random.seed(seed)
        text = ""
        stamps: list[float] = []
        for response in mlx_lm.stream_generate(
            engine.model,
            tokenizer,
            prompt,
            max_tokens=max_tokens,
            sampler=make_sampler(temp=1.0),
            logits_processors=processors,
        ):
            stamps.append(time.perf_counter())
            text += response.text
        return text, stamps

    def tok_s(stamps: list[float]) -> float:
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    run(0, 8, [])  # unmeasured: first-call costs
    rows: list[dict[str, Any]] = []
    for rep in range(args.reps):
        processor = constrained.json_schema_processor(tokenizer, SCHEMA)
        text, constrained_stamps = run(rep, args.max_tokens, [processor])
        _, free_stamps = run(rep, len(constrained_stamps), [])
        stats = processor.statistics()
        try:
            json.loads(text)
            valid = True
        except json.JSONDecodeError:
            valid = False
        rows.append(
            {
                "tokens": len(constrained_stamps),
                "valid_json": valid,
                "constrained_tok_s": tok_s(constrained_stamps),
                "unconstrained_tok_s": tok_s(free_stamps),
                "mask_ms_mean": stats.mask_seconds / stats.steps * 1000,
                "mask_ms_p99": stats.p99_mask_seconds * 1000,
                "mask_ms_max": stats.max_mask_seconds * 1000,
            }
        )

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    report: dict[str, Any] = {
        "llguidance": llguidance.__version__,
        "blas": loaded_blas(),
        "reps": args.reps,
        "import_ms": import_ms,
        "vocab_setup_ms": setup_ms,
        "compile_ms": compiles,
        "constrained_tok_s": median("constrained_tok_s"),
        "unconstrained_tok_s": median("unconstrained_tok_s"),
        "mask_ms_mean": statistics.fmean(r["mask_ms_mean"] for r in rows),
        "mask_ms_p99_worst_rep": max(r["mask_ms_p99"] for r in rows),
        "valid_json": sum(r["valid_json"] for r in rows),
        "runs": rows,
    }
    report["ratio"] = report["constrained_tok_s"] / report["unconstrained_tok_s"]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(f"llguidance {report['llguidance']}; BLAS: {report['blas']}; {args.reps} reps, temp 1.0")
    print(
        f"import {import_ms:.0f} ms; vocabulary setup {setup_ms:.0f} ms; compile any-object "
        f"{compiles['any_object']['first']:.2f} ms first / {compiles['any_object']['median']:.2f} "
        f"ms median; schema {compiles['schema']['first']:.2f} / {compiles['schema']['median']:.2f} ms"
    )
    print("| decode | tok/s (median) |")
    print("| --- | --- |")
    print(f"| unconstrained | {report['unconstrained_tok_s']:.1f} |")
    print(f"| json_schema | {report['constrained_tok_s']:.1f} |")
    print(
        f"ratio constrained/unconstrained: {report['ratio']:.3f}; mask per token: mean "
        f"{report['mask_ms_mean']:.2f} ms, p99 (worst rep) {report['mask_ms_p99_worst_rep']:.2f} ms; "
        f"valid JSON {report['valid_json']}/{args.reps}; tokens {[r['tokens'] for r in rows]}"
    )


if __name__ == "__main__":
    main()
