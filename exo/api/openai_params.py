"""The sampling fields OpenAI's chat and completion requests share, validated once.

Ranges follow OpenAI's documentation; `top_k`, `min_p` and `repetition_penalty` are the
extensions vLLM and llama.cpp accept, so clients written for those work too, as is vLLM's
`ignore_eos`, which benchmarks (`exo bench`) need to generate exactly `max_tokens`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from exo.api.validation import (
    INT64_MAX,
    INT64_MIN,
    invalid,
    is_int,
    is_number,
    optional_number,
    parse_stop,
)
from exo.engine.protocol import SamplingParams

MAX_LOGIT_BIAS_ENTRIES = 300
MAX_TOP_LOGPROBS = 20


def _seed(body: Mapping[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is not None and (not is_int(seed) or not INT64_MIN <= seed <= INT64_MAX):
        raise invalid("'seed' must be a 64-bit integer.", "seed")
    return seed


def _top_k(body: Mapping[str, Any]) -> int:
    top_k = body.get("top_k")
    if top_k is None:
        return 0
    # vLLM spells "off" as -1, llama.cpp as 0.
    if not is_int(top_k) or top_k < -1:
        raise invalid(f"'top_k' must be an integer >= 0 (0 or -1: off); got {top_k!r}.", "top_k")
    return max(top_k, 0)


def _logit_bias(body: Mapping[str, Any]) -> tuple[tuple[int, float], ...]:
    value = body.get("logit_bias")
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise invalid(
            f"'logit_bias' must map up to {MAX_LOGIT_BIAS_ENTRIES} token ids to biases.",
            "logit_bias",
        )
    entries: list[tuple[int, float]] = []
    for key, bias in value.items():
        # ASCII only: `isdigit` also passes '²', which `int` refuses.
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise invalid(f"'logit_bias' keys must be token ids; got {key!r}.", "logit_bias")
        if not is_number(bias) or not -100 <= bias <= 100:
            raise invalid(
                f"'logit_bias' values must be numbers in [-100, 100]; got {bias!r}.", "logit_bias"
            )
        entries.append((int(key), float(bias)))
    return tuple(sorted(entries))


def _ignore_eos(body: Mapping[str, Any]) -> bool:
    value = body.get("ignore_eos")
    if value is not None and not isinstance(value, bool):
        raise invalid(f"'ignore_eos' must be a boolean; got {value!r}.", "ignore_eos")
    return bool(value)


def parse_n(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (not is_int(n) or n != 1):
        raise invalid(f"Only n=1 is supported; got {n!r}.", "n")


def parse_sampling(body: Mapping[str, Any]) -> SamplingParams:
    """Temperature, nucleus/top-k/min-p, penalties, logit bias, seed, stop strings and
    `ignore_eos`."""
    temperature = optional_number(body, "temperature", 0.0, 2.0)
    top_p = optional_number(body, "top_p", 0.0, 1.0, low_open=True)
    min_p = optional_number(body, "min_p", 0.0, 1.0)
    presence = optional_number(body, "presence_penalty", -2.0, 2.0)
    frequency = optional_number(body, "frequency_penalty", -2.0, 2.0)
    repetition = optional_number(body, "repetition_penalty", 0.0, 10.0, low_open=True)
    parse_n(body)
    return SamplingParams(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        stop=parse_stop(body.get("stop")),
        seed=_seed(body),
        top_k=_top_k(body),
        min_p=min_p or 0.0,
        presence_penalty=presence or 0.0,
        frequency_penalty=frequency or 0.0,
        repetition_penalty=None if repetition in (None, 1.0) else repetition,
        logit_bias=_logit_bias(body),
        ignore_eos=_ignore_eos(body),
    )


def parse_chat_logprobs(body: Mapping[str, Any]) -> int | None:
    """Chat's `logprobs` (bool) and `top_logprobs` (0-20): alternatives to report, or None."""
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise invalid("'logprobs' must be a boolean.", "logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        if not is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise invalid(
                f"'top_logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}].", "top_logprobs"
            )
        if not logprobs:
            raise invalid("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")
    return (top or 0) if logprobs else None


# The schema `json_object` stands for: any JSON object.
ANY_JSON_OBJECT = {"type": "object"}


def parse_response_format(value: object, param: str = "response_format") -> str | None:
    """`{"type": "text" | "json_object" | "json_schema", ...}` as a JSON schema text for
    constrained decoding, or None for free text."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(value, dict) or kind not in ("text", "json_object", "json_schema"):
        raise invalid(
            f"'{param}.type' must be 'text', 'json_object' or 'json_schema'.", f"{param}.type"
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps(ANY_JSON_OBJECT)
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise invalid(
            f"'{param}.json_schema' must be an object with 'name' and 'schema'.",
            f"{param}.json_schema",
        )
    schema = spec.get("schema", ANY_JSON_OBJECT)
    if not isinstance(schema, dict):
        raise invalid(
            f"'{param}.json_schema.schema' must be a JSON schema object.",
            f"{param}.json_schema.schema",
        )
    return json.dumps(schema)
