"""The HTTP app (quart-trio) and `serve`, which runs it on hypercorn's Trio worker.

Every response is JSON or server-sent events: unknown routes, wrong methods, oversized
bodies and unexpected exceptions all answer in OpenAI's error shape, never HTML, and never
with a traceback (unexpected exceptions are logged here instead).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from exo.api.admin import register_admin, register_metrics
from exo.api.anthropic import (
    anthropic_error,
    anthropic_http_error,
    is_anthropic_path,
    register_anthropic,
)
from exo.api.auth import require_keys
from exo.api.backend import Backend
from exo.api.clock import SYSTEM_CLOCK, ApiClock
from exo.api.completions import register_completions
from exo.api.cors import allow_origins
from exo.api.dashboard import register_dashboard
from exo.api.downloads import register_downloads
from exo.api.errors import (
    SERVER_ERROR_MESSAGE,
    http_error_parts,
    http_error_response,
    server_error_response,
)
from exo.api.http_server import ShutdownTrigger, serve_listener
from exo.api.instances import register_instances
from exo.api.models import register_models
from exo.api.ollama import is_ollama_path, ollama_error, register_ollama
from exo.api.openai import register_openai
from exo.api.openapi import register_openapi
from exo.api.responses import register_responses
from exo.environment import listener_port, open_tcp_listener
from exo.metrics import NodeMetrics

log = logging.getLogger(__name__)

# Largest request body accepted; bigger ones get a 413 in OpenAI's error shape. Chat
# requests are text, so 4 MiB is ~1M tokens of prompt, far past any bundled context.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Seconds a client may take to send its whole request body before a 408.
BODY_TIMEOUT_S = 60.0
# Seconds in-flight requests get to finish after `shutdown_trigger` fires.
GRACEFUL_SHUTDOWN_S = 3.0
# Response header naming the node that answered.
NODE_HEADER = "X-Exo-Node"

OpenListener = Callable[[str, int], Awaitable[trio.abc.Listener[trio.abc.Stream]]]

# Transport errors that only mean the client went away while hypercorn was still writing.
_CLIENT_GONE = (
    trio.BrokenResourceError,
    trio.BusyResourceError,
    trio.ClosedResourceError,
    trio.Cancelled,
)


class _DropClientGoneRaces(logging.Filter):
    """Drop hypercorn's "Error in ASGI Framework" when it is only a client-gone race.

    hypercorn 0.17-0.18 closes a connection whose request body was not read (our 413s)
    from its reading task without its send lock, so a client that hangs up right after
    reading the response makes the app's final (empty) send fail with BusyResourceError,
    logged with a traceback although the response was delivered.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True
        if isinstance(error, BaseExceptionGroup):
            _, rest = error.split(_CLIENT_GONE)
            return rest is not None
        return not isinstance(error, _CLIENT_GONE)


_hypercorn_log = logging.getLogger("exo.api.hypercorn")
_hypercorn_log.addFilter(_DropClientGoneRaces())


