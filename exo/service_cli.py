"""`exo service install|uninstall`: run `exo node` as a service of the current user that
starts with the machine and restarts when it fails: a systemd user unit on Linux, a
launchd agent on macOS.

The service runs this very interpreter (`sys.executable -m exo.cli node`), so it keeps
working whatever PATH the service manager gives it; the node's flags are the ones given
after `--`. A user service starts at login; `loginctl enable-linger USER` (Linux) makes it
start at boot without one (docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import plistlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

UNIT = "exo.service"
LABEL = "io.exo.node"
# Environment the node reads, carried into the service when set here. Not HF_TOKEN: a
# service file is readable by others; huggingface_hub reads its own token file
# (`hf auth login`) in the service as in a shell.
CARRIED_ENV = ("EXO_HOME", "EXO_LOG_LEVEL", "EXO_LOG_FORMAT", "HF_HOME", "HF_ENDPOINT")

Run = Callable[[Sequence[str]], Any]


def add_parser(sub: Any) -> None:
    service = sub.add_parser(
        "service", help="run `exo node` as a service that starts at boot and restarts on failure"
    )
    verbs = service.add_subparsers(dest="verb", required=True)
    install = verbs.add_parser(
        "install",
        help="write the service (systemd user unit / launchd agent) and start it; "
        "node flags after --, e.g. exo service install -- --cluster-key KEY",
    )
    install.add_argument(
        "--no-start", action="store_true", help="only write the service file, start nothing"
    )
    install.add_argument("node_args", nargs=argparse.REMAINDER, help="flags for `exo node`")
    uninstall = verbs.add_parser("uninstall", help="stop the service and remove its file")
    uninstall.add_argument("--no-stop", action="store_true", help="only remove the file")


def run(args: argparse.Namespace, platform: str = sys.platform, execute: Run | None = None) -> int:
    execute = execute or _execute
    if platform not in ("linux", "darwin"):
        print(f"exo service: no service manager exo knows on {platform}", file=sys.stderr)
        return 1
    path = service_path(platform)
    if args.verb == "install":
        node_args = list(args.node_args)
        if node_args[:1] == ["--"]:  # the separator itself, not a value after it
            node_args = node_args[1:]
        command = [sys.executable, "-m", "exo.cli", "node", *node_args]
        env = {k: os.environ[k] for k in CARRIED_ENV if k in os.environ}
        path.parent.mkdir(parents=True, exist_ok=True)
        if platform == "linux":
            path.write_text(systemd_unit(command, env))
        else:
            logs = Path.home() / "Library" / "Logs" / "exo"
            logs.mkdir(parents=True, exist_ok=True)
            path.write_bytes(launchd_plist(command, env, logs))
        print(f"wrote {path}")
        if not args.no_start:
            for step in _start_commands(platform, path):
                execute(step)
            print(f"started; logs: {_log_hint(platform)}")
        return 0
    if not path.exists():
        print(f"exo service: {path} is not installed", file=sys.stderr)
        return 1
    if not args.no_stop:
        for step in _stop_commands(platform, path):
            execute(step)
    path.unlink()
    if platform == "linux" and not args.no_stop:
        execute(["systemctl", "--user", "daemon-reload"])
    print(f"removed {path}")
    return 0


def service_path(platform: str) -> Path:
    if platform == "linux":
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(config) / "systemd" / "user" / UNIT
    return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def systemd_unit(command: Sequence[str], env: dict[str, str]) -> str:
    """A systemd user unit running `command`, restarted 5 s after a failure; SIGINT stops
    it as Ctrl-C stops `exo node` (its runners end with it)."""
    lines = [
        "[Unit]",
        "Description=exo node: this machine's part of an exo cluster",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={' '.join(_systemd_quote(part) for part in command)}",
        *(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in sorted(env.items())),
        "Restart=on-failure",
        "RestartSec=5",
        "KillSignal=SIGINT",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def launchd_plist(command: Sequence[str], env: dict[str, str], logs: Path) -> bytes:
    """A launchd agent running `command` at load, again whenever it exits with a failure."""
    agent: dict[str, Any] = {
        "Label": LABEL,
        "ProgramArguments": list(command),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 5,
        "StandardOutPath": str(logs / "node.log"),
        "StandardErrorPath": str(logs / "node.log"),
    }
    if env:
        agent["EnvironmentVariables"] = dict(env)
    return plistlib.dumps(agent)


def _systemd_quote(word: str) -> str:
    """One ExecStart/Environment word as systemd reads it: specifiers (%) and variables
    ($) escaped, quoted when it has spaces, quotes or backslashes."""
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not any(c in word for c in " \t\"'\\;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _start_commands(platform: str, path: Path) -> list[list[str]]:
    if platform == "linux":
        return [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", UNIT],
        ]
    return [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(path)]]


def _stop_commands(platform: str, path: Path) -> list[list[str]]:
    if platform == "linux":
        return [["systemctl", "--user", "disable", "--now", UNIT]]
    return [["launchctl", "bootout", f"gui/{os.getuid()}", str(path)]]


def _log_hint(platform: str) -> str:
    if platform == "linux":
        return f"journalctl --user -u {UNIT} -f"
    return str(Path.home() / "Library" / "Logs" / "exo" / "node.log")


def _execute(command: Sequence[str]) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(
            f"exo service: {' '.join(command)} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
