"""How actors send commands to the master: every command is kept until the master answers
it, and sent again after a timeout or when a new master takes office. The master is
idempotent by command id, so a retry never applies a command twice, and a command sent
during an election is delayed, not lost."""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio
from attrs import define

from exo.events.commands import Command, CommandOutcome, Envelope
from exo.events.ids import CommandId, NodeId, new_command_id

log = logging.getLogger("exo.commands")

# Commands waiting for an answer; beyond this `send` waits and `send_nowait` drops.
MAX_PENDING = 4096


@define
class _Pending:
    envelope: Envelope
    sent_at: float


class CommandClient:
    def __init__(
        self,
        node_id: NodeId,
        rng: random.Random,
        submit: Callable[[Envelope], None],
        now: Callable[[], float],
        retry_interval: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self._rng = rng
        self._submit = submit
        self._now = now
        self.retry_interval = retry_interval
        self._pending: OrderedDict[CommandId, _Pending] = OrderedDict()
        self._waiters: dict[CommandId, tuple[trio.Event, list[CommandOutcome]]] = {}
        self._space = trio.Event()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def send(self, command: Command) -> CommandId:
        """Send without waiting for the outcome (status reports, request lifecycle)."""
        while len(self._pending) >= MAX_PENDING:
            await self._space.wait()
        return self._track(command)

    def send_nowait(self, command: Command) -> bool:
        """Send from synchronous code (callbacks, cleanup) without waiting.

        When too many commands await an answer the command is dropped with a warning and
        False is returned: reports sent this way must never delay their caller (each is
        re-sent when the state still lacks it).
        """
        if len(self._pending) >= MAX_PENDING:
            log.warning("command queue full; dropped %s", type(command).__name__)
            return False
        self._track(command)
        return True

    async def call(self, command: Command) -> CommandOutcome:
        """Send and wait for the master's outcome; callers bound the wait with a cancel scope."""
        while len(self._pending) >= MAX_PENDING:
            await self._space.wait()
        command_id = CommandId(new_command_id(self._rng))
        done = trio.Event()
        slot: list[CommandOutcome] = []
        self._waiters[command_id] = (done, slot)
        try:
            self._track(command, command_id)
            await done.wait()
            return slot[0]
        finally:
            del self._waiters[command_id]
            self._forget(command_id)

    def resolve(self, outcome: CommandOutcome) -> None:
        """The master's answer arrived (possibly again, for a retried command)."""
        self._forget(outcome.command_id)
        waiter = self._waiters.get(outcome.command_id)
        if waiter is not None and not waiter[1]:
            waiter[1].append(outcome)
            waiter[0].set()

    def resubmit_all(self) -> None:
        """A new master took office: everything unanswered goes to it now."""
        now = self._now()
        for pending in self._pending.values():
            pending.sent_at = now
            self._submit(pending.envelope)

    def resubmit_due(self) -> None:
        """Send again what has waited longer than the retry interval."""
        now = self._now()
        for pending in self._pending.values():
            if now - pending.sent_at >= self.retry_interval:
                pending.sent_at = now
                self._submit(pending.envelope)

    async def run(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        """Resend unanswered commands every half retry interval (those that are due)."""
        while True:
            await sleep(self.retry_interval / 2)
            self.resubmit_due()

    def _track(self, command: Command, command_id: CommandId | None = None) -> CommandId:
        envelope = Envelope(command_id or new_command_id(self._rng), self.node_id, command)
        self._pending[envelope.command_id] = _Pending(envelope, self._now())
        self._submit(envelope)
        return envelope.command_id

    def _forget(self, command_id: CommandId) -> None:
        if self._pending.pop(command_id, None) is not None and len(self._pending) < MAX_PENDING:
            self._space.set()
            self._space = trio.Event()
