"""Constrained decoding for `response_format` json_object / json_schema, with llguidance.

Each decode step the grammar's matcher computes which tokens may come next; every other
logit is set to -inf before sampling, so even the 135M bundled model returns JSON that
parses and follows the schema (unless `max_tokens` cuts it off first).

Why llguidance: measured against xgrammar 0.2.8 and outlines-core 0.2.14 with the bundled
SmolLM2-135M tokenizer (49,152 tokens) in a runner-like process (float32 CPU engine,
OpenBLAS), 2-core shared machine, 20 generations per mode at temperature 1.0:

    library             import*  vocab setup  compile any-object  compile schema**  mask per token (mean / p99)
    llguidance 1.9.1     28 ms      240 ms         0.4 ms              0.6 ms           0.46 / 0.99 ms
    xgrammar 0.2.8      180 ms      146 ms           5 ms              300 ms           0.52 / 5.8 ms
    outlines-core 0.2.14 16 ms      197 ms        6.5-7.6 s           1.1-1.5 s         0.10 / 0.23 ms

    * after mlx-lm is imported.  ** nested object, enum, pattern, bounded strings and array.

All three produced 20/20 schema-valid replies. A decode step is 70-85 ms here, so any
of them masks cheaply; compile time and dependencies decide. xgrammar declares torch and
triton as hard dependencies and `import xgrammar` fails without torch (measured with a
stand-in module); outlines-core compiles a regex automaton per schema, seconds each, and
its any-object regex bounds the nesting depth. llguidance has no Python dependencies and
one abi3 wheel per platform (manylinux x86_64/aarch64, macOS arm64 and x86_64). Its
compile is under a millisecond, so each request builds its matcher afresh; only the
schema's grammar text is LRU-cached, and the vocabulary setup once per tokenizer.

End to end (`benchmarks/constrained_decoding.py`, docs/benchmarks.md): json_schema decode
runs at 0.96-1.00x unconstrained tok/s. Starting the step's forward pass before waiting
for the previous sample (`mx.async_eval` in `__call__`) is what keeps it there: without
it mlx-lm's step pipelining is lost and the ratio was 0.89-0.94.

Output is compact: no whitespace outside strings (`whitespace_flexible: False`), which a
small model would otherwise spend tokens on, pretty-printing.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
import weakref
from typing import TYPE_CHECKING, Any, cast

import llguidance
import mlx.core as mx
import numpy as np
from attrs import frozen
from mlx_lm.tokenizer_utils import TokenizerWrapper

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

log = logging.getLogger("exo.engine.constrained")

# `response_format: {"type": "json_object"}`: any JSON object, as a JSON schema.
ANY_JSON_OBJECT = '{"type": "object"}'

# Applied after the schema's own "x-guidance" options, so a request cannot turn them off.
_OVERRIDES: JsonCompileOptions = {"whitespace_flexible": False}

# Vocabulary preprocessing (~250 ms for 49k tokens) once per tokenizer, for its lifetime.
_LL_TOKENIZERS: weakref.WeakKeyDictionary[TokenizerWrapper, llguidance.LLTokenizer] = (
    weakref.WeakKeyDictionary()
)


@frozen
class ConstraintStatistics:
    """One generation's masking: steps masked and the wall time the processor spent on them."""

    steps: int
    mask_seconds: float
    max_mask_seconds: float
    p99_mask_seconds: float