def create_app(
    backend: Backend,
    *,
    node_label: str = "exo",
    metrics: NodeMetrics | None = None,
    clock: ApiClock = SYSTEM_CLOCK,
    api_keys: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
) -> QuartTrio:
    """The HTTP app over `backend`: admin routes plus the OpenAI, Ollama and Anthropic
    dialects, and `GET /metrics` (`metrics`: the node's; by default a registry of the
    app's own, counting its HTTP requests). `clock` stamps and times replies: the node
    passes its environment's. With `api_keys`, every request but the open ones
    (`exo/api/auth.py`) needs one of them; `cors_origins` are the browser origins allowed
    to call it (`exo/api/cors.py`; none by default)."""
    # No static folder: Quart would otherwise serve `/static/<path>`, a route outside the API.
    app = QuartTrio(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        BODY_TIMEOUT=BODY_TIMEOUT_S,
        # quart-trio wraps sending each response in move_on_after(RESPONSE_TIMEOUT), 60 s by
        # default, which would silently truncate a long stream; generations end on their own.
        RESPONSE_TIMEOUT=None,
        PROPAGATE_EXCEPTIONS=False,
    )
    app.config["EXO_NODE_LABEL"] = node_label

    register_admin(app, backend)
    register_openai(app, backend, clock)
    register_completions(app, backend, clock)
    register_instances(app, backend)
    register_downloads(app, backend)
    register_models(app, backend)
    register_ollama(app, backend, clock)
    register_responses(app, backend, clock)
    register_anthropic(app, backend)
    register_openapi(app)
    register_dashboard(app)
    register_metrics(app, metrics if metrics is not None else NodeMetrics())

    @app.before_request
    async def receive_whole_body() -> None:
        """Receive the whole request body before answering, on every route.

        When a response ends while its request's body is still arriving (a GET with a body,
        a 404 or 405 answered without reading it), hypercorn 0.18 closes the connection from
        the app's task, which quart-trio is cancelling by then: the close is cut short and
        the next request on that keep-alive connection hangs forever. Kept (`cache`) for
        the route, which reads it again.
        """
        await request.get_data(cache=True, as_text=False, parse_form_data=False)

    # After the body is received (see above); a preflight is answered before the key check.
    allow_origins(app, cors_origins, exposed=(NODE_HEADER, "Retry-After"))
    require_keys(app, api_keys)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> TrioResponse:
        message = None
        if isinstance(error, RequestEntityTooLarge):
            message = f"The request body is larger than {MAX_REQUEST_BYTES} bytes."
        if is_anthropic_path(request.path):
            response = anthropic_http_error(error, message)
        elif is_ollama_path(request.path):
            status, text, headers = http_error_parts(error, message)
            response = ollama_error(status, text, headers)
        else:
            response = http_error_response(error, message)
        if isinstance(error, RequestEntityTooLarge | RequestTimeout):
            # The body was not read (or not all of it): hypercorn would wait for the rest
            # before reading the next request, and a kept-alive client hangs. Closing the
            # connection after the answer tells the client to open a new one.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def on_unexpected_error(error: Exception) -> TrioResponse:
        log.error("%s: unhandled error in an HTTP handler", node_label, exc_info=error)
        if is_anthropic_path(request.path):
            return anthropic_error(500, SERVER_ERROR_MESSAGE)
        if is_ollama_path(request.path):
            return ollama_error(500, SERVER_ERROR_MESSAGE)
        return server_error_response()

    @app.after_request
    async def name_node(response: TrioResponse) -> TrioResponse:
        response.headers[NODE_HEADER] = node_label
        return response

    return app


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    graceful_timeout: float = GRACEFUL_SHUTDOWN_S,
    open_listener: OpenListener = open_tcp_listener,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port (port 0: any free port) until cancelled or shut down.

    Reports the bound `(host, port)` through `task_status` once the socket is listening, so
    `await nursery.start(serve, app, "127.0.0.1", 0)` returns the real port; a taken port is
    a plain OSError from `start`. Cancelling the surrounding scope stops the server at once
    (open streams are cancelled, which ends their generations); when `shutdown_trigger`
    returns instead, the server stops accepting and gives in-flight requests
    `graceful_timeout` seconds before cancelling them. `open_listener` binds the socket:
    the node passes its environment's, which is simulated TCP in the simulator.
    """
    try:
        listener = await open_listener(host, port)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    bound = (host, listener_port(listener))
    config = HypercornConfig()
    config.accesslog = None  # no per-request access log
    config.errorlog = _hypercorn_log
    config.graceful_timeout = graceful_timeout
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(serve_listener, app, config, listener, shutdown_trigger=shutdown_trigger)
        )
        log.info("%s: HTTP API listening on %s port %d", app.config["EXO_NODE_LABEL"], *bound)
        task_status.started(bound)
