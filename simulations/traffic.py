"""A synthetic event log shaped like a busy cluster's: nodes registering, an instance
placed now and then, and mostly requests starting and finishing with a set number in
flight, with runner and download reports mixed in. For the control-plane benchmark and
the snapshot tests; drawn from a seed, so the same arguments give the same log."""

from __future__ import annotations

import random
from collections.abc import Iterator

from exo.events.events import (
    DownloadStatusChanged,
    Event,
    IndexedEvent,
    InstanceCreated,
    InstanceDeleted,
    MasterElected,
    NodeProfiled,
    RequestFinished,
    RequestStarted,
    RunnerStatusChanged,
)
from exo.events.facts import (
    DownloadStatus,
    Instance,
    NodeProfile,
    RequestRecord,
    RunnerStatus,
    Shard,
)
from exo.events.ids import CommandId, InstanceId, ModelId, NodeId, RequestId

MODEL = ModelId("smollm2-135m")
GIB = 1024**3


def request_traffic(
    count: int, *, in_flight: int = 64, nodes: int = 8, seed: int = 0, term: int = 1
) -> Iterator[IndexedEvent]:
    """`count` indexed events, from index 1, with about `in_flight` requests open."""
    rng = random.Random(f"traffic-{seed}")
    ids = [NodeId(f"node-{i:012x}") for i in range(nodes)]
    emitted = 0

    def indexed(event: Event) -> IndexedEvent:
        nonlocal emitted
        emitted += 1
        return IndexedEvent(emitted, term, event, CommandId(f"cmd-{emitted:016x}"))

    yield indexed(MasterElected(ids[0], term))
    for node in ids:
        profile = NodeProfile("host", "linux-x86_64", 8, 16 * GIB, 8 * GIB, "cpu", 52415, 52416)
        yield indexed(NodeProfiled(node, profile))
    instance = _instance(0, ids[0])
    yield indexed(InstanceCreated(instance))
    open_requests: list[RequestId] = []
    placements = 0
    while emitted < count:
        draw = rng.random()
        if draw < 0.9:
            start = len(open_requests) < in_flight and (draw < 0.45 or not open_requests)
            if start or not open_requests:
                request_id = RequestId(f"req-{emitted:016x}")
                open_requests.append(request_id)
                api_node = ids[rng.randrange(nodes)]
                record = RequestRecord(request_id, instance.instance_id, api_node, MODEL)
                yield indexed(RequestStarted(record))
            else:
                done = open_requests.pop(rng.randrange(len(open_requests)))
                yield indexed(RequestFinished(done, "stop", rng.randint(5, 500), 64))
        elif draw < 0.95:
            phase = rng.choice(("ready", "running"))
            status = RunnerStatus(phase)  # type: ignore[arg-type]
            yield indexed(RunnerStatusChanged(instance.instance_id, ids[0], status))
        elif draw < 0.9995:
            node = ids[rng.randrange(nodes)]
            status = DownloadStatus("downloading", emitted, 10**9)
            yield indexed(DownloadStatusChanged(node, MODEL, status))
        else:
            # Now and then the instance is replaced: decisions among the traffic.
            placements += 1
            yield indexed(InstanceDeleted(instance.instance_id))
            if emitted < count:
                instance = _instance(placements, ids[placements % nodes])
                yield indexed(InstanceCreated(instance))


def _instance(number: int, node: NodeId) -> Instance:
    return Instance(InstanceId(f"inst-{number:012x}"), MODEL, "pipeline", (Shard(node, 0, 0, 30),))
