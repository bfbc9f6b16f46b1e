"""Prompts of an exact number of tokens, a different one for every request.

Only the server knows how its tokenizer (and, for chat, its template) counts a text, so
the sizing asks it: `count(text)` is an injected coroutine (a `max_tokens: 0` completion,
or Anthropic's `count_tokens`). Each prompt starts with its own number, so no request can
reuse another's prompt cache, then repeats a passage of common words until it has the
tokens asked for, to the token: a search over the number of words, then short pieces
appended where the next word would overshoot. A prompt of the same length reuses the
previous word count as its first guess, so most prompts cost one or two counts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Count = Callable[[str], Awaitable[int]]

PASSAGE = (
    "the river ran past an old mill where a miller and his two sons worked from dawn "
    "until dusk grinding wheat for the people of the valley who came each week with carts "
    "of grain and left with sacks of flour while children played by the water and birds "
    "sang in the tall trees along the bank"
)
FILLER = tuple(PASSAGE.split())
# Appended one at a time when the next word would add more tokens than are missing; in
# the tokenizers we know, each is a token of its own.
PIECES = (" a", ".", ",", " I", "!", "\n", " 1")


class PromptSizeError(Exception):
    """No prompt of exactly the asked number of tokens could be made."""


def prompt_text(index: int, words: int) -> str:
    """Prompt number `index` with `words` words of filler after its number."""
    return f"{index}." + "".join(" " + FILLER[i % len(FILLER)] for i in range(words))


async def fit_prompt(
    count: Count, tokens: int, make: Callable[[int], str], hint: int | None = None
) -> tuple[str, int]:
    """A text of exactly `tokens` tokens from `make(words)` plus pieces, and the number of
    words it used (the next prompt's hint).

    Relies on every word adding at least one token, so that from a count `got` the right
    number of words lies within `got - tokens` words; checked against the counts it gets.
    """
    known: dict[int, int] = {}

    async def size(words: int) -> int:
        if words not in known:
            known[words] = await count(make(words))
        return known[words]

    limit = 4 * tokens + 64  # more words than any tokenizer needs: stops a runaway search
    low = max(hint or 0, 0)
    got = await size(low)
    if got > tokens:
        low = max(low - (got - tokens), 0)
        if await size(low) > tokens and low > 0:
            low = 0
        if await size(low) > tokens:
            raise PromptSizeError(
                f"the shortest prompt is {known[0]} tokens here (a template adds its own); "
                f"ask for at least that many, not {tokens}"
            )
    # Grow `low` while it fits, keeping size(low) <= tokens; `high` overshoots.
    while True:
        got = await size(low)
        if got == tokens:
            return make(low), low
        high = low + (tokens - got)
        if high > limit:
            raise PromptSizeError(f"no prompt of {tokens} tokens within {limit} words")
        if await size(high) > tokens:
            break
        low = high
    while high - low > 1:
        middle = (low + high) // 2
        if await size(middle) <= tokens:
            low = middle
        else:
            high = middle
    text, got = make(low), known[low]
    while got < tokens:
        for piece in PIECES:
            longer = await count(text + piece)
            if got < longer <= tokens:
                text, got = text + piece, longer
                break
        else:
            raise PromptSizeError(
                f"cannot make a prompt of exactly {tokens} tokens: {got} with {low} words, "
                f"{known[high]} with one more, and no short piece adds a single token"
            )
    return text, low


class PromptSizer:
    """Hands out distinct prompts of exact lengths, numbered across the whole run, and
    remembers per length how many words the last one took."""

    def __init__(self, count: Count) -> None:
        self._count = count
        self._words: dict[int, int] = {}
        self._next_index = 0

    async def prompt(self, tokens: int) -> str:
        index = self._next_index
        self._next_index += 1
        text, words = await fit_prompt(
            self._count, tokens, lambda w: prompt_text(index, w), self._words.get(tokens)
        )
        self._words[tokens] = words
        return text
