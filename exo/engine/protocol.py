"""Typed messages between a node and its runner process, one JSON object per line.

The runner imports MLX; the node never does. Both sides speak only these records.
"""

from __future__ import annotations

from attrs import frozen

from exo.events.facts import FinishReason


@frozen
class ChatMessage:
    role: str
    content: str


@frozen
class SamplingParams:
    """Sampling controls; temperature 0 means greedy. `max_tokens` None: up to the context."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@frozen
class GenerateRequest:
    request_id: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams


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
class TokenOut:
    request_id: str
    text: str
    token: int


@frozen
class Finished:
    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


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
