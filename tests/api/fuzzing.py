"""What every fuzz run of the API shares: the seeded schemathesis configuration, the checks
each answer must pass, the document loaded as the server sends it, and the hooks that make
drawn bodies name the backend's model and read Ollama's NDJSON streams
(`test_fuzz.py` says what is checked and why)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from exo.api.ollama import NDJSON_CONTENT_TYPE
from exo.api.openapi import openapi_document
from exo.models.cards import BUNDLED_MODEL

from .fakes import FakeBackend, fake_card, tokens
from .helpers import running_in_thread

# Random requests per operation and generation mode (valid, schema-breaking), besides
# the boundary cases: under a minute for the whole run on two cores.
MAX_EXAMPLES = int(os.environ.get("EXO_FUZZ_EXAMPLES", "50"))
SEED = int(os.environ.get("EXO_FUZZ_SEED", "20240601"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
]


def known_model(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """The drawn body naming the model the backend has, or as drawn: a valid name keeps
    a valid body valid, and a body breaking its schema elsewhere still breaks it."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return st.just(body)
    # The known name first: Hypothesis draws (and shrinks towards) it most.
    return st.sampled_from([{**body, "model": BUNDLED_MODEL}, body])


@schemathesis.deserializer(NDJSON_CONTENT_TYPE)
def ndjson_lines(ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    """Ollama's streams, as the array of their lines that the document describes."""
    return [json.loads(line) for line in response.content.decode().splitlines()]


def fuzzed_schema(max_examples: int, **config: Any) -> Any:
    """The server's document as schemathesis reads it, seeded, with `config` added (auth).

    Loaded from the module's dict, which the server sends as is (test_openapi.py checks
    that): schemathesis' `from_fixture`, the way to load it from the server's URL, does
    not run under pytest 9 (it sets `Function._nodeid`, which pytest no longer has)."""
    generation = {"mode": "all", "max-examples": max_examples, "database": "none"}
    settings = {"seed": SEED, "generation": generation, "request-timeout": 10, **config}
    schema = schemathesis.openapi.from_dict(
        openapi_document(), config=schemathesis.Config.from_dict(settings)
    )
    schema.hook("flatmap_body")(known_model)
    return schema


@contextmanager
def fuzzed_server(**app_options: Any) -> Iterator[str]:
    """The real server over a fake backend that streams two tokens, in its own thread;
    yields the base URL. Its /events stream ends after the snapshot: the fuzzer reads
    whole bodies. `app_options` go to `create_app` (api_keys)."""
    backend = FakeBackend(
        tokens("Hello", " world"), cards=[fake_card(BUNDLED_MODEL)], endless_updates=False
    )
    with running_in_thread(backend, **app_options) as url:
        yield url
