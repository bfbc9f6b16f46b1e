"""CORS, off unless a node names the browser origins it allows (`--cors-origin`): then a
response to an allowed `Origin` says so, and a preflight `OPTIONS` gets a 204 without an
API key (browsers never send one with it). Without origins nothing here is installed: no
CORS header at all, so a page of another origin cannot read an answer."""

from __future__ import annotations

from collections.abc import Iterable

from quart import request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioResponse

from exo.api.access import check_origin

# Request headers the official SDKs send from a browser, allowed on every preflight;
# others a preflight asks for are allowed too (the origin is the operator's choice).
ALLOWED_HEADERS = (
    "authorization",
    "x-api-key",
    "content-type",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)
# How long a browser may reuse a preflight's answer, in seconds.
MAX_AGE_S = 600


def _header_names(text: str) -> list[str]:
    """The names of an `Access-Control-Request-Headers` list that are header names."""
    names = (name.strip().lower() for name in text.split(","))
    return [n for n in names if n and all(c.isalnum() or c in "-_" for c in n) and n.isascii()]


def allow_origins(app: QuartTrio, origins: Iterable[str], exposed: Iterable[str] = ()) -> None:
    """Let pages from `origins` (`*`: any) call the API, and read the `exposed` response
    headers besides the usual ones. No origins: nothing is installed."""
    allowed = frozenset(check_origin(origin) for origin in origins)
    if not allowed:
        return
    expose = ", ".join(exposed)

    def allows(origin: str | None) -> bool:
        return origin is not None and ("*" in allowed or origin.lower() in allowed)

    @app.before_request
    async def preflight() -> TrioResponse | None:
        asked = request.headers.get("Access-Control-Request-Method")
        rule = request.url_rule
        if request.method != "OPTIONS" or asked is None or rule is None:
            return None
        if not allows(request.headers.get("Origin")):
            return None
        requested = _header_names(request.headers.get("Access-Control-Request-Headers", ""))
        headers = {
            "Access-Control-Allow-Methods": ", ".join(sorted(rule.methods or ())),
            "Access-Control-Allow-Headers": ", ".join(
                dict.fromkeys((*ALLOWED_HEADERS, *requested))
            ),
            "Access-Control-Max-Age": str(MAX_AGE_S),
        }
        return TrioResponse("", 204, headers)

    @app.after_request
    async def allow_origin(response: TrioResponse) -> TrioResponse:
        # The answer depends on the Origin: caches must not give one origin's to another.
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if allows(origin):
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            if expose:
                response.headers["Access-Control-Expose-Headers"] = expose
        return response
