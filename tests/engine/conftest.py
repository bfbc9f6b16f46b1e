"""Shared fixtures: one converted bundled model per test session, one runner per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exo.engine import protocol
from exo.models.bundled import ensure_bundled_model
from tests.engine.helpers import RunnerProcess


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled GGUF converted once (about half a second) for every engine test."""
    return ensure_bundled_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def runner(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunnerProcess]:
    """A runner with the bundled model loaded; tests run requests on it one after another."""
    process = RunnerProcess(tmp_path_factory.mktemp("runner") / "stderr.log")
    process.send(protocol.Load(model_dir=str(model_dir), start_layer=0, end_layer=30))
    assert isinstance(process.recv(), protocol.Loading)
    ready = process.recv(timeout=180)
    assert isinstance(ready, protocol.Ready), f"{ready!r}; stderr:\n{process.stderr()}"
    process.info = ready.info
    yield process
    assert process.close() == 0, process.stderr()
