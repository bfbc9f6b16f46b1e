"""Fuzz every operation of a server started with an API key, from its own `/openapi.json`.

Two runs, each answer held to `test_fuzz.py`'s checks and to schemathesis' `ignored_auth`:
- with the key, as schemathesis sends it from the document's security schemes (`bearer`
  and `apiKey`); after each answer that succeeds, schemathesis sends the same request
  without a key and with a wrong one, and each must be refused with 401;
- with keys drawn by schemathesis (any header value it makes), which must never be let in
  and never make the server fail: every operation but the open ones answers 401 in its
  dialect's error shape, as the document lists.

Fewer random requests per operation than the unkeyed run: the bodies are the same, the
point here is the key check in front of them. Alone: `.venv/bin/pytest tests/api/test_fuzz_keys.py`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.checks import ignored_auth

from .fuzzing import CHECKS, fuzzed_schema, fuzzed_server

KEY = "sk-fuzz-0123456789"
EXAMPLES = 10
KEY_CHECKS = [*CHECKS, ignored_auth]


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    with fuzzed_server(api_keys=[KEY]) as url:
        yield url


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# The boundary cases of every body (the coverage phase) are `test_fuzz.py`'s: here the
# document's examples and random requests, each behind the key check.
PHASES = {"phases": {"coverage": {"enabled": False}}}
with_key = fuzzed_schema(
    EXAMPLES, auth={"openapi": {"bearer": {"bearer": KEY}, "apiKey": {"api_key": KEY}}}, **PHASES
)
drawn_keys = fuzzed_schema(EXAMPLES, **PHASES)


@with_key.parametrize()
def test_with_the_key_answers_match_the_document_and_without_it_are_refused(
    case: schemathesis.Case, keyed_url: str, http: requests.Session
) -> None:
    case.call_and_validate(base_url=keyed_url, session=http, checks=KEY_CHECKS)


@drawn_keys.parametrize()
def test_drawn_keys_are_refused_in_the_dialects_shape_and_never_fail_the_server(
    case: schemathesis.Case, keyed_url: str, http: requests.Session
) -> None:
    case.call_and_validate(base_url=keyed_url, session=http, checks=KEY_CHECKS)
