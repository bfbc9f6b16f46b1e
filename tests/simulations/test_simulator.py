"""The simulator itself: determinism, scripted failovers, regression seeds, and proof that
its checks fail when the control plane is broken on purpose."""

import random
import re
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path

import pytest
from attrs import evolve

from exo.actors.control_core import ControlCore
from exo.actors.control_effects import Effect
from exo.actors.history import Ballot
from exo.events.log import EventLog
from simulations.__main__ import main
from simulations.failover import measure_failover
from simulations.http import DIALECTS
from simulations.network import LinkModel
from simulations.run import run_seed
from simulations.scenario import GIB, Fault, NodeSpec, Op, Scenario, draw_scenario

# Seeds that failed while the control plane was being written, each for a different bug
# (stale catch-up replies, lost gaps, answers for unwritten events, nested adoption,
# adoption computed against another master, simultaneous candidates; 258: a client's
# deletion dropped as redundant, then the failure detector's deletion that made it so
# dropped at a later adoption, so the instance ran again; 239: an adopted creation of
# an instance the winner had deleted, from a branch that decided the placement too).
REGRESSION_SEEDS = [1, 4, 7, 9, 16, 24, 32, 36, 37, 38, 49, 53, 56, 155, 239, 258]
# Seeds over links that failed: 130 lost a token of a relayed reply when a redial
# replaced a link with frames still queued on it (and showed every pair's higher id
# redialling twice a second while linked; tests/actors/test_links.py holds both fixes);
# 124 deadlocked two links whose readers both waited to write WebSocket pongs into full
# send windows, while keepalives were WebSocket pings.
LINK_REGRESSION_SEEDS = [124, 130]


def test_the_same_seed_gives_the_same_trace() -> None:
    first, second = run_seed(5), run_seed(5)
    assert first.passed, first.violations
    assert first.trace_hash == second.trace_hash
    assert first.faults > 0 and first.elections > 0
    assert run_seed(6).trace_hash != first.trace_hash


def test_a_run_is_the_same_in_another_process_with_another_hash_seed() -> None:
    hashes = set()
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "simulations", "run", "--seed", "5"],
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": hash_seed, "PATH": ""},
            cwd=Path(__file__).parents[2],
            timeout=120,
            check=True,
        )
        last = done.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"trace-hash: [0-9a-f]{64}", last)
        hashes.add(last.split()[1])
    assert hashes == {run_seed(5).trace_hash}


@pytest.mark.parametrize("seed", REGRESSION_SEEDS)
def test_regression_seeds_pass(seed: int) -> None:
    # They failed on the message network, before seeds could run over links.
    result = run_seed(seed, transport="messages")
    assert result.passed, result.violations


def configured_links(seed: int) -> Scenario:
    """The seed over links with every member's address configured (no discovery: each
    pair then dials both ways), as the regression seeds ran when they failed."""
    return evolve(draw_scenario(seed, transport="links"), discovery=False)


@pytest.mark.parametrize("seed", LINK_REGRESSION_SEEDS)
def test_link_regression_seeds_pass(seed: int) -> None:
    result = run_seed(seed, scenario=configured_links(seed))
    assert result.passed, result.violations


def test_seeds_over_links_run_the_link_layer_the_data_plane_and_multi_node_rings() -> None:
    """Seed 130 over simulated TCP: every pair dials both ways (duplicates closed), an
    intruder with the wrong key is refused by both sides, chats are relayed from other
    nodes' instances, instances across 2 and 3 nodes answer through their rings, and the
    chats go through the nodes' HTTP APIs, each dialect answered right."""
    result = run_seed(130, scenario=configured_links(130))
    counts = result.links
    assert result.passed and counts is not None
    # Which of a pair's two dials arrives first decides whether the second is closed
    # as a duplicate or replaces the first; either way one link is kept.
    assert counts.links > 0 and counts.duplicates + counts.replaced > 0 and counts.refused > 0
    # A dial closed as a duplicate waits for the kept link to end: before, the higher id
    # of every pair redialled twice a second for as long as the pair was linked.
    assert counts.duplicates <= counts.links
    assert counts.relayed > 0 and counts.multi_node > 0
    served = {detail.split(":")[0] for kind, outcome, detail in result.ops if kind == "pipeline"}
    assert {"2 nodes", "3 nodes"} <= served
    answered = {d.split(":")[0] for k, o, d in result.ops if k in ("chat", "relay") and o == "ok"}
    assert answered == {dialect.name for dialect in DIALECTS} and counts.http >= len(DIALECTS)
    assert result.messages == 0  # nothing went through the message queue


