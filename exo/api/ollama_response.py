"""What the Ollama routes send, as typed models: the chat and generate replies (whole, or
each line of an NDJSON stream), the model listings of `/api/tags` and `/api/ps`, one
model's `/api/show` and `/api/version`.

The encoders in `ollama.py` build these, and `/openapi.json` takes their schemas (the
stream's as a list of reply lines). Durations are in nanoseconds, as Ollama gives them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from exo.events.facts import FinishReason

# The Ollama API version whose request and response shapes this follows.
OLLAMA_API_VERSION = "0.12.0"
Nanoseconds = Annotated[int, Meta(description="Nanoseconds.")]


class OllamaCalledFunction(Struct, frozen=True):
    name: str
    arguments: dict[str, Any]


class OllamaCall(Struct, frozen=True):
    """A call in Ollama's shape: arguments as an object, no id."""

    function: OllamaCalledFunction


class OllamaReplyMessage(Struct, frozen=True):
    role: Literal["assistant"]
    content: str
    tool_calls: list[OllamaCall] | UnsetType = UNSET


class OllamaReply(Struct, frozen=True, kw_only=True):
    """A reply, or one line of a streamed one; the last (`done`) has the statistics.
    `reply` is its text, which each kind names (`rename`) where Ollama puts it."""

    model: str
    created_at: str
    reply: Any
    done: bool
    # "load" answers an empty prompt, Ollama's way to load a model.
    done_reason: FinishReason | Literal["load"] | UnsetType = UNSET
    total_duration: Nanoseconds | UnsetType = UNSET
    load_duration: Nanoseconds | UnsetType = UNSET
    # The prompt tokens evaluated: those the prompt cache lacked.
    prompt_eval_count: int | UnsetType = UNSET
    eval_count: int | UnsetType = UNSET
    eval_duration: Nanoseconds | UnsetType = UNSET


class OllamaChatReply(OllamaReply, frozen=True, kw_only=True, rename={"reply": "message"}):
    reply: OllamaReplyMessage


class OllamaGenerateReply(OllamaReply, frozen=True, kw_only=True, rename={"reply": "response"}):
    reply: str


class OllamaDetails(Struct, frozen=True):
    format: Literal["gguf", "safetensors"]
    family: str
    families: list[str]
    parameter_size: Annotated[str, Meta(examples=["135M", "8.0B"])]
    quantization_level: str


class OllamaModel(Struct, frozen=True):
    """A model as `/api/tags` lists it."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaDetails


class OllamaRunningModel(OllamaModel, frozen=True):
    """A model with a ready instance, as `/api/ps` lists it: exo keeps it loaded until
    its instance is deleted, so always a day ahead."""

    expires_at: str
    size_vram: int


class OllamaModels(Struct, frozen=True):
    models: list[OllamaModel]


class OllamaRunningModels(Struct, frozen=True):
    models: list[OllamaRunningModel]


class OllamaShowReply(Struct, frozen=True):
    modelfile: str
    parameters: str
    template: str
    details: OllamaDetails
    # GGUF-style keys: general.architecture, <architecture>.context_length, ...
    model_info: dict[str, str | int]
    capabilities: list[str]
    modified_at: str


class OllamaError(Struct, frozen=True):
    """A failure: the whole reply, or the last line of a stream."""

    error: str


class OllamaVersion(Struct, frozen=True):
    version: Annotated[str, Meta(extra_json_schema={"const": OLLAMA_API_VERSION})]
