"""One runner process for one instance on this node: spawn it, load the shard, route
requests to it and their tokens back, report its status, and restart it when it dies.

A runner that dies fails every request in flight at once (its stdout closes), so no
client waits on a dead process.

Admission happens here, where the requests of the runner are counted: a runner decodes
`batch_size` sequences together (a distributed instance's rank 0 too) and queues up to
`queue_limit` more; a request beyond that is refused at once with `Overloaded` (429 and
`Retry-After`, estimated from how long requests have been taking), never queued without
bound.
"""

from __future__ import annotations

import logging
import math
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path

import trio
from attrs import frozen

from exo.api.backend import Chunk, GenerationFailed, InvalidRequest, Overloaded, Unavailable
from exo.engine import protocol
from exo.engine.blas import runner_env
from exo.environment import ChildProcess, Environment
from exo.events.codec import CodecError, decode, encode
from exo.events.facts import Instance, RunnerStatus, Shard

log = logging.getLogger("exo.runner")

STDERR_TAIL_LINES = 40
# Restarts back off from 0.5 s up to this; a runner is never given up on for good,
# since what killed it (memory pressure, a bad request) may pass.
MAX_RESTART_BACKOFF = 30.0
# How the status of a runner that could not load its model begins (requests stop waiting).
LOAD_FAILED = "runner could not start"
# Weight of the newest request in the running mean of request durations (Retry-After).
DURATION_WEIGHT = 0.2
# Bounds of the Retry-After an overloaded runner suggests, in seconds.
RETRY_AFTER_RANGE = (1.0, 60.0)


@frozen
class ServingLimits:
    """How many requests a runner serves at once and how many more wait (exo node
    --batch-size, --queue-limit)."""

    batch_size: int = 8
    queue_limit: int = 32


DEFAULT_LIMITS = ServingLimits()


class _RunnerGone:
    def __init__(self, message: str) -> None:
        self.message = message


Routed = protocol.TokenOut | protocol.Finished | protocol.RequestError | _RunnerGone


