"""Keys and values of finished replies, kept so that the next turn of a conversation pays
only for its new tokens.

mlx-lm's `LRUPromptCache` does the work: a trie of token sequences, the nearest cached
prefix of a prompt (a longer entry trimmed back to the common prefix where the cache can
be trimmed), least recently used entries evicted first. What exo adds is the bound: the
cache shares the KV memory that placement planned for the runner with the sequences
being decoded, so before a sequence starts the cache is trimmed to what they leave free.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

# The trie is keyed by model as well; a runner holds one.
_MODEL = "model"
# Entries kept at most, whatever their size (each holds a conversation's whole cache).
MAX_ENTRIES = 64


class PromptCache:
    """Reusable KV caches keyed by token prefix, within a budget of cached tokens."""

    def __init__(self, budget_tokens: int) -> None:
        self._lru = LRUPromptCache(max_size=MAX_ENTRIES)
        self._budget_tokens = budget_tokens
        # Measured from the entries themselves: the architecture decides it.
        self._bytes_per_token = 0.0
        self.hits = 0
        self.cached_tokens = 0

    @property
    def nbytes(self) -> int:
        return int(self._lru.nbytes)

    def __len__(self) -> int:
        return len(self._lru)

    def take(self, prompt: list[int]) -> tuple[list[Any] | None, int]:
        """A copy of the cache of the longest known prefix of `prompt` and that prefix's
        length, or (None, 0). At least the prompt's last token is left to compute: its
        logits give the first token of the reply."""
        cache, rest = self._lru.fetch_nearest_cache(_MODEL, prompt)
        if cache is None:
            return None, 0
        if not rest:
            if not can_trim_prompt_cache(cache):
                return None, 0
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        cached = len(prompt) - len(rest)
        self.hits += 1
        self.cached_tokens += cached
        return cache, cached

    def keep(self, tokens: list[int], cache: list[Any]) -> None:
        """Remember the cache of `tokens` (every token whose keys and values it holds)."""
        if not tokens:
            return
        nbytes = sum(c.nbytes for c in cache)
        self._bytes_per_token = max(self._bytes_per_token, nbytes / len(tokens))
        self._lru.insert_cache(_MODEL, list(tokens), cache)
        self.trim(0)

    def trim(self, tokens_in_use: int) -> None:
        """Evict least recently used entries until the cache fits beside `tokens_in_use`
        tokens of running sequences."""
        free = max(0, self._budget_tokens - tokens_in_use)
        self._lru.trim_to(n_bytes=int(free * self._bytes_per_token))
