"""The Ollama dialect: `/api/chat`, `/api/generate` (NDJSON streams), `/api/tags`,
`/api/show`, `/api/ps`, `/api/version` and `HEAD /`, at the root and under `/ollama`.

Ollama streams unless told `"stream": false`, takes sampling settings in `options`
(`num_predict` is its `max_tokens`), and reports durations in nanoseconds. Errors are
`{"error": "..."}` with the HTTP status.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, BackendError, InvalidRequest
from exo.api.errors import as_backend_error, dumps, json_response
from exo.api.openai import parse_messages
from exo.api.streaming import GenerationStream, whole_generation
from exo.api.validation import decode_json_body
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut
from exo.models.cards import ModelCard

# The Ollama API version whose request and response shapes this follows.
OLLAMA_API_VERSION = "0.12.0"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
PREFIXES = ("", "/ollama")
# Options exo applies; others Ollama knows (num_ctx, num_thread, …) are accepted and ignored.
_APPLIED_OPTIONS = ("temperature", "top_p", "num_predict", "stop", "seed")


def ollama_error(status: int, message: str) -> TrioResponse:
    return json_response({"error": message}, status)


def backend_error(error: BackendError) -> TrioResponse:
    return ollama_error(error.status, error.message)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _parse_options(body: Mapping[str, Any]) -> SamplingParams:
    options = body.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object")
    temperature = options.get("temperature", 0.8)
    top_p = options.get("top_p", 0.9)
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise InvalidRequest(f"option '{name}' must be a number")
    num_predict = options.get("num_predict")
    if num_predict is not None and (type(num_predict) is not int or num_predict == 0):
        raise InvalidRequest("option 'num_predict' must be a non-zero integer")
    stop = options.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("option 'stop' must be a list of strings")
    seed = options.get("seed")
    if seed is not None and type(seed) is not int:
        raise InvalidRequest("option 'seed' must be an integer")
    return SamplingParams(
        temperature=float(temperature),
        top_p=float(top_p),
        # Ollama: -1 generates until the model stops, -2 until the context is full.
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        stop=tuple(s for s in stop if s),
        seed=seed,
    )


def _check_common(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be true or false")
    for unsupported in ("format", "tools", "images", "suffix"):
        if body.get(unsupported) not in (None, "", []):
            raise InvalidRequest(f"'{unsupported}' is not supported by exo yet")
    return body


def parse_chat(body: object) -> tuple[str, tuple[ChatMessage, ...], SamplingParams, bool]:
    checked = _check_common(body)
    messages = parse_messages(checked.get("messages"))
    return checked["model"], messages, _parse_options(checked), checked.get("stream", True)


def parse_generate(body: object) -> tuple[str, tuple[ChatMessage, ...], SamplingParams, bool]:
    """A generate request as a chat: the `system` prompt, then the `prompt` as the user's."""
    checked = _check_common(body)
    prompt = checked.get("prompt", "")
    system = checked.get("system")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest("'system' must be a string")
    if checked.get("raw"):
        raise InvalidRequest("'raw' prompts are not supported by exo yet")
    messages = (*((ChatMessage("system", system),) if system else ()), ChatMessage("user", prompt))
    return checked["model"], messages, _parse_options(checked), checked.get("stream", True)


def _stats(finished: Finished, started: float) -> dict[str, Any]:
    elapsed = int((time.perf_counter() - started) * 1e9)
    return {
        "done": True,
        "done_reason": finished.finish_reason,
        "total_duration": elapsed,
        "load_duration": 0,
        "prompt_eval_count": finished.prompt_tokens,
        "eval_count": finished.completion_tokens,
        "eval_duration": elapsed,
    }


