"""Pipeline (and tensor) sharding is right for every architecture exo says it supports.

Tiny random-weight float32 models of each architecture (mlx-lm's own classes: hidden 64,
4 layers, vocabulary 256) are cut into rank slices in-process with the very functions a
runner uses (`keep_layers`, `first_stage`, `later_stage`), the hidden states handed from
slice to slice as the ring would: 2 and 3 ranks must give the whole model's logits and
greedy tokens, through a prefill in two chunks and decode steps with caches. Sliding
windows are 3 positions, so rotating caches wrap. A real ring of runner-like processes
(`python -m tests.engine.test_architectures STRATEGY HOSTS RANK`) checks the I/O around
those functions, for the pipeline and for tensor parallelism, through mlx-lm's own
generation loop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.utils import MODEL_REMAPPING, _get_classes

from exo.engine import architectures, model_fixes, pipeline, protocol, tensor
from exo.engine.architectures import Architecture
from exo.engine.blas import runner_env
from exo.engine.mlx_engine import dequantize_to_float32
from tests.engine.helpers import RunnerProcess, chat
from tests.integration.nodes import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYERS = 4
TOLERANCE = 1e-3
PROMPT = (1, 5, 9, 33, 2, 7, 100, 3, 42)
DECODE_STEPS = 4
# Rank slices with odd starts: layer types alternate (gpt-oss) or come in pairs (gemma3).
SPLITS = {2: ((0, 1), (1, 4)), 3: ((0, 1), (1, 3), (3, 4))}

BASE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": LAYERS,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "vocab_size": 256,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
MOE: dict[str, Any] = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}
# One tiny config per case; every architecture in the table has at least one.
CASES: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama"},
    "llama-tied-sliding": {
        "model_type": "llama",
        "tie_word_embeddings": True,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "sliding_window": 3,
    },
    "mistral": {"model_type": "mistral"},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3"},
    "phi3": {"model_type": "phi3"},
    "gemma": {"model_type": "gemma"},
    "gemma2": {"model_type": "gemma2", "query_pre_attn_scalar": 16},
    "gemma3_text": {
        "model_type": "gemma3_text",
        "sliding_window": 3,
        "sliding_window_pattern": 2,
        "query_pre_attn_scalar": 16,
    },
    "granite": {
        "model_type": "granite",
        "logits_scaling": 2.0,
        "attention_multiplier": 0.1,
        "embedding_multiplier": 3.0,
        "residual_multiplier": 0.5,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "minicpm": {
        "model_type": "minicpm",
        "dim_model_base": 32,
        "scale_depth": 1.4,
        "scale_emb": 5.0,
    },
    "mixtral": {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "shared_expert_intermediate_size": 64,
        **MOE,
    },
    "qwen3_moe": {
        "model_type": "qwen3_moe",
        "num_experts": 4,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [1],
        "norm_topk_prob": True,
        **MOE,
    },
    "gpt_oss": {"model_type": "gpt_oss", "num_local_experts": 4, "sliding_window": 3, **MOE},
    "deepseek_v3": {
        "model_type": "deepseek_v3",
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 32,
        "q_lora_rank": None,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 32,
        "v_head_dim": 32,
        **MOE,
    },
}
TENSOR_CASES = [c for c in CASES if cast(Any, architectures.architecture_of(CASES[c])).tensor]


def config_of(case: str) -> dict[str, Any]:
    return {**BASE, **CASES[case]}


def tiny_model(
    case: str, quantized: bool = False, dequantize: bool = True, **overrides: Any
) -> nn.Module:
    """The case's model with seeded random weights: the same on every call and process.

    Every float parameter is drawn (norm weights too), so a rank that skipped or doubled
    a norm or a scaling would show. gemma3 ties its head, as its checkpoints do.
    """
    model_fixes.install()  # as the runner does before it loads a model
    config = {**config_of(case), **overrides}
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if config["model_type"] == "gemma3_text":
        model.sanitize({})  # no lm_head.weight: the head is the embedding
    mx.random.seed(0)
    drawn: list[tuple[str, mx.array]] = []
    for name, value in cast(list[tuple[str, mx.array]], tree_flatten(model.parameters())):
        drawn.append(
            (name, 0.2 * mx.random.normal(value.shape) if value.dtype == mx.float32 else value)
        )
    model.update(tree_unflatten(drawn))
    if quantized:
        nn.quantize(model, group_size=32, bits=4)
        if dequantize:
            dequantize_to_float32(model)
    mx.eval(model.parameters())
    return model


Forward = Callable[[mx.array], mx.array]


def whole_forward(model: nn.Module) -> Forward:
    cache = pipeline.make_cache(model)
    return lambda tokens: cast(mx.array, model(tokens, cache=cache))[:, -1, :]


def cut(case: str, ranks: int, quantized: bool = False, dequantize: bool = True) -> list[nn.Module]:
    """One copy of the model per rank, cut as the runner cuts it (before dequantizing)."""
    models = []
    for rank, (start, end) in enumerate(SPLITS[ranks]):
        model = tiny_model(case)
        if quantized:
            nn.quantize(model, group_size=32, bits=4)
        pipeline.keep_layers(model, start, end, last=rank == ranks - 1)
        if quantized and dequantize:
            dequantize_to_float32(model)
        models.append(model)
    return models


def pipeline_forward(models: list[nn.Module]) -> Forward:
    """A forward pass through the rank slices, hidden states handed on as the ring does."""
    caches = [pipeline.make_cache(m) for m in models]

    def forward(tokens: mx.array) -> mx.array:
        hidden = pipeline.first_stage(models[0], tokens, caches[0])
        for rank in range(1, len(models)):
            hidden = pipeline.later_stage(
                models[rank], hidden, caches[rank], last=rank == len(models) - 1
            )
        return hidden[:, -1, :]

    return forward


def greedy(forward: Forward) -> tuple[list[mx.array], list[int]]:
    """The last-position logits of every pass and the greedy tokens: the prompt in two
    prefill chunks (the second at a non-zero offset), then decode steps."""
    prompt = mx.array([PROMPT])
    forward(prompt[:, :5])
    logits = [forward(prompt[:, 5:])]
    tokens: list[int] = []
    for _ in range(DECODE_STEPS):
        tokens.append(cast(int, mx.argmax(logits[-1], axis=-1).item()))
        logits.append(forward(mx.array([[tokens[-1]]])))
    return logits, tokens


def largest(x: mx.array) -> float:
    return cast(float, mx.max(mx.abs(x)).item())


def assert_same_run(got: Forward, expected: Forward) -> None:
    got_logits, got_tokens = greedy(got)
    want_logits, want_tokens = greedy(expected)
    assert got_tokens == want_tokens
    for step, (a, b) in enumerate(zip(got_logits, want_logits, strict=True)):
        assert largest(a - b) < TOLERANCE, f"pass {step}"
    assert largest(want_logits[0]) > 0.1  # real logits, not zeros


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_a_pipeline_gives_the_logits_and_tokens_of_the_whole_model(case: str, ranks: int) -> None:
    assert_same_run(pipeline_forward(cut(case, ranks)), whole_forward(tiny_model(case)))


@pytest.mark.parametrize("case", list(CASES))
def test_each_rank_keeps_only_its_own_weights(case: str) -> None:
    arch = architectures.architecture_of(CASES[case])
    assert arch is not None
    whole = tiny_model(case)
    tied = arch.head not in whole
    assert hasattr(getattr(whole, arch.inner), arch.embed)
    assert hasattr(getattr(whole, arch.inner), arch.norm)
    prefix = f"{arch.inner}.layers."
    for rank, model in enumerate(cut(case, 3)):
        start, end = SPLITS[3][rank]
        last = rank == 2
        names = [k for k, _ in tree_flatten(model.parameters())]
        layers = {int(k[len(prefix) :].split(".")[0]) for k in names if k.startswith(prefix)}
        assert layers == set(range(start, end))
        assert any(k.startswith(f"{arch.head}.") for k in names) == (last and not tied)
        embed = f"{arch.inner}.{arch.embed}."
        assert any(k.startswith(embed) for k in names) == (rank == 0 or (last and tied))
        assert any(k.startswith(f"{arch.inner}.{arch.norm}.") for k in names) == last
        assert len(pipeline.make_cache(model)) == LAYERS


@pytest.mark.parametrize("dequantize", [True, False], ids=["float32", "kept-4-bit"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_quantized_model_survives_cutting(case: str, dequantize: bool) -> None:
    """The runner cuts the 4-bit model, then on CPU usually dequantizes each slice to
    float32 (MoE experts' and MLA's quantized kinds stay as they are)."""
    models = cut(case, 3, quantized=True, dequantize=dequantize)
    for model in models:
        kinds = {type(m) for _, m in model.named_modules()}
        assert bool(kinds & {nn.QuantizedLinear, nn.QuantizedEmbedding}) != dequantize
    whole = tiny_model(case, quantized=True, dequantize=dequantize)
    assert_same_run(pipeline_forward(models), whole_forward(whole))


def test_the_table_matches_mlx_lm() -> None:
    """Every architecture in the MLX-free table is a real mlx-lm module, verified above,
    and says `tensor` exactly where mlx-lm's model has `shard`."""
    verified = {architectures.module_of(c) for c in CASES.values()}
    assert set(architectures.ARCHITECTURES) == verified
    for module, arch in architectures.ARCHITECTURES.items():
        model_class, _ = _get_classes({"model_type": module})
        assert model_class.__module__ == f"mlx_lm.models.{module}"
        assert arch.tensor == hasattr(model_class, "shard"), module
    for alias, module in architectures.ALIASES.items():
        assert MODEL_REMAPPING[alias] == module
    for module in architectures.UNSUPPORTED:  # refused with a reason: real, and not listed
        assert module not in architectures.ARCHITECTURES
        assert _get_classes({"model_type": module})[0].__module__ == f"mlx_lm.models.{module}"
    for model_type in architectures.supported_model_types():
        assert pipeline.pipeline_refusal({"model_type": model_type}) is None
    for model_type in architectures.supported_model_types(tensor=True):
        assert tensor.tensor_refusal({"model_type": model_type}) is None