def test_members_found_by_multicast_discovery_form_a_cluster() -> None:
    """Seed 10 over links configures no peer addresses: members find each other by the
    real discovery actor's beacons over simulated multicast; the intruder's beacons
    (another key) are ignored and its dials refused."""
    scenario = draw_scenario(10, transport="links")
    assert scenario.discovery and scenario.intruder
    result = run_seed(10, scenario=scenario)
    assert result.passed, result.violations
    assert result.links is not None and result.links.links > 0 and result.links.refused > 0


def test_connection_resets_fail_relayed_streams_cleanly() -> None:
    """A seed whose network resets connections: links break and are redialled, and
    every request still ends answered right or failed (the invariants check both)."""
    scenario = evolve(draw_scenario(6, transport="links"), reset_rate=0.002)
    result = run_seed(6, scenario=scenario)
    assert result.passed, result.violations
    assert result.links is not None and result.links.resets > 0


def two_nodes(victim: int) -> Scenario:
    """Two nodes; `victim` crashes at 8 s and stays down until the heal at 30 s; the
    survivor is asked to place and serve at 12 s."""
    survivor = 1 - victim
    return Scenario(
        seed=1000 + victim,
        nodes=(NodeSpec(16 * GIB, 12 * GIB, 8), NodeSpec(16 * GIB, 12 * GIB, 8)),
        link=LinkModel(),
        active=30.0,
        quiet=15.0,
        faults=(Fault(8.0, "crash", (victim,), 60.0),),
        ops=(Op(12.0, survivor, "place"), Op(13.0, survivor, "chat")),
    )


@pytest.mark.parametrize("victim", [0, 1])
def test_a_two_node_cluster_survives_losing_either_node(victim: int) -> None:
    result = run_seed(1000 + victim, scenario=two_nodes(victim))
    assert result.passed, result.violations
    assert [(kind, outcome) for kind, outcome, _ in result.ops] == [("place", "ok"), ("chat", "ok")]


def three_nodes(seed: int, active: float, fault: Fault, ops: tuple[Op, ...]) -> Scenario:
    """Three equal nodes on a clean network, one scripted fault, then 15 s of quiet."""
    spec = NodeSpec(16 * GIB, 12 * GIB, 8)
    return Scenario(seed, (spec, spec, spec), LinkModel(), active, 15.0, (fault,), ops)


def test_instances_keep_serving_through_a_failover() -> None:
    """Three nodes; the first master (the highest id, all logs being empty) is killed
    while another node serves an instance; that node's runner is never restarted and
    serves before, during and after the election."""
    id_rng = random.Random("ids-2000")  # as the cluster draws its node ids
    ids = [id_rng.getrandbits(48) for _ in range(3)]
    master = ids.index(max(ids))
    server = (master + 1) % 3
    scenario = three_nodes(
        2000,
        30.0,
        Fault(10.0, "crash", (master,), 60.0),
        (Op(5.0, server, "chat"), Op(10.5, server, "chat"), Op(16.0, server, "chat")),
    )
    result = run_seed(2000, scenario=scenario)
    assert result.passed, result.violations
    assert [outcome for _, outcome, _ in result.ops] == ["ok", "ok", "ok"]
    assert result.runner_starts == 1
    assert result.elections == 2


def test_a_placement_the_cut_off_master_acknowledged_survives_the_heal() -> None:
    """Three nodes; node 1, master since the start-up's second election (2.5 s), is cut
    off from both others for 30 s. They elect a master and mark it down; it acknowledges
    alone a placement on itself. At the heal its suffix is adopted by the other side's
    master: the instance must still exist, under its id, on the node that is back, not
    be deleted as stranded on a node marked down and placed again elsewhere."""
    scenario = three_nodes(2100, 45.0, Fault(8.0, "isolate", (1,), 30.0), (Op(16.0, 1, "place"),))
    result = run_seed(2100, scenario=scenario)
    assert result.passed, result.violations
    ((kind, outcome, detail),) = result.ops
    assert (kind, outcome) == ("place", "ok"), detail
    assert result.instances == (detail.removeprefix("placed "),)


def test_a_placement_across_two_cut_off_nodes_survives_the_heal() -> None:
    """Five nodes; nodes 0 and 1 are cut off together from 8 s to 38 s. Their side
    places a pipeline across both at 16 s. At the heal the other side's master adopts
    it: the instance must keep its id although only the adopting node registered again
    first (the other waits for its catch-up); the master's failure detector watches it
    until it does, instead of deleting the instance as stranded on a node marked down."""
    spec = NodeSpec(16 * GIB, 12 * GIB, 8)
    fault = Fault(8.0, "partition", (0, 1), 30.0)
    ops = (Op(16.0, 0, "pipeline"),)
    result = run_seed(
        2200, scenario=Scenario(2200, (spec,) * 5, LinkModel(), 50.0, 15.0, (fault,), ops)
    )
    assert result.passed, result.violations
    ((kind, outcome, detail),) = result.ops
    assert (kind, outcome) == ("pipeline", "ok"), detail
    served_by, instance_id, _ = detail.split(": ", 2)
    assert served_by == "2 nodes"
    assert result.instances == (instance_id,)


