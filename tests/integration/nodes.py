"""Real `exo node` processes for integration tests: distinct ports and homes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.integration.netns import in_namespace

T = TypeVar("T")


KEY = "correct horse battery staple"
# The API key of the nodes tests start with `--api-key` (conftest.py's `keyed_node`).
API_KEY = "sk-exo-test-api-key"


def start_cluster(
    root: Path,
    models_dir: Path,
    count: int,
    env: dict[str, str] | None = None,
    hosts: list[tuple[str, str]] | None = None,
) -> list[NodeProcess]:
    """`count` nodes on 127.0.0.1 that dial each other with a shared key, no preload;
    each has its own hub cache (HF_HOME) under its home. With `hosts` ((namespace,
    address) pairs reachable from here, see netns.py), node i runs in namespace i and
    listens on its address (peers, ring and an API that asks for API_KEY)."""
    nodes = [
        NodeProcess(
            root / f"n{i}",
            models_dir,
            env={**(env or {}), "HF_HOME": str(root / f"hf{i}")},
            netns=hosts[i][0] if hosts else None,
            host=hosts[i][1] if hosts else None,
            api_key=API_KEY if hosts else None,
        )
        for i in range(count)
    ]
    for node in nodes:
        peers = ",".join(f"{o.address}:{o.peer_port}" for o in nodes if o is not node)
        node.extra = (
            "--peers",
            peers,
            "--peer-host",
            node.address,
            "--cluster-key",
            KEY,
            "--preload",
            "",
        )
    for node in nodes:
        node.start()
    return nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_error = exc
            result = None
        if result is not None:
            return result
        time.sleep(0.1)
    raise TimeoutError(f"{what} not within {timeout} s (last error: {last_error})")


class NodeProcess:
    def __init__(
        self,
        home: Path,
        models_dir: Path,
        *extra: str,
        discovery: bool = False,
        netns: str | None = None,
        env: dict[str, str] | None = None,
        api_key: str | None = None,
        host: str | None = None,
    ) -> None:
        self.home = home
        self.models_dir = models_dir
        self.api_port = free_port()
        self.peer_port = free_port()
        self.extra = extra
        # Off unless asked for: nodes of different tests on this machine must not meet.
        self.discovery = discovery
        # Run inside this network namespace (and reach its API from inside it too).
        self.netns = netns
        # Extra environment variables (HF_ENDPOINT, HF_HOME, ...) for the node process.
        self.env = dict(env or {})
        # Started with this API key (`--api-key`), which `get` and `headers` send.
        self.api_key = api_key
        # An address of its namespace, reachable from the test, that the API listens on.
        self.host = host
        self.log_path = home.parent / f"{home.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return self.host or "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.api_port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> NodeProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 — owned by the process
        prefix = in_namespace(self.netns) if self.netns else []
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "exo.cli",
                "node",
                "--home",
                str(self.home),
                "--api-port",
                str(self.api_port),
                "--port",
                str(self.peer_port),
                "--models-dir",
                str(self.models_dir),
                *(() if self.discovery else ("--no-discovery",)),
                *(("--api-key", self.api_key) if self.api_key else ()),
                *(("--api-host", self.host) if self.host else ()),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "EXO_LOG_LEVEL": "debug", **self.env},
        )
        log.close()
        wait_for(lambda: self.get("/healthz") or None, 60, "node API")
        return self

    def get(self, path: str) -> Any:
        if self.netns is not None and self.host is None:
            return json.loads(_get_in_namespace(self.netns, self.url + path))
        request = urllib.request.Request(self.url + path, headers=self.headers())
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def state(self) -> dict[str, Any]:
        return self.get("/state")  # type: ignore[no-any-return]

    def runner_pids(self) -> list[int]:
        """Runner processes whose parent is this node."""
        assert self.process is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid and b"exo.engine.runner" in cmdline:
                pids.append(int(entry.name))
        return pids

    def wait_ready(self, timeout: float = 240) -> str:
        """Wait until a runner on this node is ready; returns its instance id."""

        def ready() -> str | None:
            runners = self.state()["state"]["runners"]
            for instance_id, per_node in runners.items():
                if any(s["phase"] == "ready" for s in per_node.values()):
                    return str(instance_id)
            return None

        return wait_for(ready, timeout, "a ready runner")

    def stop(self, sig: int = signal.SIGINT) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def agreement(nodes: list[NodeProcess], size: int) -> dict[str, Any] | None:
    """The common /state when every node shows `size` nodes, one master, term and hash."""
    states = [n.state() for n in nodes]
    views = {(s["master"], s["term"], s["hash"]) for s in states}
    if len(views) != 1 or any(len(s["state"]["nodes"]) != size for s in states):
        return None
    return states[0]


_FETCH = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)


def _get_in_namespace(netns: str, url: str) -> str:
    done = subprocess.run(
        in_namespace(netns, sys.executable, "-c", _FETCH, url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise OSError(f"GET {url} in {netns}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout
