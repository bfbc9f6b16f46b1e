"""The master: the sequencer that alone assigns indexes, persists, then publishes.

It keeps its own state (the log's fold) so each decision sees every event it already
produced, and answers every command with an outcome, idempotently by command id.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import trio

from exo.actors.decide import Rejected, decide
from exo.actors.environment import Environment
from exo.events.commands import CommandOutcome, Envelope
from exo.events.events import Event, IndexedEvent, MasterElected
from exo.events.ids import CommandId, NodeId
from exo.events.log import EventLog
from exo.events.replay import replay
from exo.events.state import State, apply

log = logging.getLogger("exo.master")

# Commands decided in one batch share one fsync.
MAX_BATCH = 64
REMEMBERED_OUTCOMES = 4096


class Master:
    def __init__(
        self,
        node_id: NodeId,
        env: Environment,
        event_log: EventLog,
        publish: Callable[[list[IndexedEvent]], Awaitable[None]],
        answer: Callable[[NodeId, CommandOutcome], None],
    ) -> None:
        self.node_id = node_id
        self._env = env
        self._log = event_log
        self._publish = publish
        self._answer = answer
        self.state: State = replay(event_log)
        self.term = 0
        self._outcomes: OrderedDict[CommandId, CommandOutcome] = OrderedDict()

    async def run(self, inbox: trio.MemoryReceiveChannel[Envelope]) -> None:
        """Take office for a new term, then sequence commands until cancelled."""
        self.state = replay(self._log)
        self.term = self._log.last_term + 1
        await self._commit([(MasterElected(self.node_id, self.term), None)])
        log.info("master of term %d at index %d", self.term, self.state.last_index)
        async for envelope in inbox:
            batch = [envelope]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(inbox.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._sequence(batch)

    async def _sequence(self, batch: list[Envelope]) -> None:
        pending: list[tuple[Event, CommandId | None]] = []
        answers: list[tuple[Envelope, CommandOutcome | None]] = []
        # Decide against the state including this batch's earlier events.
        draft = self.state
        next_index = draft.last_index + 1
        for envelope in batch:
            known = self._outcomes.get(envelope.command_id)
            if known is not None:
                answers.append((envelope, known))
                continue
            decision = decide(draft, envelope)
            if isinstance(decision, Rejected):
                outcome = CommandOutcome(
                    envelope.command_id, False, decision.reason, draft.last_index
                )
                answers.append((envelope, outcome))
                self._remember(outcome)
                continue
            for event in decision:
                indexed = IndexedEvent(next_index, self.term, event, envelope.command_id)
                draft = apply(draft, indexed)
                next_index += 1
                pending.append((event, envelope.command_id))
            outcome = CommandOutcome(envelope.command_id, True, "", draft.last_index)
            answers.append((envelope, outcome))
            self._remember(outcome)
        if pending:
            await self._commit(pending)
        for envelope, answered in answers:
            if answered is not None:
                self._answer(envelope.origin, answered)

    async def _commit(self, events: list[tuple[Event, CommandId | None]]) -> None:
        start = self.state.last_index + 1
        indexed = [
            IndexedEvent(start + offset, self.term, event, command_id)
            for offset, (event, command_id) in enumerate(events)
        ]
        await self._env.run_blocking(lambda: self._log.append(indexed))
        for event in indexed:
            self.state = apply(self.state, event)
        await self._publish(indexed)

    def _remember(self, outcome: CommandOutcome) -> None:
        self._outcomes[outcome.command_id] = outcome
        while len(self._outcomes) > REMEMBERED_OUTCOMES:
            self._outcomes.popitem(last=False)
