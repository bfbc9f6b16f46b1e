"""One request's reply as it streams out: stop strings, held-back text, log-probabilities.

Both generation paths (the batch scheduler and the one-at-a-time path of distributed
instances) feed it the detokenized text of each step; it decides what is safe to send,
so a stop string split across tokens is never partly emitted, and counts the tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from exo.engine import protocol


class Reply:
    """The text and tokens of one reply so far, and the stop string that ended it."""

    def __init__(self, request_id: str, stops: Sequence[str]) -> None:
        self.request_id = request_id
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self._held_logprobs: list[protocol.TokenLogprob] = []
        self.completion_tokens = 0
        self.last_token = -1
        self.matched: str | None = None

    def add(
        self, text: str, token: int | None, logprob: protocol.TokenLogprob | None = None
    ) -> protocol.TokenOut | None:
        """Take one step's text; `token` None for an end-of-sequence step, which adds
        text (the detokenizer's flush) but no token. Returns what can be sent now."""
        if token is not None:
            self.completion_tokens += 1
            self.last_token = token
            if logprob is not None:
                self._held_logprobs.append(logprob)
        emit, self._held, matched = split_stop(self._held + text, self._stops)
        if matched is not None:
            self.matched = matched
        if not emit:
            return None
        out = protocol.TokenOut(self.request_id, emit, self.last_token, tuple(self._held_logprobs))
        self._held_logprobs = []
        return out

    def flush(self) -> protocol.TokenOut | None:
        """Text held back for a stop string that never completed was real text."""
        if not self._held or self.matched is not None:
            return None
        out = protocol.TokenOut(
            self.request_id, self._held, self.last_token, tuple(self._held_logprobs)
        )
        self._held, self._held_logprobs = "", []
        return out

    def finish(
        self, reason: protocol.FinishReason, prompt_tokens: int, cached_tokens: int = 0
    ) -> list[protocol.TokenOut | protocol.Finished]:
        """The last messages of the reply: held text, if any, then its Finished."""
        held = self.flush()
        finished = protocol.Finished(
            self.request_id,
            "stop" if self.matched is not None else reason,
            prompt_tokens,
            self.completion_tokens,
            self.matched,
            cached_tokens,
        )
        return [held, finished] if held is not None else [finished]


def split_stop(text: str, stops: Sequence[str]) -> tuple[str, str, str | None]:
    """Split pending text into (safe to emit, held back, the stop string found).

    When a stop string occurs, everything before its earliest occurrence is emitted and
    the rest dropped. Otherwise the longest tail that could begin a stop string is held
    back, so a stop string split across tokens is never partly emitted.
    """
    if not stops:
        return text, "", None
    found = [(i, s) for i, s in ((text.find(s), s) for s in stops) if i >= 0]
    if found:
        at, stop = min(found)
        return text[:at], "", stop
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return text[: len(text) - hold], text[len(text) - hold :], None