@pytest.mark.parametrize("isolated", [0, 2])
def test_a_follower_cut_off_alone_does_not_end_the_other_sides_instances(isolated: int) -> None:
    """Three nodes; node 1 leads and places an instance on itself at 5 s; a follower is
    cut off alone for 30 s from 8 s. It elects itself (its log may win the heal) but,
    hearing fewer than half the nodes, marks nobody down: the instance keeps its id."""
    fault = Fault(8.0, "isolate", (isolated,), 30.0)
    result = run_seed(2100, scenario=three_nodes(2100, 45.0, fault, (Op(5.0, 1, "place"),)))
    assert result.passed, result.violations
    ((kind, outcome, detail),) = result.ops
    assert (kind, outcome) == ("place", "ok"), detail
    assert result.instances == (detail.removeprefix("placed "),)


def test_a_node_far_behind_catches_up_from_the_masters_snapshot() -> None:
    """Snapshots every 12 events keeping 4: a node down while the other serves is behind
    the master's oldest record when it returns, so it installs the snapshot, then the tail."""
    scenario = evolve(two_nodes(0), snapshot_every=12, snapshot_keep=4, seed=1010)
    scenario = evolve(scenario, faults=(Fault(8.0, "crash", (0,), 14.0),))
    result = run_seed(1010, scenario=scenario)
    assert result.passed, result.violations
    assert result.snapshots_installed >= 1
    assert [outcome for _, outcome, _ in result.ops] == ["ok", "ok"]


def test_a_snapshot_in_many_chunks_arrives_pipelined_over_a_lossy_link() -> None:
    """The same catch-up with 300-byte chunks, 1,200 bytes asked for at a time, on a link
    that drops, duplicates and reorders: the snapshot still arrives whole."""
    scenario = evolve(
        two_nodes(0),
        snapshot_every=12,
        snapshot_keep=4,
        snapshot_chunk=300,
        snapshot_window=1200,
        link=LinkModel(drop=0.05, duplicate=0.05, latency=0.02, jitter=0.02),
        seed=1011,
    )
    scenario = evolve(scenario, faults=(Fault(8.0, "crash", (0,), 14.0),))
    result = run_seed(1011, scenario=scenario)
    assert result.passed, result.violations
    assert result.snapshots_installed >= 1
    assert [outcome for _, outcome, _ in result.ops] == ["ok", "ok"]


def no_fencing(self: ControlCore, ballot: Ballot, now: float) -> Generator[Effect, object, bool]:
    """A planted bug: follow whatever master speaks last, older ballots included."""
    if ballot != self.ballot:
        yield from self._follow(ballot, now)
    return True


def no_step_down(self: ControlCore, ballot: Ballot, now: float) -> Generator[Effect, object, bool]:
    """A planted bug: a master that never yields to a newer ballot."""
    if self.leading and ballot != self.ballot:
        return False
    return (yield from ORIGINAL(self, ballot, now))


ORIGINAL = ControlCore._consider_master


