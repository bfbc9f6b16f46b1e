from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nodes import API_KEY, NodeProcess


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted copy of the bundled model shared by every node of the session."""
    return tmp_path_factory.mktemp("models")


def _lone_node(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, api_key: str | None = None
) -> Iterator[NodeProcess]:
    # No preload: the first request must place the model itself and wait for it.
    home = tmp_path_factory.mktemp("keyed" if api_key else "node") / "home"
    process = NodeProcess(home, models_dir, "--preload", "", api_key=api_key)
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.log_text()[-4000:]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[NodeProcess]:
    yield from _lone_node(tmp_path_factory, models_dir)


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[NodeProcess]:
    """A lone node started with `--api-key API_KEY`."""
    yield from _lone_node(tmp_path_factory, models_dir, API_KEY)
