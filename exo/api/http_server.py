"""hypercorn's HTTP/1.1 server over any Trio listener, so the API runs on the environment's
network: real sockets in production, simulated TCP in the simulator.

`hypercorn.trio.serve` binds its own sockets, and its listeners must be real ones. This is
its worker loop for one listener, with the same lifespan, keep-alive and graceful
shutdown: `shutdown_trigger` stops accepting, idle connections close, and requests in
flight get `config.graceful_timeout` seconds before they are cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, wrap_app
from quart_trio import QuartTrio

ShutdownTrigger = Callable[[], Awaitable[None]]


async def serve_listener(
    app: QuartTrio,
    config: Config,
    listener: trio.abc.Listener[trio.abc.Stream],
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the connections `listener` accepts until cancelled or shut down
    (`listener` is closed on the way out). Reports through `task_status` once the app has
    started and connections are being accepted."""
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)

    async def handle(stream: trio.abc.Stream) -> None:
        state = ConnectionState(lifespan_state.copy())
        await TCPServer(wrapped, config, context, state, stream).run()  # type: ignore[arg-type]

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            task_status.started()
            try:
                async with trio.open_nursery() as accepting:
                    if shutdown_trigger is not None:
                        accepting.start_soon(raise_shutdown, shutdown_trigger)
                    accepting.start_soon(raise_shutdown, context.terminate.wait)
                    accepting.start_soon(_accept, handle, listener, connections)
            except* ShutdownError:
                pass
            finally:
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _accept(
    handle: Callable[[trio.abc.Stream], Awaitable[None]],
    listener: trio.abc.Listener[trio.abc.Stream],
    connections: trio.Nursery,
) -> None:
    """Accept connections for ever, each handled in `connections` (which outlives the
    accepting, so a graceful shutdown lets requests in flight finish)."""
    async with listener:
        await trio.serve_listeners(handle, [listener], handler_nursery=connections)
