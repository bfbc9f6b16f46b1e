"""The Ollama dialect's routes: `/api/chat`, `/api/generate` (NDJSON streams),
`/api/tags`, `/api/show`, `/api/ps`, `/api/version` and `HEAD /`, at the root and under
`/ollama`. Bodies are checked in `ollama_request.py`; replies are the typed models of
`ollama_response.py`.

Ollama reports durations in nanoseconds. Errors are `{"error": "..."}` with the HTTP
status. `format` ("json" or a schema) constrains the reply to JSON; `tools` on /api/chat
come back as `message.tool_calls`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from msgspec import structs, to_builtins
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.backend import Backend, BackendError, InvalidRequest, UnknownModel, lookup_model
from exo.api.clock import ApiClock
from exo.api.dashboard import page_response, wants_page
from exo.api.errors import as_backend_error, dumps, json_response
from exo.api.ollama_request import parse_chat, parse_generate, parse_show
from exo.api.ollama_response import (
    OLLAMA_API_VERSION,
    OllamaCall,
    OllamaCalledFunction,
    OllamaChatReply,
    OllamaDetails,
    OllamaError,
    OllamaGenerateReply,
    OllamaModel,
    OllamaModels,
    OllamaReply,
    OllamaReplyMessage,
    OllamaRunningModel,
    OllamaRunningModels,
    OllamaShowReply,
    OllamaVersion,
)
from exo.api.streaming import GenerationStream, streamed_response, whole_generation
from exo.api.tool_calls import CallParser
from exo.api.validation import decode_json_body
from exo.engine.protocol import Finished, TokenOut, Tool, ToolCall
from exo.models.bundled import BundledModelMissing, bundled_gguf
from exo.models.cards import ModelCard

NDJSON_CONTENT_TYPE = "application/x-ndjson"
PREFIXES = ("", "/ollama")


def ollama_error(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return json_response(to_builtins(OllamaError(message)), status, headers)


def backend_error(error: BackendError) -> TrioResponse:
    return ollama_error(error.status, error.message, error.headers)


def _keep_alive_until(clock: ApiClock) -> str:
    """exo keeps a model loaded until its instance is deleted: a day ahead, always."""
    later = datetime.fromtimestamp(clock.wall(), UTC) + timedelta(days=1)
    return later.isoformat(timespec="seconds").replace("+00:00", "Z")


def _now(clock: ApiClock) -> str:
    return datetime.fromtimestamp(clock.wall(), UTC).isoformat().replace("+00:00", "Z")


# Where each kind puts its text: a chat's `message`, a generation's `response`.
_REPLY_KINDS: dict[bool, type[OllamaReply]] = {True: OllamaChatReply, False: OllamaGenerateReply}


def _message(text: str, calls: Sequence[ToolCall]) -> OllamaReplyMessage:
    """The text and calls of a chat reply; a call's arguments as an object, no id."""
    if not calls:
        return OllamaReplyMessage("assistant", text)
    called = [OllamaCall(OllamaCalledFunction(c.name, json.loads(c.arguments))) for c in calls]
    return OllamaReplyMessage("assistant", text, called)


def reply(
    clock: ApiClock,
    model: str,
    chat: bool,
    text: str,
    calls: Sequence[ToolCall] = (),
    ended: tuple[Finished, float] | None = None,
) -> OllamaReply:
    """One answer object: text as a chat `message` or as a generate `response`; `ended`
    (how the generation finished, and when it started on `clock.elapsed`) gives the
    last its statistics."""
    kind = _REPLY_KINDS[chat]
    body = _message(text, calls) if chat else text
    if ended is None:
        return kind(model=model, created_at=_now(clock), reply=body, done=False)
    finished, started = ended
    elapsed = int((clock.elapsed() - started) * 1e9)
    return kind(
        model=model,
        created_at=_now(clock),
        reply=body,
        done=True,
        done_reason=finished.finish_reason,
        total_duration=elapsed,
        load_duration=0,
        prompt_eval_count=finished.prompt_tokens - finished.cached_tokens,
        eval_count=finished.completion_tokens,
        eval_duration=elapsed,
    )


class NdjsonFormat:
    """One JSON object per line: a piece of text per token, then the statistics. With
    tools, each call parsed from the reply goes out in a line of its own."""

    def __init__(
        self, clock: ApiClock, model: str, chat: bool, tools: tuple[Tool, ...] = ()
    ) -> None:
        self._clock = clock
        self._model = model
        self._chat = chat
        self._parser = CallParser(tools) if tools else None
        self._started = clock.elapsed()

    def _line(
        self, text: str, calls: Sequence[ToolCall] = (), ended: tuple[Finished, float] | None = None
    ) -> bytes:
        line = reply(self._clock, self._model, self._chat, text, calls, ended)
        return (dumps(to_builtins(line)) + "\n").encode()

    def _lines(self, text: str, calls: Sequence[ToolCall]) -> list[bytes]:
        lines = [self._line(text)] if text else []
        if calls:
            lines.append(self._line("", calls))
        return lines

    def start(self) -> list[bytes]:
        return []

    def token(self, chunk: TokenOut) -> list[bytes]:
        if self._parser is None:
            return self._lines(chunk.text, ())
        return self._lines(*self._parser.feed(chunk.text))

    def finish(self, finished: Finished) -> list[bytes]:
        lines = [] if self._parser is None else self._lines(*self._parser.finish())
        return [*lines, self._line("", ended=(finished, self._started))]

    def error(self, error: Exception) -> list[bytes]:
        known = as_backend_error(error)
        message = known.message if known is not None else "internal error"
        return [(dumps(to_builtins(OllamaError(message))) + "\n").encode()]


