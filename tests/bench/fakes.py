"""A fake tokenizer and a scripted exo node for `exo bench`'s tests, served through httpx's MockTransport:
token counts from a fake tokenizer, streamed replies, and the `/instances` API."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import httpx

MODEL = "smollm2-135m"


def bpe_like(text: str) -> int:
    """A fake tokenizer: a beginning-of-sequence token, then per word a token per 4
    letters, per digit and per punctuation mark (words over 4 letters are 2 tokens, as
    rarer words are in real vocabularies)."""
    pieces = re.findall(r"[A-Za-z]+|\d|[^\sA-Za-z\d]", text)
    return 1 + sum(math.ceil(len(p) / 4) if p.isalpha() else 1 for p in pieces)


def sse(*events: Any) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


class FakeNode:
    def __init__(self, workers: int = 1, refuse_count_only: bool = False) -> None:
        self.workers = workers
        self.refuse_count_only = refuse_count_only
        self.instances: dict[str, dict[str, Any]] = {}
        self.prompts: list[str] = []  # every generation's prompt, in order
        self.deleted: list[str] = []
        self.placed: list[dict[str, Any]] = []
        self.reject_next = 0  # answer this many generations with 429

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle), base_url="http://fake")

    def add_instance(self, instance_id: str, strategy: str, nodes: int, status: str) -> None:
        shards = [{"node_id": f"node-{i}", "rank": i} for i in range(nodes)]
        self.instances[instance_id] = {
            "id": instance_id,
            "model": MODEL,
            "strategy": strategy,
            "status": status,
            "shards": shards,
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else {}
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        if path.startswith("/models/"):
            if path != f"/models/{MODEL}":
                error = {"message": "no such model", "code": "model_not_found"}
                return httpx.Response(404, json={"error": error})
            return httpx.Response(200, json={"id": MODEL})
        if path == "/v1/completions":
            return self._complete(body)
        if path == "/instances" and method == "GET":
            return httpx.Response(200, json={"instances": list(self.instances.values())})
        if path == "/instances/previews":
            previews = [
                {
                    "strategy": s,
                    "node_count": k,
                    "shards": [{"node_id": f"node-{i}", "rank": i} for i in range(k)],
                    "valid": s == "pipeline",
                    "reason": None if s == "pipeline" else "9 heads do not divide",
                }
                for s in ("pipeline", "tensor")
                for k in range(1, self.workers + 1)
            ]
            return httpx.Response(200, json=previews)
        if path == "/instances" and method == "POST":
            self.placed.append(body)
            instance_id = f"inst-{len(self.placed)}"
            self.add_instance(instance_id, body["strategy"], len(body["nodes"]), "loading")
            return httpx.Response(201, json=self.instances[instance_id])
        if path.startswith("/instances/"):
            instance_id = path.rsplit("/", 1)[1]
            if method == "DELETE":
                self.deleted.append(instance_id)
                self.instances.pop(instance_id)
                return httpx.Response(200, json={"id": instance_id, "deleted": True})
            view = dict(self.instances[instance_id])
            self.instances[instance_id]["status"] = "ready"  # ready at the next poll
            return httpx.Response(200, json=view)
        return httpx.Response(404, json={"error": {"message": "unknown route"}})

    def _complete(self, body: dict[str, Any]) -> httpx.Response:
        prompt_tokens = bpe_like(body["prompt"])
        if body["max_tokens"] == 0 and self.refuse_count_only:
            error = {"message": "'max_tokens' must be at least 1", "param": "max_tokens"}
            return httpx.Response(400, json={"error": error})
        if not body.get("stream"):
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": body["max_tokens"]}
            return httpx.Response(200, json={"choices": [], "usage": usage})
        if self.reject_next:
            self.reject_next -= 1
            return httpx.Response(
                429, headers={"Retry-After": "1"}, json={"error": {"message": "busy"}}
            )
        self.prompts.append(body["prompt"])
        tokens = body["max_tokens"]
        events: list[Any] = [{"choices": [{"text": "x", "finish_reason": None}]}] * tokens
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens}
        events.append({"choices": [{"text": "", "finish_reason": "length"}], "usage": usage})
        return httpx.Response(
            200, content=sse(*events), headers={"content-type": "text/event-stream"}
        )
