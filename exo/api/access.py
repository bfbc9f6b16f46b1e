"""Who may use a node's HTTP API: its keys and where they come from (flags, `EXO_API_KEY`,
a keys file), whether its address reaches beyond this machine, the browser origins it
allows, and the key a client of the API (`exo status`, `exo bench`) sends.

Only the standard library: `exo status` and `exo bench` import this when they start.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

# Keys, comma-separated, when no `--api-key` is given; a client sends the first.
API_KEY_ENV = "EXO_API_KEY"
# What a client of the API says when a node refuses it with a 401.
KEY_HINT = f"the node asks for an API key: give it with --api-key KEY or {API_KEY_ENV}"
# Names that only ever mean this machine (an address is checked as an address).
_LOOPBACK_NAMES = {"localhost"}


class AccessError(ValueError):
    """A key, keys file or origin a node cannot start with; the message says which."""


def check_key(key: str) -> str:
    """`key` if a client can send it in a header as is: visible ASCII, no spaces."""
    if not key or not all("!" <= c <= "~" for c in key):
        raise AccessError(
            "an API key must be visible ASCII characters without spaces (a client sends it "
            "in an HTTP header as is)"
        )
    return key


def split_keys(text: str) -> tuple[str, ...]:
    """The keys of a comma-separated list (EXO_API_KEY), blanks left out."""
    return tuple(check_key(k.strip()) for k in text.split(",") if k.strip())


def read_key_file(path: Path) -> tuple[str, ...]:
    """The keys of a file, one a line; blank lines and `#` comments are left out. A file
    that is missing, unreadable or holds no key is an error: a node started with one
    meant to require a key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AccessError(f"cannot read the API key file {path}: {error}") from error
    lines = (line.strip() for line in text.splitlines())
    keys = tuple(check_key(line) for line in lines if line and not line.startswith("#"))
    if not keys:
        raise AccessError(f"the API key file {path} holds no key")
    return keys


def node_keys(
    flags: Iterable[str] | None, env_value: str | None, key_file: Path | None
) -> tuple[str, ...]:
    """A node's keys: every `--api-key` (or, without one, those of EXO_API_KEY), and those
    of `--api-key-file`; each once, in that order."""
    given = tuple(check_key(k) for k in flags) if flags else split_keys(env_value or "")
    from_file = read_key_file(key_file) if key_file is not None else ()
    return tuple(dict.fromkeys((*given, *from_file)))


def is_loopback(host: str) -> bool:
    """Whether `host` can only be reached from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def exposure_error(host: str, keys: tuple[str, ...], insecure: bool) -> str | None:
    """Why a node must not serve its API on `host`: beyond this machine with no key, unless
    `--insecure-api` says that is meant. None when it may."""
    if keys or insecure or is_loopback(host):
        return None
    return (
        f"the HTTP API would listen on {host} with no API key, so anyone who can reach it "
        "could use this node: give it a key (--api-key, --api-key-file or EXO_API_KEY), or "
        "pass --insecure-api (env EXO_INSECURE_API=1) if that is what you mean"
    )


def exposure_warning(host: str, port: int, keys: tuple[str, ...]) -> str | None:
    """What a node started with `--insecure-api` says when its API is open to others."""
    if keys or is_loopback(host):
        return None
    return (
        f"the HTTP API has no API key (--insecure-api): anyone who can reach {host}:{port} "
        "can use this node"
    )


def check_origin(origin: str) -> str:
    """A `--cors-origin` as browsers send `Origin` (scheme://host[:port], lower case, no
    path), or `*` for any."""
    if origin == "*":
        return origin
    parts = urlsplit(origin.strip().rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise AccessError(
            f"--cors-origin {origin!r}: expected * or an origin such as https://example.com "
            "or http://localhost:3000 (scheme, host and port; no path)"
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


def add_client_key_flag(parser: argparse.ArgumentParser) -> None:
    """`--api-key` for a command that calls a node's API."""
    parser.add_argument(
        "--api-key",
        help=f"key of a node started with --api-key (env {API_KEY_ENV}: its first key)",
    )


def client_headers(flag: str | None) -> dict[str, str]:
    """The headers a client sends to a node: its key as a bearer token, from `--api-key`
    (`flag`) or the first of EXO_API_KEY; none without a key."""
    key = flag or next(iter(split_keys(os.environ.get(API_KEY_ENV, ""))), None)
    return {"Authorization": f"Bearer {key}"} if key else {}
