import itertools
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from exo.actors.runtime import CrashLoop, RestartPolicy, Supervisor
from exo.environment import RealEnvironment


def make_env(tmp_path: Path) -> RealEnvironment:
    return RealEnvironment(tmp_path, random.Random(1))


async def test_a_crashed_actor_restarts_with_growing_backoff(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(trio.current_time())
        if len(starts) < 4:
            raise RuntimeError("boom")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(
                env, nursery, RestartPolicy(initial_backoff=0.01, max_backoff=0.03)
            )
            supervisor.start("flaky", flaky)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4
    assert gaps[0] >= 0.01 and gaps[1] >= 0.02 and gaps[2] >= 0.03
    (stats,) = supervisor.statistics()
    assert (stats.starts, stats.crashes, stats.last_error) == (4, 3, "RuntimeError: boom")


async def test_a_crash_loop_escalates(tmp_path: Path) -> None:
    env = make_env(tmp_path)

    async def always() -> None:
        raise ValueError("bad config")

    with trio.fail_after(5), pytest.raises(ExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            Supervisor(env, nursery, RestartPolicy(initial_backoff=0.001, max_restarts=3)).start(
                "always", always
            )
    (loop,) = caught.value.exceptions
    assert isinstance(loop, CrashLoop)
    assert "crashed 4 times" in str(loop) and "bad config" in str(loop)


async def test_cancellation_is_not_treated_as_a_crash(tmp_path: Path) -> None:
    env = make_env(tmp_path)

    async def forever() -> None:
        await trio.sleep_forever()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(env, nursery, RestartPolicy())
            supervisor.start("forever", forever)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    (stats,) = supervisor.statistics()
    assert (stats.starts, stats.crashes) == (1, 0)
