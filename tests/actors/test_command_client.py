import random

import trio
import trio.testing

from exo.actors.command_client import CommandClient
from exo.events.commands import CommandOutcome, Envelope, RegisterNode
from exo.events.facts import NodeProfile
from exo.events.ids import NodeId

PROFILE = NodeProfile("h", "linux-x86_64", 2, 16 * 2**30, 8 * 2**30, "cpu", 1, 2)


async def test_unanswered_commands_are_sent_again_until_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent: list[tuple[float, Envelope]] = []
    client = CommandClient(
        NodeId("a"),
        random.Random(0),
        lambda e: sent.append((trio.current_time(), e)),
        trio.current_time,
        retry_interval=1.0,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run, trio.sleep)
        command_id = await client.send(RegisterNode(PROFILE))
        await trio.sleep(3.2)
        assert [e.command_id for _, e in sent] == [command_id] * 4  # at 0, 1, 2 and 3 s
        client.resolve(CommandOutcome(command_id, True, "", 1))
        await trio.sleep(3)
        assert len(sent) == 4
        assert client.pending == 0
        nursery.cancel_scope.cancel()


async def test_a_new_master_gets_everything_unanswered_at_once() -> None:
    sent: list[Envelope] = []
    client = CommandClient(NodeId("a"), random.Random(0), sent.append, trio.current_time)
    outcome: list[CommandOutcome] = []
    async with trio.open_nursery() as nursery:

        async def call() -> None:
            outcome.append(await client.call(RegisterNode(PROFILE)))

        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        client.resubmit_all()
        assert len(sent) == 2 and sent[0] == sent[1]
        # The same answer twice (a retry answered again) resolves the call once.
        client.resolve(CommandOutcome(sent[0].command_id, True, "", 3))
        client.resolve(CommandOutcome(sent[0].command_id, True, "", 3))
    assert outcome == [CommandOutcome(sent[0].command_id, True, "", 3)]
    assert client.pending == 0


def test_a_full_queue_drops_reports_sent_without_waiting() -> None:
    """Status reports sent from callbacks never block them; their senders re-assert them
    while the state lacks them (request tallies are sent with `send`, which waits)."""
    from exo.actors.command_client import MAX_PENDING
    from exo.events.commands import ReportRunnerStatus
    from exo.events.facts import RunnerStatus
    from exo.events.ids import InstanceId

    client = CommandClient(NodeId("a"), random.Random(0), lambda e: None, lambda: 0.0)
    for _ in range(MAX_PENDING):
        assert client.send_nowait(RegisterNode(PROFILE))
    assert not client.send_nowait(ReportRunnerStatus(InstanceId("i"), RunnerStatus("ready")))
    assert client.pending == MAX_PENDING
