"""Log lines that say where they come from: node id, term and event index on every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextvars import ContextVar

Context = Callable[[], tuple[str, int, int]]

# A context variable, so that in a simulation each node's tasks (which inherit the
# context of the node task that spawned them) log with their own node's id.
_context: ContextVar[Context | None] = ContextVar("exo_log_context", default=None)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if context is not None:
            node, term, index = context()
            record.exo_context = f"{node[-6:]} t{term} i{index}"
        else:
            record.exo_context = "-"
        return True


def set_log_context(context: Context) -> None:
    """Called once the node knows its id; later log lines carry its term and index."""
    _context.set(context)


def install_context_filter() -> None:
    """Add the node context to the root logger's handlers (formats use %(exo_context)s)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ContextFilter())


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-5s [%(exo_context)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("hypercorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
