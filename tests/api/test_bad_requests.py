"""Every malformed request gets the right status and OpenAI's error shape, never HTML."""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
import httpx
import pytest
import trio

from exo.api.app import MAX_REQUEST_BYTES
from exo.api.backend import BackendError, Overloaded, Unavailable, UnknownModel

from .fakes import MODEL, FakeBackend, tokens
from .helpers import NODE_LABEL, assert_error_shape, host_port, raw_exchange, running

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": USER, **fields}).encode()


def without(name: str) -> bytes:
    fields: dict[str, Any] = {"model": MODEL, "messages": USER}
    del fields[name]
    return json.dumps(fields).encode()


def message(**fields: Any) -> bytes:
    return body(messages=[{"role": "user", "content": "hi", **fields}])


# (id, raw body, expected param: the exact field, down to the list item)
BAD_BODIES: list[tuple[str, bytes, str | None]] = [
    ("malformed-json", b'{"model": "m", "messages": [', None),
    ("invalid-utf8", b'{"model": "\xff\xfe", "messages": []}', None),
    ("empty-body", b"", None),
    ("not-an-object", b"[1, 2]", None),
    ("nan-literal", b'{"model": "m", "messages": [], "temperature": NaN}', None),
    ("nested-too-deep", b'{"model": "m", "messages": ' + b"[" * 600 + b"]" * 600 + b"}", None),
    ("missing-model", without("model"), "model"),
    ("empty-model", body(model=""), "model"),
    ("model-not-string", body(model=5), "model"),
    ("missing-messages", without("messages"), "messages"),
    ("empty-messages", body(messages=[]), "messages"),
    ("messages-not-list", body(messages="hi"), "messages"),
    ("message-not-object", body(messages=[5]), "messages[0]"),
    ("unknown-role", message(role="wizard"), "messages[0].role"),
    ("missing-role", body(messages=[{"content": "hi"}]), "messages[0].role"),
    ("content-number", message(content=5), "messages[0].content"),
    ("content-null-user", message(content=None), "messages[0].content"),
    ("content-empty-list", message(content=[]), "messages[0].content"),
    (
        "content-image-part",
        message(content=[{"type": "image_url", "image_url": {"url": "x"}}]),
        "messages[0].content[0].type",
    ),
    (
        "content-text-not-string",
        message(content=[{"type": "text", "text": 5}]),
        "messages[0].content[0].text",
    ),
    ("content-part-not-object", message(content=["hi"]), "messages[0].content[0]"),
    ("temperature-negative", body(temperature=-0.1), "temperature"),
    ("temperature-too-high", body(temperature=2.5), "temperature"),
    ("temperature-string", body(temperature="1"), "temperature"),
    ("temperature-bool", body(temperature=True), "temperature"),
    # A 500 before: too large for a float, it overflowed `math.isfinite`.
    ("temperature-huge-integer", body(temperature=10**400), "temperature"),
    ("top-p-zero", body(top_p=0), "top_p"),
    ("top-p-too-high", body(top_p=1.5), "top_p"),
    ("max-tokens-zero", body(max_tokens=0), "max_tokens"),
    ("max-tokens-negative", body(max_tokens=-1), "max_tokens"),
    ("max-tokens-float", body(max_tokens=1.5), "max_tokens"),
    ("max-tokens-string", body(max_tokens="10"), "max_tokens"),
    ("max-tokens-bool", body(max_tokens=True), "max_tokens"),
    ("max-completion-tokens-zero", body(max_completion_tokens=0), "max_completion_tokens"),
    ("stop-number", body(stop=5), "stop"),
    ("stop-too-many", body(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("stop-empty-string", body(stop=""), "stop"),
    ("stop-list-with-number", body(stop=["a", 1]), "stop[1]"),
    ("seed-float", body(seed=1.5), "seed"),
    ("seed-string", body(seed="1"), "seed"),
    ("seed-too-big", body(seed=2**64), "seed"),
    ("n-two", body(n=2), "n"),
    ("n-zero", body(n=0), "n"),
    ("stream-string", body(stream="yes"), "stream"),
    (
        "stream-options-without-stream",
        body(stream_options={"include_usage": True}),
        "stream_options",
    ),
    ("stream-options-not-object", body(stream=True, stream_options=5), "stream_options"),
    (
        "include-usage-not-bool",
        body(stream=True, stream_options={"include_usage": "yes"}),
        "stream_options.include_usage",
    ),
    ("ignore-eos-string", body(ignore_eos="true"), "ignore_eos"),
    ("ignore-eos-number", body(ignore_eos=1), "ignore_eos"),
    ("top-k-negative", body(top_k=-2), "top_k"),
    ("top-k-float", body(top_k=1.5), "top_k"),
    ("min-p-too-high", body(min_p=1.5), "min_p"),
    ("presence-penalty-too-high", body(presence_penalty=3), "presence_penalty"),
    ("frequency-penalty-string", body(frequency_penalty="1"), "frequency_penalty"),
    ("repetition-penalty-zero", body(repetition_penalty=0), "repetition_penalty"),
    ("logit-bias-not-object", body(logit_bias=[1]), "logit_bias"),
    ("logit-bias-bad-key", body(logit_bias={"abc": 1}), "logit_bias"),
    ("logit-bias-too-big", body(logit_bias={"5": 101}), "logit_bias"),
    # A 500 before: `isdigit` passes '²', which `int` refuses.
    ("logit-bias-superscript-key", body(logit_bias={"²": 1}), "logit_bias"),
    ("logprobs-string", body(logprobs="yes"), "logprobs"),
    ("top-logprobs-without-logprobs", body(top_logprobs=2), "top_logprobs"),
    ("top-logprobs-too-many", body(logprobs=True, top_logprobs=21), "top_logprobs"),
    ("response-format-unknown", body(response_format={"type": "xml"}), "response_format.type"),
    (
        "json-schema-missing",
        body(response_format={"type": "json_schema"}),
        "response_format.json_schema",
    ),
    (
        "json-schema-not-object",
        body(response_format={"type": "json_schema", "json_schema": {"schema": 5}}),
        "response_format.json_schema.schema",
    ),
    ("tools-not-list", body(tools={"type": "function"}), "tools"),
    ("tool-not-function", body(tools=[{"type": "retrieval"}]), "tools[0].type"),
    (
        "tool-without-name",
        body(tools=[{"type": "function", "function": {}}]),
        "tools[0].function.name",
    ),
    (
        "tool-parameters-not-object",
        body(tools=[{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
        "tools[0].function.parameters",
    ),
    ("tool-choice-without-tools", body(tool_choice="required"), "tool_choice"),
    (
        "tool-choice-unknown-function",
        body(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        ),
        "tool_choice",
    ),
    (
        "tool-choice-and-json",
        body(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice="required",
            response_format={"type": "json_object"},
        ),
        "tool_choice",
    ),
    ("legacy-functions", body(functions=[{"name": "f"}]), "functions"),
    (
        "assistant-tool-calls-malformed",
        message(role="assistant", content=None, tool_calls=[{"id": 1}]),
        "messages[0].tool_calls[0].id",
    ),
    ("tool-call-id-not-string", message(role="tool", tool_call_id=5), "messages[0].tool_call_id"),
]


@pytest.mark.parametrize(
    ("raw", "param"),
    [(raw, param) for _, raw, param in BAD_BODIES],
    ids=[i for i, _, _ in BAD_BODIES],
)
async def test_bad_chat_body_is_400_with_param(raw: bytes, param: str | None) -> None:
    backend = FakeBackend(tokens("x"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.post(
                CHAT, content=raw, headers={"Content-Type": "application/json"}
            )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_error_shape(response.json(), type="invalid_request_error", param=param)
    assert backend.calls == []  # rejected before the backend is asked


# (id, method, path, kwargs, status, type, param, code)
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str, str | None, str]] = [
    ("unknown-route", "GET", "/nope", {}, 404, "not_found_error", None, "not_found"),
    (
        "unknown-v1-route",
        "POST",
        "/v1/embeddings",
        {"content": body()},
        404,
        "not_found_error",
        None,
        "not_found",
    ),
    (
        "unknown-model-card",
        "GET",
        "/v1/models/nope",
        {},
        404,
        "not_found_error",
        "model",
        "model_not_found",
    ),
    (
        "unknown-model-chat",
        "POST",
        CHAT,
        {"content": body(model="nope")},
        404,
        "not_found_error",
        "model",
        "model_not_found",
    ),
    (
        "unknown-model-chat-streamed",
        "POST",
        CHAT,
        {"content": body(model="nope", stream=True)},
        404,
        "not_found_error",
        "model",
        "model_not_found",
    ),
    ("chat-get", "GET", CHAT, {}, 405, "invalid_request_error", None, "method_not_allowed"),
    (
        "models-post",
        "POST",
        "/v1/models",
        {"content": body()},
        405,
        "invalid_request_error",
        None,
        "method_not_allowed",
    ),
    (
        "healthz-delete",
        "DELETE",
        "/healthz",
        {},
        405,
        "invalid_request_error",
        None,
        "method_not_allowed",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "type_", "param", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_request_status_and_shape(
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    type_: str,
    param: str | None,
    code: str,
) -> None:
    backend = FakeBackend(tokens("x"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-exo-node"] == NODE_LABEL
    assert_error_shape(response.json(), type=type_, param=param, code=code)
    if status == 405:
        assert response.headers["allow"]
    assert backend.calls == []


@pytest.mark.parametrize(
    ("error", "status", "type_", "param", "code"),
    [
        (UnknownModel("nope"), 404, "not_found_error", "model", "model_not_found"),
        (Unavailable("no instance is ready"), 503, "unavailable_error", None, None),
    ],
    ids=["unknown-model", "unavailable"],
)
async def test_backend_entry_error_maps_to_status(
    error: BackendError, status: int, type_: str, param: str | None, code: str | None
) -> None:
    backend = FakeBackend(tokens("x"), entry_error=error)
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.post(CHAT, content=body())
    assert response.status_code == status
    assert_error_shape(response.json(), type=type_, param=param, code=code)


# One request per route and dialect, streamed and not, each asking for the model.
OVERLOAD_ROUTES = [
    ("chat", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("completions", "/v1/completions", {"model": MODEL, "prompt": "hi"}),
    ("responses", "/v1/responses", {"model": MODEL, "input": "hi"}),
    (
        "anthropic",
        "/v1/messages",
        {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("ollama", "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("path", "request_body"), [r[1:] for r in OVERLOAD_ROUTES], ids=[r[0] for r in OVERLOAD_ROUTES]
)
async def test_an_overloaded_instance_is_429_with_retry_after_in_every_dialect(
    path: str, request_body: dict[str, Any], stream: bool
) -> None:
    backend = FakeBackend(tokens("x"), entry_error=Overloaded("every slot is taken", 7.2))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.post(path, json={**request_body, "stream": stream})
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "8"
    error = response.json()
    if path == "/v1/messages":
        assert error == {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "every slot is taken"},
        }
    elif path == "/api/chat":
        assert error == {"error": "every slot is taken"}
    else:
        assert_error_shape(error, type="rate_limit_error", code="rate_limit_exceeded")


async def test_unexpected_exception_is_json_500_without_traceback() -> None:
    backend = FakeBackend(state_error=RuntimeError("secret internal detail"))
    with trio.fail_after(10):
        async with running(backend) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/state")
            # The server keeps serving afterwards.
            health = await client.get("/healthz")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert_error_shape(response.json(), type="server_error")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert health.status_code == 200


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# Raw requests so that the client never sends more than the server reads: a client still
# uploading when the server answers 413 and closes may see a reset instead of the answer.
OVERSIZED = [
    (
        "declared-length",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BYTES + 1),
    ),
    (
        "chunked",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + _chunked(b"x" * (MAX_REQUEST_BYTES // 2))
        + _chunked(b"x" * (MAX_REQUEST_BYTES // 2 + 1)),
    ),
]


@pytest.mark.parametrize("raw", [raw for _, raw in OVERSIZED], ids=[i for i, _ in OVERSIZED])
async def test_oversized_body_is_413(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(tokens("x"))
    with trio.fail_after(10):
        async with running(backend) as url:
            status, headers, content = await raw_exchange(url, raw)
    assert status == 413, content
    assert headers["content-type"].startswith("application/json")
    assert_error_shape(json.loads(content), type="invalid_request_error", code="request_too_large")
    assert str(MAX_REQUEST_BYTES) in json.loads(content)["error"]["message"]
    assert backend.calls == []
    # hypercorn's close race after a 413 is not logged as an application error.
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# httpx stops sending the body once the 413 has come, and leaves its body generator to the
# garbage collector: a warning about the client library, not about the server.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_kept_alive_client_goes_on_after_a_413() -> None:
    """An SDK reuses its connection: after a body over the limit gets its 413, the
    client's next request must be answered (it hung in 4 of 6 tries while the 413 left
    the connection open with the body unread: hypercorn waited for the rest of it)."""
    with trio.fail_after(60):
        async with (
            running(FakeBackend(tokens("x"))) as url,
            httpx.AsyncClient(base_url=url) as client,
        ):
            for _ in range(6):
                body = b"x" * (MAX_REQUEST_BYTES + 1)
                headers = {"content-type": "application/json"}
                too_large = await client.post("/v1/chat/completions", content=body, headers=headers)
                assert too_large.status_code == 413
                assert too_large.headers["connection"] == "close"
                with trio.fail_after(5):
                    assert (await client.get("/v1/models")).status_code == 200


async def _status(stream: trio.SocketStream, conn: h11.Connection) -> int:
    """Read one whole response off `stream`; its status."""
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage):
            return status


# Routes that answer without reading a body: found by tests/api/test_fuzz.py, whose
# client sends headers and body in separate writes.
UNREAD_BODIES = [
    ("GET", "/healthz", 200),
    ("DELETE", "/healthz", 405),
    ("GET", CHAT, 405),
    ("POST", "/nope", 404),
    ("GET", "/api/tags", 200),
    ("GET", "/v1/messages", 405),
]


@pytest.mark.parametrize(("method", "path", "status"), UNREAD_BODIES)
async def test_a_body_arriving_late_leaves_the_connection_usable(
    method: str, path: str, status: int
) -> None:
    """A body still arriving when the route could answer must not leave the keep-alive
    connection stuck (hypercorn's close of it was cut short: the next request hung)."""
    data = body()
    conn = h11.Connection(h11.CLIENT)
    head = [("Host", "x"), ("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    with trio.fail_after(10):
        async with running(FakeBackend(tokens("x"))) as url:
            stream = await trio.open_tcp_stream(*host_port(url))
            async with stream:
                await stream.send_all(
                    conn.send(h11.Request(method=method, target=path, headers=head))
                )
                await trio.sleep(0.1)  # the route may answer now, before the body comes
                await stream.send_all(
                    conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage())
                )
                assert await _status(stream, conn) == status
                conn.start_next_cycle()
                await stream.send_all(
                    conn.send(h11.Request(method="GET", target="/healthz", headers=[("Host", "x")]))
                    + conn.send(h11.EndOfMessage())
                )
                assert await _status(stream, conn) == 200
