"""Typed messages between a node and its runner process, one JSON object per line.

The runner imports MLX; the node never does. Both sides speak only these records.
"""

from __future__ import annotations

from attrs import frozen

from exo.events.codec import register_tagged_union
from exo.events.facts import FinishReason


@frozen
class ToolCall:
    """A function call the assistant made; `arguments` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@frozen
class ChatMessage:
    role: str
    content: str
    # An assistant turn's calls, and which call a `tool` turn answers.
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@frozen
class Tool:
    """A function the model may call; `parameters` is its JSON schema as JSON text."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'


@frozen
class SamplingParams:
    """Sampling controls; temperature 0 means greedy. `max_tokens` None: up to the context.

    Zero (or None) switches a control off. Penalties follow OpenAI's meaning: presence
    subtracts a constant from every token already generated, frequency subtracts it once
    per occurrence. `logprobs`: None for none, else how many top alternatives to report
    with each token's own log-probability. `json_schema` (JSON text) constrains the reply
    to JSON that the schema accepts. `ignore_eos` (vLLM's extension, for benchmarks)
    generates past the end-of-sequence token up to `max_tokens`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    json_schema: str | None = None
    ignore_eos: bool = False


@frozen
class GenerateRequest:
    """One generation: a chat rendered by the model's template, or with `text`, that raw
    text as the whole prompt (a plain completion; `messages` is then empty)."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    tools: tuple[Tool, ...] = ()
    text: str | None = None


# node -> runner


@frozen
class Load:
    """Load the model directory; `layers` is this rank's [start, end) (whole model for one rank)."""

    model_dir: str
    start_layer: int
    end_layer: int
    # Ranks of a multi-node instance: this runner's rank and every rank's "ip:port" for
    # the MLX ring (empty for a single runner holding the whole model).
    rank: int = 0
    hosts: tuple[str, ...] = ()
    strategy: str = "pipeline"
    # Cap on prompt + reply tokens (the context placement planned memory for).
    context_length: int | None = None
    # On CPU: keep the weights as stored instead of widening them to float32 (placement
    # found float32 does not fit).
    keep_quantized: bool = False
    # Sequences decoded together (a single runner; a distributed instance serves one at a
    # time), and the tokens of KV cache that placement planned memory for, which the
    # running sequences and the prompt cache share (None: `context_length`).
    batch_size: int = 8
    kv_budget_tokens: int | None = None
    # Hex of the instance's doorbell key (`doorbell_guard.py`): what a rank proves to the
    # others. Only ever on this private pipe; empty for a runner loaded by hand.
    doorbell_key: str = ""


@frozen
class Generate:
    request: GenerateRequest


@frozen
class Cancel:
    request_id: str


@frozen
class Shutdown:
    pass


ToRunner = Load | Generate | Cancel | Shutdown
register_tagged_union(ToRunner)


# runner -> node


@frozen
class EngineInfo:
    """How the runner computes: device, dtype, BLAS library, model facts."""

    device: str
    dtype: str
    blas: str
    model_type: str
    num_layers: int
    context_length: int


@frozen
class Loading:
    pass


@frozen
class Ready:
    info: EngineInfo


@frozen
class TopLogprob:
    text: str
    logprob: float


@frozen
class TokenLogprob:
    """One generated token's log-probability and, if asked for, the likeliest alternatives."""

    text: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@frozen
class TokenOut:
    """New reply text. It may span several tokens (text held back while it could be the
    start of a stop string); `logprobs` then has one entry per token, when asked for."""

    request_id: str
    text: str
    token: int
    logprobs: tuple[TokenLogprob, ...] = ()


@frozen
class Finished:
    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # The stop string that ended the reply (finish_reason "stop"), None for end of sequence.
    stop_sequence: str | None = None
    # Prompt tokens whose keys and values came from the prompt cache (not computed again).
    cached_tokens: int = 0


@frozen
class RequestError:
    """A request the engine could not run. `failed` False: bad input (context too long,
    bad parameters), the runner keeps going; True: the engine or its ring broke."""

    request_id: str
    message: str
    failed: bool = False


@frozen
class Fatal:
    """The runner cannot go on (load failed); it exits after sending this."""

    message: str


FromRunner = Loading | Ready | TokenOut | Finished | RequestError | Fatal
register_tagged_union(FromRunner)
