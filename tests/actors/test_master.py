import random
from pathlib import Path

import trio

from exo.actors.command_client import CommandClient
from exo.actors.control import Control, Inbound
from exo.actors.master import Sequencer
from exo.actors.network import ControlTimings, NoPeers
from exo.actors.replica import Replica
from exo.environment import RealEnvironment
from exo.events.commands import CommandOutcome, Envelope, PlaceInstance, RegisterNode
from exo.events.events import IndexedEvent, InstanceCreated, MasterElected, NodeProfiled
from exo.events.facts import NodeProfile
from exo.events.ids import CommandId, ModelId, NodeId
from exo.events.log import EventLog, read_records
from exo.events.replay import replay
from exo.events.state import State, apply, state_hash
from exo.models.cards import BUNDLED_MODEL

ME = NodeId("node-a")
PROFILE = NodeProfile("h", "linux-x86_64", 2, 16 * 2**30, 8 * 2**30, "cpu", 1, 2)


def env_(cid: str, command: object) -> Envelope:
    return Envelope(CommandId(cid), ME, command)  # type: ignore[arg-type]


def elected_state() -> State:
    return apply(State(), IndexedEvent(1, 1, MasterElected(ME, 1)))


def test_a_batch_is_decided_in_order_and_retries_get_the_same_answer() -> None:
    sequencer = Sequencer(term=1)
    decided = sequencer.decide_batch(
        elected_state(),
        [
            env_("c1", RegisterNode(PROFILE)),
            env_("c2", PlaceInstance(BUNDLED_MODEL)),  # sees c1's node, so it fits
            env_("c2", PlaceInstance(BUNDLED_MODEL)),  # a retry: answered again, not applied
            env_("c3", PlaceInstance(ModelId("missing"))),
        ],
    )
    assert [(type(e), cid) for e, cid in decided.events] == [
        (NodeProfiled, "c1"),
        (InstanceCreated, "c2"),
    ]
    outcomes = [o for _, o in decided.answers]
    assert [(o.command_id, o.accepted, o.index) for o in outcomes] == [
        ("c1", True, 2),
        ("c2", True, 3),
        ("c2", True, 3),
        ("c3", False, 3),
    ]
    assert outcomes[3].reason == "unknown model missing"


def test_a_new_master_answers_commands_its_log_already_holds() -> None:
    log = [
        IndexedEvent(1, 1, MasterElected(ME, 1)),
        IndexedEvent(2, 1, NodeProfiled(ME, PROFILE), CommandId("c1")),
    ]
    sequencer = Sequencer(term=2, log=log)
    decided = sequencer.decide_batch(replay(log), [env_("c1", RegisterNode(PROFILE))])
    assert decided.events == []
    assert decided.answers[0][1] == CommandOutcome(CommandId("c1"), True, "", 2)


async def run_commands(home: Path, commands: list[object], seed: int = 0) -> list[CommandOutcome]:
    """One node on its own: Control leads at once; the client waits for each outcome."""
    # Each run needs its own seed: command ids are idempotency keys.
    env = RealEnvironment(home, random.Random(seed))
    with EventLog.open(home / "events.log") as log, trio.fail_after(10):
        replica = Replica(replay(log))
        control: Control | None = None

        def submit(envelope: Envelope) -> None:
            assert control is not None
            control.submit(envelope)

        client = CommandClient(ME, env.random, submit, env.now)
        control = Control(ME, env, log, replica, NoPeers(), client, ControlTimings())
        send, receive = trio.open_memory_channel[Inbound](10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control.run, receive)
            outcomes = [await client.call(c) for c in commands]  # type: ignore[arg-type]
            # Persisted before answered: the file already holds every event.
            assert read_records(home / "events.log")[0] == list(log)
            assert state_hash(replay(log)) == state_hash(replica.state)
            nursery.cancel_scope.cancel()
        del send
    return outcomes


async def test_a_lone_node_leads_persists_and_answers(tmp_path: Path) -> None:
    outcomes = await run_commands(
        tmp_path, [RegisterNode(PROFILE), PlaceInstance(BUNDLED_MODEL), PlaceInstance(ModelId("x"))]
    )
    assert [o.accepted for o in outcomes] == [True, True, False]
    events = read_records(tmp_path / "events.log")[0]
    assert [type(e.event) for e in events] == [MasterElected, NodeProfiled, InstanceCreated]
    assert all(e.term == 1 for e in events)


async def test_a_restarted_node_takes_a_new_term_and_continues_the_log(tmp_path: Path) -> None:
    await run_commands(tmp_path, [RegisterNode(PROFILE)])
    await run_commands(tmp_path, [PlaceInstance(BUNDLED_MODEL)], seed=1)
    events = read_records(tmp_path / "events.log")[0]
    assert [(e.index, e.term, type(e.event)) for e in events] == [
        (1, 1, MasterElected),
        (2, 1, NodeProfiled),
        (3, 2, MasterElected),
        (4, 2, InstanceCreated),
    ]
