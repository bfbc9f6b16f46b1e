"""Log lines that say where they come from: node id, term and event index on every line,
and the request id on the lines a request's task writes.

Two formats: text for people (`[node term index]` in each line, the default) and JSON,
one object a line, for log collectors (`exo node --log-format json`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

Context = Callable[[], tuple[str, int, int]]

# A context variable, so that in a simulation each node's tasks (which inherit the
# context of the node task that spawned them) log with their own node's id.
_context: ContextVar[Context | None] = ContextVar("exo_log_context", default=None)
# The request a task serves (set by the API host around a generation).
_request: ContextVar[str | None] = ContextVar("exo_log_request", default=None)

FORMATS = ("text", "json")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if context is not None:
            node, term, index = context()
            record.exo_context = f"{node[-6:]} t{term} i{index}"
            record.exo_node, record.exo_term, record.exo_index = node, term, index
        else:
            record.exo_context = "-"
            record.exo_node = record.exo_term = record.exo_index = None
        record.exo_request = _request.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the node's
    id, term and event index, the request id where there is one, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, attribute in (
            ("node", "exo_node"),
            ("term", "exo_term"),
            ("index", "exo_index"),
            ("request_id", "exo_request"),
        ):
            value = getattr(record, attribute, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


@contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Log lines written inside carry `request_id`."""
    token = _request.set(request_id)
    try:
        yield
    finally:
        _request.reset(token)


def set_log_context(context: Context) -> None:
    """Called once the node knows its id; later log lines carry its term and index."""
    _context.set(context)


def install_context_filter() -> None:
    """Add the node context to the root logger's handlers (formats use %(exo_context)s)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ContextFilter())


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at `level`, as text or as JSON lines."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if log_format == "json"
        else logging.Formatter(
            "%(asctime)s %(levelname)-5s [%(exo_context)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("hypercorn.access", "httpx", "httpcore", "trio-websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
