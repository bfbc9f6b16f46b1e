"""Pipeline and tensor parallelism across runner processes joined by the MLX ring backend
on 127.0.0.1: three pipeline ranks holding 10 layers each give exactly the greedy tokens
of one runner holding all 30; three tensor ranks holding a third of every layer give the
same greedy tokens; requests sent together decode together in one batch, each with the
reply it gets alone; and a rank that dies breaks the ring loudly, never silently."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exo.engine import protocol
from exo.engine.blas import runner_env
from tests.engine.helpers import REPO_ROOT, RunnerProcess, chat
from tests.integration.nodes import free_port

PROMPTS = ("What is the capital of France? Answer in one sentence.", "Count from 1 to 5.")
BATCH_PROMPTS = (*PROMPTS, "Name three colours.", "Why is the sky blue?")
# A greedy choice that batching may flip must be a near tie (as in test_batching.py).
NEAR_TIE = 0.05


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


def start_ranks(model_dir: Path, tmp_path: Path, strategy: str) -> list[RunnerProcess]:
    hosts = tuple(f"127.0.0.1:{free_port()}" for _ in range(3))
    ranks = [RunnerProcess(tmp_path / f"{strategy}-rank{r}.log", ranked=True) for r in range(3)]
    for rank, process in enumerate(ranks):
        start, end = (rank * 10, rank * 10 + 10) if strategy == "pipeline" else (0, 30)
        process.send(
            protocol.Load(str(model_dir), start, end, rank=rank, hosts=hosts, strategy=strategy)
        )
    for process in ranks:
        assert isinstance(process.recv(), protocol.Loading)
    for process in ranks:
        ready = process.recv(timeout=180)
        assert isinstance(ready, protocol.Ready), f"{ready!r}\n{process.stderr()}"
    return ranks


@pytest.fixture(params=["pipeline", "tensor"])
def ranks(
    request: pytest.FixtureRequest, model_dir: Path, tmp_path: Path
) -> Iterator[list[RunnerProcess]]:
    processes = start_ranks(model_dir, tmp_path, request.param)
    yield processes
    for process in processes:
        process.close()


def replies_of(
    process: RunnerProcess, requests: list[protocol.Generate]
) -> tuple[dict[str, list[protocol.TokenOut]], list[protocol.FromRunner]]:
    """Send the requests at once; each one's TokenOuts, and every message in order."""
    for request in requests:
        process.send(request)
    replies: dict[str, list[protocol.TokenOut]] = {r.request.request_id: [] for r in requests}
    order: list[protocol.FromRunner] = []
    finished = 0
    while finished < len(requests):
        message = process.recv(120)
        order.append(message)
        if isinstance(message, protocol.TokenOut):
            replies[message.request_id].append(message)
        elif isinstance(message, protocol.Finished):
            finished += 1
        else:
            raise AssertionError(f"unexpected {message!r}")
    return replies, order


def test_three_ranks_give_the_tokens_of_one_alone_and_together(
    runner: RunnerProcess, ranks: list[RunnerProcess]
) -> None:
    """One ring per strategy (starting one costs about 20 s on 2 cores) proves both:
    each prompt alone gives one runner's tokens, requests sent at once decode in one
    batch with the replies they get alone, then the ring shuts down cleanly."""
    for number, prompt in enumerate(PROMPTS):
        runner.send(chat(f"one-{number}", prompt, max_tokens=16))
        expected = tokens_of(runner, f"one-{number}")
        ranks[0].send(chat(f"many-{number}", prompt, max_tokens=16))
        assert tokens_of(ranks[0], f"many-{number}") == expected
    runner.send(chat("again", PROMPTS[0], max_tokens=24))
    assert "Paris" in tokens_of(runner, "again")[1]
    assert_decoded_together_as_alone(runner, ranks[0])
    # Rank 0's shutdown releases the others: every rank exits cleanly.
    codes = [ranks[0].close()] + [p.close() for p in ranks[1:]]
    assert codes == [0, 0, 0], [p.stderr()[-2000:] for p in ranks]


def assert_decoded_together_as_alone(runner: RunnerProcess, rank0: RunnerProcess) -> None:
    """Requests sent to rank 0 at once decode in one batch, each with the reply one
    runner gives it alone (up to a near tie that batching may flip)."""
    requests = [
        chat(f"b{n}", prompt, max_tokens=12, logprobs=2) for n, prompt in enumerate(BATCH_PROMPTS)
    ]
    alone = {
        r.request.request_id: replies_of(runner, [r])[0][r.request.request_id] for r in requests
    }
    together, order = replies_of(rank0, requests)
    # One batch: every request had a token before the first one finished.
    first_end = next(i for i, m in enumerate(order) if isinstance(m, protocol.Finished))
    started = {m.request_id for m in order[:first_end] if isinstance(m, protocol.TokenOut)}
    assert started == set(together), order[: first_end + 1]
    for request_id, mine in alone.items():
        theirs = together[request_id]
        for at, (one, other) in enumerate(zip(mine, theirs, strict=False)):
            if one.token != other.token:
                gap = one.logprobs[0].top[0].logprob - one.logprobs[0].top[1].logprob
                assert gap < NEAR_TIE, (request_id, at, one.text, other.text, gap)
                break
        else:
            assert [t.token for t in mine] == [t.token for t in theirs], request_id


def test_a_dead_rank_fails_the_request_and_the_ring(ranks: list[RunnerProcess]) -> None:
    ranks[0].send(chat("long", "Count from 1 to 500, one number per line.", max_tokens=400))
    first = ranks[0].recv(60)
    assert isinstance(first, protocol.TokenOut), first
    ranks[2].proc.send_signal(signal.SIGKILL)
    while True:
        message = ranks[0].recv(10)
        if not isinstance(message, protocol.TokenOut):
            break
    assert isinstance(message, protocol.RequestError) and message.failed, message
    assert "[ring" in message.message and "lost" in message.message, message.message
    # A broken ring does not mend: rank 0 and the surviving follower exit with status 1.
    assert ranks[0].proc.wait(timeout=20) == 1
    assert ranks[1].proc.wait(timeout=20) == 1


def test_a_follower_whose_node_is_gone_leaves_the_ring(ranks: list[RunnerProcess]) -> None:
    assert ranks[1].proc.stdin is not None
    ranks[1].proc.stdin.close()  # what the node's death looks like from the runner
    assert ranks[1].proc.wait(timeout=20) == 0
    # Rank 0 sees the ring break on its next request.
    ranks[0].send(chat("after", PROMPTS[1], max_tokens=8))
    message = ranks[0].recv(30)
    assert isinstance(message, protocol.RequestError) and message.failed, message


def test_tensor_logits_match_one_model_within_tolerance(model_dir: Path, tmp_path: Path) -> None:
    """Sharded float32 sums run in another order; the logits may differ by rounding only."""
    hosts = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.engine.tensor_logits", str(model_dir), hosts, str(r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=runner_env(os.environ, ranked=True),
            cwd=REPO_ROOT,
            text=True,
        )
        for r in range(3)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    line = next(x for x in outputs[0].splitlines() if x.startswith("max_abs_diff"))
    max_abs_diff, max_abs_logit = (float(v) for v in line.split()[1:])
    assert max_abs_diff < 1e-3, line
    assert max_abs_logit > 1.0  # the comparison is of real logits, not of zeros