class RunnerHandle:
    def __init__(
        self,
        env: Environment,
        instance: Instance,
        shard: Shard,
        model_dir: Path,
        report: Callable[[RunnerStatus], None],
        limits: ServingLimits = DEFAULT_LIMITS,
        kv_budget_tokens: int | None = None,
        *,
        doorbell_key: str = "",
    ) -> None:
        self.instance = instance
        self.shard = shard
        self.limits = limits
        self._kv_budget_tokens = kv_budget_tokens
        self._doorbell_key = doorbell_key  # hex, for `Load` only: never logged
        self._mean_seconds: float | None = None
        self._env = env
        self._model_dir = model_dir
        self._report = report
        self.status = RunnerStatus("starting")
        self.info: protocol.EngineInfo | None = None
        self._process: ChildProcess | None = None
        self._inflight: dict[str, trio.MemorySendChannel[Routed]] = {}
        self._write_lock = trio.Lock()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.restarts = 0

    @property
    def ready(self) -> bool:
        """Loaded and taking requests (idle or already running some)."""
        return self.status.phase in ("ready", "running")

    @property
    def concurrency(self) -> int:
        """Sequences the runner decodes at once (rank 0's batch, on a distributed instance)."""
        return self.limits.batch_size

    @property
    def capacity(self) -> int:
        """Requests taken at most: those decoding and those waiting their turn."""
        return self.concurrency + self.limits.queue_limit

    def retry_after(self) -> float:
        """Seconds until a slot is likely free: the waiting requests' turns at the mean
        duration of the requests served so far."""
        mean = self._mean_seconds if self._mean_seconds is not None else 1.0
        waiting = max(0, len(self._inflight) - self.concurrency) + 1
        low, high = RETRY_AFTER_RANGE
        return min(high, max(low, mean * waiting / self.concurrency))

    def _took(self, seconds: float) -> None:
        mean = self._mean_seconds
        self._mean_seconds = seconds if mean is None else mean + DURATION_WEIGHT * (seconds - mean)

    @property
    def in_flight(self) -> int:
        """Requests running here now: a local fact, never replicated (it changes twice per
        request; the replicated phase stays `ready` while the runner serves)."""
        return len(self._inflight)

    def _set_status(self, status: RunnerStatus) -> None:
        self.status = status
        self._report(status)

    async def run(self) -> None:
        """Keep a runner alive until cancelled."""
        backoff = 0.5
        while True:
            started = self._env.now()
            message = await self._run_once()
            self.restarts += 1
            detail = message + self._tail_text()
            log.error("runner for %s failed: %s", self.instance.instance_id, detail)
            self._set_status(RunnerStatus("failed", detail, self.restarts))
            if self._env.now() - started > 60:
                backoff = 0.5
            await self._env.sleep(backoff)
            backoff = min(backoff * 2, MAX_RESTART_BACKOFF)

    def _tail_text(self) -> str:
        return ("\nstderr tail:\n" + "\n".join(self._stderr_tail)) if self._stderr_tail else ""

    async def _run_once(self) -> str:
        """One process lifetime; returns why it ended."""
        self._stderr_tail.clear()
        self._set_status(RunnerStatus("starting", "", self.restarts))
        process = await self._env.spawn(
            [sys.executable, "-m", "exo.engine.runner"],
            runner_env(self._env.environ(), ranked=bool(self.instance.ring)),
        )
        self._process = process
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_stderr, process)
                await self._write(
                    protocol.Load(
                        str(self._model_dir),
                        self.shard.start_layer,
                        self.shard.end_layer,
                        self.shard.rank,
                        self.instance.ring,
                        self.instance.strategy,
                        self.instance.context_length,
                        self.shard.keep_quantized,
                        self.limits.batch_size,
                        self._kv_budget_tokens,
                        self._doorbell_key,
                    )
                )
                reason = await self._pump_stdout(process)
                nursery.cancel_scope.cancel()
            code = await process.wait()
            return f"{reason} (exit status {code})"
        finally:
            self._process = None
            self.info = None
            self._fail_inflight("the runner process stopped")
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()

    async def _pump_stdout(self, process: ChildProcess) -> str:
        assert process.stdout is not None
        async with aclosing(read_lines(process.stdout)) as lines:
            async for line in lines:
                try:
                    message = decode(line, protocol.FromRunner)
                except CodecError as exc:
                    log.warning("runner sent an undecodable line: %s", exc)
                    continue
                match message:
                    case protocol.Loading():
                        self._set_status(RunnerStatus("loading", "", self.restarts))
                    case protocol.Ready(info=info):
                        self.info = info
                        log.info(
                            "runner for %s ready: %s %s, BLAS %s, %d layers",
                            self.instance.instance_id,
                            info.device,
                            info.dtype,
                            info.blas,
                            info.num_layers,
                        )
                        self._set_status(RunnerStatus("ready", _describe(info), self.restarts))
                    case protocol.Fatal(message=fatal):
                        return f"{LOAD_FAILED}: {fatal}"
                    case protocol.TokenOut() | protocol.Finished() | protocol.RequestError():
                        self._route(message)
        return "runner process exited"

    def _route(
        self, message: protocol.TokenOut | protocol.Finished | protocol.RequestError
    ) -> None:
        channel = self._inflight.get(message.request_id)
        if channel is None:
            return  # a request its client already left
        with suppress(trio.BrokenResourceError):  # the client is leaving right now
            channel.send_nowait(message)
        if not isinstance(message, protocol.TokenOut):
            del self._inflight[message.request_id]
            channel.close()

    def _fail_inflight(self, message: str) -> None:
        for channel in self._inflight.values():
            with suppress(trio.BrokenResourceError):  # its client left at the same moment
                channel.send_nowait(_RunnerGone(message + self._tail_text()))
            channel.close()
        self._inflight.clear()

    async def _pump_stderr(self, process: ChildProcess) -> None:
        assert process.stderr is not None
        async with aclosing(read_lines(process.stderr)) as lines:
            async for line in lines:
                text = line.decode(errors="replace").rstrip()
                self._stderr_tail.append(text)
                log.debug("%s: %s", self.instance.instance_id, text)

    async def _write(self, message: protocol.ToRunner) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise GenerationFailed("the runner is not running")
        async with self._write_lock:
            try:
                await process.stdin.send_all(encode(message, protocol.ToRunner) + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise GenerationFailed("the runner process stopped") from exc

    @asynccontextmanager
    async def stream(
        self, request: protocol.GenerateRequest
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        """Run `request` on this runner; leaving early cancels it there."""
        if not self.ready:
            raise Unavailable(f"runner for {self.instance.model} is {self.status.phase}")
        if len(self._inflight) >= self.capacity:
            raise Overloaded(
                f"{self.instance.model} is serving {self.concurrency} requests with "
                f"{self.limits.queue_limit} more waiting on this node; retry later",
                self.retry_after(),
            )
        send, receive = trio.open_memory_channel[Routed](math.inf)
        request_id = request.request_id
        self._inflight[request_id] = send
        started = self._env.now()
        try:
            await self._write(protocol.Generate(request))
            async with aclosing(_chunks(receive)) as chunks:  # closed even if not read to its end
                yield chunks
        finally:
            self._took(self._env.now() - started)
            if self._inflight.pop(request_id, None) is not None:
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(1),
                    suppress(GenerationFailed),
                ):
                    await self._write(protocol.Cancel(request_id))


async def _chunks(receive: trio.MemoryReceiveChannel[Routed]) -> AsyncGenerator[Chunk, None]:
    async with receive:
        async for message in receive:
            match message:
                case protocol.TokenOut():
                    yield message
                case protocol.Finished():
                    yield message
                    return
                case protocol.RequestError(message=text, failed=True):
                    raise GenerationFailed(text)
                case protocol.RequestError(message=text):
                    raise InvalidRequest(text)
                case _RunnerGone(message=text):
                    raise GenerationFailed(f"runner failed while generating: {text}")
    raise GenerationFailed("runner stream ended without a result")


async def read_lines(stream: trio.abc.ReceiveStream) -> AsyncGenerator[bytes, None]:
    """Newline-delimited lines from a byte stream; the last partial line if it has no newline."""
    buffer = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            break
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            yield bytes(buffer[:end])
            del buffer[: end + 1]
    if buffer:
        yield bytes(buffer)


def _describe(info: protocol.EngineInfo) -> str:
    return f"{info.device} {info.dtype}, BLAS {info.blas}"
