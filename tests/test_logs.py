"""Log lines in both formats: text for people (unchanged), JSON lines with the node's id,
term and event index and, inside a request's scope, its id; and a real `exo node
--log-format json` whose every stderr line is such an object."""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from exo.logs import configure_logging, request_context, set_log_context
from tests.integration.nodes import NodeProcess, wait_for


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_node_its_term_index_and_the_request(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    set_log_context(lambda: ("node-0123456789ab", 4, 17))
    log = logging.getLogger("exo.test")
    log.info("plain %s", "line")
    with request_context("req-42"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    log.info("after")
    first, failed, after = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "plain line" and first["level"] == "info"
    assert first["logger"] == "exo.test" and first["time"].endswith("+00:00")
    assert (first["node"], first["term"], first["index"]) == ("node-0123456789ab", 4, 17)
    assert "request_id" not in first
    assert failed["request_id"] == "req-42" and failed["level"] == "error"
    assert "ValueError: boom" in failed["exception"]
    assert "request_id" not in after  # the scope ended


def test_the_text_format_stays_as_it_was(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")
    set_log_context(lambda: ("node-0123456789ab", 4, 17))
    logging.getLogger("exo.test").warning("careful")
    line = capsys.readouterr().err.strip()
    assert line.endswith("WARNING [6789ab t4 i17] exo.test: careful"), line
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")


@pytest.mark.slow
def test_a_node_logs_json_lines(tmp_path: Path) -> None:
    node = NodeProcess(
        tmp_path / "home", tmp_path / "models", "--log-format", "json", "--preload", ""
    )
    node.start()
    try:
        node_id = wait_for(lambda: node.state()["master"], 30, "the node electing itself")
    finally:
        node.stop(signal.SIGTERM)
    lines = [line for line in node.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(r["message"].startswith(f"node {node_id} serving") for r in records), lines[:5]
    assert all(r.get("node") == node_id for r in records if r["logger"] == "exo.control")