@pytest.mark.parametrize("bug", [no_fencing, no_step_down])
def test_the_simulator_catches_a_master_that_does_not_fence_terms(
    bug: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setattr(ControlCore, "_consider_master", bug)
    argv = ["run", "--seeds", "10..24", "--jobs", "1", "--transport", "messages"]
    assert main([*argv, "--keep", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    last = next(line for line in out.splitlines() if line.startswith("seeds: "))
    match = re.fullmatch(r"seeds: 15 passed: (\d+) failed: (\d+) faults: \d+ elections: \d+", last)
    assert match is not None, last
    assert int(match.group(2)) >= 1
    assert "replay: python -m simulations run --seed" in out
    # The failing seed's node logs are kept, and `exo replay` reads them.
    home = sorted(tmp_path.glob("seed-*/node-0"))[0]
    done = subprocess.run(
        [sys.executable, "-m", "exo.cli", "replay", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"state-hash: [0-9a-f]{64}", done.stdout)


def test_the_simulator_catches_decisions_lost_to_compaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planted bug: a divergent log hands over only the records it still holds, not the
    decisions its snapshot kept of those it cut off. Seed 8 compacts every 12 events and
    has a master deposed deep in its own term; its placement is then lost."""
    monkeypatch.setattr(EventLog, "adoptable_since", EventLog.since)
    result = run_seed(8, transport="messages")
    assert not result.passed
    assert any("acknowledged placement" in v and "is lost" in v for v in result.violations)


def test_sixty_four_nodes_form_a_cluster_and_survive_their_masters_crash() -> None:
    """64 nodes, no other fault: the first master is crashed at 10 s; within 5 s of
    simulated time one node leads and all 63 follow it."""
    failover = measure_failover(64, seed=3000)
    assert failover.formed_after < 10.0
    assert failover.agreed_after < 5.0, failover


def test_the_simulator_catches_an_instance_stranded_on_a_down_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planted bug: the master's failure detector does not watch the unregistered nodes
    that adopted instances hold shards on, so an instance adopted onto a node the winner
    marked down is never placed again (as when adoption kept it and nothing moved it)."""
    from exo.events.state import State

    monkeypatch.setattr(State, "unregistered", lambda self: set())
    result = run_seed(1, transport="messages")
    assert not result.passed
    assert any("which its state has marked down" in v for v in result.violations)


def test_crashes_that_tear_the_disk_lose_nothing_acknowledged() -> None:
    """Seeds 7 and 11 each have a crash that leaves part of an unsynced record (or a
    half-written snapshot); the node drops it on start and every invariant holds."""
    for seed in (7, 11):
        result = run_seed(seed, transport="messages")
        assert result.passed, result.violations
        assert result.torn_writes >= 1


def test_a_node_whose_log_is_damaged_recovers_it_from_its_peers(tmp_path: Path) -> None:
    """A record in the middle of one node's log is damaged while it is down. It starts
    from the records that verify, sets the damaged file aside, does not lead, catches up
    from the master, and the cluster ends in agreement with nothing acknowledged lost."""
    spec = NodeSpec(16 * GIB, 12 * GIB, 8)
    scenario = Scenario(
        seed=4000,
        nodes=(spec, spec, spec),
        link=LinkModel(),
        active=30.0,
        quiet=15.0,
        faults=(Fault(15.0, "corrupt", (1,), 5.0), Fault(16.0, "corrupt", (2,), 6.0)),
        ops=(Op(4.0, 0, "place"), Op(6.0, 1, "chat"), Op(12.0, 2, "chat"), Op(25.0, 1, "chat")),
    )
    result = run_seed(4000, scenario=scenario, keep_dir=tmp_path, keep_always=True)
    assert result.passed, result.violations
    assert [outcome for _, outcome, _ in result.ops] == ["ok", "ok", "ok", "ok"]
    for damaged in ("node-1", "node-2"):
        assert (tmp_path / "seed-4000" / damaged / "events.log.damaged").exists()


def test_the_simulator_catches_two_masters_sharing_a_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planted bug: masters that ignore peers following a newer live master (what exo
    did before). Seed 25's bridge faults (two sides that both reach one node) then leave
    two masters linked with the same nodes."""
    from exo.actors import peer_views

    monkeypatch.setattr(peer_views, "_follows_live_master", lambda beat, me: False)
    result = run_seed(25, transport="messages")
    assert not result.passed
    assert any(v.startswith("two masters") for v in result.violations)
    monkeypatch.undo()
    assert run_seed(25, transport="messages").passed


def quick_placements() -> Scenario:
    """Two placements on one small node at the same moment: 1.6 GiB free, 1.1 GiB each."""
    small, big = NodeSpec(4 * GIB, int(1.6 * GIB), 8), NodeSpec(16 * GIB, 12 * GIB, 8)
    ops = (Op(5.0, 0, "place"), Op(5.0, 0, "place"))
    return Scenario(5000, (small, big), LinkModel(), 20.0, 10.0, (), ops)


def test_quick_placements_never_overcommit_a_node(monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_seed(5000, scenario=quick_placements())
    assert result.passed, result.violations
    assert sorted(outcome for _, outcome, _ in result.ops) == ["failed", "ok"]
    # A planted bug: placement that forgets what it placed but has not loaded yet.
    from exo.actors import decide

    monkeypatch.setattr(decide, "with_commitments", lambda state: state)
    broken = run_seed(5000, scenario=quick_placements())
    assert any("free after earlier placements" in v for v in broken.violations)


def test_the_simulator_catches_a_command_decided_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug: a master with no memory of outcomes decides every retry again."""
    from exo.actors.master import Sequencer

    monkeypatch.setattr(Sequencer, "_store", lambda self, outcome: None)
    result = run_seed(0, transport="messages")
    assert any("decided again" in v for v in result.violations)
