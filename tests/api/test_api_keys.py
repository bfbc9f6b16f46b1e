"""API keys through each official client against the real server: the right key works,
a missing or wrong one gets a 401 in the dialect's shape (the client's own authentication
error), either header on any route; the open routes stay open; several keys, a keys file
and EXO_API_KEY; every key compared in constant time."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import ollama
import openai
import pytest
import trio
from werkzeug.datastructures import Headers

from exo.api import auth
from exo.api.access import AccessError, client_headers, node_keys, read_key_file, split_keys
from exo.api.openapi import openapi_document

from .fakes import MODEL, FakeBackend, tokens
from .helpers import running

KEYS = ("sk-first-key", "sk-second-key")
USER: list[Any] = [{"role": "user", "content": "hi"}]
BROWSER_ACCEPT = "text/html,application/xhtml+xml"


def openai_client(url: str, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def anthropic_client(
    url: str, api_key: str | None = None, auth_token: str | None = None
) -> anthropic.AsyncAnthropic:
    # Without keep-alive connections, nothing is left open when a test's server stops.
    limits = httpx2.Limits(max_keepalive_connections=0)
    return anthropic.AsyncAnthropic(
        base_url=url,
        api_key=api_key,
        auth_token=auth_token,
        max_retries=0,
        http_client=httpx2.AsyncClient(limits=limits),
    )


def ollama_client(url: str, key: str | None) -> ollama.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    limits = httpx.Limits(max_keepalive_connections=0)
    return ollama.AsyncClient(host=url, headers=headers, limits=limits)


async def test_the_openai_client_with_the_right_key_and_a_wrong_one() -> None:
    backend = FakeBackend(tokens("Hel", "lo"))
    with trio.fail_after(10):
        async with running(backend, api_keys=KEYS) as url:
            for key in KEYS:  # each of several keys
                async with openai_client(url, key) as client:
                    reply = await client.chat.completions.create(model=MODEL, messages=USER)
                    assert reply.choices[0].message.content == "Hello"
            async with openai_client(url, "sk-wrong") as client:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await client.models.list()
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.body == {
        "message": auth.WRONG_KEY,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert caught.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(backend.calls) == 2  # the refused request never reached the backend


async def test_the_anthropic_client_with_x_api_key_bearer_and_a_wrong_key() -> None:
    backend = FakeBackend(tokens("Hi"))
    with trio.fail_after(10):
        async with running(backend, api_keys=KEYS) as url:
            for client in (anthropic_client(url, KEYS[0]), anthropic_client(url, None, KEYS[1])):
                async with client:
                    reply = await client.messages.create(model=MODEL, max_tokens=8, messages=USER)
                    assert reply.content[0].type == "text" and reply.content[0].text == "Hi"
            async with anthropic_client(url, api_key="sk-wrong") as client:
                with pytest.raises(anthropic.AuthenticationError) as caught:
                    await client.messages.create(model=MODEL, max_tokens=8, messages=USER)
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": auth.WRONG_KEY},
    }


async def test_the_ollama_client_with_the_right_key_a_wrong_one_and_none() -> None:
    backend = FakeBackend(tokens("Hi"))
    with trio.fail_after(10):
        async with running(backend, api_keys=KEYS) as url:
            reply = await ollama_client(url, KEYS[1]).chat(model=MODEL, messages=USER)
            assert reply.message.content == "Hi"
            listed = await ollama_client(url, KEYS[0]).list()
            assert [m.model for m in listed.models] == [MODEL]
            refused = []
            for key in ("sk-wrong", None):
                with pytest.raises(ollama.ResponseError) as caught:
                    await ollama_client(url, key).chat(model=MODEL, messages=USER)
                refused.append((caught.value.status_code, caught.value.error))
    assert refused == [(401, auth.WRONG_KEY), (401, auth.MISSING_KEY)]


async def test_either_header_on_any_route_and_no_key_in_each_shape() -> None:
    with trio.fail_after(10):
        async with (
            running(FakeBackend(), api_keys=KEYS) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            by_x_api_key = await http.get("/v1/models", headers={"x-api-key": KEYS[1]})
            lower_bearer = await http.get("/state", headers={"authorization": f"bearer {KEYS[0]}"})
            basic = await http.get("/state", headers={"Authorization": f"Basic {KEYS[0]}"})
            missing = {
                path: await http.post(path, json={})
                for path in (
                    "/v1/chat/completions",
                    "/v1/messages",
                    "/api/chat",
                    "/ollama/api/chat",
                )
            }
    assert by_x_api_key.status_code == 200 and lower_bearer.status_code == 200
    assert basic.status_code == 401  # only the bearer scheme carries a key
    assert missing["/v1/chat/completions"].json()["error"]["code"] == "invalid_api_key"
    assert missing["/v1/messages"].json()["error"]["type"] == "authentication_error"
    assert missing["/api/chat"].json() == {"error": auth.MISSING_KEY}
    assert missing["/ollama/api/chat"].json() == {"error": auth.MISSING_KEY}
    for answer in missing.values():
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="exo"'


async def test_only_liveness_the_dashboard_and_the_document_are_open() -> None:
    with trio.fail_after(10):
        async with (
            running(FakeBackend(), api_keys=KEYS) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            opened = [
                await http.get("/healthz"),
                await http.get("/", headers={"Accept": BROWSER_ACCEPT}),
                await http.head("/"),
                await http.get("/dashboard"),
                await http.get("/dashboard/dashboard.js"),
                await http.get("/dashboard/dashboard.css"),
                await http.get("/openapi.json"),
            ]
            closed = [
                await http.get("/metrics"),
                await http.get("/events"),
                await http.get("/state"),
                await http.get("/instances"),
                await http.get("/downloads"),
                await http.get("/models"),
                await http.get("/ollama/"),
                await http.post("/state"),
                await http.get("/no/such/route"),
            ]
            # A method an open path does not serve: its 405 says nothing a key guards.
            unserved = [await http.post("/healthz"), await http.request("TRACE", "/openapi.json")]
    assert [r.status_code for r in opened] == [200] * len(opened)
    assert [r.status_code for r in closed] == [401] * len(closed)
    assert [(r.status_code, r.headers["Allow"]) for r in unserved] == [
        (405, "GET, HEAD, OPTIONS")
    ] * 2


async def test_without_keys_nothing_is_asked() -> None:
    with trio.fail_after(10):
        async with running(FakeBackend()) as url, httpx.AsyncClient(base_url=url) as http:
            bare = await http.get("/state")
            wrong = await http.get("/v1/models", headers={"Authorization": "Bearer anything"})
    assert bare.status_code == 200 and wrong.status_code == 200
    assert "WWW-Authenticate" not in bare.headers


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare_digest)
    digests = [auth._digest(key) for key in ("k1", "a-much-longer-key-2", "k3")]
    assert auth.key_matches("k1", digests)  # the first matches: the others are still compared
    assert len(compared) == 3
    assert {len(a) for pair in compared for a in pair} == {32}  # digests: lengths say nothing
    assert not auth.key_matches("k", digests)
    assert len(compared) == 6


def test_the_keys_a_request_presents() -> None:
    both = Headers({"Authorization": "Bearer  abc ", "x-api-key": "def"})
    assert auth.presented_keys(both) == ["abc", "def"]
    assert auth.presented_keys(Headers({"Authorization": "Bearer"})) == []
    assert auth.presented_keys(Headers({"Authorization": "Token abc"})) == []


def test_keys_from_flags_the_environment_and_a_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# exo keys\n\nfile-1\n   file-2  \n# old: gone\nflag-1\n")
    assert read_key_file(keys_file) == ("file-1", "file-2", "flag-1")
    assert split_keys(" env-1, ,env-2,") == ("env-1", "env-2")
    # Flags replace EXO_API_KEY (as other flags replace their variables); the file adds.
    assert node_keys(["flag-1"], "env-1", keys_file) == ("flag-1", "file-1", "file-2")
    assert node_keys(None, "env-1,env-2", None) == ("env-1", "env-2")
    assert node_keys(None, None, None) == ()


def test_a_keys_file_missing_empty_or_bad_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(AccessError, match="cannot read the API key file"):
        read_key_file(tmp_path / "missing")
    with pytest.raises(AccessError, match="holds no key"):
        read_key_file(empty)
    with pytest.raises(AccessError, match="visible ASCII"):
        read_key_file(spaced)
    with pytest.raises(AccessError, match="cannot read the API key file"):
        read_key_file(binary)


def test_a_client_sends_its_flag_or_the_first_key_of_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EXO_API_KEY", raising=False)
    assert client_headers(None) == {}
    monkeypatch.setenv("EXO_API_KEY", "env-1,env-2")
    assert client_headers(None) == {"Authorization": "Bearer env-1"}
    assert client_headers("flag") == {"Authorization": "Bearer flag"}


def test_the_document_names_both_headers_and_a_401_where_a_key_is_needed() -> None:
    document = openapi_document()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "x-api-key")
    opened = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if auth.is_open(method, path):
                opened.add(f"{method.upper()} {path}")
                assert "401" not in operation["responses"] and "security" not in operation
                continue
            assert operation["security"] == [{"bearer": []}, {"apiKey": []}]
            shape = operation["responses"]["401"]["content"]["application/json"]["schema"]
            ollama = path.startswith(("/api/", "/ollama"))
            dialect = "Anthropic" if "/messages" in path else "Ollama" if ollama else "OpenAI"
            assert shape == {"$ref": f"#/components/schemas/{dialect}Error"}, path
    assert opened == {
        "GET /healthz",
        "GET /openapi.json",
        "GET /dashboard",
        "GET /dashboard/{name}",
        "GET /",
        "HEAD /",
    }
