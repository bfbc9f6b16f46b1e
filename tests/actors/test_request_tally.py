"""Request tallies: one report per change, gauges and deltas, and a first report that
clears what a previous life of the node left in the state."""

from exo.actors.request_tally import RequestTallies
from exo.engine.protocol import Finished
from exo.events.commands import ReportRequests
from exo.events.facts import RequestTally
from exo.events.ids import InstanceId

I1, I2 = InstanceId("i1"), InstanceId("i2")


def test_gauges_the_state_holds_but_this_node_does_not_are_cleared() -> None:
    """A restarted node (or one whose report was cut off with a deposed master's suffix)
    reports until the state holds its gauges."""
    tallies = RequestTallies()
    assert tallies.take_report({}) is None
    assert tallies.take_report({I1: 2}) == ReportRequests(())


def test_starts_and_ends_become_gauges_and_deltas() -> None:
    tallies = RequestTallies()
    tallies.started(I1)
    tallies.started(I1)
    tallies.started(I2)
    tallies.ended(I1, Finished("r1", "stop", 10, 4))
    tallies.ended(I2, None)
    assert tallies.take_report({}) == ReportRequests(
        (RequestTally(I1, 1, 1, 0, 10, 4), RequestTally(I2, 0, 0, 1, 0, 0))
    )
    assert tallies.take_report({I1: 1}) is None  # the state has it; nothing ended since
    assert tallies.take_report({}) == ReportRequests((RequestTally(I1, 1),))  # it does not
    tallies.ended(I1, Finished("r2", "length", 5, 8))
    assert tallies.take_report({I1: 1}) == ReportRequests((RequestTally(I1, 0, 1, 0, 5, 8),))
    assert tallies.in_flight(I1) == 0
