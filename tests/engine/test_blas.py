"""The gemv forward and the OpenBLAS kernel choice: single-row products give the same
numbers as numpy in a real MLX process, and the shim builds (or says why not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exo.engine import blas

# Every shape of single-row product MLX hands to cblas_sgemm, and two that are not
# single-row (they must reach OpenBLAS's sgemm unchanged).
PRODUCTS = r"""
import json, sys
import mlx.core as mx
import numpy as np
from exo.engine.blas import loaded_blas

rng = np.random.default_rng(7)
def arr(*shape):
    return rng.standard_normal(shape).astype(np.float32)

x, w, c = arr(1, 96), arr(160, 96), arr(1, 160)
xt = arr(96, 1)          # a row stored as a column: MLX passes it transposed
batch, wb = arr(3, 1, 96), arr(3, 96, 160)
many = arr(5, 96)
cases = {
    "row times transposed weight (a linear layer)": (mx.array(x) @ mx.array(w).T, x @ w.T),
    "row times weight": (mx.array(x) @ mx.array(w.T.copy()), x @ w.T),
    "transposed row": (mx.array(xt).T @ mx.array(w).T, xt.T @ w.T),
    "batched rows": (mx.array(batch) @ mx.array(wb), batch @ wb),
    "addmm with beta": (
        mx.addmm(mx.array(c), mx.array(x), mx.array(w).T, alpha=0.5, beta=2.0),
        2.0 * c + 0.5 * (x @ w.T),
    ),
    "five rows (sgemm)": (mx.array(many) @ mx.array(w).T, many @ w.T),
    "column result (sgemm)": (mx.array(w) @ mx.array(xt), w @ xt),
}
worst = {}
for name, (got, want) in cases.items():
    got = np.array(got)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    worst[name] = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
print(json.dumps({"blas": loaded_blas(), "worst": worst}))
"""


def _products(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PRODUCTS], env=env, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD is a Linux mechanism")
def test_single_row_products_through_the_forward_match_numpy() -> None:
    if blas.find_openblas() is None or blas.gemv_forward_library() is None:
        pytest.skip("needs OpenBLAS and a C compiler")
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env = blas.runner_env(plain)
    assert env["LD_PRELOAD"].split()[0] == str(blas.gemv_forward_library())
    result = _products(env)
    assert str(result["blas"]).endswith("with gemv forward")
    worst = result["worst"]
    assert isinstance(worst, dict)
    assert len(worst) == 7
    for name, error in worst.items():
        assert error < 1e-5, f"{name}: relative error {error}"


def test_coretype_follows_the_cpu_flags() -> None:
    skylake = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx2"})
    assert blas.openblas_coretype(skylake | {"fma"}, "x86_64") == "SkylakeX"
    assert blas.openblas_coretype(frozenset({"avx2", "fma", "sse4_2"}), "x86_64") == "Haswell"
    assert blas.openblas_coretype(frozenset({"sse4_2", "avx"}), "x86_64") is None
    assert blas.openblas_coretype(skylake | {"fma"}, "aarch64") is None


def test_a_user_coretype_is_kept() -> None:
    env = blas.runner_env({"OPENBLAS_CORETYPE": "Zen"})
    if blas.find_openblas() is not None:
        assert env["OPENBLAS_CORETYPE"] == "Zen"


def test_the_forward_is_built_once_per_source(tmp_path: Path) -> None:
    first = blas.build_gemv_forward(tmp_path)
    if first is None:
        pytest.skip("no C compiler")
    stamp = first.stat().st_mtime_ns
    assert blas.build_gemv_forward(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_without_a_compiler_the_forward_is_skipped_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert blas.build_gemv_forward(tmp_path / "cache") is None
    assert "could not build gemv_forward.c" in caplog.text
    assert "without the gemv forward" in caplog.text
