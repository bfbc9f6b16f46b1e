"""Log lines that say where they come from: node id, term and event index on every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

Context = Callable[[], tuple[str, int, int]]

_context: list[Context] = []


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _context:
            node, term, index = _context[-1]()
            record.exo_context = f"{node[-6:]} t{term} i{index}"
        else:
            record.exo_context = "-"
        return True


def set_log_context(context: Context) -> None:
    """Called once the node knows its id; later log lines carry its term and index."""
    _context.append(context)


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
