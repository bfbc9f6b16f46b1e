"""Pure pieces of the engine and BLAS selection, without loading a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exo.engine import blas
from exo.engine.reply import split_stop


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("hello", (), ("hello", "", None)),
        ("hello wor", ("world",), ("hello ", "wor", None)),
        ("hello world!", ("world",), ("hello ", "", "world")),
        ("a<|b", ("<|x|>", "<|b|>"), ("a", "<|b", None)),
        ("abc", ("zz",), ("abc", "", None)),
        ("xyEND", ("END", "yE"), ("x", "", "yE")),
    ],
)
def test_split_stop(
    text: str, stops: tuple[str, ...], expected: tuple[str, str, str | None]
) -> None:
    assert split_stop(text, stops) == expected


def test_runner_env_preloads_openblas_unless_disabled() -> None:
    found = blas.find_openblas()
    env = blas.runner_env({"PATH": "/bin", "LD_PRELOAD": "/x/other.so"})
    plain = blas.runner_env({"PATH": "/bin", "LD_PRELOAD": "/x/other.so", "EXO_BLAS": "openblas"})
    if found is None:
        assert env["LD_PRELOAD"] == plain["LD_PRELOAD"] == "/x/other.so"
    else:
        shim = blas.gemv_forward_library()
        first = [] if shim is None else [str(shim)]
        assert env["LD_PRELOAD"].split() == [*first, str(found), "/x/other.so"]
        assert plain["LD_PRELOAD"] == f"{found} /x/other.so"
        assert "OPENBLAS_CORETYPE" not in plain
    assert "LD_PRELOAD" not in blas.runner_env({"EXO_BLAS": "reference"})


def _blas_in_child(env: dict[str, str]) -> str:
    code = "import mlx.core as mx; mx.eval(mx.ones((4, 4)) @ mx.ones((4, 4))); from exo.engine.blas import loaded_blas; print(loaded_blas())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_loaded_blas_sees_the_preload() -> None:
    import os

    if sys.platform != "linux":
        pytest.skip("LD_PRELOAD is a Linux mechanism")
    # The test process itself may run with OpenBLAS preloaded (scripts/test.sh).
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert _blas_in_child(blas.runner_env({**plain, "EXO_BLAS": "reference"})) == (
        "reference (bundled with mlx)"
    )
    if blas.find_openblas() is not None:
        described = _blas_in_child(blas.runner_env(plain))
        assert described.startswith("openblas (")
        assert described.endswith("with gemv forward") == (blas.gemv_forward_library() is not None)
        alone = _blas_in_child(blas.runner_env({**plain, "EXO_BLAS": "openblas"}))
        assert alone.startswith("openblas (") and "gemv" not in alone
