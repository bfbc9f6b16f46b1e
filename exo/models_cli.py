"""`exo models download|list|info|rm`: the hub cache on this machine, as the node uses it.

The node and these commands share huggingface_hub's cache (`HF_HOME` / `HF_HUB_CACHE`),
so a model downloaded here is served without fetching it again, and one fetched by
`mlx_lm` or `hf download` shows up here.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any, TextIO

from exo.events.codec import to_plain
from exo.events.facts import ModelCard
from exo.models.hub import NotAModel, bytes_of, files_for_layers, parse_model_name
from exo.models.hub_client import HubClient
from exo.models.hub_errors import HubError
from exo.models.hub_files import ByteTally

# Seconds between plain progress lines when the output is not a terminal.
PLAIN_INTERVAL = 2.0


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="download, list, inspect and remove hub models")
    verbs = models.add_subparsers(dest="verb", required=True)
    download = verbs.add_parser("download", help="fetch a hub repo into the local cache")
    download.add_argument("repo", help="owner/name[@revision]")
    download.add_argument(
        "--layers", help="only the files of layers START:END (a pipeline shard), e.g. 0:12"
    )
    verbs.add_parser("list", help="models in the local hub cache")
    info = verbs.add_parser("info", help="a repo's card: architecture, sizes, files")
    info.add_argument("repo", help="owner/name[@revision]")
    info.add_argument("--json", action="store_true", help="the card as JSON")
    rm = verbs.add_parser("rm", help="delete a repo from the local cache")
    rm.add_argument("repo", help="owner/name")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    client = HubClient()
    try:
        if args.verb == "download":
            return _download(client, args.repo, args.layers, out)
        if args.verb == "list":
            return _list(client, out)
        if args.verb == "info":
            return _info(client, args.repo, args.json, out)
        return _rm(client, args.repo, out)
    except (HubError, NotAModel) as exc:
        print(f"exo models: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("exo models: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _download(client: HubClient, repo: str, layers: str | None, out: TextIO) -> int:
    card = client.describe(repo)
    start, end = 0, card.num_layers
    if layers:
        try:
            first, _, last = layers.partition(":")
            start, end = int(first), int(last)
        except ValueError:
            print(f"exo models: --layers wants START:END, got {layers!r}", file=sys.stderr)
            return 2
        if not 0 <= start < end <= card.num_layers:
            print(f"exo models: layers must lie in [0, {card.num_layers})", file=sys.stderr)
            return 2
    files = files_for_layers(card, start, end)
    missing = client.missing(card, files)
    total = bytes_of(card, list(files))
    tally = ByteTally(total - bytes_of(card, missing))
    failure: list[BaseException] = []

    def work() -> None:
        try:
            client.download(card, files, tally.add)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    _show_progress(worker, lambda: tally.done, total, card.model_id, out)
    if failure:
        raise failure[0]
    print(
        f"{card.model_id} ({len(files)} files, {_size(total)}) is in {client.snapshot_dir(card)}",
        file=out,
    )
    return 0


def _show_progress(worker: threading.Thread, done: Any, total: int, name: str, out: TextIO) -> None:
    """A progress bar (bytes, rate, ETA) on a terminal; a plain line every few seconds
    otherwise, so logs stay readable."""
    if out.isatty():
        from tqdm import tqdm

        with tqdm(
            total=total, initial=done(), unit="B", unit_scale=True, desc=name, file=out
        ) as bar:
            while worker.is_alive():
                worker.join(0.2)
                bar.update(done() - bar.n)
        return
    started, first = time.monotonic(), done()
    while worker.is_alive():
        worker.join(PLAIN_INTERVAL)
        now = done()
        elapsed = time.monotonic() - started
        rate = (now - first) / elapsed if elapsed > 0 else 0.0
        eta = f", {(total - now) / rate:.0f} s left" if rate > 0 and now < total else ""
        print(f"{name}: {_size(now)} of {_size(total)}, {_size(int(rate))}/s{eta}", file=out)


def _list(client: HubClient, out: TextIO) -> int:
    from huggingface_hub import scan_cache_dir

    if not client.cache_dir.exists():
        print(f"no models in {client.cache_dir}", file=out)
        return 0
    info = scan_cache_dir(client.cache_dir)
    repos = sorted((r for r in info.repos if r.repo_type == "model"), key=lambda r: r.repo_id)
    if not repos:
        print(f"no models in {client.cache_dir}", file=out)
    for repo in repos:
        revisions = ", ".join(sorted(r.commit_hash[:12] for r in repo.revisions))
        print(
            f"{repo.repo_id}  {_size(repo.size_on_disk)}  {repo.nb_files} files  {revisions}",
            file=out,
        )
    return 0


def _info(client: HubClient, repo: str, as_json: bool, out: TextIO) -> int:
    card = client.describe(repo)
    if as_json:
        print(json.dumps(to_plain(card), indent=2, sort_keys=True), file=out)
        return 0
    for line in describe_card(card):
        print(line, file=out)
    return 0


def describe_card(card: ModelCard) -> list[str]:
    quantization = (
        f"{card.quantization.bits}-bit {card.quantization.mode}, groups of "
        f"{card.quantization.group_size}"
        if card.quantization
        else "none"
    )
    lines = [
        f"model:         {card.model_id} (revision {card.revision[:12] or '-'})",
        f"architecture:  {card.architecture}, {card.num_layers} layers, hidden {card.hidden_size}",
        f"attention:     {card.num_heads} heads, {card.num_kv_heads} KV heads of {card.kv_head_dim}",
        f"context:       {card.context_length} tokens, vocabulary {card.vocab_size}",
        f"parameters:    {card.parameters / 1e9:.2f} B, quantization {quantization}",
        f"weights:       {_size(card.weight_bytes)} as stored, {_size(card.loaded_bytes)} in float32",
    ]
    if card.num_experts:
        lines.append(f"experts:       {card.num_experts}, {card.experts_per_token} per token")
    for f in card.weight_files:
        span = f"layers {f.first_layer}-{f.end_layer - 1}" if f.end_layer else "no layers"
        lines.append(f"  {f.name}  {_size(f.size)}  {span}{' + shared' if f.shared else ''}")
    return lines


def _rm(client: HubClient, repo: str, out: TextIO) -> int:
    from huggingface_hub import scan_cache_dir

    parsed = parse_model_name(repo)
    if parsed is None:
        print(f"exo models: {repo!r} is not a repo id (owner/name)", file=sys.stderr)
        return 2
    repo_id = parsed[0]
    found = None
    if client.cache_dir.exists():
        info = scan_cache_dir(client.cache_dir)
        found = next(
            (r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"), None
        )
        if found is not None:
            strategy = info.delete_revisions(*(r.commit_hash for r in found.revisions))
            strategy.execute()
            print(f"removed {repo_id} ({strategy.expected_freed_size_str})", file=out)
            return 0
    print(f"exo models: {repo_id} is not in {client.cache_dir}", file=sys.stderr)
    return 1


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
