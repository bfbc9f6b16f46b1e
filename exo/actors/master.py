"""The sequencer: what the master does with commands in one term.

It decides a batch of commands against the state (each seeing the events of those before
it), and remembers every outcome by command id, so a command retried after a lost answer
or a failover is answered the same way instead of being applied twice. Persisting,
publishing and answering are the control actor's job (`control.py`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from attrs import frozen

from exo.actors.decide import Rejected, decide
from exo.events.commands import CommandOutcome, Envelope
from exo.events.events import Event, IndexedEvent, SuffixAdopted
from exo.events.ids import CommandId
from exo.events.snapshot import RETAINED_COMMANDS
from exo.events.state import State, apply

# Commands decided in one batch share one fsync.
MAX_BATCH = 64
REMEMBERED_OUTCOMES = RETAINED_COMMANDS


@frozen
class Decided:
    """A batch's events (not yet indexed) and the answer to each command."""

    events: list[tuple[Event, CommandId | None]]
    answers: list[tuple[Envelope, CommandOutcome]]


class Sequencer:
    def __init__(
        self,
        term: int,
        log: Iterable[IndexedEvent] = (),
        snapshot_commands: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.term = term
        self._outcomes: OrderedDict[CommandId, CommandOutcome] = OrderedDict()
        # The log already answers the commands it holds events of (a new master inherits
        # them), and the snapshot those of the records compaction cut; commands that
        # produced no event are harmless to decide again.
        for command_id, index in snapshot_commands:
            self._store(CommandOutcome(CommandId(command_id), True, "", index))
        self.remember(log)

    def decide_batch(self, state: State, batch: list[Envelope]) -> Decided:
        events: list[tuple[Event, CommandId | None]] = []
        answers: list[tuple[Envelope, CommandOutcome]] = []
        draft = state
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
            else:
                for event in decision:
                    indexed = IndexedEvent(
                        draft.last_index + 1, self.term, event, envelope.command_id
                    )
                    draft = apply(draft, indexed)
                    events.append((event, envelope.command_id))
                outcome = CommandOutcome(envelope.command_id, True, "", draft.last_index)
            answers.append((envelope, outcome))
            self._store(outcome)
        return Decided(events, answers)

    def remember(self, events: Iterable[IndexedEvent]) -> None:
        """Record outcomes implied by committed events (including adopted ones)."""
        for indexed in events:
            if indexed.command_id is not None:
                self._store(CommandOutcome(indexed.command_id, True, "", indexed.index))
            if isinstance(indexed.event, SuffixAdopted):
                for adopted in indexed.event.events:
                    if adopted.command_id is not None:
                        self._store(CommandOutcome(adopted.command_id, True, "", indexed.index))

    def _store(self, outcome: CommandOutcome) -> None:
        self._outcomes[outcome.command_id] = outcome
        self._outcomes.move_to_end(outcome.command_id)
        while len(self._outcomes) > REMEMBERED_OUTCOMES:
            self._outcomes.popitem(last=False)
