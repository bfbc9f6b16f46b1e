"""CORS: off by default (no header at all, as before there was a flag); with
`cors_origins`, an allowed origin's answers say so and its preflight gets a 204 without a
key, while any other origin gets nothing."""

from __future__ import annotations

import httpx
import pytest
import trio

from exo.api.access import AccessError, check_origin

from .fakes import FakeBackend
from .helpers import running

PAGE = "http://localhost:3000"
OTHER = "https://evil.example"
KEY = "sk-cors-key"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-custom",
}


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


async def test_no_origin_configured_means_no_cors_headers() -> None:
    with trio.fail_after(10):
        async with running(FakeBackend()) as url, httpx.AsyncClient(base_url=url) as http:
            plain = await http.get("/v1/models", headers={"Origin": PAGE})
            preflight = await http.options(
                "/v1/chat/completions", headers={"Origin": PAGE, **PREFLIGHT}
            )
    for answer in (plain, preflight):
        assert cors_headers(answer) == {}
        assert "Vary" not in answer.headers
    # Werkzeug's own OPTIONS answer, as before CORS existed: a preflight a browser fails.
    assert preflight.status_code == 200 and "POST" in preflight.headers["Allow"]


async def test_an_allowed_origin_gets_its_headers_and_a_preflight_without_a_key() -> None:
    with trio.fail_after(10):
        async with (
            running(FakeBackend(), api_keys=[KEY], cors_origins=[PAGE + "/"]) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            preflight = await http.options(
                "/v1/chat/completions", headers={"Origin": PAGE, **PREFLIGHT}
            )
            keyed = await http.get(
                "/v1/models", headers={"Origin": PAGE, "Authorization": f"Bearer {KEY}"}
            )
            refused = await http.get("/v1/models", headers={"Origin": PAGE})
    assert preflight.status_code == 204
    allowed = cors_headers(preflight)
    assert allowed["access-control-allow-origin"] == PAGE
    assert allowed["access-control-allow-methods"] == "OPTIONS, POST"
    headers = {h.strip() for h in allowed["access-control-allow-headers"].split(",")}
    wanted = {"authorization", "x-api-key", "content-type", "anthropic-version", "openai-beta"}
    assert wanted | {"x-stainless-os", "x-custom"} <= headers
    assert int(allowed["access-control-max-age"]) > 0
    assert keyed.status_code == 200
    assert keyed.headers["Access-Control-Allow-Origin"] == PAGE
    assert "X-Exo-Node" in keyed.headers["Access-Control-Expose-Headers"]
    assert "Origin" in keyed.headers["Vary"]
    # A page of that origin can read why it was refused.
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == PAGE


async def test_another_origin_gets_none_and_its_preflight_needs_the_key() -> None:
    with trio.fail_after(10):
        async with (
            running(FakeBackend(), api_keys=[KEY], cors_origins=[PAGE]) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            preflight = await http.options(
                "/v1/chat/completions", headers={"Origin": OTHER, **PREFLIGHT}
            )
            keyed = await http.get(
                "/v1/models", headers={"Origin": OTHER, "Authorization": f"Bearer {KEY}"}
            )
            unknown = await http.options("/no/such/route", headers={"Origin": PAGE, **PREFLIGHT})
    assert preflight.status_code == 401 and cors_headers(preflight) == {}
    assert keyed.status_code == 200 and cors_headers(keyed) == {}
    assert keyed.headers["Vary"] == "Origin"  # the answer still depends on the origin
    assert unknown.status_code == 401  # no preflight for a route that is not there


async def test_any_origin() -> None:
    with trio.fail_after(10):
        async with (
            running(FakeBackend(), cors_origins=["*"]) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            answer = await http.get("/healthz", headers={"Origin": OTHER})
            no_origin = await http.get("/healthz")
    assert answer.headers["Access-Control-Allow-Origin"] == OTHER
    assert cors_headers(no_origin) == {}


def test_origins_are_checked_and_written_as_browsers_send_them() -> None:
    assert check_origin("HTTPS://Example.COM:8443/") == "https://example.com:8443"
    assert check_origin("*") == "*"
    for bad in ("example.com", "https://example.com/app", "ftp://example.com", "https://"):
        with pytest.raises(AccessError, match="--cors-origin"):
            check_origin(bad)