def test_the_table_imports_no_mlx() -> None:
    """The node process never imports MLX, and must be able to ask the table."""
    code = (
        "import sys, exo.engine.architectures as a; "
        "assert a.pipeline_refusal({'model_type': 'mistral'}) is None; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_unsupported_architectures_are_refused_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refusal = architectures.pipeline_refusal
    assert "no model_type" in str(refusal({}))
    why = str(refusal({"model_type": "qwen3_next"}))
    assert "'qwen3_next'" in why and "state" in why
    assert "per-layer embeddings" in str(refusal({"model_type": "gemma3n"}))
    assert "text_config" in str(refusal({"model_type": "gemma3"}))
    why = str(refusal({"model_type": "olmo2"}))
    assert "'olmo2'" in why and "not verified" in why and "llama" in why
    assert "at least 5 layers" in str(refusal(config_of("llama"), 5))
    assert refusal(config_of("mistral"), ranks=LAYERS) is None
    # The runner's check also asks its mlx-lm, which may be older than the table.
    monkeypatch.setitem(cast(Any, architectures.ARCHITECTURES), "nope", Architecture("nope", True))
    assert "mlx-lm has no 'nope' model" in str(pipeline.pipeline_refusal({"model_type": "nope"}))
    assert "mlx-lm has no 'nope' model" in str(tensor.tensor_refusal({"model_type": "nope"}))
    # The runner refuses to cut a model it cannot, naming it, before loading any weight.
    olmo2 = {**BASE, "model_type": "olmo2"}
    model_class, args_class = _get_classes(olmo2)
    with pytest.raises(ValueError, match="'olmo2' cannot be pipeline-sharded"):
        pipeline.keep_layers(model_class(args_class.from_dict(olmo2)), 0, 2, last=False)


def test_tensor_sharding_is_refused_where_mlx_lm_cannot() -> None:
    refusal = architectures.tensor_refusal
    assert "no tensor-parallel sharding" in str(refusal({"model_type": "phi3"}))
    assert "not verified" in str(refusal({"model_type": "olmo2"}))
    assert "num_attention_heads = 4 does not split" in str(refusal(config_of("llama"), 3))
    assert "num_key_value_heads = 2 does not split" in str(refusal(config_of("llama"), 4))
    assert refusal(config_of("qwen3_moe"), 2) is None
    with pytest.raises(ValueError, match="'phi3' cannot be tensor-sharded"):
        tensor.shard_model(tiny_model("phi3"), mx.distributed.init())


@pytest.mark.parametrize(("strategy", "ranks"), [("pipeline", 3), ("tensor", 2)])
def test_a_real_ring_gives_the_tokens_of_the_whole_model(strategy: str, ranks: int) -> None:
    """Processes joined by the ring backend drive every case through mlx-lm's generation
    loop and its batch generator, with the runner's heads and follower loops."""
    hosts = ",".join(f"127.0.0.1:{free_port()}" for _ in range(ranks))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.engine.test_architectures", strategy, hosts, str(r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=runner_env(os.environ, ranked=True),
            cwd=REPO_ROOT,
            text=True,
        )
        for r in range(ranks)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * ranks, outputs
    results = [line.split() for line in outputs[0].splitlines() if line.startswith("case ")]
    expected = CASES if strategy == "pipeline" else TENSOR_CASES
    assert [r[1] for r in results] == list(expected), outputs[0]
    for _, case, same, diff in results:
        assert same == "same" and float(diff) < TOLERANCE, (case, same, diff)
    # The same ring batches: rank 0's batch generator, the others' caches in step with it.
    batches = [line.split() for line in outputs[0].splitlines() if line.startswith("batch ")]
    assert [r[1] for r in batches] == list(expected), outputs[0]
    for _, case, same, diff in batches:
        assert same == "same" and float(diff) < TOLERANCE, (case, same, diff)


