"""A deterministic fake engine, so instances, runners and requests run in simulation too.

`SimProcess` stands in for the runner process: the node's real `RunnerHandle` spawns it
through the simulated environment and speaks the real runner protocol to it over
in-memory streams. Tokens are a function of the prompt; load and decode take simulated
time. Killing it is a runner crash, seen by the node exactly as a dead process.

A shard of a multi-node instance forms its ring over the simulated sockets, at the
addresses placement gave it: rank 0 connects to every other rank (a star, where MLX's
ring links neighbours), and is ready once all of them answered. Each token is a round
trip to every other rank (the pipeline's pass through their layers), so a partition
stalls decoding and a dead rank or a reset connection fails the request in flight and
ends the runner (exit status 1), as a broken MLX ring does; the node restarts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path

import trio
import trio.testing

from exo.actors.runner_handle import read_lines
from exo.engine import protocol
from exo.events.codec import CodecError, decode, encode
from exo.models.cards import ModelCard
from exo.models.hub_errors import RepoNotFound
from simulations.sockets import SimHostSockets, SimListener, SimStream

LOAD_SECONDS = 0.5
# How long ranks wait for each other to form the ring before the runner gives up.
RING_FORM_SECONDS = 30.0
RING_RETRY_SECONDS = 0.5
DECODE_SECONDS = 0.02
MAX_TOKENS = 12
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


def fake_tokens(request: protocol.GenerateRequest) -> list[tuple[int, str]]:
    """The completion the fake engine gives: a function of the messages only."""
    prompt = "\n".join(f"{m.role}:{m.content}" for m in request.messages).encode()
    digest = hashlib.sha256(prompt).digest()
    limit = request.params.max_tokens or MAX_TOKENS
    count = min(limit, 4 + digest[0] % (MAX_TOKENS - 3))
    return [
        (digest[i % len(digest)], WORDS[digest[i % len(digest)] % len(WORDS)] + " ")
        for i in range(count)
    ]


class SimProcess:
    """A runner 'process': a task in the node's nursery serving the runner protocol."""

    def __init__(self, nursery: trio.Nursery, sockets: SimHostSockets | None = None) -> None:
        self._sockets = sockets
        # Rank 0: a connection to each other rank; another rank: its one from rank 0.
        self._ring: list[SimStream] = []
        self._listener: SimListener | None = None
        self.stdin, self._stdin_out = trio.testing.memory_stream_one_way_pair()
        self._stdout_in, self.stdout = trio.testing.memory_stream_one_way_pair()
        self._stderr_in, self.stderr = trio.testing.memory_stream_one_way_pair()
        self.returncode: int | None = None
        self._done = trio.Event()
        self._scope = trio.CancelScope()
        self._cancelled: set[str] = set()
        self._exit_code = 0
        self._work_send, self._work_receive = trio.open_memory_channel[protocol.GenerateRequest](
            1000
        )
        nursery.start_soon(self._main)

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self._exit(-9)

    def _exit(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        self._scope.cancel()
        for stream in self._ring:  # the kernel resets a dead process's connections
            stream.reset()
        if self._listener is not None:
            self._listener.close()
        self._stdout_in.close()
        self._stderr_in.close()
        self._done.set()

    async def _send(self, message: protocol.FromRunner) -> None:
        await self._stdout_in.send_all(encode(message, protocol.FromRunner) + b"\n")

    async def _main(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._generate_loop)
                async with aclosing(read_lines(self._stdin_out)) as lines:
                    async for line in lines:
                        try:
                            message = decode(line, protocol.ToRunner)
                        except CodecError as exc:
                            await self._send(protocol.RequestError(request_id="", message=str(exc)))
                            continue
                        match message:
                            case protocol.Load():
                                await self._send(protocol.Loading())
                                await trio.sleep(LOAD_SECONDS)
                                if message.hosts and not await self._form_ring(message, nursery):
                                    break
                                info = protocol.EngineInfo(
                                    "sim", "float32", "none", "fake", 30, 8192
                                )
                                await self._send(protocol.Ready(info=info))
                            case protocol.Generate(request=request):
                                self._work_send.send_nowait(request)
                            case protocol.Cancel(request_id=request_id):
                                self._cancelled.add(request_id)
                            case protocol.Shutdown():
                                break
                nursery.cancel_scope.cancel()
        self._exit(self._exit_code)

    async def _generate_loop(self) -> None:
        async for request in self._work_receive:
            tokens = fake_tokens(request)
            produced = 0
            for token, text in tokens:
                if request.request_id in self._cancelled:
                    break
                await trio.sleep(DECODE_SECONDS)
                if not await self._ring_step():
                    message = "the ring broke: a rank of this instance is gone"
                    await self._send(protocol.RequestError(request.request_id, message, True))
                    await self._stderr_in.send_all(f"fatal: {message}\n".encode())
                    self._exit(1)
                    return
                await self._send(protocol.TokenOut(request.request_id, text, token))
                produced += 1
            reason = "cancelled" if request.request_id in self._cancelled else "length"
            await self._send(protocol.Finished(request.request_id, reason, 8, produced))

    # -- the ring of a multi-node instance -------------------------------------------

    async def _form_ring(self, load: protocol.Load, nursery: trio.Nursery) -> bool:
        """Connect the ranks; False (the runner then exits with status 1) when they do not
        all answer within `RING_FORM_SECONDS`."""
        if self._sockets is None:
            raise RuntimeError("a multi-node shard needs a seed whose transport is links")
        with trio.move_on_after(RING_FORM_SECONDS):
            if load.rank == 0:
                for address in load.hosts[1:]:
                    self._ring.append(await self._dial_rank(address))
            else:
                _, _, port = load.hosts[load.rank].rpartition(":")
                self._listener = await self._sockets.open_tcp_listener("0.0.0.0", int(port))
                stream = await self._listener.accept()
                assert isinstance(stream, SimStream)
                self._ring.append(stream)
                nursery.start_soon(self._serve_rank, stream)
            return True
        await self._stderr_in.send_all(b"fatal: the ring did not form in time\n")
        self._exit_code = 1
        return False

    async def _dial_rank(self, address: str) -> SimStream:
        assert self._sockets is not None
        host, _, port = address.rpartition(":")
        while True:
            try:
                return await self._sockets.open_tcp_stream(host, int(port))
            except OSError:
                await trio.sleep(RING_RETRY_SECONDS)

    async def _ring_step(self) -> bool:
        """One token's pass through the other ranks: a byte out, a byte back, from each."""
        try:
            for stream in self._ring:
                await stream.send_all(b"s")
                if await stream.receive_some(1) != b"s":
                    return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def _serve_rank(self, stream: SimStream) -> None:
        """A rank after 0: echo each step until rank 0's connection ends, then exit."""
        try:
            while await stream.receive_some(1) == b"s":
                await stream.send_all(b"s")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await self._stderr_in.send_all(b"fatal: the ring broke: rank 0 is gone\n")
        self._exit(1)


class SimModelStore:
    """Weights 'arrive' as a marker file: the download actor's logic runs unchanged."""

    MARKER = "weights.sim"

    def __init__(self, models_dir: Path | None = None) -> None:
        self.models_dir = models_dir or Path("models")

    def describe(self, name: str) -> ModelCard:
        raise RepoNotFound(f"the simulator has no hub ({name})")

    def describe_directory(self, path: Path, name: str) -> ModelCard:
        raise RepoNotFound(f"the simulator has no model directories ({path})")

    def model_dir(self, card: ModelCard) -> Path:
        return self.models_dir / card.model_id

    def missing(self, card: ModelCard, files: tuple[str, ...]) -> list[str]:
        return [] if (self.model_dir(card) / self.MARKER).exists() else [self.MARKER]

    def fetch(
        self, card: ModelCard, files: tuple[str, ...], on_bytes: Callable[[int], None]
    ) -> None:
        target = self.model_dir(card)
        target.mkdir(parents=True, exist_ok=True)
        (target / self.MARKER).write_text(card.model_id)
        on_bytes(len(card.model_id))

    def size(self, card: ModelCard, files: tuple[str, ...]) -> int:
        return len(card.model_id)

    def partial_path(self, card: ModelCard, name: str) -> Path | None:
        return None  # weights arrive whole: there is nothing to copy between nodes

    def complete_partial(self, card: ModelCard, name: str) -> None:
        raise NotImplementedError("the simulator copies no files between nodes")
