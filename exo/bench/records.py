"""The records `exo bench` passes between its parts: what to run and what one request
measured. Frozen, so a measurement cannot change after the fact."""

from __future__ import annotations

from typing import Literal

from attrs import frozen

Outcome = Literal["ok", "rejected", "failed"]
Endpoint = Literal["completions", "chat"]
Strategy = Literal["pipeline", "tensor"]


@frozen
class Placement:
    """How the model is placed before a configuration runs: None, None leaves it to the
    node (it places on the first request); a strategy with `nodes` None lets the master
    choose how many nodes."""

    strategy: Strategy | None = None
    nodes: int | None = None

    def label(self) -> str:
        if self.strategy is None:
            return "node's choice"
        return f"{self.strategy} x{self.nodes}" if self.nodes else f"{self.strategy} (auto)"


@frozen
class Config:
    """One point of the sweep."""

    placement: Placement
    prompt_tokens: int
    gen_tokens: int
    concurrency: int
    requests: int


@frozen
class RequestResult:
    """One streamed request as the client saw it. Times are seconds: `start` from the
    beginning of its level, the others from sending this request. `chunk_times` holds the
    arrival of every chunk with text, the first one being the TTFT."""

    index: int
    outcome: Outcome
    start: float
    latency: float
    chunk_times: tuple[float, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    retry_after: float | None = None
    error: str | None = None