def reply(model: str, chat: bool, text: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """One answer object: text as a chat `message` or as a generate `response`."""
    body: dict[str, Any] = {"model": model, "created_at": _now()}
    if chat:
        body["message"] = {"role": "assistant", "content": text}
    else:
        body["response"] = text
    return {**body, **extra}


class NdjsonFormat:
    """One JSON object per line: a piece of text per token, then the statistics."""

    def __init__(self, model: str, chat: bool) -> None:
        self._model = model
        self._chat = chat
        self._started = time.perf_counter()

    def _line(self, text: str, extra: Mapping[str, Any]) -> bytes:
        return (dumps(reply(self._model, self._chat, text, extra)) + "\n").encode()

    def start(self) -> list[bytes]:
        return []

    def token(self, chunk: TokenOut) -> list[bytes]:
        return [self._line(chunk.text, {"done": False})] if chunk.text else []

    def finish(self, finished: Finished) -> list[bytes]:
        return [self._line("", _stats(finished, self._started))]

    def error(self, error: Exception) -> list[bytes]:
        known = as_backend_error(error)
        message = known.message if known is not None else "internal error"
        return [(dumps({"error": message}) + "\n").encode()]


def _details(card: ModelCard) -> dict[str, Any]:
    return {
        "format": "gguf" if card.source == "bundled" else "safetensors",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "",
        "quantization_level": "",
    }


def _tag(card: ModelCard) -> dict[str, Any]:
    return {
        "name": card.model_id,
        "model": card.model_id,
        "modified_at": "1970-01-01T00:00:00Z",
        "size": card.weight_bytes,
        "digest": hashlib.sha256(card.model_id.encode()).hexdigest(),
        "details": _details(card),
    }


def register_ollama(app: QuartTrio, backend: Backend) -> None:
    """Add the Ollama routes at the root and under `/ollama`."""

    def find_card(model: str) -> ModelCard | None:
        name = model.removesuffix(":latest")
        return next((c for c in backend.models() if c.model_id == name), None)

    async def generation(chat: bool) -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            body = decode_json_body(raw)
            model, messages, params, stream = (parse_chat if chat else parse_generate)(body)
        except InvalidRequest as error:
            return backend_error(error)
        card = find_card(model)
        if card is None:
            return ollama_error(404, f"model '{model}' not found")
        if not chat and not messages[-1].content and len(messages) == 1:
            # Ollama's way to load a model: an empty prompt answers at once.
            return json_response(
                {
                    "model": model,
                    "created_at": _now(),
                    "response": "",
                    "done": True,
                    "done_reason": "load",
                }
            )
        if stream:
            form = NdjsonFormat(model, chat)
            return TrioResponse(
                GenerationStream(backend, card.model_id, messages, params, form),
                status=200,
                content_type=NDJSON_CONTENT_TYPE,
            )
        started = time.perf_counter()
        try:
            whole = await whole_generation(backend, card.model_id, messages, params)
            text, finished = whole.text, whole.finished
        except Exception as error:
            known = as_backend_error(error)
            if known is None:
                raise
            return backend_error(known)
        return json_response(reply(model, chat, text, _stats(finished, started)))

    async def chat_route() -> TrioResponse:
        return await generation(chat=True)

    async def generate_route() -> TrioResponse:
        return await generation(chat=False)

    async def tags() -> TrioResponse:
        return json_response({"models": [_tag(card) for card in backend.models()]})

    async def show() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            body = decode_json_body(raw)
        except InvalidRequest as error:
            return backend_error(error)
        model = body.get("model") or body.get("name") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            return ollama_error(400, "model is required")
        card = find_card(model)
        if card is None:
            return ollama_error(404, f"model '{model}' not found")
        return json_response(
            {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": _details(card),
                "model_info": {
                    "general.architecture": "llama",
                    "llama.block_count": card.num_layers,
                    "llama.context_length": card.context_length,
                    "llama.embedding_length": card.hidden_size,
                    "llama.attention.head_count": card.num_heads,
                    "llama.attention.head_count_kv": card.num_kv_heads,
                },
                "capabilities": ["completion"],
                "modified_at": "1970-01-01T00:00:00Z",
            }
        )

    async def running() -> TrioResponse:
        ready = {i["model"] for i in backend.instances() if i["status"] == "ready"}
        models = [
            {**_tag(card), "expires_at": "2999-01-01T00:00:00Z", "size_vram": 0}
            for card in backend.models()
            if card.model_id in ready
        ]
        return json_response({"models": models})

    async def version() -> TrioResponse:
        return json_response({"version": OLLAMA_API_VERSION})

    async def alive() -> TrioResponse:
        return TrioResponse("Ollama is running", status=200, content_type="text/plain")

    for prefix in PREFIXES:
        app.add_url_rule(f"{prefix}/api/chat", f"ollama_chat{prefix}", chat_route, methods=["POST"])
        app.add_url_rule(
            f"{prefix}/api/generate", f"ollama_generate{prefix}", generate_route, methods=["POST"]
        )
        app.add_url_rule(f"{prefix}/api/tags", f"ollama_tags{prefix}", tags, methods=["GET"])
        app.add_url_rule(f"{prefix}/api/show", f"ollama_show{prefix}", show, methods=["POST"])
        app.add_url_rule(f"{prefix}/api/ps", f"ollama_ps{prefix}", running, methods=["GET"])
        app.add_url_rule(
            f"{prefix}/api/version", f"ollama_version{prefix}", version, methods=["GET"]
        )
        app.add_url_rule(f"{prefix}/", f"ollama_alive{prefix}", alive, methods=["GET", "HEAD"])


def is_ollama_path(path: str) -> bool:
    """Whether an HTTP-level error on `path` should be answered in Ollama's shape."""
    return path.startswith(("/api/", "/ollama"))
