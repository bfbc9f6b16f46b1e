"""Soak: a 3-host cluster of real `exo node` processes served for a long time under mixed
load while a random host is killed and restarted every few minutes.

    .venv/bin/python benchmarks/soak.py --minutes 30 --json benchmarks/results/soak.json

Three nodes run on three hosts (network namespaces on a bridge, with their own addresses
and API keys, tests/integration/netns.py; on 127.0.0.1 with a printed note when
namespaces cannot be made). One single-node instance of the bundled model is placed on
each host, so that losing a host leaves two serving (the master places a lost instance
again only when none of its model remains, so the soak places one on the host again once
it is back and agreed: `instance_ready_after_s`). `--clients` threads (8-16) loop until
the end, each request to a random host that is up, in a random (seeded) dialect through
its official client: OpenAI chat,
Anthropic messages, OpenAI Responses and Ollama chat, each streamed or not; about 15 %
are bad inputs sent with httpx (malformed JSON, an unknown model, a wrong API key, a body
over 4 MiB, an invalid parameter). Every `--kill-every` seconds a random host (its node
and every runner it started) is SIGKILLed, left down `--down-for` seconds and started
again with the same home; the time until the three nodes agree again is recorded.

Reported: requests by dialect and streaming, HTTP statuses, 5xx by error type with
whether docs/api.md documents it (503 `unavailable_error`, `runner_error`,
`overloaded_error`, or Ollama's untyped 503), failures after the first chunk (an error
in the stream, in the dialect's shape), transport errors (a refused or cut connection:
no answer from a server, mostly a host just killed) and client timeouts apart; kills and
recovery times; memory (RSS) of every node and runner process at its start (the first
sample `--settle` seconds after it appeared, after the warm-up for the first ones) and
at its end (the last sample, taken just before it is killed or at the end), and the
largest growth among processes that lived `--long-lived` seconds or more; the longest
time a client waited for its first answer byte (the whole answer when not streamed) and
the longest gap between two chunks of a stream, each with its request.

Acknowledged events lost: a writer thread makes acknowledged writes through the admin
API all along. Each round places an instance (`POST /instances`, one node, a random
host's API) and, once the 201 with its id came back, deletes it (`DELETE
/instances/{id}`, retried through any host that is up until it answers). A 201 and a
200 are the cluster's acknowledgements of the `InstanceCreated` and `InstanceDeleted`
events (the API answers once the master accepted the command and the answering node's
replica applied its event: `command_and_wait`). A write is counted lost when (a) the delete of an
acknowledged instance answers 404 three times (through random hosts, over a few seconds:
a host just restarted may still be catching up): the cluster no longer knows an instance
it acknowledged; except when the host it was placed on was killed meanwhile (the master
deletes the instances of a host marked down: `writes_removed_with_host`) or an earlier
try of the delete got no answer (it may have deleted it:
`writes_gone_after_unanswered_delete`); or (b) at the end, once the three nodes agree,
any node still lists an instance whose delete was acknowledged. The end also needs the three
nodes to agree (one master, term and state hash: the same committed log).

Exit status 1 when an undocumented 5xx was answered, an acknowledged write was lost, or
the nodes did not agree at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.netns import bridged_namespaces, can_make_namespaces
from tests.integration.nodes import API_KEY, NodeProcess, agreement, start_cluster, wait_for
from tests.integration.streams import MODEL
from tests.integration.test_distributed import _measured, node_id

PROMPTS = [
    "Write one sentence about the sea.",
    "Name three colours.",
    "What is the capital of France?",
    "Count from 1 to 10.",
]
DIALECTS = ["openai", "anthropic", "responses", "ollama"]
BAD = ["malformed_json", "unknown_model", "wrong_key", "too_large", "invalid_param"]
EXPECTED_BAD = {
    "malformed_json": 400,
    "unknown_model": 404,
    "wrong_key": 401,
    "too_large": 413,
    "invalid_param": 400,
}
# No answer from a server: refused (a host just killed), reset or cut midway, timed out.
TRANSPORT = (
    httpx.TransportError,
    openai.APIConnectionError,
    anthropic.APIConnectionError,
    ConnectionError,
)
DOCUMENTED_5XX = {"unavailable_error", "runner_error", "overloaded_error"}


@dataclass
class Outcome:
    """One request: `status` is the HTTP status (200 also when the stream failed later:
    then `stream_error` holds why), or None with `transport` naming the exception."""

    worker: int
    kind: str  # a dialect or a bad input
    streamed: bool
    host: int
    started: float  # seconds since the run began
    status: int | None = None
    error_type: str | None = None
    body: str | None = None  # the start of an error's body
    stream_error: str | None = None
    transport: str | None = None
    timed_out: bool = False
    first_s: float | None = None  # first answer byte (stream: first chunk; else the answer)
    max_gap_s: float = 0.0
    total_s: float = 0.0


class Chunks:
    """Times the chunks of one answer."""

    def __init__(self) -> None:
        self.since = time.monotonic()
        self.last: float | None = None
        self.first: float | None = None
        self.gap = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now - self.since
        else:
            assert self.last is not None
            self.gap = max(self.gap, now - self.last)
        self.last = now


@dataclass
class Host:
    index: int
    node: NodeProcess
    up: bool = True
    kills: list[float] = field(default_factory=list)  # when it was killed (run seconds)


class Run:
    def __init__(self, args: argparse.Namespace, nodes: list[NodeProcess]) -> None:
        self.args = args
        self.hosts = [Host(i, n) for i, n in enumerate(nodes)]
        self.ids = [node_id(n) for n in nodes]
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.abort = threading.Event()  # an error or Ctrl-C: restart nothing more
        self.began = time.monotonic()
        self.outcomes: list[Outcome] = []
        self.kills: list[dict[str, Any]] = []
        self.writes: list[dict[str, Any]] = []
        self.memory: dict[int, dict[str, Any]] = {}

    def now(self) -> float:
        return time.monotonic() - self.began

    def up_hosts(self) -> list[Host]:
        with self.lock:
            return [h for h in self.hosts if h.up]

    def pick(self, rng: random.Random) -> Host | None:
        up = self.up_hosts()
        return rng.choice(up) if up else None

    # -- clients -----------------------------------------------------------------------

    def client_loop(self, worker: int) -> None:
        rng = random.Random(self.args.seed * 1000 + worker)
        while not self.stop.is_set():
            host = self.pick(rng)
            if host is None:
                time.sleep(0.5)
                continue
            if rng.random() < self.args.bad_share:
                kind, streamed = rng.choice(BAD), False
            else:
                kind, streamed = rng.choice(DIALECTS), rng.random() < 0.5
            outcome = Outcome(worker, kind, streamed, host.index, round(self.now(), 2))
            self.request(outcome, host.node, rng)
            with self.lock:
                self.outcomes.append(outcome)

    def request(self, out: Outcome, node: NodeProcess, rng: random.Random) -> None:
        chunks = Chunks()
        prompt = rng.choice(PROMPTS)
        tokens = rng.randint(8, 16)
        try:
            if out.kind in BAD:
                self.bad(out, node)
            else:
                send = getattr(self, f"send_{out.kind}")
                send(node, prompt, tokens, out.streamed, chunks)
                out.status = 200
        except Exception as exc:  # every failure is recorded, none stops the soak
            self.failed(out, exc, chunks)
        out.total_s = round(time.monotonic() - chunks.since, 3)
        if chunks.first is not None:  # also for a stream cut later
            out.first_s = chunks.first
        elif out.status is not None:
            out.first_s = out.total_s
        if out.first_s is not None:
            out.first_s = round(out.first_s, 3)
        out.max_gap_s = round(chunks.gap, 3)

    def failed(self, out: Outcome, exc: Exception, chunks: Chunks) -> None:
        name = type(exc).__name__
        status = _status_of(exc)
        if isinstance(exc, TRANSPORT):  # no answer, or a connection cut midway
            out.transport = name + (" (mid-stream)" if chunks.first is not None else "")
            out.timed_out = "Timeout" in name or "timed out" in str(exc).lower()
        elif chunks.first is not None:  # after the first chunk: an error in the stream
            out.status = 200
            out.stream_error = f"{name}: {str(exc)[:200]}"
        elif status is not None and status >= 100:
            out.status = status
            out.error_type, out.body = _error_of(exc)
        else:
            out.transport = name
            out.timed_out = "Timeout" in name or "timed out" in str(exc).lower()

    def send_openai(
        self, node: NodeProcess, prompt: str, tokens: int, streamed: bool, chunks: Chunks
    ) -> None:
        with openai.OpenAI(
            base_url=node.url + "/v1", api_key=API_KEY, timeout=self.args.timeout, max_retries=0
        ) as c:
            messages: Any = [{"role": "user", "content": prompt}]
            if not streamed:
                c.chat.completions.create(model=MODEL, messages=messages, max_tokens=tokens)
                chunks.tick()
                return
            stream = c.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=tokens, stream=True
            )
            with stream:
                for _ in stream:
                    chunks.tick()

    def send_anthropic(
        self, node: NodeProcess, prompt: str, tokens: int, streamed: bool, chunks: Chunks
    ) -> None:
        with anthropic.Anthropic(
            base_url=node.url, api_key=API_KEY, timeout=self.args.timeout, max_retries=0
        ) as c:
            messages: Any = [{"role": "user", "content": prompt}]
            if not streamed:
                c.messages.create(model=MODEL, max_tokens=tokens, messages=messages)
                chunks.tick()
                return
            stream = c.messages.create(
                model=MODEL, max_tokens=tokens, messages=messages, stream=True
            )
            with stream:
                for _ in stream:
                    chunks.tick()

    def send_responses(
        self, node: NodeProcess, prompt: str, tokens: int, streamed: bool, chunks: Chunks
    ) -> None:
        with openai.OpenAI(
            base_url=node.url + "/v1", api_key=API_KEY, timeout=self.args.timeout, max_retries=0
        ) as c:
            if not streamed:
                c.responses.create(model=MODEL, input=prompt, max_output_tokens=tokens)
                chunks.tick()
                return
            stream = c.responses.create(
                model=MODEL, input=prompt, max_output_tokens=tokens, stream=True
            )
            with stream:
                for event in stream:
                    chunks.tick()
                    if event.type in ("error", "response.failed"):
                        raise RuntimeError(f"{event.type} event: {event}")

    def send_ollama(
        self, node: NodeProcess, prompt: str, tokens: int, streamed: bool, chunks: Chunks
    ) -> None:
        c = ollama.Client(host=node.url, headers=node.headers(), timeout=self.args.timeout)
        messages = [{"role": "user", "content": prompt}]
        options = {"num_predict": tokens}
        if not streamed:
            c.chat(model=MODEL, messages=messages, options=options)
            chunks.tick()
            return
        for _ in c.chat(model=MODEL, messages=messages, options=options, stream=True):
            chunks.tick()

    def bad(self, out: Outcome, node: NodeProcess) -> None:
        url = node.url + "/v1/chat/completions"
        headers = {**node.headers(), "Content-Type": "application/json"}
        body: bytes | None = None
        message = {"role": "user", "content": "Hi"}
        if out.kind == "malformed_json":
            body = b'{"model": "' + MODEL.encode() + b'", "messages": [{'
        elif out.kind == "unknown_model":
            body = json.dumps({"model": "no-such-model-xyz", "messages": [message]}).encode()
        elif out.kind == "wrong_key":
            headers["Authorization"] = "Bearer sk-wrong"
            body = json.dumps({"model": MODEL, "messages": [message]}).encode()
        elif out.kind == "too_large":
            big = {"role": "user", "content": "a" * (4 * 1024 * 1024 + 1024)}
            body = json.dumps({"model": MODEL, "messages": [big], "max_tokens": 8}).encode()
        else:  # invalid_param
            body = json.dumps({"model": MODEL, "messages": [message], "temperature": 9}).encode()
        response = httpx.post(url, content=body, headers=headers, timeout=self.args.timeout)
        out.status = response.status_code
        if response.status_code >= 400:
            out.error_type, out.body = _type_in(response.text), response.text[:300]

    # -- the killer ----------------------------------------------------------------------

    def killer_loop(self, rng: random.Random) -> None:
        """Kill the hosts in random order, each once a round, so that every host (the
        master among them) is killed within three kills: a plain random choice killed
        the same non-master host three times in a row with seed 1."""
        order: list[Host] = []
        while not self.stop.wait(self.args.kill_every):
            if not order:
                order = rng.sample(self.hosts, len(self.hosts))
            self.kill_and_restart(order.pop())

    def kill_and_restart(self, host: Host) -> None:
        node = host.node
        assert node.process is not None
        self.sample()  # the end figures of the processes about to die
        with self.lock:
            host.up = False
            host.kills.append(self.now())
        killed_at = self.now()
        was_master = _is_master(node)
        pids = [node.process.pid, *node.runner_pids()]
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.process.wait(30)
        record: dict[str, Any] = {
            "host": host.index,
            "at_s": round(killed_at, 1),
            "was_master": was_master,
        }
        record["runners_killed"] = len(pids) - 1
        print(
            f"[{killed_at:7.1f} s] killed host {host.index}"
            f"{' (the master)' if was_master else ''} ({len(pids) - 1} runners)",
            flush=True,
        )
        if self.abort.wait(self.args.down_for):
            return
        restarted = time.monotonic()
        try:
            node.start()
        except TimeoutError as exc:
            record["restart_error"] = str(exc)
        with self.lock:
            host.up = True
        nodes = [h.node for h in self.hosts]
        try:
            wait_for(lambda: agreement(nodes, 3), self.args.recovery_timeout, "agreement")
            record["agreed_after_restart_s"] = round(time.monotonic() - restarted, 2)
        except TimeoutError:
            record["agreed_after_restart_s"] = None
        print(
            f"[{self.now():7.1f} s] host {host.index} back, agreement after "
            f"{record['agreed_after_restart_s']} s",
            flush=True,
        )
        # The master places a lost instance again only when no other instance of the model
        # remains: give the host back its own, as an operator would, so that the load stays
        # spread over three instances.
        try:
            since = time.monotonic()
            place_serving([node])
            record["instance_ready_after_s"] = round(time.monotonic() - since, 2)
        except (httpx.HTTPError, TimeoutError, OSError, ValueError) as exc:
            record["instance_error"] = f"{type(exc).__name__}: {exc}"[:200]
        with self.lock:
            self.kills.append(record)

    # -- acknowledged writes --------------------------------------------------------------

    def writer_loop(self, rng: random.Random) -> None:
        while not self.stop.wait(self.args.write_every):
            self.write_once(rng)

    def write_once(self, rng: random.Random) -> None:
        via = self.pick(rng)
        if via is None:
            return
        target = rng.choice(self.up_hosts() or [via])
        body = {"model": MODEL, "strategy": "pipeline", "nodes": [self.ids[target.index]]}
        try:
            response = httpx.post(
                via.node.url + "/instances", json=body, headers=via.node.headers(), timeout=60
            )
        except httpx.HTTPError:
            return  # no acknowledgement: nothing promised
        if response.status_code != 201:
            return
        write = {"id": response.json()["id"], "target": target.index, "acked_s": self.now()}
        write["delete"] = None
        with self.lock:
            self.writes.append(write)
        time.sleep(0.5)
        deadline = time.monotonic() + 120
        # A 404 is final only when three tries (over several seconds, through random
        # hosts) all answer it: a host just restarted may not have caught up yet. A try
        # without an answer (cut, or a 5xx) may have deleted it: a 404 after one is
        # `unclear`, not lost.
        misses = 0
        while time.monotonic() < deadline:
            via = self.pick(rng)
            if via is None:
                time.sleep(1)
                continue
            try:
                answer = httpx.delete(
                    f"{via.node.url}/instances/{write['id']}",
                    headers=via.node.headers(),
                    timeout=60,
                )
            except httpx.HTTPError:
                write["unclear"] = True
                time.sleep(1)
                continue
            if answer.status_code == 404 and misses < 2:
                misses += 1
                time.sleep(2)
                continue
            if answer.status_code in (200, 404):
                with self.lock:
                    write["delete"] = answer.status_code
                    write["target_killed"] = any(
                        t >= write["acked_s"] for t in self.hosts[target.index].kills
                    )
                return
            write["unclear"] = True
            time.sleep(1)

    # -- memory --------------------------------------------------------------------------

    def sample(self) -> None:
        at = self.now()
        for host in self.up_hosts():
            node = host.node
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                pids = [(node.process.pid, "node"), *((p, "runner") for p in node.runner_pids())]
            except (OSError, AssertionError):
                continue
            for pid, role in pids:
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                with self.lock:
                    entry = self.memory.setdefault(
                        pid, {"pid": pid, "host": host.index, "role": role, "seen_s": at}
                    )
                    if "start_rss" not in entry and at >= entry["seen_s"] + self.args.settle:
                        entry["start_s"], entry["start_rss"] = at, rss
                    if "start_rss" not in entry and entry["seen_s"] <= self.args.settle_before:
                        entry["start_s"], entry["start_rss"] = at, rss  # after the warm-up
                    entry["end_s"], entry["end_rss"] = at, rss

    def sampler_loop(self) -> None:
        while not self.stop.wait(self.args.sample_every):
            self.sample()


def _status_of(exc: Exception) -> int | None:
    for attribute in ("status_code",):
        value = getattr(exc, attribute, None)
        if isinstance(value, int):
            return value
    return None


def _error_of(exc: Exception) -> tuple[str | None, str]:
    """The error type its body names, and the start of the body. Duck-typed: the
    `anthropic` client raises with responses of its own HTTP package (httpx2)."""
    if isinstance(exc, ollama.ResponseError):
        return "ollama", exc.error[:300]  # Ollama's errors are `{"error": "..."}`: no type
    text = None
    with contextlib.suppress(Exception):
        text = str(getattr(exc, "response").text)  # noqa: B009
    body = getattr(exc, "body", None)
    kind = _type_of(body) if isinstance(body, dict) else None
    if kind is None and text is not None:
        kind = _type_in(text)
    return kind, (text if text is not None else str(exc))[:300]


def _is_master(node: NodeProcess) -> bool | None:
    """Whether `node` says it is the master (None when it does not answer)."""
    try:
        state = node.state()
    except OSError:
        return None
    return bool(state["master"] == state["node_id"])


def _type_in(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return "not-json"
    return _type_of(data) if isinstance(data, dict) else None


def _type_of(data: dict[str, Any]) -> str | None:
    """OpenAI's `{"error": {"type"}}` (or the inner object the `openai` client keeps),
    Anthropic's `{"type": "error", "error": {"type"}}`, Ollama's `{"error": "..."}`."""
    error = data.get("error")
    if isinstance(error, dict):
        return str(error.get("type"))
    if isinstance(error, str):
        return "ollama"
    return str(data["type"]) if "type" in data else None


def documented_5xx(out: Outcome) -> bool:
    if out.status == 503 and out.error_type in DOCUMENTED_5XX:
        return True
    return out.status == 503 and out.kind == "ollama" and out.error_type == "ollama"


def report(
    run: Run, agreed: bool, leftover: list[str], instances: list[str], seconds: float
) -> dict[str, Any]:
    outs = run.outcomes
    by_kind = Counter(f"{o.kind}{'/stream' if o.streamed else ''}" for o in outs)
    statuses = Counter(str(o.status) for o in outs if o.status is not None)
    fives = [o for o in outs if o.status is not None and o.status >= 500]
    five_types = Counter(
        f"{o.status} {o.kind} {o.error_type} {'documented' if documented_5xx(o) else 'UNDOCUMENTED'}"
        for o in fives
    )
    undocumented = [asdict(o) for o in fives if not documented_5xx(o)]
    bad_mismatch = Counter(
        f"{o.kind} expected {EXPECTED_BAD[o.kind]} got {o.status}"
        for o in outs
        if o.kind in EXPECTED_BAD and o.status is not None and o.status != EXPECTED_BAD[o.kind]
    )
    transport = Counter(o.transport for o in outs if o.transport)
    served = [o for o in outs if o.status == 200 and o.kind in DIALECTS]
    longest_first = max((o for o in outs if o.first_s is not None), key=lambda o: o.first_s or 0)
    longest_gap = max(outs, key=lambda o: o.max_gap_s)
    longest_total = max(outs, key=lambda o: o.total_s)
    gone = [w for w in run.writes if w["delete"] == 404]
    lost_creates = [w for w in gone if not w.get("target_killed") and not w.get("unclear")]
    removed_with_host = [w for w in gone if w.get("target_killed")]
    unclear = [w for w in gone if w.get("unclear") and not w.get("target_killed")]
    lost_deletes = [w for w in run.writes if w["delete"] == 200 and w["id"] in leftover]
    seen = sorted(run.memory.values(), key=lambda e: (e["host"], e["role"], e["seen_s"]))
    memory = [e for e in seen if "start_rss" in e]  # lived past --settle
    for entry in memory:
        entry["lived_s"] = round(entry["end_s"] - entry["start_s"], 1)
        entry["growth_mib"] = round((entry["end_rss"] - entry["start_rss"]) / 2**20, 1)
        entry["start_mib"] = round(entry["start_rss"] / 2**20, 1)
        entry["end_mib"] = round(entry["end_rss"] / 2**20, 1)
    long_lived = [e for e in memory if e["lived_s"] >= run.args.long_lived]
    growth = max(long_lived, key=lambda e: e["growth_mib"], default=None)
    figures: dict[str, Any] = {
        "duration_s": round(seconds, 1),
        "hosts": "namespaces" if run.args.namespaces else "127.0.0.1",
        "clients": run.args.clients,
        "requests": len(outs),
        "served_200": len(served),
        "requests_by_kind": dict(sorted(by_kind.items())),
        "statuses": dict(sorted(statuses.items())),
        "stream_errors_after_first_chunk": sum(1 for o in outs if o.stream_error),
        "status_5xx": dict(sorted(five_types.items())),
        "undocumented_5xx": len(undocumented),
        "bad_inputs_unexpected_status": dict(bad_mismatch),
        "transport_errors": dict(transport),
        "timeouts": sum(1 for o in outs if o.timed_out),
        "kills": run.kills,
        "recovery_max_s": max(
            (k["agreed_after_restart_s"] or float("inf") for k in run.kills), default=None
        ),
        "acknowledged_writes": len(run.writes),
        "acknowledged_deletes": sum(1 for w in run.writes if w["delete"] == 200),
        "writes_removed_with_host": len(removed_with_host),
        "writes_gone_after_unanswered_delete": len(unclear),
        "writes_delete_unacknowledged": sum(1 for w in run.writes if w["delete"] is None),
        "acknowledged_lost": len(lost_creates) + len(lost_deletes),
        "agreed_at_end": agreed,
        "longest_first_answer_s": longest_first.first_s,
        "longest_first_answer_request": asdict(longest_first),
        "longest_stream_gap_s": longest_gap.max_gap_s,
        "longest_stream_gap_request": asdict(longest_gap),
        "longest_request_s": longest_total.total_s,
        "memory_max_growth_mib_long_lived": growth["growth_mib"] if growth else None,
        "memory_max_growth_process": growth,
        "processes_gone_before_settle": len(seen) - len(memory),
        "instances_at_end": instances,
        "memory": [
            {
                k: e[k]
                for k in (
                    "host",
                    "role",
                    "pid",
                    "start_s",
                    "end_s",
                    "lived_s",
                    "start_mib",
                    "end_mib",
                    "growth_mib",
                )
            }
            for e in memory
        ],
        "undocumented_5xx_requests": undocumented[:20],
        "lost_writes": lost_creates + lost_deletes,
        "stream_error_examples": [o.stream_error for o in outs if o.stream_error][:5],
    }
    return figures


def print_figures(figures: dict[str, Any]) -> None:
    for name, value in figures.items():
        if name == "memory":
            print("memory (host role pid: start_mib -> end_mib over lived_s)")
            for e in value:
                print(
                    f"  {e['host']} {e['role']:6} {e['pid']:>7}: {e['start_mib']:7.1f} -> "
                    f"{e['end_mib']:7.1f} MiB over {e['lived_s']:7.1f} s ({e['growth_mib']:+.1f})"
                )
        elif name == "kills":
            for k in value:
                print(f"{'kill':32} {k}")
        else:
            print(f"{name:32} {value}")


@contextlib.contextmanager
def cluster(args: argparse.Namespace, root: Path, models: Path) -> Iterator[list[NodeProcess]]:
    stack = contextlib.ExitStack()
    with stack:
        hosts = None
        if args.namespaces:
            hosts = stack.enter_context(bridged_namespaces(3, impairable=True))
        nodes: list[NodeProcess] = []
        try:
            nodes = start_cluster(root, models, 3, hosts=hosts)
            if not hosts:  # the API asks for a key on 127.0.0.1 too
                for node in nodes:
                    node.stop(signal.SIGKILL)
                    node.api_key = API_KEY
                    node.start()
            yield nodes
        finally:
            for node in nodes:
                if node.process is None:
                    continue
                with contextlib.suppress(Exception):
                    for pid in node.runner_pids():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    node.stop(signal.SIGKILL)


def place_serving(nodes: list[NodeProcess]) -> list[str]:
    """One single-node instance on each of `nodes`, ready."""
    ids = []
    for node in nodes:
        body = {"model": MODEL, "strategy": "pipeline", "nodes": [node_id(node)]}
        response = httpx.post(
            node.url + "/instances", json=body, headers=node.headers(), timeout=60
        )
        response.raise_for_status()
        ids.append(response.json()["id"])
    for node, instance in zip(nodes, ids, strict=True):

        def ready(node: NodeProcess = node, instance: str = instance) -> bool | None:
            return True if node.get(f"/instances/{instance}")["status"] == "ready" else None

        wait_for(ready, 600, f"instance {instance} ready")
    return ids


def soak(args: argparse.Namespace, root: Path, models: Path) -> tuple[dict[str, Any], bool]:
    with cluster(args, root, models) as nodes:
        wait_for(lambda: _measured(nodes), 120, "three nodes agreeing, every link measured")
        print(f"cluster up: {[n.url for n in nodes]}", flush=True)
        place_serving(nodes)
        print("three single-node instances ready; warming up", flush=True)
        run = Run(args, nodes)
        warm = [Outcome(-1, "openai", False, h.index, 0.0) for h in run.hosts]
        for out, host in zip(warm, run.hosts, strict=True):
            run.request(out, host.node, random.Random(0))
        print(f"warm-up statuses: {[o.status for o in warm]}", flush=True)
        run.began = time.monotonic()
        args.settle_before = 1.0  # processes seen in the first sample start there
        run.sample()
        threads: list[threading.Thread] = []
        starts: list[Callable[[], None]] = [
            *(lambda w=w: run.client_loop(w) for w in range(args.clients)),
            lambda: run.killer_loop(random.Random(args.seed + 1)),
            lambda: run.writer_loop(random.Random(args.seed + 2)),
            run.sampler_loop,
        ]
        for start in starts:
            thread = threading.Thread(target=start, daemon=True)
            thread.start()
            threads.append(thread)
        try:
            end = run.began + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(30.0, max(0.0, end - time.monotonic())))
                with run.lock:
                    done = len(run.outcomes)
                print(f"[{run.now():7.1f} s] {done} requests so far", flush=True)
        except BaseException:
            run.abort.set()
            raise
        finally:
            run.stop.set()
            threads[args.clients].join(args.down_for + 120)  # the killer: no restart after
        for thread in threads:
            thread.join(args.timeout + 30)
        seconds = run.now()
        run.sample()
        nodes_ = [h.node for h in run.hosts]
        try:
            wait_for(lambda: agreement(nodes_, 3), 120, "agreement at the end")
            agreed = True
        except TimeoutError:
            agreed = False
        leftover: set[str] = set()
        instances: set[str] = set()
        for node in nodes_:
            with contextlib.suppress(Exception):
                for i in node.get("/instances")["instances"]:
                    leftover.add(i["id"])
                    ids = [s["node_id"] for s in i["shards"]]
                    hosts = [run.ids.index(n) if n in run.ids else n for n in ids]
                    instances.add(f"{i['id']} on hosts {hosts}: {i['status']}")
        figures = report(run, agreed, sorted(leftover), sorted(instances), seconds)
    ok = figures["undocumented_5xx"] == 0 and figures["acknowledged_lost"] == 0 and agreed
    return figures, ok


def main() -> None:
    parser = argparse.ArgumentParser(description="3-host soak under mixed load and host kills")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=12, choices=range(8, 17), metavar="8-16")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-every", type=float, default=240, help="seconds")
    parser.add_argument("--down-for", type=float, default=20, help="seconds")
    parser.add_argument("--bad-share", type=float, default=0.15)
    parser.add_argument("--timeout", type=float, default=180, help="client timeout, seconds")
    parser.add_argument("--write-every", type=float, default=10, help="seconds")
    parser.add_argument("--sample-every", type=float, default=10, help="seconds")
    parser.add_argument("--settle", type=float, default=60, help="seconds before start RSS")
    parser.add_argument("--long-lived", type=float, default=300, help="seconds")
    parser.add_argument("--recovery-timeout", type=float, default=180, help="seconds")
    parser.add_argument("--models-dir", type=Path, help="a converted model to reuse")
    parser.add_argument("--no-namespaces", action="store_true", help="nodes on 127.0.0.1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.namespaces = can_make_namespaces() and not args.no_namespaces
    args.settle_before = -1.0

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # `kill` cleans up as Ctrl-C does (a background job of a script ignores SIGINT).
    signal.signal(signal.SIGTERM, interrupted)
    if not args.namespaces:
        print("note: no network namespaces (asked, or not root or no iproute2): 127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="exo-soak-") as tmp:
        models = args.models_dir or Path(tmp) / "models"
        figures, ok = soak(args, Path(tmp), models)
    print_figures(figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
