"""What the HTTP layer needs from a node, as a Protocol: the API never touches actors.

Production passes the node's `ApiBackend` (exo/actors/api_host.py); tests may pass their own.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

from exo.api.admin_response import (
    DownloadEntry,
    InstanceView,
    ModelView,
    PlacementPreview,
    StateView,
)
from exo.engine.protocol import ChatMessage, Finished, SamplingParams, TokenOut, Tool
from exo.models.cards import ModelCard

Chunk = TokenOut | Finished
# What `Backend.updates` yields: ("snapshot" | "event" | "sections" | "keepalive", its data).
Update = tuple[str, dict[str, Any]]
# Seconds without news after which `updates` says it is alive (proxies drop quiet streams).
KEEPALIVE_S = 15.0


class BackendError(Exception):
    """An error a dialect turns into its own error shape; `status` is the HTTP status."""

    status = 500
    kind = "server_error"
    # A machine-readable `code` for clients, where the kind alone does not say it.
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the error's response carries (`Retry-After` for an overload)."""
        return {}


class InvalidRequest(BackendError):
    status = 400
    kind = "invalid_request_error"


class UnknownModel(BackendError):
    status = 404
    kind = "not_found_error"
    code = "model_not_found"

    def __init__(self, model: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"The model '{model}' does not exist{detail}; see GET /v1/models.", "model"
        )
        self.model = model


class ModelForbidden(BackendError):
    """The hub refused the model's files: a gated or private repo without a valid token."""

    status = 403
    kind = "permission_error"
    code = "model_gated"

    def __init__(self, message: str) -> None:
        super().__init__(message, "model")


class UnknownInstance(BackendError):
    status = 404
    kind = "not_found_error"
    code = "instance_not_found"

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"There is no instance '{instance_id}'; see GET /instances.")


class Unavailable(BackendError):
    """No instance could serve in time (placement or loading timed out, runner restarting)."""

    status = 503
    kind = "unavailable_error"


class Overloaded(BackendError):
    """Every sequence of the instance is taken and its queue is full: try again later."""

    status = 429
    kind = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class GenerationFailed(BackendError):
    """The runner failed while serving the request (crashed, killed, out of memory)."""

    status = 503
    kind = "runner_error"


class Backend(Protocol):
    def models(self) -> list[ModelCard]:
        """The models this cluster can serve now without asking the hub."""
        ...

    async def find_model(self, model: str) -> ModelCard:
        """The card for a name: a served model, an alias, or a hub repo id ("owner/name
        [@revision]") read from the hub and added to the cluster. Raises `UnknownModel`,
        `ModelForbidden`, `InvalidRequest` (not a model exo can run) or `Unavailable`."""
        ...

    async def add_local_model(self, name: str, path: str) -> ModelCard:
        """Serve the model directory at `path` on this node (MLX or Hugging Face layout)
        under `name`. Raises `InvalidRequest` saying why it cannot be served."""
        ...

    def model_views(self) -> list[ModelView]:
        """Every model the cluster knows, with its card and per-node downloads (GET /models)."""
        ...

    def state_view(self) -> StateView:
        """This node's view of the replicated state, for GET /state."""
        ...

    def updates(self, after: int | None) -> AsyncIterator[Update]:
        """The state as it changes, for `GET /events`: a `("snapshot", state_view)` to start
        from (unless the events after index `after` are all still at hand), then
        `("event", indexed event)` for each event applied, in order; again a snapshot
        where the node's log was cut back or the watcher fell too far behind; and
        `("keepalive", {})` after `KEEPALIVE_S` without news. Never ends by itself."""
        ...

    def section_updates(self) -> AsyncIterator[Update]:
        """The state as a page shows it, for `GET /events?view=sections`: `("sections",
        {"node_id", "master", "term", "index", "sections"})`, first with every section
        (`exo/actors/state_sections.py`), then with only those that changed, a burst of
        events coalesced into one; `("keepalive", {})` after `KEEPALIVE_S` without news."""
        ...

    def downloads(self) -> list[DownloadEntry]:
        """Every node's download of every model it holds or fetches."""
        ...

    async def order_download(
        self, model: str, node: str | None, action: Literal["fetch", "stop"]
    ) -> DownloadEntry:
        """Fetch the whole model onto `node` (default: this node), or stop fetching it
        there; returns that download as `downloads` lists it. `UnknownModel`, or
        `InvalidRequest` saying why (no such node, a coordinator-only one, ...)."""
        ...

    def instances(self) -> list[InstanceView]:
        """Every instance."""
        ...

    def instance(self, instance_id: str) -> InstanceView:
        """One instance, or `UnknownInstance`."""
        ...

    async def create_instance(
        self,
        model: str,
        strategy: str,
        nodes: tuple[str, ...] | None,
        min_nodes: int,
        context_length: int | None = None,
    ) -> InstanceView:
        """Place an instance; `UnknownModel`, or `InvalidRequest` saying why it cannot be placed."""
        ...

    async def delete_instance(self, instance_id: str) -> None: ...

    async def previews(
        self, model: str, context_length: int | None = None
    ) -> list[PlacementPreview]:
        """Every candidate placement of `model`, valid or not, with reasons and predictions."""
        ...

    def generate(
        self,
        model: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        tools: tuple[Tool, ...] = (),
        text: str | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[Chunk]]:
        """Stream one completion; leaving the context early cancels it on the runner.

        `tools` are offered to the model through its chat template; `text` is a raw
        prompt used instead of the chat (`messages` then empty).

        Raises `UnknownModel`, `Unavailable` or `InvalidRequest` on entry, and
        `GenerationFailed` or `InvalidRequest` while iterating.
        """
        ...


async def lookup_model(backend: Backend, model: str) -> ModelCard | BackendError:
    """The model's card, or the error to answer with, before any stream starts, so even a
    streaming client gets a real 404 (or 403, 400, 503) for a model it cannot have."""
    try:
        return await backend.find_model(model)
    except BackendError as error:
        return error
