"""The API keys in `/openapi.json`: the two headers a key goes in, and on every operation
that needs one (all but those `exo/api/auth.py` leaves open) that requirement and its 401
in the dialect's error shape. A node started without keys asks for none."""

from __future__ import annotations

from typing import Any

from exo.api.anthropic import is_anthropic_path
from exo.api.auth import is_open
from exo.api.errors import JSON_CONTENT_TYPE
from exo.api.ollama import is_ollama_path
from exo.api.openapi_schemas import ERROR_SHAPES, TYPED

Schema = dict[str, Any]

SECURITY_SCHEMES: Schema = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A key the node was started with (`exo node --api-key`), as OpenAI's "
        "and Ollama's clients send it; needed only when the node has keys.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The same key as Anthropic's clients send it; accepted on every route.",
    },
}
# Either scheme is enough.
KEY_REQUIRED = [{"bearer": []}, {"apiKey": []}]
UNAUTHORIZED_TEXT = "No API key, or a wrong one (only when the node was started with keys)"


def _unauthorized(path: str) -> Schema:
    dialect = (
        "Anthropic" if is_anthropic_path(path) else "Ollama" if is_ollama_path(path) else "OpenAI"
    )
    return {
        "description": UNAUTHORIZED_TEXT,
        "content": {JSON_CONTENT_TYPE: {"schema": TYPED[ERROR_SHAPES[dialect]]}},
    }


def with_keys(paths: dict[str, Schema]) -> dict[str, Schema]:
    """`paths` with each operation that needs a key saying so, and its 401."""
    secured: dict[str, Schema] = {}
    for path, item in paths.items():
        secured[path] = {}
        for method, operation in item.items():
            if not is_open(method, path):
                responses = {**operation["responses"], "401": _unauthorized(path)}
                operation = {**operation, "security": KEY_REQUIRED, "responses": responses}
            secured[path][method] = operation
    return secured