def test_runners_serve_a_gemma3_pipeline_as_one_runner(model_dir: Path, tmp_path: Path) -> None:
    """The whole runner path (load, cut, dequantize, warm up, chat) for an architecture
    with every trap: scaled embeddings, a sliding-window pattern by layer number, a tied
    head. A tiny random gemma3 with the bundled model's tokenizer; greedy tokens of two
    pipeline ranks and of one runner holding all layers must agree."""
    tiny = tmp_path / "tiny-gemma3"
    tiny.mkdir()
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    config = {**config_of("gemma3_text"), "vocab_size": vocab, "sliding_window": 8}
    (tiny / "config.json").write_text(json.dumps(config))
    model = tiny_model("gemma3_text", vocab_size=vocab, sliding_window=8)
    weights = cast(list[tuple[str, mx.array]], tree_flatten(model.parameters()))
    mx.save_safetensors(str(tiny / "model.safetensors"), dict(weights))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, tiny / name)
    hosts = tuple(f"127.0.0.1:{free_port()}" for _ in range(2))
    runners = [RunnerProcess(tmp_path / f"rank{r}.log", ranked=True) for r in range(2)]
    runners.append(RunnerProcess(tmp_path / "whole.log"))
    loads = [
        protocol.Load(str(tiny), 0, 1, rank=0, hosts=hosts),
        protocol.Load(str(tiny), 1, LAYERS, rank=1, hosts=hosts),
        protocol.Load(str(tiny), 0, LAYERS),
    ]
    try:
        for runner, load in zip(runners, loads, strict=True):
            runner.send(load)
        for runner in runners:
            assert isinstance(runner.recv(), protocol.Loading)
        for runner in runners:
            ready = runner.recv(timeout=120)
            assert isinstance(ready, protocol.Ready), f"{ready!r}\n{runner.stderr()}"
        prompt = "Count from 1 to 5, then name three colours."  # longer than the window
        got, want = (_reply(runner, prompt) for runner in (runners[0], runners[2]))
        assert len(want) == 12 and all(len(out.logprobs) == 1 for out in want)
        assert got == want  # the tokens, their texts and their top-5 log-probabilities
    finally:
        codes = [runner.close() for runner in runners]
    assert codes == [0, 0, 0], [runner.stderr()[-2000:] for runner in runners]


