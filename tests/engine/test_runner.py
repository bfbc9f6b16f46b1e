"""The runner as a real subprocess: load, generate, stop strings, cancel, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exo.engine import protocol
from exo.engine.blas import find_openblas
from tests.engine.helpers import RunnerProcess, chat

CAPITAL = "What is the capital of France? Answer in one sentence."
STORY = "Write a long story about a dragon who learns to code."


def test_ready_reports_the_engine(runner: RunnerProcess) -> None:
    info = runner.info
    assert info is not None
    assert (info.model_type, info.num_layers, info.context_length) == ("llama", 30, 8192)
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert info.blas.startswith("openblas" if find_openblas() else "reference")


def test_greedy_generation_streams_tokens_then_finishes(runner: RunnerProcess) -> None:
    runner.send(chat("r-greedy", CAPITAL, max_tokens=24))
    text, finished = runner.collect("r-greedy")
    assert "Paris" in text
    assert finished.finish_reason == "stop"
    assert finished.prompt_tokens > 20
    assert 0 < finished.completion_tokens < 24


def test_max_tokens_gives_length(runner: RunnerProcess) -> None:
    runner.send(chat("r-length", STORY, max_tokens=5))
    text, finished = runner.collect("r-length")
    assert text
    assert (finished.finish_reason, finished.completion_tokens) == ("length", 5)


def test_stop_string_is_never_emitted(runner: RunnerProcess) -> None:
    # " of" and " France" are separate tokens: the stop string spans two of them.
    runner.send(chat("r-stop", CAPITAL, max_tokens=24, stop=("of Fr",)))
    text, finished = runner.collect("r-stop")
    assert finished.finish_reason == "stop"
    assert text == "The capital "


def test_seeded_sampling_repeats(runner: RunnerProcess) -> None:
    texts = []
    for n in range(2):
        runner.send(chat(f"r-seed-{n}", STORY, temperature=0.9, max_tokens=6, seed=7))
        texts.append(runner.collect(f"r-seed-{n}")[0])
    assert texts[0] == texts[1]


def test_cancel_mid_generation(runner: RunnerProcess) -> None:
    runner.send(chat("r-cancel", STORY, max_tokens=400))
    first = runner.recv()
    assert isinstance(first, protocol.TokenOut)
    runner.send(protocol.Cancel(request_id="r-cancel"))
    _, finished = runner.collect("r-cancel")
    assert finished.finish_reason == "cancelled"
    assert finished.completion_tokens < 400


def test_cancel_during_a_long_prefill(runner: RunnerProcess) -> None:
    # About 4000 prompt tokens: several seconds of prefill, cancelled after the first chunk.
    runner.send(chat("r-prefill", "hello " * 4000, max_tokens=4))
    runner.send(protocol.Cancel(request_id="r-prefill"))
    text, finished = runner.collect("r-prefill")
    assert (text, finished.finish_reason, finished.completion_tokens) == ("", "cancelled", 0)


def test_requests_decode_together_and_a_cancel_ends_only_its_own(runner: RunnerProcess) -> None:
    runner.send(chat("r-a", STORY, max_tokens=12, ignore_eos=True))
    runner.send(chat("r-b", STORY, max_tokens=12))
    runner.send(chat("r-c", CAPITAL, max_tokens=4, ignore_eos=True))
    runner.send(protocol.Cancel(request_id="r-b"))
    order: list[tuple[str, str]] = []
    done: dict[str, protocol.Finished] = {}
    while len(done) < 3:
        message = runner.recv()
        assert isinstance(message, protocol.TokenOut | protocol.Finished), message
        order.append((type(message).__name__, message.request_id))
        if isinstance(message, protocol.Finished):
            done[message.request_id] = message
    assert done["r-b"].finish_reason == "cancelled"
    assert (done["r-a"].finish_reason, done["r-a"].completion_tokens) == ("length", 12)
    assert (done["r-c"].finish_reason, done["r-c"].completion_tokens) == ("length", 4)
    # One batch: the short request finished while the long one was still streaming.
    assert order.index(("Finished", "r-c")) < order.index(("Finished", "r-a"))
    assert order.index(("TokenOut", "r-a")) < order.index(("Finished", "r-c"))


def test_prompt_too_long_is_a_request_error(runner: RunnerProcess) -> None:
    runner.send(chat("r-long", "hello " * 9000, max_tokens=4))
    error = runner.recv()
    assert isinstance(error, protocol.RequestError)
    assert error.request_id == "r-long"
    assert "context" in error.message


def test_bad_params_are_a_request_error(runner: RunnerProcess) -> None:
    runner.send(chat("r-bad", CAPITAL, top_p=0.0))
    error = runner.recv()
    assert isinstance(error, protocol.RequestError)
    assert (error.request_id, "top_p" in error.message) == ("r-bad", True)


def test_malformed_lines_are_reported_and_survived(runner: RunnerProcess) -> None:
    runner.send_raw(b"this is not json")
    runner.send_raw(b'{"type": "Generate", "request": 3}')
    runner.send_raw(b'{"type": "Reboot"}')
    for _ in range(3):
        error = runner.recv()
        assert isinstance(error, protocol.RequestError)
        assert error.request_id == ""
        assert "malformed" in error.message
    runner.send(chat("r-after", CAPITAL, max_tokens=24))
    text, finished = runner.collect("r-after")
    assert "Paris" in text and finished.finish_reason == "stop"


def test_stray_stdout_writes_do_not_reach_the_protocol() -> None:
    code = (
        "import os; from exo.engine.runner import claim_stdout; out = claim_stdout(); "
        "print('stray print', flush=True); os.write(1, b'stray fd write\\n'); "
        "out.write(b'protocol\\n'); out.flush()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert done.stdout == b"protocol\n"
    assert b"stray print" in done.stderr and b"stray fd write" in done.stderr


def test_generate_before_load_is_a_request_error(tmp_path: Path) -> None:
    process = RunnerProcess(tmp_path / "stderr.log")
    process.send(chat("r-none", CAPITAL))
    error = process.recv()
    assert isinstance(error, protocol.RequestError)
    assert "no model" in error.message
    assert process.close() == 0


@pytest.mark.parametrize("case", ["missing directory", "partial layer range"])
def test_load_failure_is_fatal(case: str, model_dir: Path, tmp_path: Path) -> None:
    if case == "missing directory":
        load, expected = protocol.Load(str(tmp_path / "nowhere"), 0, 30), "nowhere"
    else:
        load, expected = protocol.Load(str(model_dir), 0, 15), "pipeline shard"
    process = RunnerProcess(tmp_path / "stderr.log")
    process.send(load)
    assert isinstance(process.recv(), protocol.Loading)
    fatal = process.recv()
    assert isinstance(fatal, protocol.Fatal)
    assert expected in fatal.message
    assert process.proc.wait(timeout=30) == 1
    process.close()


def test_stdin_eof_exits_cleanly(tmp_path: Path) -> None:
    process = RunnerProcess(tmp_path / "stderr.log")
    assert process.proc.stdin is not None
    process.proc.stdin.close()
    assert process.proc.wait(timeout=30) == 0
    assert "shutting down" in process.stderr()
    process.close()


def test_an_instance_context_caps_prompt_and_reply(model_dir: Path, tmp_path: Path) -> None:
    """A runner loaded for a 64-token context (what placement planned memory for) holds
    requests to it: a longer prompt is refused and replies stop at the cap."""
    process = RunnerProcess(tmp_path / "stderr.log")
    try:
        process.send(protocol.Load(str(model_dir), 0, 30, context_length=64))
        assert isinstance(process.recv(), protocol.Loading)
        ready = process.recv(timeout=180)
        assert isinstance(ready, protocol.Ready) and ready.info.context_length == 64
        process.send(chat("long", "word " * 80))
        error = process.recv()
        assert isinstance(error, protocol.RequestError) and "holds 64" in error.message
        process.send(chat("short", "Count from 1 to 100."))
        _, finished = process.collect("short")
        assert finished.finish_reason == "length"
        assert finished.prompt_tokens + finished.completion_tokens == 64
    finally:
        assert process.close() == 0, process.stderr()
