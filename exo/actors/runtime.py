"""Supervision: run each actor in a nursery, restart it on a crash with capped exponential
backoff, and escalate (fail the node loudly) when it crashes too often.

`trio.Cancelled` is never caught here: cancellation of the node cancels every actor.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio
from attrs import define, frozen

from exo.environment import Environment

log = logging.getLogger("exo.actors")

T = TypeVar("T")


@frozen
class RestartPolicy:
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    # More than `max_restarts` crashes inside `window` seconds is a crash loop.
    max_restarts: int = 5
    window: float = 60.0


class CrashLoop(Exception):
    """An actor crashed more often than its policy allows; the node stops."""


@frozen
class ActorStatistics:
    name: str
    starts: int
    crashes: int
    last_error: str


@define
class _ActorRecord:
    name: str
    starts: int = 0
    crashes: int = 0
    last_error: str = ""


class Supervisor:
    """Starts actors in its nursery and restarts them according to a `RestartPolicy`."""

    def __init__(self, env: Environment, nursery: trio.Nursery, policy: RestartPolicy) -> None:
        self._env = env
        self._nursery = nursery
        self._policy = policy
        self._records: dict[str, _ActorRecord] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run()` as actor `name`; a fresh call of `run` on every restart."""
        if name in self._records:
            raise ValueError(f"actor {name!r} already started")
        record = self._records[name] = _ActorRecord(name)
        self._nursery.start_soon(self._supervise, record, run, name=f"actor:{name}")

    def statistics(self) -> list[ActorStatistics]:
        return [
            ActorStatistics(r.name, r.starts, r.crashes, r.last_error)
            for r in self._records.values()
        ]

    async def _supervise(self, record: _ActorRecord, run: Callable[[], Awaitable[None]]) -> None:
        policy = self._policy
        crash_times: deque[float] = deque()
        backoff = policy.initial_backoff
        while True:
            record.starts += 1
            try:
                await run()
                return
            except Exception as exc:  # Cancelled is a BaseException and passes through.
                now = self._env.now()
                record.crashes += 1
                record.last_error = f"{type(exc).__name__}: {exc}"
                crash_times.append(now)
                while crash_times and crash_times[0] < now - policy.window:
                    crash_times.popleft()
                if len(crash_times) > policy.max_restarts:
                    raise CrashLoop(
                        f"actor {record.name!r} crashed {len(crash_times)} times in "
                        f"{policy.window:.0f} s; last: {record.last_error}"
                    ) from exc
                log.exception("actor %s crashed; restarting in %.2f s", record.name, backoff)
                await self._env.sleep(backoff)
                backoff = min(backoff * 2, policy.max_backoff)


class Mailbox(Generic[T]):
    """A bounded typed channel that outlives the actor reading it, so restarts lose nothing queued."""

    def __init__(self, capacity: int) -> None:
        self.send, self.receive = trio.open_memory_channel[T](capacity)


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; `error` itself when it
    is not a group. What actors and their callers act on, not the nurseries around it."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    out: list[BaseException] = []
    for inner in error.exceptions:
        out.extend(leaves(inner))
    return out