def _details(card: ModelCard) -> OllamaDetails:
    return OllamaDetails(
        format="gguf" if card.source == "bundled" else "safetensors",
        family=card.architecture,
        families=[card.architecture],
        parameter_size=parameter_size(card.parameters),
        quantization_level=quantization_level(card),
    )


def parameter_size(parameters: int) -> str:
    """Ollama's way to write a size: "135M", "8.0B"."""
    if parameters >= 10**9:
        return f"{parameters / 1e9:.1f}B"
    if parameters >= 10**6:
        return f"{parameters / 1e6:.0f}M"
    return str(parameters) if parameters else ""


def quantization_level(card: ModelCard) -> str:
    quantization = card.quantization
    if quantization is None:
        return "F16"
    if card.source == "bundled":
        return "Q4_1"
    if quantization.mode != "affine":
        return quantization.mode.upper()
    return f"Q{quantization.bits}"


def modified_at(card: ModelCard) -> str:
    """When the model last changed: the hub's date, or when the bundled model's package
    was installed."""
    if card.modified:
        return card.modified
    if card.source == "bundled":
        with contextlib.suppress(BundledModelMissing, OSError):
            mtime = bundled_gguf(card).stat().st_mtime
            return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")
    return "1970-01-01T00:00:00Z"  # unknown; Ollama's clients insist on a date


def _tag(card: ModelCard) -> OllamaModel:
    return OllamaModel(
        name=card.model_id,
        model=card.model_id,
        modified_at=modified_at(card),
        size=card.weight_bytes,
        digest=card.digest or hashlib.sha256(card.model_id.encode()).hexdigest(),
        details=_details(card),
    )


def register_ollama(app: QuartTrio, backend: Backend, clock: ApiClock) -> None:
    """Add the Ollama routes at the root and under `/ollama`."""

    def find_card(model: str) -> ModelCard | None:
        name = model.removesuffix(":latest")
        return next((c for c in backend.models() if c.model_id == name), None)

    async def generation(chat: bool) -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            body = decode_json_body(raw)
            asked = (parse_chat if chat else parse_generate)(body)
        except InvalidRequest as error:
            return backend_error(error)
        model, messages = asked.model, asked.messages
        card = await lookup_model(backend, model.removesuffix(":latest"))
        if isinstance(card, UnknownModel):
            return ollama_error(404, f"model '{model}' not found")
        if isinstance(card, BackendError):
            return backend_error(card)
        if not chat and asked.text is None and not messages[-1].content and len(messages) == 1:
            # Ollama's way to load a model: an empty prompt answers at once.
            loaded = OllamaGenerateReply(
                model=model, created_at=_now(clock), reply="", done=True, done_reason="load"
            )
            return json_response(to_builtins(loaded))
        request_args = (backend, card.model_id, messages, asked.params)
        if asked.stream:
            form = NdjsonFormat(clock, model, chat, asked.tools)
            body = GenerationStream(*request_args, form, asked.tools, asked.text)
            return await streamed_response(body, backend_error, NDJSON_CONTENT_TYPE)
        started = clock.elapsed()
        try:
            whole = await whole_generation(*request_args, asked.tools, asked.text)
        except Exception as error:
            known = as_backend_error(error)
            if known is None:
                raise
            return backend_error(known)
        text, calls = whole.text, []
        if asked.tools:
            parser = CallParser(asked.tools)
            shown, _ = parser.feed(text)
            rest, _ = parser.finish()
            text, calls = (shown + rest).strip() if parser.calls else shown + rest, parser.calls
        answer = reply(clock, model, chat, text, calls, (whole.finished, started))
        return json_response(to_builtins(answer))

    async def chat_route() -> TrioResponse:
        return await generation(chat=True)

    async def generate_route() -> TrioResponse:
        return await generation(chat=False)

    async def tags() -> TrioResponse:
        return json_response(to_builtins(OllamaModels([_tag(card) for card in backend.models()])))

    async def show() -> TrioResponse:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
        try:
            model = parse_show(decode_json_body(raw))
        except InvalidRequest as error:
            return backend_error(error)
        card = find_card(model)
        if card is None:
            return ollama_error(404, f"model '{model}' not found")
        architecture = card.architecture
        shown = OllamaShowReply(
            modelfile="",
            parameters="",
            template="",
            details=_details(card),
            model_info={
                "general.architecture": architecture,
                "general.parameter_count": card.parameters,
                f"{architecture}.block_count": card.num_layers,
                f"{architecture}.context_length": card.context_length,
                f"{architecture}.embedding_length": card.hidden_size,
                f"{architecture}.attention.head_count": card.num_heads,
                f"{architecture}.attention.head_count_kv": card.num_kv_heads,
            },
            capabilities=["completion", "tools"],
            modified_at=modified_at(card),
        )
        return json_response(to_builtins(shown))

    async def running() -> TrioResponse:
        ready = {i.model for i in backend.instances() if i.status == "ready"}
        until = _keep_alive_until(clock)
        models = [
            OllamaRunningModel(**structs.asdict(_tag(card)), expires_at=until, size_vram=0)
            for card in backend.models()
            if card.model_id in ready
        ]
        return json_response(to_builtins(OllamaRunningModels(models)))

    async def version() -> TrioResponse:
        return json_response(to_builtins(OllamaVersion(OLLAMA_API_VERSION)))

    async def alive() -> TrioResponse:
        if request.path == "/" and wants_page():  # a browser at the node's address
            return page_response()
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
