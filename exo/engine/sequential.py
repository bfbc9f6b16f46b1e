"""One request at a time: the scheduler of a distributed instance's first rank.

A pipeline or tensor group runs mlx-lm's single-sequence generation loop across its
ranks (the later ranks follow rank 0's forward passes, one sequence wide), so its
requests run in arrival order. Same interface as `BatchScheduler`: the runner loop does
not care which it drives.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

from exo.engine import protocol
from exo.engine.mlx_engine import MlxEngine

log = logging.getLogger("exo.engine.sequential")

Out = protocol.TokenOut | protocol.Finished | protocol.RequestError


class _Queued:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.cancelled = False
        self.messages: Iterator[protocol.TokenOut | protocol.Finished] = iter(())


class SequentialScheduler:
    """Requests in arrival order, each streamed to its end before the next starts."""

    def __init__(self, engine: MlxEngine) -> None:
        self._engine = engine
        self._queue: deque[_Queued] = deque()
        # A failure that leaves the group unusable (the ring broke): the runner must exit.
        self.broken = False

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    @property
    def running(self) -> int:
        return min(1, len(self._queue))

    @property
    def waiting(self) -> int:
        return max(0, len(self._queue) - 1)

    def submit(self, request: protocol.GenerateRequest) -> list[Out]:
        """Queue a request; bad parameters and over-long prompts raise ValueError here."""
        queued = _Queued(request.request_id)
        queued.messages = self._engine.generate(request, lambda: queued.cancelled)
        self._queue.append(queued)
        return []

    def cancel(self, request_id: str) -> list[Out]:
        for index, queued in enumerate(self._queue):
            if queued.request_id != request_id:
                continue
            if index > 0:  # not started: it finishes with nothing
                del self._queue[index]
                return [protocol.Finished(request_id, "cancelled", 0, 0)]
            queued.cancelled = True  # the generation notices at its next token
        return []

    def cancel_all(self) -> list[Out]:
        out: list[Out] = []
        for queued in list(self._queue)[1:]:
            out.extend(self.cancel(queued.request_id))
        if self._queue:
            self._queue[0].cancelled = True
            while self._queue:
                out.extend(self.step())
        return out

    def step(self) -> list[Out]:
        """The next message of the request at the head of the queue."""
        if not self._queue:
            return []
        head = self._queue[0]
        try:
            message = next(head.messages)
        except StopIteration:
            self._queue.popleft()
            return []
        except Exception as exc:
            self._queue.popleft()
            log.exception("request %s failed", head.request_id)
            if self._engine.group is not None and isinstance(exc, RuntimeError):
                log.error("the ring of this instance broke; the runner exits")
                self.broken = True
            message = f"engine error: {type(exc).__name__}: {exc}"
            return [protocol.RequestError(head.request_id, message, failed=True)]
        if isinstance(message, protocol.Finished):
            self._queue.popleft()
        return [message]
