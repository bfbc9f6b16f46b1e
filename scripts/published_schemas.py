"""Cut what tests/api/test_published_schemas.py checks exo against out of OpenAI's published
OpenAPI document (github.com/openai/openai-openapi, MIT): the response objects of the
routes exo serves, with every schema they reference, as JSON Schema 2020-12.

OpenAI's document is OpenAPI 3.1 but still says `nullable: true` in places (3.0's form);
those become `null` among the allowed types, which is what they mean.

    python scripts/published_schemas.py PATH/TO/openapi.json COMMIT > tests/api/published/openai.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

# The response objects exo sends on the OpenAI routes.
ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "Response",
    "ResponseStreamEvent",
)
REF = "#/components/schemas/"


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """`roots` and every schema they reference, directly or not."""
    seen: dict[str, Any] = {}
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen[name] = schemas[name]
        stack.extend(_refs(schemas[name]))
    return dict(sorted(seen.items()))


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"].removeprefix(REF)] if isinstance(value.get("$ref"), str) else []
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def without_nullable(value: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema: null is one more allowed value."""
    if isinstance(value, list):
        return [without_nullable(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: without_nullable(v) for k, v in value.items() if k != "nullable"}
    if value.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


def main(argv: list[str]) -> int:
    path, commit = argv
    with open(path) as f:
        document = json.load(f)
    schemas = without_nullable(closure(document["components"]["schemas"], ROOTS))
    out = {
        "source": f"https://github.com/openai/openai-openapi/blob/{commit}/openapi.json",
        "license": "MIT, Copyright (c) OpenAI",
        "components": {"schemas": schemas},
    }
    json.dump(out, sys.stdout, separators=(",", ":"), sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
