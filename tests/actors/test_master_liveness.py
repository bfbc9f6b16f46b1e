"""When a follower counts its master as gone: the beats that say so, and the late beat
that must not (found by benchmarks/control_plane.py: a beat sent just before the master
took office, delivered after its first Append, made the follower stand as a second
master the moment it had installed the snapshot)."""

from exo.actors.history import Ballot
from exo.actors.peer_views import resigned
from exo.actors.wire import Beat
from exo.events.ids import NodeId

MASTER = NodeId("node-master")
BALLOT = Ballot(2, MASTER)


def beat(following: Ballot | None, leading: bool, log_ballot: Ballot | None) -> Beat:
    return Beat(following, leading, following is None, log_ballot, 100, False)


def test_a_beat_sent_before_taking_office_says_nothing() -> None:
    late = beat(None, False, Ballot(1, NodeId("node-old")))
    assert not resigned(late, BALLOT)


def test_a_restarted_or_recovering_master_hasresigned() -> None:
    assert resigned(beat(None, False, BALLOT), BALLOT)  # its log holds its term
    assert resigned(beat(None, False, None), BALLOT)  # recovering: vouches for no log


def test_a_master_that_leads_another_ballot_or_stopped_leading_hasresigned() -> None:
    assert resigned(beat(Ballot(3, NodeId("node-other")), False, BALLOT), BALLOT)
    assert resigned(beat(BALLOT, False, BALLOT), BALLOT)
    assert not resigned(beat(BALLOT, True, BALLOT), BALLOT)
    # A beat about an older ballot left before it took office.
    assert not resigned(beat(Ballot(1, MASTER), True, Ballot(1, MASTER)), BALLOT)
