"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for every failure.

Backend errors carry their own status, type (`kind`) and `param`; HTTP-level failures
(unknown route, wrong method, oversized body) are mapped here so that a client never sees
HTML or a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from msgspec import to_builtins
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from exo.api.backend import BackendError
from exo.api.openai_response import OpenAIError, OpenAIErrorDetail

JSON_CONTENT_TYPE = "application/json"

# Error `type` for HTTP statuses that do not come from a BackendError.
_TYPE_FOR_STATUS = {
    404: "not_found_error",
    500: "server_error",
    503: "unavailable_error",
}

# Error `code` for HTTP statuses that do not come from a BackendError.
_CODE_FOR_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
}


def dumps(data: Any) -> str:
    """Compact JSON, UTF-8 left as is; NaN/Infinity are refused rather than emitted."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> TrioResponse:
    return TrioResponse(
        dumps(data), status=status, headers=dict(headers or {}), content_type=JSON_CONTENT_TYPE
    )


def error_payload(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The body of an OpenAI error: `{"error": {"message", "type", "param", "code"}}`."""
    return to_builtins(OpenAIError(OpenAIErrorDetail(message, type, param, code)))


def error_response(
    status: int,
    message: str,
    *,
    type: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> TrioResponse:
    return json_response(error_payload(message, type=type, param=param, code=code), status, headers)


def as_backend_error(error: BaseException) -> BackendError | None:
    """The BackendError behind `error`: itself, or the only leaf of an exception group."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error if isinstance(error, BackendError) else None


async def answer_json(work: Callable[[], Awaitable[Any]], status: int = 200) -> TrioResponse:
    """`work()`'s result (a typed model) as JSON, or the BackendError it raised in OpenAI's
    error shape (anything else reaches the app's catch-all, which logs it and answers a
    JSON 500)."""
    try:
        return json_response(to_builtins(await work()), status)
    except Exception as error:
        backend_error = as_backend_error(error)
        if backend_error is None:
            raise
        return backend_error_response(backend_error)


def backend_error_payload(error: BackendError) -> dict[str, Any]:
    return error_payload(error.message, type=error.kind, param=error.param, code=error.code)


def backend_error_response(error: BackendError) -> TrioResponse:
    return json_response(backend_error_payload(error), error.status, error.headers)


SERVER_ERROR_MESSAGE = "The server had an error while processing your request."


def server_error_payload(message: str = SERVER_ERROR_MESSAGE) -> dict[str, Any]:
    return error_payload(message, type="server_error")


def server_error_response() -> TrioResponse:
    return json_response(server_error_payload(), 500)


def http_error_parts(
    error: HTTPException, message: str | None = None
) -> tuple[int, str, dict[str, str]]:
    """Status, message and headers for a werkzeug HTTPException, in any dialect."""
    status = error.code or 500
    if status >= 500:
        # Never echo the description of a server-side failure; it may name internals.
        return status, SERVER_ERROR_MESSAGE, {}
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    return status, message or _HTTP_MESSAGES.get(status) or error.description or error.name, headers


def http_error_response(error: HTTPException, message: str | None = None) -> TrioResponse:
    """A werkzeug HTTPException (404, 405, 408, 413, ...) in the OpenAI shape."""
    status, message, headers = http_error_parts(error, message)
    if status >= 500:
        return json_response(server_error_payload(), status)
    type_ = _TYPE_FOR_STATUS.get(status, "invalid_request_error")
    return error_response(
        status, message, type=type_, code=_CODE_FOR_STATUS.get(status), headers=headers
    )


_HTTP_MESSAGES = {
    404: "Unknown route; see /v1/models and /v1/chat/completions.",
    405: "Method not allowed for this route.",
    408: "The request body was not received in time.",
}