def _reply(runner: RunnerProcess, prompt: str) -> list[protocol.TokenOut]:
    runner.send(chat("c", prompt, max_tokens=12, logprobs=5))
    outs: list[protocol.TokenOut] = []
    while not isinstance(message := runner.recv(60), protocol.Finished):
        assert isinstance(message, protocol.TokenOut), message
        outs.append(message)
    return outs


def _generate(model: Any) -> tuple[list[int], mx.array]:
    """Greedy tokens and their log-probabilities from mlx-lm's own loop (small prefill
    steps, so the prompt takes several passes)."""
    tokens: list[int] = []
    logprobs: list[mx.array] = []
    for token, probs in generate_step(
        mx.array(PROMPT),
        model,
        max_tokens=DECODE_STEPS + 1,
        sampler=lambda x: mx.argmax(x, axis=-1),
        prefill_step_size=4,
    ):
        tokens.append(int(token))
        logprobs.append(probs)
    return tokens, mx.stack(logprobs)


def _batched(model: Any) -> tuple[list[list[int]], mx.array]:
    """Greedy tokens of three prompts of different lengths from mlx-lm's batch generator,
    the third joining while the first two decode, and all their log-probabilities."""
    generator = BatchGenerator(
        model, completion_batch_size=4, prefill_batch_size=4, prefill_step_size=4
    )
    uids = generator.insert([list(PROMPT), [8, 8, 2]], max_tokens=[DECODE_STEPS + 2] * 2)
    tokens: dict[int, list[int]] = {}
    logprobs: list[mx.array] = []
    finished: set[int] = set()
    steps = 0
    while len(finished) < len(uids) or steps <= 2:
        if steps == 2:
            uids += generator.insert([[4, 40, 41, 42, 43, 44]], max_tokens=[DECODE_STEPS])
        for response in generator.next_generated():
            tokens.setdefault(response.uid, []).append(response.token)
            logprobs.append(response.logprobs)
            if response.finish_reason is not None:
                finished.add(response.uid)
        steps += 1
    generator.close()
    return [tokens[uid] for uid in uids], mx.stack(logprobs)


