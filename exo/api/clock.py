"""The clocks the API reads: the wall clock for the timestamps it sends (`created`,
Ollama's `created_at`) and a monotonic one for the durations it reports (Ollama's
`total_duration`).

Passed in rather than read from `time`, so that under the simulator both are the node's
simulated clock and a seed sends the same bytes on every run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from attrs import frozen


@frozen
class ApiClock:
    wall: Callable[[], float] = time.time  # seconds since the epoch
    elapsed: Callable[[], float] = time.perf_counter  # seconds from an arbitrary start


SYSTEM_CLOCK = ApiClock()
