"""A master's answers to commands, held until every live follower holds the events
they decided, so a failover to any follower keeps what a client was told."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from attrs import frozen

from exo.events.commands import CommandOutcome
from exo.events.ids import NodeId


@frozen
class _Held:
    index: int
    committed_at: float
    origin: NodeId
    outcome: CommandOutcome


class HeldAnswers:
    def __init__(self, failure_timeout: float) -> None:
        self._failure_timeout = failure_timeout
        # The last index each follower confirmed holding.
        self.match: dict[NodeId, int] = {}
        self._held: deque[_Held] = deque()

    def clear(self) -> None:
        self.match.clear()
        self._held.clear()

    def confirm(self, follower: NodeId, last_index: int) -> None:
        self.match[follower] = max(self.match.get(follower, 0), last_index)

    def hold(self, origin: NodeId, outcome: CommandOutcome, now: float) -> None:
        self._held.append(_Held(outcome.index, now, origin, outcome))

    def due(
        self, now: float, lagging: Callable[[int], bool]
    ) -> list[tuple[NodeId, CommandOutcome]]:
        """The answers to send now, in index order: those whose events every live
        follower holds (`lagging(index)` is false), or held a failure timeout already (a
        follower that does not confirm is not waited for)."""
        out: list[tuple[NodeId, CommandOutcome]] = []
        while self._held:
            held = self._held[0]
            timed_out = now - held.committed_at >= self._failure_timeout
            if not timed_out and lagging(held.index):
                break  # later answers wait behind this one
            self._held.popleft()
            out.append((held.origin, held.outcome))
        return out
