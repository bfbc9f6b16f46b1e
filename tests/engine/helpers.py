"""A real runner subprocess driven line by line, and request builders, for engine tests."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from exo.engine import protocol
from exo.engine.blas import runner_env
from exo.events.codec import decode, encode

REPO_ROOT = Path(__file__).resolve().parents[2]


class RunnerProcess:
    """A real `python -m exo.engine.runner` child with line-level send / receive."""

    def __init__(self, stderr_path: Path, ranked: bool = False) -> None:
        self.stderr_path = stderr_path
        self.info: protocol.EngineInfo | None = None
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exo.engine.runner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=runner_env(os.environ, ranked),
            cwd=REPO_ROOT,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(b"")

    def send_raw(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def send(self, message: protocol.ToRunner) -> None:
        self.send_raw(encode(message, protocol.ToRunner))

    def recv(self, timeout: float = 60.0) -> protocol.FromRunner:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"runner silent for {timeout}s; stderr:\n{self.stderr()}"
            ) from None
        if not line:
            raise AssertionError(f"runner closed stdout; stderr:\n{self.stderr()}")
        return decode(line, protocol.FromRunner)

    def collect(self, request_id: str, timeout: float = 120.0) -> tuple[str, protocol.Finished]:
        """The text of one request's TokenOuts and its Finished."""
        text = ""
        while True:
            message = self.recv(timeout)
            if isinstance(message, protocol.TokenOut):
                assert message.request_id == request_id
                text += message.text
            elif isinstance(message, protocol.Finished):
                assert message.request_id == request_id
                return text, message
            else:
                raise AssertionError(f"unexpected {message!r} while generating {request_id}")

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.send(protocol.Shutdown())
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            # A Shutdown that could not be flushed to a runner already gone stays
            # buffered, and closing stdin tries again: the pipe is closed all the same.
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self._stderr.close()
        return self.proc.returncode


def chat(request_id: str, text: str, **params: object) -> protocol.Generate:
    """A one-message Generate with greedy sampling unless told otherwise."""
    sampling = protocol.SamplingParams(**{"temperature": 0.0, **params})  # type: ignore[arg-type]
    return protocol.Generate(
        request=protocol.GenerateRequest(
            request_id=request_id,
            messages=(protocol.ChatMessage(role="user", content=text),),
            params=sampling,
        )
    )
