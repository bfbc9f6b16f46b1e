from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nodes import NodeProcess


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted copy of the bundled model shared by every node of the session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[NodeProcess]:
    # No preload: the first request must place the model itself and wait for it.
    process = NodeProcess(tmp_path_factory.mktemp("node") / "home", models_dir, "--preload", "")
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.log_text()[-4000:]
