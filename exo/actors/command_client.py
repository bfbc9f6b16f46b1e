"""How actors send commands to the master and, when they care, wait for the outcome."""

from __future__ import annotations

import logging
import random

import trio

from exo.events.commands import Command, CommandOutcome, Envelope
from exo.events.ids import CommandId, NodeId, new_command_id

log = logging.getLogger("exo.commands")


class CommandClient:
    def __init__(
        self, node_id: NodeId, rng: random.Random, outbox: trio.MemorySendChannel[Envelope]
    ) -> None:
        self.node_id = node_id
        self._rng = rng
        self._outbox = outbox
        self._waiters: dict[CommandId, tuple[trio.Event, list[CommandOutcome]]] = {}

    async def send(self, command: Command) -> CommandId:
        """Send without waiting for the outcome (status reports, request lifecycle)."""
        envelope = Envelope(new_command_id(self._rng), self.node_id, command)
        await self._outbox.send(envelope)
        return envelope.command_id

    def send_nowait(self, command: Command) -> bool:
        """Send from synchronous code (callbacks, cleanup) without waiting.

        When the master's queue is full the command is dropped with a warning and False is
        returned: reports sent this way (status, lifecycle) must never delay their caller.
        """
        envelope = Envelope(new_command_id(self._rng), self.node_id, command)
        try:
            self._outbox.send_nowait(envelope)
        except trio.WouldBlock:
            log.warning("command queue full; dropped %s", type(command).__name__)
            return False
        return True

    async def call(self, command: Command) -> CommandOutcome:
        """Send and wait for the master's outcome; callers bound the wait with a cancel scope."""
        envelope = Envelope(new_command_id(self._rng), self.node_id, command)
        done = trio.Event()
        slot: list[CommandOutcome] = []
        self._waiters[envelope.command_id] = (done, slot)
        try:
            await self._outbox.send(envelope)
            await done.wait()
            return slot[0]
        finally:
            del self._waiters[envelope.command_id]

    def resolve(self, outcome: CommandOutcome) -> None:
        waiter = self._waiters.get(outcome.command_id)
        if waiter is not None and not waiter[1]:
            waiter[1].append(outcome)
            waiter[0].set()
