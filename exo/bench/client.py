"""The HTTP side of `exo bench`: one streamed request timed chunk by chunk, token counts,
and the checks that turn an unreachable node or an unknown model into one clear line.

Requests use the OpenAI dialect with `stream_options.include_usage`, so the last chunk
carries the server's own token counts, and `ignore_eos` with `max_tokens`, so a reply is
as long as asked whatever the model would say.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import trio

from exo.api.access import KEY_HINT
from exo.bench.prompts import Count
from exo.bench.records import Endpoint, Outcome, RequestResult

PATHS: dict[Endpoint, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
COUNT_TOKENS = "/v1/messages/count_tokens"


class BenchError(Exception):
    """A failure that stops the whole run; its message is for the user."""


def error_message(response: httpx.Response) -> str:
    """The message of an error answer in any of exo's shapes, else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"HTTP {response.status_code}: {error['message']}"
    if isinstance(error, str):
        return f"HTTP {response.status_code}: {error}"
    return f"HTTP {response.status_code}: {str(body)[:200]}"


def describe_error(error: httpx.HTTPError) -> str:
    """`ReadTimeout: …`; httpx's timeouts often carry no message of their own."""
    return f"{type(error).__name__}: {str(error) or 'no detail'}"


def _error_param(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("param") if isinstance(error, dict) else None


def request_body(endpoint: Endpoint, model: str, prompt: str, gen_tokens: int) -> dict[str, Any]:
    """A greedy streamed request for exactly `gen_tokens` tokens."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": gen_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def _chunk_text(event: dict[str, Any]) -> tuple[str, str | None]:
    """The text of one streamed event (either dialect) and its finish reason, if any."""
    text, finish = "", None
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        piece = choice.get("text") if delta is None else delta.get("content")
        text += piece if isinstance(piece, str) else ""
        finish = choice.get("finish_reason") or finish
    return text, finish


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by exo)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


async def stream_request(
    http: httpx.AsyncClient,
    endpoint: Endpoint,
    model: str,
    prompt: str,
    gen_tokens: int,
    index: int,
) -> RequestResult:
    """Send one request and time its chunks. Never raises for what the server does: a 429
    is `rejected`, any other failure `failed` with the reason. `start` is the clock
    reading (trio's) when it was sent."""
    start = trio.current_time()
    times: list[float] = []

    def result(outcome: Outcome, **fields: Any) -> RequestResult:
        latency = trio.current_time() - start
        return RequestResult(index, outcome, start, latency, tuple(times), **fields)

    usage: dict[str, Any] | None = None
    finish: str | None = None
    failure: str | None = None
    done = False
    body = request_body(endpoint, model, prompt, gen_tokens)
    try:
        async with http.stream("POST", PATHS[endpoint], json=body) as response:
            status = response.status_code
            if status != 200:
                await response.aread()
                return result(
                    "rejected" if status == 429 else "failed",
                    http_status=status,
                    retry_after=_retry_after(response.headers.get("retry-after")),
                    error=error_message(response),
                )
            # Read to the end, whatever comes: leaving httpx's line iterator early would
            # leave its generators for the garbage collector to close.
            async for line in response.aiter_lines():
                data = line[len("data:") :].strip() if line.startswith("data:") else None
                if data is None or done or failure is not None:
                    continue
                if data == "[DONE]":
                    done = True
                    continue
                try:
                    event = json.loads(data)
                except ValueError as error:
                    failure = f"bad stream event: {error}"
                    continue
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    error = event["error"]
                    message = error.get("message") if isinstance(error, dict) else error
                    failure = f"stream failed: {message}"
                    continue
                text, reason = _chunk_text(event)
                finish = reason or finish
                if text:
                    times.append(trio.current_time() - start)
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
    except httpx.HTTPError as error:
        return result("failed", error=describe_error(error))
    if failure is not None:
        return result("failed", http_status=200, error=failure)
    if not done and usage is None:
        return result("failed", http_status=200, error="the stream ended before it finished")
    usage = usage or {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return result(
        "ok",
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        cached_tokens=cached,
        finish_reason=finish,
        http_status=200,
    )


async def _post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    try:
        return await http.post(path, json=body)
    except httpx.HTTPError as error:
        raise BenchError(f"POST {path} failed: {describe_error(error)}") from error


def make_counter(http: httpx.AsyncClient, endpoint: Endpoint, model: str) -> Count:
    """How many tokens the server makes of a prompt, as the endpoint will render it: raw
    text by a `max_tokens: 0` completion (nothing generated; a node that refuses 0 is
    asked for 1 token instead), a chat message by Anthropic's `count_tokens`."""
    generate_one = False

    async def count(text: str) -> int:
        nonlocal generate_one
        if endpoint == "chat":
            body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
            response = await _post(http, COUNT_TOKENS, body)
            field, read = "input_tokens", lambda b: b["input_tokens"]
        else:
            body = {"model": model, "prompt": text, "max_tokens": int(generate_one)}
            response = await _post(http, PATHS["completions"], body)
            if response.status_code == 400 and _error_param(response) == "max_tokens":
                if generate_one:
                    raise BenchError(f"counting tokens: {error_message(response)}")
                generate_one = True
                return await count(text)
            field, read = "usage.prompt_tokens", lambda b: b["usage"]["prompt_tokens"]
        if response.status_code != 200:
            raise BenchError(f"counting the prompt's tokens for {model}: {error_message(response)}")
        try:
            return int(read(response.json()))
        except (ValueError, KeyError, TypeError) as error:
            raise BenchError(f"counting tokens: the answer has no {field}") from error

    return count


async def check_node(http: httpx.AsyncClient, model: str) -> str:
    """Fail early, with one line, on an unreachable node or an unknown model; returns the
    model's id as the node names it (an alias resolves to its repo id)."""
    try:
        await http.get("/healthz")
        response = await http.get(f"/models/{model}")
    except httpx.HTTPError as error:
        raise BenchError(f"cannot reach {http.base_url}: {describe_error(error)}") from None
    if response.status_code == 401:
        raise BenchError(f"{http.base_url}: {error_message(response)} ({KEY_HINT})")
    if response.status_code == 200:
        found = response.json().get("id")
        return found if isinstance(found, str) and found else model
    try:
        code = response.json()["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        code = None
    if response.status_code == 404 and code != "model_not_found":
        return model  # not an exo node, or an older one: the first request will tell
    raise BenchError(f"model {model!r}: {error_message(response)}")
