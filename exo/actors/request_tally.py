"""Request tallies: what this node's API served, reported about once a second instead of
an event per request start and end.

The API host counts each request's start and end here (no I/O, never blocking a token);
the reporter actor sends a `ReportRequests` with the in-flight gauges and what ended
since the last report whenever something ended or the replicated gauges differ from
this node's: a restarted node's gauges from its previous life are replaced, and a
report lost with a deposed master's divergent suffix is made good. The command client
keeps a report until a master answers it (retries deduped by command id). What ended is
a statistic: counts accepted on a suffix that is later cut off are not adopted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from attrs import define, evolve, field

from exo.actors.command_client import CommandClient
from exo.actors.replica import Replica
from exo.engine.protocol import Finished
from exo.events.commands import ReportRequests
from exo.events.facts import RequestTally
from exo.events.ids import InstanceId, NodeId

REPORT_INTERVAL = 1.0


@define
class RequestTallies:
    """Counts since the last report, per instance; gauges of requests in flight now."""

    _in_flight: dict[InstanceId, int] = field(factory=dict)
    _ended: dict[InstanceId, RequestTally] = field(factory=dict)

    def started(self, instance_id: InstanceId) -> None:
        self._in_flight[instance_id] = self._in_flight.get(instance_id, 0) + 1

    def ended(self, instance_id: InstanceId, finished: Finished | None) -> None:
        """A request ended: `finished` when it completed, None when it failed or was left."""
        left = self._in_flight.get(instance_id, 0) - 1
        if left > 0:
            self._in_flight[instance_id] = left
        else:
            self._in_flight.pop(instance_id, None)
        tally = self._ended.get(instance_id, RequestTally(instance_id))
        if finished is None:
            tally = evolve(tally, failed=tally.failed + 1)
        else:
            tally = evolve(
                tally,
                finished=tally.finished + 1,
                prompt_tokens=tally.prompt_tokens + finished.prompt_tokens,
                completion_tokens=tally.completion_tokens + finished.completion_tokens,
            )
        self._ended[instance_id] = tally

    def in_flight(self, instance_id: InstanceId) -> int:
        return self._in_flight.get(instance_id, 0)

    def take_report(self, replicated: Mapping[InstanceId, int]) -> ReportRequests | None:
        """The report due now, given this node's gauges as the state has them (None when
        nothing ended and the state already has these gauges)."""
        if not self._ended and dict(replicated) == self._in_flight:
            return None
        instances = sorted(set(self._in_flight) | set(self._ended))
        tallies = tuple(
            evolve(
                self._ended.get(instance_id, RequestTally(instance_id)),
                in_flight=self._in_flight.get(instance_id, 0),
            )
            for instance_id in instances
        )
        self._ended.clear()
        return ReportRequests(tallies)


async def run_request_reports(
    tallies: RequestTallies,
    replica: Replica,
    node_id: NodeId,
    commands: CommandClient,
    sleep: Callable[[float], Awaitable[None]],
    interval: float = REPORT_INTERVAL,
) -> None:
    """Send the tallies' report whenever one is due, checking every `interval` seconds."""
    while True:
        report = tallies.take_report(replica.state.in_flight.get(node_id, {}))
        if report is not None:
            await commands.send(report)
        await sleep(interval)
