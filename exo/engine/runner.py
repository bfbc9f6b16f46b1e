"""The runner process: `python -m exo.engine.runner`, driven over stdin/stdout.

Why a separate process: MLX, BLAS and the model live here, so a crash or a leak in them
never takes the node down, and the node never imports MLX. The protocol is one JSON
object per line (`exo.engine.protocol`, encoded by `exo.events.codec`): `ToRunner`
records on stdin, `FromRunner` records on the original stdout. Libraries print to
stdout freely, so the first thing the runner does is move the protocol to a private
copy of fd 1 and point fd 1 at stderr; nothing but protocol lines reaches the node's pipe.

Stdin is read on a thread into a queue; the main thread takes what arrived between two
steps of its scheduler, so new requests join the running batch and a `Cancel` reaches
its request within one step.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from attrs import frozen

from exo.engine import protocol
from exo.engine.batching import BatchScheduler
from exo.engine.mlx_engine import PREFILL_STEP, MlxEngine
from exo.engine.native_lanes import native_decoder_for
from exo.events.codec import CodecError, decode, encode

log = logging.getLogger("exo.engine.runner")

# After stdin closes, a runner still busy this long is ended (a wedged ring, a hung peer).
EXIT_GRACE = 10.0
# `EXO_NATIVE_DECODE=0` keeps every stream on mlx-lm's batch step (for comparison).
NATIVE_ENV = "EXO_NATIVE_DECODE"
# Prompt tokens per batch step on a CPU (see `prefill_step`).
PREFILL_STEP_CPU = 64


@frozen
class BadLine:
    """An input line that is not a valid `ToRunner` record."""

    message: str


@frozen
class EndOfInput:
    """Stdin closed: the node is gone or done with us."""


Inbox = queue.Queue[protocol.ToRunner | BadLine | EndOfInput]
Out = protocol.TokenOut | protocol.Finished | protocol.RequestError


def claim_stdout() -> BinaryIO:
    """Keep the real stdout for protocol lines and send fd 1 (and `print`) to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(protocol_fd, "wb")


def read_stdin(fd: int, inbox: Inbox, on_eof: Callable[[], None] = lambda: None) -> None:
    """Decode input lines into the inbox until EOF; undecodable lines become `BadLine`.

    Reads the raw fd rather than `sys.stdin.buffer`: a daemon thread blocked inside a
    buffered reader makes interpreter shutdown abort ("could not acquire lock").
    """
    pending = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _decode_line(line, inbox)
        _decode_line(pending, inbox)
    except OSError as exc:
        log.error("reading stdin failed: %s", exc)
    finally:
        inbox.put(EndOfInput())
        on_eof()


def _decode_line(raw: bytes, inbox: Inbox) -> None:
    line = raw.strip()
    if not line:
        return
    try:
        inbox.put(decode(line, protocol.ToRunner))
    except CodecError as exc:
        inbox.put(BadLine(f"malformed runner input line ignored: {exc}"))