def _ring_rank(strategy: str, hosts: list[str], rank: int) -> None:
    """One rank of `test_a_real_ring_...`: every case in turn, then the next."""
    group, doorbells = pipeline.init_ring(rank, hosts, strategy, b"the instance key")
    size = group.size()
    for case in CASES if strategy == "pipeline" else TENSOR_CASES:
        model = tiny_model(case)
        if strategy == "pipeline":
            start, end = SPLITS[size][rank]
            pipeline.keep_layers(model, start, end, last=rank == size - 1)
        else:
            tensor.shard_model(model, group)
        if rank > 0:
            if strategy == "pipeline":
                pipeline.serve_follower(model, group, doorbells, BASE["hidden_size"])
            else:
                tensor.serve_follower(model, group, doorbells)
            continue
        head = (
            pipeline.PipelineHead(model, group, doorbells, BASE["vocab_size"])
            if strategy == "pipeline"
            else tensor.TensorHead(model, group, doorbells)
        )
        whole = tiny_model(case)
        got, got_probs = _generate(head)
        want, want_probs = _generate(whole)
        diff = largest(got_probs - want_probs)
        print(f"case {case} {'same' if got == want else 'differ'} {diff:.3e}", flush=True)
        batch, batch_probs = _batched(head)
        head.stop()
        batch_want, batch_want_probs = _batched(whole)
        diff = largest(batch_probs - batch_want_probs)
        same = "same" if batch == batch_want else "differ"
        print(f"batch {case} {same} {diff:.3e}", flush=True)
    doorbells.close()


if __name__ == "__main__":
    _ring_rank(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]))
