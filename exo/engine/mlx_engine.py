"""The MLX engine a runner process drives: load a model directory, stream tokens for a chat.

Why float32 on CPU: MLX's CPU backend has no fast kernels for quantized or half-precision
matmuls, but float32 matmuls go to BLAS. Measured on the bundled SmolLM2-135M (Q4_1 GGUF
converted by `exo.models.gguf`), 2-core AMD EPYC shared with other work, mlx 0.32.4,
greedy, 128 new tokens after a 42-token chat prompt, median of 3 (runs vary +-30%):

    weights as stored (4-bit, float16 scales), bundled reference BLAS: decode  8.5-9 tok/s, prompt  13 tok/s
    weights as stored (4-bit, float16 scales), OpenBLAS LD_PRELOAD:    decode  8.5-9 tok/s, prompt  13 tok/s
    dequantized to float32, bundled reference BLAS:                    decode 11-14 tok/s, prompt  18 tok/s
    dequantized to float32, OpenBLAS LD_PRELOAD:                       decode 12-21 tok/s, prompt 100-200 tok/s

so on a CPU device the engine dequantizes to float32 once after loading (0.5-0.7 s here,
on top of 0.35 s for mlx-lm's load; the runner's environment preloads OpenBLAS, see
`exo.engine.blas`). On a GPU (Metal, CUDA) quantized kernels are fast and the weights
stay as stored.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from attrs import frozen
from mlx_lm.tokenizer_utils import TokenizerWrapper

from exo.engine import (
    chat_format,
    constrained,
    model_fixes,
    pipeline,
    protocol,
    sampling,
    table_rope,
    tensor,
)
from exo.engine.blas import loaded_blas
from exo.engine.doorbell import Doorbells
from exo.engine.reply import Reply
from exo.models.hub import layer_of, rank_needs, tensor_role

_WARMUP_MESSAGES = (protocol.ChatMessage("user", "Hi"),)


# Most alternatives reported per token (OpenAI's `top_logprobs` limit).
MAX_TOP_LOGPROBS = 20

# Prompt tokens per forward pass while prefilling; between passes a cancel is noticed.
PREFILL_STEP = 512


class PromptTooLong(ValueError):
    """The chat, once templated, leaves no room in the model's context to generate."""


class _CancelledDuringPrefill(Exception):
    """Raised from mlx-lm's prefill progress callback: the only way to stop a long prefill."""


