"""Pipeline parallelism across runner processes joined by the MLX ring backend on
127.0.0.1: three ranks holding 10 layers each give exactly the greedy tokens of one
runner holding all 30."""

from __future__ import annotations

from pathlib import Path

from exo.engine import protocol
from tests.engine.helpers import RunnerProcess, chat
from tests.integration.nodes import free_port

PROMPTS = ("What is the capital of France? Answer in one sentence.", "Count from 1 to 5.")


def tokens_of(process: RunnerProcess, request_id: str) -> tuple[list[int], str, int]:
    ids: list[int] = []
    text = ""
    while True:
        message = process.recv(120)
        if isinstance(message, protocol.TokenOut):
            ids.append(message.token)
            text += message.text
        elif isinstance(message, protocol.Finished):
            return ids, text, message.completion_tokens
        else:
            raise AssertionError(f"unexpected {message!r}")


def test_three_ranks_give_the_tokens_of_one(
    runner: RunnerProcess, model_dir: Path, tmp_path: Path
) -> None:
    hosts = tuple(f"127.0.0.1:{free_port()}" for _ in range(3))
    ranks = [RunnerProcess(tmp_path / f"rank{r}.log") for r in range(3)]
    try:
        for rank, process in enumerate(ranks):
            start, end = rank * 10, rank * 10 + 10
            process.send(protocol.Load(str(model_dir), start, end, rank=rank, hosts=hosts))
        for process in ranks:
            assert isinstance(process.recv(), protocol.Loading)
        for process in ranks:
            ready = process.recv(timeout=180)
            assert isinstance(ready, protocol.Ready), f"{ready!r}\n{process.stderr()}"
        for number, prompt in enumerate(PROMPTS):
            runner.send(chat(f"one-{number}", prompt, max_tokens=16))
            expected = tokens_of(runner, f"one-{number}")
            ranks[0].send(chat(f"pipe-{number}", prompt, max_tokens=16))
            assert tokens_of(ranks[0], f"pipe-{number}") == expected
        assert "Paris" in tokens_of_text(runner)
    finally:
        codes = [ranks[0].close()] + [p.close() for p in ranks[1:]]
    # Rank 0's shutdown releases the others: every rank exits cleanly.
    assert codes == [0, 0, 0], [p.stderr()[-2000:] for p in ranks]


def tokens_of_text(process: RunnerProcess) -> str:
    process.send(chat("again", PROMPTS[0], max_tokens=24))
    return tokens_of(process, "again")[1]