class JsonSchemaProcessor:
    """An mlx-lm logits processor for one generation: masks what the grammar forbids.

    mlx-lm calls it once per step with the prompt plus the tokens sampled so far; the first
    call comes right after the prompt, each later one sees the previous sample as the last
    element of `tokens`, which advances the matcher. Once the JSON value is complete only
    the EOS tokens remain allowed, so generation stops there.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int, eos: frozenset[int]) -> None:
        self._matcher = matcher
        self._eos = eos
        self._bitmask = np.zeros(((vocab_size + 31) // 32,), dtype=np.int32)
        self._started = False
        self._mask_seconds: list[float] = []

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        # Start this step's forward pass now, so it runs while we wait for the previous
        # sample and compute the mask (decode 0.89-0.94x unconstrained without this).
        mx.async_eval(logits)
        if self._started:
            token = cast(int, tokens[-1].item())  # waits for the previous step's sample
            if token in self._eos:
                # mlx-lm builds one more step before it notices EOS; that step is dropped.
                return logits
            start = time.perf_counter()
            if not self._matcher.consume_token(token):
                raise RuntimeError(
                    f"token {token} was sampled against the grammar: {self._matcher.get_error()}"
                )
        else:
            start = time.perf_counter()
            self._started = True
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        allowed = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little").view(np.bool_)
        width = logits.shape[-1]
        if allowed.size < width:  # a padded output layer: its extra rows are never tokens
            allowed = np.concatenate([allowed, np.zeros(width - allowed.size, dtype=np.bool_)])
        masked = mx.where(mx.array(allowed[:width]), logits, -math.inf)  # type: ignore[arg-type]
        self._mask_seconds.append(time.perf_counter() - start)
        return masked

    def statistics(self) -> ConstraintStatistics:
        """What masking cost this generation so far (benchmarks, tests, logs)."""
        times = sorted(self._mask_seconds)
        return ConstraintStatistics(
            steps=len(times),
            mask_seconds=sum(times),
            max_mask_seconds=times[-1] if times else 0.0,
            p99_mask_seconds=times[min(len(times) - 1, len(times) * 99 // 100)] if times else 0.0,
        )


def json_schema_processor(tokenizer: TokenizerWrapper, schema_json: str) -> JsonSchemaProcessor:
    """A fresh processor for one generation constrained to `schema_json` (a JSON Schema text).

    Use `ANY_JSON_OBJECT` for `response_format: {"type": "json_object"}`. Raises ValueError,
    for the client to see, when the text is not JSON or the schema cannot be enforced
    (unknown types, unimplemented keywords such as `if`, bad patterns or `$ref`s).
    """
    ll_tokenizer = ll_tokenizer_for(tokenizer)
    matcher = llguidance.LLMatcher(ll_tokenizer, _grammar(schema_json), log_level=0)
    if matcher.is_error():
        raise ValueError(f"the JSON schema cannot be enforced: {matcher.get_error()}")
    for warning in matcher.get_grammar_warnings():
        log.info("JSON schema: %s", warning)
    return JsonSchemaProcessor(matcher, ll_tokenizer.vocab_size, frozenset(_eos_ids(tokenizer)))


def ll_tokenizer_for(tokenizer: TokenizerWrapper) -> llguidance.LLTokenizer:
    """llguidance's view of `tokenizer`, built on first use and kept while it lives."""
    cached = _LL_TOKENIZERS.get(tokenizer)
    if cached is None:
        backend: Any = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                "constrained decoding needs a fast (Hugging Face `tokenizers`) tokenizer"
            )
        backend = copy.copy(backend)  # its JSON without padding or truncation settings
        backend.no_padding()
        backend.no_truncation()
        cached = llguidance.LLTokenizer(backend.to_str(), eos_token=_eos_ids(tokenizer))
        _LL_TOKENIZERS[tokenizer] = cached
    return cached


@functools.lru_cache(maxsize=64)
def _grammar(schema_json: str) -> str:
    """llguidance's grammar text for a schema; the matcher compiles it (well under 1 ms)."""
    try:
        schema = json.loads(schema_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the JSON schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON schema must be a JSON object, got {schema_json[:80]!r}")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema_json, overrides=_OVERRIDES)
    except ValueError as exc:
        raise ValueError(f"the JSON schema cannot be enforced: {exc}") from None


def _eos_ids(tokenizer: TokenizerWrapper) -> list[int]:
    return sorted(int(i) for i in tokenizer.eos_token_ids)
