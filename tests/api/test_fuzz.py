"""Fuzz every operation of the real server, from its own `/openapi.json`, with schemathesis.

Requests are drawn from the document's schemas: its examples, schemathesis' boundary
cases (each range's ends and just past them, each type swapped, each required field
left out, methods a path does not serve), then random bodies, both valid and breaking
the schema. Every answer must be no 5xx, with a status, content type and body the
document lists (every event of a stream included), and a 405 with `Allow` for a method
not served. The fake backend streams two tokens and finishes; its model is the one the
document gives as example, and a hook names it in most random bodies, so that valid
requests run whole generations instead of stopping at "unknown model".

Not checked: that every valid body is accepted and every invalid one refused. JSON
Schema cannot say some rules (a named `tool_choice` is in `tools`, Anthropic's messages
end with a user turn, and its `integer` admits `2.0`, which the validators refuse).

schemathesis is synchronous (requests), so the server runs on its own Trio loop in a
thread. The run is seeded: CI draws the same requests every time. Alone:
`.venv/bin/pytest tests/api/test_fuzz.py`; the operations on some paths: add `-k messages`;
deeper, or other requests: `EXO_FUZZ_EXAMPLES=500 EXO_FUZZ_SEED=7`. A failure prints the
request as a curl command.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
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
CONFIG = {
    "seed": int(os.environ.get("EXO_FUZZ_SEED", "20240601")),
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
    "request-timeout": 10,
}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    unsupported_method,
]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    # Its /events stream ends after the snapshot: the fuzzer reads whole bodies.
    backend = FakeBackend(
        tokens("Hello", " world"), cards=[fake_card(BUNDLED_MODEL)], endless_updates=False
    )
    with running_in_thread(backend) as url:
        yield url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


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


# Loaded from the module's dict, which the server sends as is (test_openapi.py checks
# that): schemathesis' `from_fixture`, the way to load it from the server's URL, does
# not run under pytest 9 (it sets `Function._nodeid`, which pytest no longer has).
schema = schemathesis.openapi.from_dict(
    openapi_document(), config=schemathesis.Config.from_dict(CONFIG)
)
schema.hook("flatmap_body")(known_model)


@schema.parametrize()
def test_no_server_error_and_answers_match_the_document(
    case: schemathesis.Case, server_url: str, http: requests.Session
) -> None:
    case.call_and_validate(base_url=server_url, session=http, checks=CHECKS)
