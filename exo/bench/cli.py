"""`exo bench`: the flags, and the run from them to the table, the JSON and the plot.

Only `add_parser` runs when `exo` starts; the HTTP client, the progress bar and
matplotlib are imported when a benchmark actually runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from exo.api.access import add_client_key_flag, client_headers
from exo.bench.records import Placement, Strategy
from exo.models.cards import BUNDLED_MODEL

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:52415"


def _list_of(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    """An argparse type: a comma-separated list, each item parsed by `parse`."""

    def parse_list(text: str) -> list[T]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return [parse(item) for item in items]

    return parse_list


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _strategy(text: str) -> Strategy:
    if text == "pipeline" or text == "tensor":
        return text
    raise argparse.ArgumentTypeError(f"strategy must be pipeline or tensor, got {text!r}")


def add_parser(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure a node: TTFT, inter-token latency and throughput over sweeps",
        description="Stream requests of exact prompt and generation lengths to a node at "
        "each concurrency (every combination of the comma-separated lists), and report "
        "TTFT, inter-token latency, prefill and decode tok/s and aggregate throughput "
        "with percentiles. See docs/bench.md.",
    )
    bench.add_argument("--url", default=DEFAULT_URL, help=f"the node's API (default {DEFAULT_URL})")
    add_client_key_flag(bench)
    bench.add_argument(
        "--model", default=BUNDLED_MODEL, help=f"model to measure (default {BUNDLED_MODEL})"
    )
    bench.add_argument(
        "--prompt-tokens",
        type=_list_of(_count),
        default=[128],
        metavar="N[,N...]",
        help="prompt lengths, exact to the token (default 128)",
    )
    bench.add_argument(
        "--gen-tokens",
        type=_list_of(_count),
        default=[128],
        metavar="N[,N...]",
        help="tokens to generate per request, end of sequence ignored (default 128)",
    )
    bench.add_argument(
        "--concurrency",
        type=_list_of(_count),
        default=[1],
        metavar="C[,C...]",
        help="requests in flight at once (default 1)",
    )
    bench.add_argument(
        "--requests",
        type=_count,
        metavar="N",
        help="measured requests per configuration (default 4 per concurrent request)",
    )
    bench.add_argument(
        "--strategy",
        type=_list_of(_strategy),
        metavar="S[,S...]",
        help="place the model as pipeline and/or tensor before each configuration "
        "(default: leave placement to the node)",
    )
    bench.add_argument(
        "--nodes",
        type=_list_of(_count),
        metavar="K[,K...]",
        help="with --strategy: nodes of the placed instance (default: the master chooses)",
    )
    bench.add_argument(
        "--endpoint",
        choices=["completions", "chat"],
        default="completions",
        help="completions: the prompt as raw text (default); chat: as one user message "
        "through the model's chat template (its tokens count toward --prompt-tokens)",
    )
    bench.add_argument("--json", type=Path, metavar="FILE", help="write every measurement here")
    bench.add_argument("--plot", type=Path, metavar="FILE", help="draw a PNG of the sweep here")
    bench.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds one request may take, a model's first load included (default 900)",
    )
    bench.add_argument(
        "--ready-timeout",
        type=float,
        default=900.0,
        help="seconds a placed instance may take to become ready (default 900)",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")


def placements(args: argparse.Namespace) -> list[Placement]:
    """--strategy x --nodes; --nodes alone means pipeline; neither leaves it to the node."""
    if args.strategy is None and args.nodes is None:
        return [Placement()]
    strategies: list[Strategy] = args.strategy or ["pipeline"]
    counts: list[int | None] = list(args.nodes) if args.nodes else [None]
    return [Placement(s, k) for s in strategies for k in counts]


def run(args: argparse.Namespace) -> int:
    import trio

    from exo.bench.client import BenchError

    try:
        return trio.run(_run, args)
    except BenchError as error:
        print(f"exo bench: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("exo bench: interrupted", file=sys.stderr)
        return 130


async def _run(args: argparse.Namespace) -> int:
    import httpx
    from tqdm import tqdm

    from exo.bench.client import check_node
    from exo.bench.plot import write_plot
    from exo.bench.report import document, measured_anything, table
    from exo.bench.sweep import Hooks, plan, run_sweep

    configs = plan(
        placements(args), args.prompt_tokens, args.gen_tokens, args.concurrency, args.requests
    )
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    started = time.time()
    headers = client_headers(args.api_key)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=timeout, limits=limits
    ) as http:
        model = await check_node(http, args.model)
        bar = tqdm(
            total=sum(c.requests for c in configs),
            unit="req",
            disable=True if args.no_progress else None,  # None: only on a terminal
            file=sys.stderr,
            dynamic_ncols=True,
        )
        hooks = Hooks(
            config_started=lambda c: bar.set_description(
                f"{c.placement.label()} prompt {c.prompt_tokens} gen {c.gen_tokens} "
                f"conc {c.concurrency}"
            ),
            request_done=lambda _r: bar.update(),
            config_skipped=lambda r: bar.update(r.config.requests),
            note=lambda text: bar.write(f"exo bench: {text}", file=sys.stderr),
        )
        try:
            results = await run_sweep(
                http, model, args.endpoint, configs, args.ready_timeout, hooks
            )
        finally:
            bar.close()
    print(table(results))
    run_info = {
        "url": args.url,
        "model": model,
        "endpoint": args.endpoint,
        "started": started,
        "finished": time.time(),
    }
    if args.json is not None:
        args.json.write_text(json.dumps(document(run_info, results), indent=1) + "\n")
    if args.plot is not None and not write_plot(
        results, args.plot, f"exo bench: {model} at {args.url}"
    ):
        print("exo bench: nothing measured, so no plot", file=sys.stderr)
    if not measured_anything(results):
        print("exo bench: no request succeeded; nothing was measured", file=sys.stderr)
        return 1
    return 0
