"""Prompts exact to the token, sized against fake tokenizers that count like real ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from exo.bench.prompts import PromptSizeError, PromptSizer, fit_prompt, prompt_text

from .fakes import bpe_like

Tokenize = Callable[[str], int]


def templated(text: str) -> int:
    """A chat template's 30 tokens around the message."""
    return 30 + bpe_like(text)


class Counter:
    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize
        self.calls = 0

    async def __call__(self, text: str) -> int:
        self.calls += 1
        return self.tokenize(text)


@pytest.mark.parametrize("tokenize", [bpe_like, templated], ids=["raw", "templated"])
async def test_every_length_is_exact(tokenize: Tokenize) -> None:
    count = Counter(tokenize)
    shortest = tokenize(prompt_text(0, 0))
    for tokens in [*range(shortest, shortest + 40), 128, 512, 2048]:
        text, words = await fit_prompt(count, tokens, lambda w: prompt_text(0, w))
        assert tokenize(text) == tokens, (tokens, text)
        assert text.startswith(prompt_text(0, words))


async def test_prompts_differ_and_reuse_the_word_count() -> None:
    count = Counter(bpe_like)
    sizer = PromptSizer(count)
    first = await sizer.prompt(512)
    calls_for_first = count.calls
    others = [await sizer.prompt(512) for _ in range(20)]
    assert all(bpe_like(p) == 512 for p in [first, *others])
    assert len({first, *others}) == 21
    # The first prompt searches; the others mostly confirm the remembered word count.
    assert count.calls - calls_for_first <= 3 * 20
    assert calls_for_first <= 20


async def test_a_prompt_shorter_than_the_template_is_refused() -> None:
    with pytest.raises(PromptSizeError, match="shortest prompt is 33 tokens"):
        await fit_prompt(Counter(templated), 10, lambda w: prompt_text(0, w))


async def test_a_length_no_text_can_have_is_refused() -> None:
    async def even(text: str) -> int:  # a tokenizer whose counts are always even
        return 2 * bpe_like(text)

    with pytest.raises(PromptSizeError, match="exactly 41 tokens"):
        await fit_prompt(even, 41, lambda w: prompt_text(0, w))


async def test_a_bad_hint_still_lands_exactly() -> None:
    for hint in (0, 3, 400, 10_000):
        text, _ = await fit_prompt(Counter(bpe_like), 100, lambda w: prompt_text(7, w), hint)
        assert bpe_like(text) == 100