class Runner:
    """Handles the inbox on the main thread: one engine, its scheduler, and between every
    two scheduler steps whatever arrived (new requests join the batch, cancels end theirs)."""

    def __init__(self, out: BinaryIO, inbox: Inbox) -> None:
        self.out = out
        self.inbox = inbox
        self.engine: MlxEngine | None = None
        self.scheduler: BatchScheduler | None = None
        self.stopping = False
        self.exit_status = 0

    def send(self, message: protocol.FromRunner) -> None:
        self.out.write(encode(message, protocol.FromRunner) + b"\n")
        self.out.flush()

    def send_all(self, messages: list[Out]) -> None:
        if messages:
            self.out.write(b"".join(encode(m, protocol.FromRunner) + b"\n" for m in messages))
            self.out.flush()

    def run(self) -> int:
        """Serve until Shutdown or EOF (exit status 0) or a failed load (1)."""
        try:
            while not self.stopping:
                scheduler = self.scheduler
                if scheduler is None or not scheduler.busy:
                    status = self.handle(self.inbox.get())
                    if status is not None:
                        return status
                while not self.stopping:  # everything that arrived meanwhile
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    status = self.handle(item)
                    if status is not None:
                        return status
                scheduler = self.scheduler
                if scheduler is not None and scheduler.busy and not self.stopping:
                    self.send_all(scheduler.step())
                    if scheduler.broken:
                        self.stopping = True
                        self.exit_status = 1
            return self.exit_status
        finally:
            if self.scheduler is not None and not self.exit_status:
                self.send_all(self.scheduler.cancel_all())
            # Release the other ranks, unless the ring is what broke (it could hang).
            if self.engine is not None and not self.engine.follower and not self.exit_status:
                self.engine.close()

    def handle(self, item: protocol.ToRunner | BadLine | EndOfInput) -> int | None:
        """Act on one message; an int is the exit status when the runner must stop."""
        match item:
            case protocol.Load():
                return self.load(item)
            case protocol.Generate():
                self.submit(item.request)
            case protocol.Cancel():
                if self.scheduler is not None:
                    self.send_all(self.scheduler.cancel(item.request_id))
            case BadLine():
                log.warning("%s", item.message)
                self.send(protocol.RequestError(request_id="", message=item.message))
            case protocol.Shutdown() | EndOfInput():
                log.info("shutting down (%s)", type(item).__name__)
                self.stopping = True
                return 0
        return None

    def load(self, request: protocol.Load) -> int | None:
        self.send(protocol.Loading())
        started = time.perf_counter()
        try:
            engine = MlxEngine.load(
                Path(request.model_dir),
                request.start_layer,
                request.end_layer,
                request.rank,
                request.hosts,
                request.strategy,
                request.context_length,
                request.keep_quantized,
                doorbell_key=bytes.fromhex(request.doorbell_key),
            )
        except Exception as exc:
            log.error("load failed:\n%s", traceback.format_exc())
            self.send(
                protocol.Fatal(
                    message=f"cannot load {request.model_dir}: {type(exc).__name__}: {exc}"
                )
            )
            return 1
        info = engine.info
        self.engine = engine
        self.scheduler = scheduler_for(engine, request)
        log.info(
            "loaded %s in %.2fs: %s %s, %d layers, context %d, blas %s, %s",
            request.model_dir,
            time.perf_counter() - started,
            info.device,
            info.dtype,
            info.num_layers,
            info.context_length,
            info.blas,
            f"batches of {request.batch_size}",
        )
        self.send(protocol.Ready(info=info))
        if engine.follower:
            # A later rank serves rank 0 until it says stop; no requests here.
            try:
                engine.serve_follower()
            except RuntimeError as exc:  # the ring broke: a peer rank died
                log.error("rank %d of the ring stops: %s", request.rank, exc)
                return 1
            log.info("rank %d done", request.rank)
            return 0
        return None

    def end_of_input(self) -> None:
        """Stdin closed: the node is gone or done with us. The main thread may never read
        the EndOfInput queued for it (a follower serves the ring; a rank may be joining
        one, or waiting on a peer that hangs), so no runner outlives its node for long."""
        if self.engine is not None and self.engine.follower:
            log.info("the node closed stdin; leaving the ring")
            os._exit(0)
        timer = threading.Timer(EXIT_GRACE, os._exit, (1,))
        timer.daemon = True  # a runner that stops in time is not held up by it
        timer.start()

    def submit(self, request: protocol.GenerateRequest) -> None:
        if self.scheduler is None:
            self.send(
                protocol.RequestError(request_id=request.request_id, message="no model is loaded")
            )
            return
        try:
            self.send_all(self.scheduler.submit(request))
        except ValueError as exc:  # bad parameters, prompt too long, a bad JSON schema
            log.info("request %s rejected: %s", request.request_id, exc)
            self.send(protocol.RequestError(request_id=request.request_id, message=str(exc)))


def prefill_step(engine: MlxEngine) -> int:
    """Prompt tokens prefilled per scheduler step, between two decode steps of the running
    streams. On a CPU a chunk of the bundled model costs about 14 ms a token beside 7
    decoding streams, so 64 keep their largest gap near a second (512: 7.1 s) at no cost
    to the new request's TTFT (docs/benchmarks.md); a GPU prefills 512 in milliseconds."""
    return PREFILL_STEP_CPU if engine.info.device == "cpu" else PREFILL_STEP


def scheduler_for(engine: MlxEngine, load: protocol.Load) -> BatchScheduler:
    """Batches, on a runner holding the whole model as on the first rank of a distributed
    instance (its other ranks mirror its caches, `exo.engine.mirror`)."""
    native = None
    if os.environ.get(NATIVE_ENV) != "0":
        native = native_decoder_for(engine, load.batch_size)
    return BatchScheduler(
        engine,
        batch_size=load.batch_size,
        prefill_step=prefill_step(engine),
        kv_budget_tokens=load.kv_budget_tokens or engine.info.context_length,
        native=native,
    )


def main() -> int:
    out = claim_stdout()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="runner: %(message)s")
    inbox: Inbox = queue.Queue()
    runner = Runner(out, inbox)
    reader = threading.Thread(
        target=read_stdin,
        args=(sys.stdin.fileno(), inbox, runner.end_of_input),
        name="stdin",
        daemon=True,
    )
    reader.start()
    log.info("started, pid %d", os.getpid())
    try:
        return runner.run()
    except BrokenPipeError:
        log.error("the node closed the protocol pipe")
        return 1


if __name__ == "__main__":
    sys.exit(main())
