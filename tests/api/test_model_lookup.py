"""A model name the hub must be asked about fails before any stream starts, in every
dialect's own shape: gated (403), not a model exo can run (400), hub unreachable (503)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from exo.api.backend import BackendError, InvalidRequest, ModelForbidden, Unavailable

from .fakes import MODEL, FakeBackend, tokens
from .helpers import running

USER = [{"role": "user", "content": "hi"}]
# (route, body) for each dialect, streamed: the error must still be a plain status.
ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}),
    ("/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": USER, "stream": True}),
    ("/v1/messages/count_tokens", {"model": MODEL, "messages": USER}),
    ("/api/chat", {"model": MODEL, "messages": USER}),
    ("/ollama/api/generate", {"model": MODEL, "prompt": "hi"}),
]
ERRORS: list[tuple[BackendError, int]] = [
    (ModelForbidden("org/m is gated: set HF_TOKEN"), 403),
    (InvalidRequest("cannot serve org/m: no safetensors weights", "model"), 400),
    (Unavailable("cannot read org/m from the hub: unreachable"), 503),
]


def message_of(path: str, body: dict[str, Any]) -> str:
    if path.startswith(("/api/", "/ollama/")):
        return str(body["error"])  # Ollama: {"error": "..."}
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"  # Anthropic: {"type": "error", "error": {...}}
    return str(body["error"]["message"])


@pytest.mark.parametrize(("error", "status"), ERRORS, ids=["gated", "not-a-model", "hub-down"])
async def test_every_dialect_answers_a_failed_model_lookup_with_its_status(
    error: BackendError, status: int
) -> None:
    backend = FakeBackend(tokens("never"), find_error=error)
    with trio.fail_after(20):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as http:
            for path, body in ROUTES:
                response = await http.post(path, json=body)
                assert response.status_code == status, (path, response.text)
                assert response.headers["content-type"].startswith("application/json"), path
                assert message_of(path, response.json()) == error.message, path
            models = await http.get(f"/models/{MODEL}")
    assert models.status_code == status
    assert backend.calls == []  # nothing was generated
