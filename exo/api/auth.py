"""API keys on every request: a `before_request` check that answers a missing or wrong key
with a 401 in the dialect's error shape, so that each official client raises its own
authentication error (OpenAI's shape, Anthropic's under `/v1/messages`, Ollama's under
`/api/` and `/ollama`, as the app's other HTTP-level errors)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.datastructures import Headers
from werkzeug.exceptions import MethodNotAllowed

from exo.api.access import check_key
from exo.api.anthropic import anthropic_error, is_anthropic_path
from exo.api.dashboard import DASHBOARD_PATH
from exo.api.errors import error_response
from exo.api.ollama import is_ollama_path, ollama_error

# Open to GET and HEAD without a key: liveness, the dashboard's page and files (so that
# it loads and asks for the key; `/` is the page for browsers), and the API's description.
OPEN_PATHS = frozenset({"/healthz", "/", DASHBOARD_PATH, "/openapi.json"})
OPEN_PREFIXES = (DASHBOARD_PATH + "/",)
OPEN_METHODS = frozenset({"GET", "HEAD"})
# RFC 9110 asks a 401 to say how to authenticate.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="exo"'}
MISSING_KEY = "No API key given: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`."
WRONG_KEY = "Incorrect API key provided."


def is_open(method: str, path: str) -> bool:
    """Whether a request needs no key (`path` as served; a documented `{name}` counts)."""
    open_path = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
    return method.upper() in OPEN_METHODS and open_path


def presented_keys(headers: Headers) -> list[str]:
    """The keys a request carries: `Authorization: Bearer KEY` (OpenAI's and Ollama's
    clients) and `x-api-key: KEY` (Anthropic's), either on any route."""
    found = []
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        found.append(token.strip())
    if key := headers.get("x-api-key", "").strip():
        found.append(key)
    return found


def _digest(key: str) -> bytes:
    # Header values arrive decoded as latin-1, so any of them encodes back.
    return hashlib.sha256(key.encode("latin-1", "replace")).digest()


def key_matches(presented: str, digests: Iterable[bytes]) -> bool:
    """Whether `presented` is one of the keys (their `digests`): compared with every one,
    each in constant time and over equal-length digests, so how long the check takes says
    nothing of how close a guess came, which key it matched or how long the keys are."""
    given = _digest(presented)
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(given, digest)
    return matched


def unauthorized(path: str, message: str) -> TrioResponse:
    """A 401 in the error shape of the dialect `path` belongs to."""
    if is_anthropic_path(path):
        return anthropic_error(401, message, CHALLENGE)
    if is_ollama_path(path):
        return ollama_error(401, message, CHALLENGE)
    return error_response(
        401, message, type="invalid_request_error", code="invalid_api_key", headers=CHALLENGE
    )


def require_keys(app: QuartTrio, keys: Iterable[str]) -> None:
    """Require one of `keys` on every request but the open ones. No keys: nothing is
    required, and the app is exactly as without this."""
    digests = tuple(_digest(check_key(key)) for key in keys)
    if not digests:
        return

    @app.before_request
    async def check_api_key() -> TrioResponse | None:
        if is_open(request.method, request.path):
            return None
        if is_open("GET", request.path) and isinstance(request.routing_exception, MethodNotAllowed):
            return None  # a public path: its 405 with `Allow` says nothing a key guards
        presented = presented_keys(request.headers)
        if any(key_matches(key, digests) for key in presented):
            return None
        return unauthorized(request.path, WRONG_KEY if presented else MISSING_KEY)
