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

from collections.abc import Iterator

import pytest
import requests
import schemathesis

from .fuzzing import CHECKS, MAX_EXAMPLES, fuzzed_schema, fuzzed_server


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with fuzzed_server() as url:
        yield url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


schema = fuzzed_schema(MAX_EXAMPLES)


@schema.parametrize()
def test_no_server_error_and_answers_match_the_document(
    case: schemathesis.Case, server_url: str, http: requests.Session
) -> None:
    case.call_and_validate(base_url=server_url, session=http, checks=CHECKS)
