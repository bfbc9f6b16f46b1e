"""The loops that read untrusted input, fed junk and then a valid message: the junk is
refused with a logged reason and the loop goes on to take the valid one (no crash, no
restart). Discovery's loop is covered in tests/actors/test_discovery.py."""

from __future__ import annotations

import io
import logging
import os
import queue
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from exo.actors.history import Ballot
from exo.actors.links import LinkNetwork, _Heard
from exo.actors.runner_handle import RunnerHandle
from exo.actors.wire import PeerMessage, SyncRequest
from exo.engine import protocol
from exo.engine.runner import Inbox, Runner, read_stdin
from exo.environment import RealEnvironment
from exo.events.codec import encode
from exo.events.facts import Instance, Shard
from exo.events.ids import InstanceId, ModelId, NodeId
from exo.link_cipher import link_cipher
from tests.actors.test_link_crypto import _pair, _ws
from tests.fuzz.mutations import HOSTILE_TEXTS

_JUNK = [t for t in HOSTILE_TEXTS if t.strip()] + [b'{"type":"Ready","info":7}']


async def test_a_runner_writing_junk_then_a_valid_line_is_heard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The node's reader of a runner's stdout: each junk line is logged and skipped."""
    info = protocol.EngineInfo("cpu", "float32", "none", "llama", 2, 64)
    lines = [*_JUNK, encode(protocol.Ready(info), protocol.FromRunner)]
    text = b"".join(line + b"\n" for line in lines)
    script = f"import sys; sys.stdout.buffer.write({text!r})"
    instance = Instance(InstanceId("i"), ModelId("m"), "pipeline", (Shard(NodeId("n"), 0, 0, 2),))
    handle = RunnerHandle(
        RealEnvironment(Path(".")), instance, instance.shards[0], Path("."), lambda _: None
    )
    with caplog.at_level(logging.WARNING), trio.fail_after(10):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", script], stdout=subprocess.PIPE
        )
        assert await handle._pump_stdout(process) == "runner process exited"
        await process.wait()
    assert handle.info == info and handle.status.phase == "ready"
    undecodable = [r for r in caplog.records if "undecodable line" in r.getMessage()]
    assert len(undecodable) == len(_JUNK)


def test_a_runner_fed_junk_answers_each_line_and_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner's reader of its stdin, and its loop: a junk line is answered with a
    `RequestError` that says why, and the runner stops only at `Shutdown`."""
    read, write = os.pipe()
    os.write(
        write, b"".join(j + b"\n" for j in _JUNK) + encode(protocol.Shutdown(), protocol.ToRunner)
    )
    os.close(write)
    inbox: Inbox = queue.Queue()
    read_stdin(read, inbox)
    os.close(read)
    out = io.BytesIO()
    with caplog.at_level(logging.WARNING):
        assert Runner(out, inbox).run() == 0
    answers = [line for line in out.getvalue().splitlines() if b"RequestError" in line]
    assert len(answers) == len(_JUNK)
    assert all(b"malformed runner input line ignored" in a for a in answers)
    assert sum("malformed runner input" in r.getMessage() for r in caplog.records) == len(_JUNK)


async def test_a_link_reading_a_junk_frame_logs_it_and_reads_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame that opens (the peer holds the key) but does not decode is logged and
    skipped; the next one is delivered. A frame that does not open ends the link."""
    shared = bytes(32)
    peer = link_cipher(shared, b"s", b"t", dialer=True)
    mine = link_cipher(shared, b"s", b"t", dialer=False)
    network = LinkNetwork(RealEnvironment(tmp_path), NodeId("node-a"), tmp_path, "n", "k", 7000, ())
    delivered: list[PeerMessage] = []
    network.connect(NodeId("node-a"), lambda _, message: delivered.append(message))
    valid = SyncRequest(Ballot(1, NodeId("node-b")), (), 0)
    them, us = _pair()
    for junk in _JUNK:
        await them.send_message(peer.seal(junk))
    await them.send_message(peer.seal(encode(valid, PeerMessage)))
    await them.send_message(b"not sealed")
    with caplog.at_level(logging.WARNING), trio.fail_after(10):
        await network._read(NodeId("node-b"), _ws(us), mine, _Heard(0.0))
    assert delivered == [valid]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("undecodable frame from node-b" in m for m in messages) == len(_JUNK)
    assert "failed its integrity check" in messages[-1]
