"""Per-token log-probabilities in OpenAI's two shapes: chat's and legacy completions'.

JSON has no -inf, and a masked token (constrained decoding, logit bias -100) has that
log-probability, so values are floored at -9999.0, the figure OpenAI itself reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from exo.engine.protocol import TokenLogprob, TokenOut

FLOOR = -9999.0


def _value(logprob: float) -> float:
    return logprob if logprob > FLOOR else FLOOR


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": _value(logprob), "bytes": list(text.encode())}


def chat_entries(entries: Iterable[TokenLogprob]) -> list[dict[str, Any]]:
    return [
        {**_entry(e.text, e.logprob), "top_logprobs": [_entry(t.text, t.logprob) for t in e.top]}
        for e in entries
    ]


def chat_logprobs(chunks: Iterable[TokenOut]) -> dict[str, Any]:
    """A chat choice's `logprobs`: `{"content": [...], "refusal": None}`."""
    return {"content": chat_entries(e for c in chunks for e in c.logprobs), "refusal": None}


def completion_logprobs(chunks: Iterable[TokenOut], offset: int = 0) -> dict[str, Any]:
    """Legacy `text_completion` logprobs: parallel lists, `text_offset` counting from
    `offset` characters (the text already sent, when streaming)."""
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    for entry in (e for c in chunks for e in c.logprobs):
        tokens.append(entry.text)
        values.append(_value(entry.logprob))
        tops.append({t.text: _value(t.logprob) for t in entry.top})
        offsets.append(offset)
        offset += len(entry.text)
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }
