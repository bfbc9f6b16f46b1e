import random
from pathlib import Path

import trio

from exo.actors.environment import RealEnvironment
from exo.actors.master import Master
from exo.actors.replica import Replica
from exo.events.commands import CommandOutcome, Envelope, PlaceInstance, RegisterNode
from exo.events.events import IndexedEvent, InstanceCreated, MasterElected, NodeProfiled
from exo.events.facts import NodeProfile
from exo.events.ids import CommandId, ModelId, NodeId
from exo.events.log import EventLog, read_records
from exo.events.replay import replay
from exo.events.state import state_hash
from exo.models.cards import BUNDLED_MODEL

ME = NodeId("node-a")
PROFILE = NodeProfile("h", "linux-x86_64", 2, 16 * 2**30, 8 * 2**30, "cpu", 1, 2)


async def run_commands(
    home: Path, envelopes: list[Envelope]
) -> tuple[list[CommandOutcome], Replica]:
    outcomes: list[CommandOutcome] = []
    all_answered = trio.Event()

    def answer(_: NodeId, outcome: CommandOutcome) -> None:
        outcomes.append(outcome)
        if len(outcomes) == len(envelopes):
            all_answered.set()

    replica = Replica(replay(read_records(home / "events.log")[0]))
    send, receive = trio.open_memory_channel[Envelope](100)
    published: list[list[IndexedEvent]] = []

    async def publish(batch: list[IndexedEvent]) -> None:
        # Persisted before published: the log on disk already holds the batch.
        on_disk = read_records(home / "events.log")[0]
        assert on_disk[-len(batch) :] == batch
        published.append(batch)
        replica.apply_batch(batch)

    with EventLog.open(home / "events.log") as log, trio.fail_after(10):
        master = Master(ME, RealEnvironment(home, random.Random(0)), log, publish, answer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(master.run, receive)
            for envelope in envelopes:
                await send.send(envelope)
            await all_answered.wait()
            nursery.cancel_scope.cancel()
    return outcomes, replica


def env_(cid: str, command: object) -> Envelope:
    return Envelope(CommandId(cid), ME, command)  # type: ignore[arg-type]


async def test_master_sequences_persists_and_answers(tmp_path: Path) -> None:
    outcomes, replica = await run_commands(
        tmp_path,
        [
            env_("c1", RegisterNode(PROFILE)),
            env_("c2", PlaceInstance(BUNDLED_MODEL)),
            env_("c2", PlaceInstance(BUNDLED_MODEL)),  # a retry: answered again, not applied again
            env_("c3", PlaceInstance(ModelId("missing"))),
        ],
    )
    assert [(o.command_id, o.accepted) for o in outcomes] == [
        ("c1", True),
        ("c2", True),
        ("c2", True),
        ("c3", False),
    ]
    assert outcomes[1] == outcomes[2]
    assert outcomes[3].reason == "unknown model missing"
    events = read_records(tmp_path / "events.log")[0]
    assert [type(e.event) for e in events] == [MasterElected, NodeProfiled, InstanceCreated]
    assert [e.command_id for e in events] == [None, "c1", "c2"]
    assert all(e.term == 1 for e in events)
    assert state_hash(replay(events)) == state_hash(replica.state)


async def test_a_restarted_master_takes_a_new_term_and_continues_the_log(tmp_path: Path) -> None:
    await run_commands(tmp_path, [env_("c1", RegisterNode(PROFILE))])
    await run_commands(tmp_path, [env_("c2", PlaceInstance(BUNDLED_MODEL))])
    events = read_records(tmp_path / "events.log")[0]
    assert [(e.index, e.term, type(e.event)) for e in events] == [
        (1, 1, MasterElected),
        (2, 1, NodeProfiled),
        (3, 2, MasterElected),
        (4, 2, InstanceCreated),
    ]
