"""The node's side of the `/downloads` API: every node's downloads as the state has them,
and users' orders to fetch a whole model onto a node or stop fetching it there (carried
out by that node's download actor, `download.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from exo.actors.command_client import CommandClient
from exo.actors.instances_host import command_and_wait
from exo.actors.replica import Replica
from exo.api.admin_response import DownloadEntry
from exo.api.backend import InvalidRequest
from exo.events.commands import OrderDownload
from exo.events.facts import DownloadStatus
from exo.events.ids import ModelId, NodeId
from exo.events.state import State
from exo.models.cards import ModelCard


def eta_seconds(status: DownloadStatus) -> float | None:
    """Seconds left at the download's recent rate, while it downloads."""
    if status.phase != "downloading" or status.rate <= 0:
        return None
    return max(0, status.bytes_total - status.bytes_done) / status.rate


def download_view(state: State, node: NodeId, model: ModelId) -> DownloadEntry:
    status = state.download_status(node, model)
    order = state.download_order(node, model)
    action = order.action if order is not None else None
    if status is None:
        return DownloadEntry(node=node, model=model, phase=None, eta_seconds=None, order=action)
    return DownloadEntry(
        node=node,
        model=model,
        phase=status.phase,
        bytes_done=status.bytes_done,
        bytes_total=status.bytes_total,
        detail=status.detail,
        rate=status.rate,
        eta_seconds=eta_seconds(status),
        order=action,
    )


def download_views(state: State) -> list[DownloadEntry]:
    """Every (node, model) with a download status or an order, by node then model."""
    pairs = {(n, m) for n, per_model in state.downloads.items() for m in per_model}
    pairs |= {(n, m) for n, per_model in state.download_orders.items() for m in per_model}
    return [download_view(state, n, m) for n, m in sorted(pairs)]


class DownloadOrders:
    def __init__(
        self,
        node_id: NodeId,
        replica: Replica,
        commands: CommandClient,
        find_model: Callable[[str], Awaitable[ModelCard]],
    ) -> None:
        self._node_id = node_id
        self._replica = replica
        self._commands = commands
        self._find_model = find_model

    def downloads(self) -> list[DownloadEntry]:
        return download_views(self._replica.state)

    async def order(
        self, model: str, node: str | None, action: Literal["fetch", "stop"]
    ) -> DownloadEntry:
        card = await self._find_model(model)  # a hub repo id is read and added first
        node_id = NodeId(node) if node is not None else self._node_id
        before = self._replica.state.download_order(node_id, card.model_id)
        verb = "fetch" if action == "fetch" else "stop the download of"
        await command_and_wait(
            self._commands,
            self._replica,
            OrderDownload(node_id, card.model_id, action),
            lambda reason: InvalidRequest(f"cannot {verb} {card.model_id}: {reason}", "node"),
            lambda state, _: (
                True if state.download_order(node_id, card.model_id) != before else None
            ),
        )
        return download_view(self._replica.state, node_id, card.model_id)