class MlxEngine:
    """One loaded model (or the head of a distributed group) and its tokenizer: checks
    and prepares requests; `generate` streams one alone (warm-up, benchmarks), the
    runner batches them (`exo.engine.batching`)."""

    def __init__(
        self, model: nn.Module, tokenizer: TokenizerWrapper, info: protocol.EngineInfo
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.group: mx.distributed.Group | None = None
        self.doorbells: Doorbells | None = None
        self.full_model: nn.Module = model
        self.strategy = "pipeline"
        self.hidden_size = 0

    @classmethod
    def load(
        cls,
        model_dir: Path,
        start_layer: int,
        end_layer: int,
        rank: int = 0,
        hosts: Sequence[str] = (),
        strategy: str = "pipeline",
        context_length: int | None = None,
        keep_quantized: bool = False,
        *,
        doorbell_key: bytes = b"",
    ) -> MlxEngine:
        """Load layers [start_layer, end_layer) of the model in `model_dir`.

        With `hosts` (one "ip:port" per rank), join the MLX ring first. A pipeline rank
        keeps only its layers; a tensor rank keeps its slice of every layer. Rank 0 then
        drives the whole group as one model, and the other ranks serve it
        (`serve_follower`).
        """
        stored = json.loads((model_dir / "config.json").read_text())
        # Multimodal checkpoints (gemma3, mistral3) keep the language model's settings
        # under text_config; mlx-lm's own classes read them from there.
        text = stored.get("text_config")
        config = (
            {**stored, **text, "model_type": stored.get("model_type")}
            if isinstance(text, dict)
            else stored
        )
        num_layers = int(config["num_hidden_layers"])
        if not 0 <= start_layer < end_layer <= num_layers:
            raise ValueError(
                f"layers [{start_layer}, {end_layer}) are not within [0, {num_layers})"
            )
        distributed = len(hosts) > 1
        if strategy not in ("pipeline", "tensor"):
            raise ValueError(f"unknown strategy {strategy!r}")
        if not distributed and (start_layer, end_layer) != (0, num_layers):
            raise ValueError(
                f"layers [{start_layer}, {end_layer}) of {num_layers} are a pipeline shard: "
                "loading one needs every rank's host"
            )
        if distributed:
            # Placement refuses these first; a runner loaded by hand says why, too.
            refusal = (
                pipeline.pipeline_refusal if strategy == "pipeline" else tensor.tensor_refusal
            )(config, len(hosts))
            if refusal is not None:
                raise ValueError(refusal)
        group, doorbells = (
            pipeline.init_ring(rank, list(hosts), strategy, doorbell_key)
            if distributed
            else (None, None)
        )
        model_fixes.install()
        model, tokenizer = load_shard_files(model_dir, start_layer, end_layer, config)
        if group is not None and strategy == "pipeline":
            pipeline.keep_layers(model, start_layer, end_layer, last=rank == group.size() - 1)
        device = _device_kind()
        if device == "cpu" and not keep_quantized:
            dequantize_to_float32(model)
            dtype = "float32"
        else:
            dtype = _stored_dtype(config)
        if group is not None and strategy == "tensor":
            tensor.shard_model(model, group)
        mx.eval(model.parameters())
        info = protocol.EngineInfo(
            device=device,
            dtype=dtype,
            blas=loaded_blas(),
            model_type=str(config.get("model_type", "unknown")),
            num_layers=num_layers,
            context_length=min(
                int(config.get("max_position_embeddings") or 4096),
                context_length or sys.maxsize,
            ),
        )
        if device == "cpu":
            # mx.fast.rope is ~20 small ops per call on a CPU; tables make it 6.
            table_rope.install(model, positions=info.context_length)
        runs: nn.Module | pipeline.PipelineHead | tensor.TensorHead = model
        if group is not None and rank == 0:
            assert doorbells is not None
            runs = (
                pipeline.PipelineHead(model, group, doorbells, int(config["vocab_size"]))
                if strategy == "pipeline"
                else tensor.TensorHead(model, group, doorbells)
            )
        engine = cls(runs, tokenizer, info)  # type: ignore[arg-type]
        engine.group = group
        engine.doorbells = doorbells
        engine.strategy = strategy
        engine.full_model = model
        engine.hidden_size = int(config["hidden_size"])
        if rank == 0:
            engine.warm_up()
        return engine

    @property
    def follower(self) -> bool:
        """A rank after the first: it serves rank 0, not requests."""
        return self.group is not None and self.group.rank() > 0

    def serve_follower(self) -> None:
        assert self.group is not None and self.doorbells is not None
        if self.strategy == "tensor":
            tensor.serve_follower(self.full_model, self.group, self.doorbells)
        else:
            pipeline.serve_follower(self.full_model, self.group, self.doorbells, self.hidden_size)

    def close(self) -> None:
        """Release the other ranks (rank 0 of a group)."""
        if isinstance(self.model, pipeline.PipelineHead | tensor.TensorHead):
            with suppress(RuntimeError):  # a broken ring: nobody is left to tell
                self.model.stop()

    def warm_up(self) -> None:
        """Run tiny generations so the first real request does not pay first-call costs.

        Both a greedy and a sampled pass: the temperature / top-p samplers are compiled
        MLX functions whose first call costs about a second on CPU. A constrained pass
        prepares the grammar library's view of the vocabulary (about 0.25 s), which the
        first JSON request would otherwise wait for.
        """
        messages = _WARMUP_MESSAGES
        for params in (
            protocol.SamplingParams(temperature=0.0, max_tokens=2),
            protocol.SamplingParams(temperature=1.0, top_p=0.9, max_tokens=2),
            protocol.SamplingParams(
                temperature=0.0, max_tokens=2, json_schema=constrained.ANY_JSON_OBJECT
            ),
        ):
            request = protocol.GenerateRequest(
                request_id="warm-up", messages=messages, params=params
            )
            for _ in self.generate(request, lambda: False):
                pass

    def encode_chat(
        self,
        messages: Sequence[protocol.ChatMessage],
        tools: tuple[protocol.Tool, ...] = (),
    ) -> list[int]:
        """Token ids of the chat rendered by the model's template, ready for the reply."""
        if not messages:
            raise ValueError("a chat needs at least one message")
        native = chat_format.template_knows_tools(self.tokenizer.chat_template)
        chat: list[dict[str, Any]] | list[dict[str, str]]
        try:
            if native:
                chat = chat_format.native_messages(tuple(messages))
                schemas = [chat_format.tool_schema(t) for t in tools] or None
            else:
                chat = chat_format.described_tools_messages(tuple(messages), tools)
                schemas = None
        except json.JSONDecodeError as exc:
            raise ValueError(f"a tool's parameters are not valid JSON: {exc}") from exc
        try:
            text = self.tokenizer.apply_chat_template(
                chat, tools=schemas, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # jinja raises its own TemplateError family
            raise ValueError(f"the chat template rejected these messages: {exc}") from exc
        return list(self.tokenizer.encode(str(text), add_special_tokens=False))

    def encode_prompt(self, request: protocol.GenerateRequest) -> list[int]:
        """The prompt's token ids: the templated chat, or the raw text of a completion."""
        if request.text is None:
            return self.encode_chat(request.messages, request.tools)
        if not request.text:
            raise ValueError("the prompt is empty")
        return list(self.tokenizer.encode(request.text))

    def prepare(self, request: protocol.GenerateRequest) -> Prepared:
        """Check the request and tokenize its prompt; ValueError (for the client) when
        its parameters are bad or its prompt leaves no room in the context. `max_tokens`
        of the result is what may be generated (0: only count the prompt)."""
        params = request.params
        _check_params(params)
        prompt = self.encode_prompt(request)
        if params.max_tokens == 0:  # count only: how long the prompt is, nothing generated
            return Prepared(request.request_id, prompt, 0, params)
        room = self.info.context_length - len(prompt)
        if room <= 0:
            raise PromptTooLong(
                f"the prompt is {len(prompt)} tokens but the model's context holds "
                f"{self.info.context_length}; shorten the conversation"
            )
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        return Prepared(request.request_id, prompt, max_tokens, params)

    def processors(self, prepared: Prepared) -> list[sampling.LogitsProcessor]:
        """The logits processors of a request (penalties, bias, its JSON schema); a fresh
        set per generation, since the constraint's matcher follows its reply."""
        params = prepared.params
        processors = sampling.processors_for(params, len(prepared.prompt))
        if params.json_schema is not None:
            processors.append(constrained.json_schema_processor(self.tokenizer, params.json_schema))
        return processors

    def generate(
        self, request: protocol.GenerateRequest, cancelled: Callable[[], bool]
    ) -> Iterator[protocol.TokenOut | protocol.Finished]:
        """Stream one reply on its own: TokenOut chunks, then exactly one Finished (the
        warm-up's path and the benchmarks' baseline; runners batch, `exo.engine.batching`).

        Bad parameters and over-long prompts raise here, before anything is yielded.
        `cancelled` is polled after every token and between prefill chunks. `max_tokens`
        0 only counts the prompt: the Finished reports its length, nothing is generated.
        """
        prepared = self.prepare(request)
        if prepared.max_tokens == 0:
            return iter([prepared.counted()])
        processors = self.processors(prepared)
        return self._stream(prepared, processors, cancelled)

    def _stream(
        self,
        prepared: Prepared,
        processors: list[sampling.LogitsProcessor],
        cancelled: Callable[[], bool],
    ) -> Iterator[protocol.TokenOut | protocol.Finished]:
        params = prepared.params

        def prefill_progress(_done: int, _total: int) -> None:
            if cancelled():
                raise _CancelledDuringPrefill

        tokenizer = self.tokenizer
        if params.ignore_eos:
            tokenizer = copy.copy(tokenizer)
            tokenizer.eos_token_ids = ()
        responses = mlx_lm.stream_generate(
            self.model,
            tokenizer,
            mx.array(prepared.prompt),
            max_tokens=prepared.max_tokens,
            sampler=sampling.sampler_for(params),
            logits_processors=processors or None,
            prefill_step_size=PREFILL_STEP,
            prompt_progress_callback=prefill_progress,
        )
        reply = Reply(prepared.request_id, params.stop)
        reason: protocol.FinishReason | None = None
        try:
            for response in responses:
                at_eos = response.finish_reason == "stop"
                logprob = sampling.step_logprob(
                    self.tokenizer, response.logprobs, response.token, params.logprobs, at_eos
                )
                out = reply.add(response.text, None if at_eos else response.token, logprob)
                if out is not None:
                    yield out
                if reply.matched is not None:
                    reason = "stop"
                elif response.finish_reason is not None:
                    reason = "stop" if at_eos else "length"
                elif cancelled():
                    reason = "cancelled"
                if reason is not None:
                    break
        except _CancelledDuringPrefill:
            reason = "cancelled"
        finally:
            responses.close()
        # The stream ended without saying why: treat it as the limit.
        yield from reply.finish(reason or "length", len(prepared.prompt))


@frozen
class Prepared:
    """A checked request: its prompt's tokens and how many may be generated."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    params: protocol.SamplingParams

    def counted(self) -> protocol.Finished:
        """The whole answer to a count-only request (`max_tokens` 0): the prompt's length."""
        return protocol.Finished(self.request_id, "length", len(self.prompt), 0)


def load_shard_files(
    model_dir: Path, start_layer: int, end_layer: int, config: dict[str, Any]
) -> tuple[nn.Module, TokenizerWrapper]:
    """The model (lazily loaded) and its tokenizer from `model_dir`, which may hold only
    the weight files of layers [start_layer, end_layer) and the shared tensors: a
    pipeline rank's download. Missing files that the layers need are an error here, not
    random weights later."""
    index_path = model_dir / "model.safetensors.index.json"
    if not index_path.is_file():
        return mlx_lm.load(str(model_dir), lazy=True)  # type: ignore[return-value]
    weight_map: dict[str, str] = json.loads(index_path.read_text()).get("weight_map", {})
    absent = {f for f in set(weight_map.values()) if not (model_dir / f).is_file()}
    if not absent:
        return mlx_lm.load(str(model_dir), lazy=True)  # type: ignore[return-value]
    num_layers = int(config["num_hidden_layers"])
    tied = not any(tensor_role(n) == "head" and "norm" not in n for n in weight_map)
    needed: set[str] = set()
    for name, file in weight_map.items():
        layer = layer_of(name)
        if layer is not None:
            if start_layer <= layer < min(end_layer, num_layers):
                needed.add(file)
        elif rank_needs(tensor_role(name), start_layer, end_layer, num_layers, tied):
            needed.add(file)
    lacking = sorted(needed & absent)
    if lacking:
        raise FileNotFoundError(
            f"{model_dir} lacks {', '.join(lacking)}, which layers [{start_layer}, "
            f"{end_layer}) need"
        )
    from mlx_lm.utils import load_model, load_tokenizer

    model, loaded_config = load_model(model_dir, lazy=True, strict=False)
    tokenizer = load_tokenizer(model_dir, eos_token_ids=loaded_config.get("eos_token_id"))
    return model, tokenizer


def _check_params(params: protocol.SamplingParams) -> None:
    if not math.isfinite(params.temperature) or params.temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.max_tokens is not None and params.max_tokens < 0:
        raise ValueError(f"max_tokens must be at least 0, got {params.max_tokens}")
    if params.top_k < 0 or not 0 <= params.min_p <= 1:
        raise ValueError(
            f"top_k must be >= 0 and min_p in [0, 1]; got {params.top_k}, {params.min_p}"
        )
    if params.logprobs is not None and not 0 <= params.logprobs <= MAX_TOP_LOGPROBS:
        raise ValueError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {params.logprobs}")


def _device_kind() -> str:
    """'metal' or 'cuda' when MLX runs on that GPU, else 'cpu'."""
    if mx.default_device().type == mx.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    cuda: Any = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return "gpu"


def _stored_dtype(config: dict[str, Any]) -> str:
    quantization = config.get("quantization")
    if isinstance(quantization, dict) and "bits" in quantization:
        return f"q{quantization['bits']} affine"
    return str(config.get("torch_dtype", "float16"))


def dequantize_to_float32(model: nn.Module) -> None:
    """Replace quantized layers by float32 ones and cast every parameter to float32, in place.

    Scales and biases are widened before dequantizing, so the arithmetic itself runs in
    float32 (half-precision math is slow on CPU).
    """
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding):
            weight = _dequantize(module)
            if isinstance(module, nn.QuantizedEmbedding):
                layer: nn.Module = nn.Embedding(weight.shape[0], weight.shape[1])
            else:
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in module)
                if "bias" in module:
                    layer.bias = module.bias.astype(mx.float32)
            layer.weight = weight
            replacements.append((name, layer))
    if replacements:
        from mlx.utils import tree_unflatten

        model.update_modules(tree_unflatten(replacements))
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())


def _dequantize(module: nn.QuantizedLinear | nn.QuantizedEmbedding) -> mx.array:
    biases: mx.array | None = module.get("biases")
    return mx.dequantize(
        module.weight,
        module.scales.astype(mx.float32),
        None if biases is None else biases.astype(mx.float32),
        group_size=module.group_size,
        bits=module.bits,
        mode=module.mode,
    )
