"""Which BLAS a runner's MLX uses, and how to make it a fast one.

Why: the Linux `mlx[cpu]` wheel links a bundled reference (netlib) BLAS, about 40x slower
at float32 matmul than OpenBLAS on the same CPU. MLX calls `cblas_sgemm` through the
dynamic linker, so preloading Debian's OpenBLAS build of `libblas.so.3` into the runner
process interposes it without rebuilding anything. Only the runner needs it, which is why
this is an environment for a child process rather than something the node does to itself.
Set `EXO_BLAS=reference` to keep the bundled BLAS (for comparisons or a broken OpenBLAS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# Debian / Ubuntu multiarch paths of OpenBLAS's reference-ABI `libblas.so.3`
# (packages libopenblas0-pthread, libopenblas0-openmp), preferred in this order.
_ARCH_DIRS = ("x86_64-linux-gnu", "aarch64-linux-gnu")
_FLAVOURS = ("openblas-pthread", "openblas-openmp")
OPENBLAS_CANDIDATES: tuple[Path, ...] = tuple(
    Path("/usr/lib") / arch / flavour / "libblas.so.3"
    for arch in _ARCH_DIRS
    for flavour in _FLAVOURS
)

BLAS_ENV = "EXO_BLAS"


def find_openblas() -> Path | None:
    """The first OpenBLAS `libblas.so.3` installed, or None (always None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return next((path for path in OPENBLAS_CANDIDATES if path.is_file()), None)


def runner_env(base: Mapping[str, str], ranked: bool = False) -> dict[str, str]:
    """The environment for a runner process: `base` plus LD_PRELOAD of OpenBLAS on Linux.

    An existing LD_PRELOAD is kept after ours. `EXO_BLAS=reference` in `base` disables it.
    `ranked`: a rank of a multi-node instance. Its OpenBLAS threads then go to sleep soon
    after each call instead of spinning for a while: pipeline ranks on one machine compute
    in turn, and a finished rank's spinning threads took the cores of the next one
    (`benchmarks/pipeline_ranks.py`, 2 cores: 2 ranks 0.71x of one runner, 0.95x with this).
    """
    env = dict(base)
    if ranked:
        env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2**4 cycles, OpenBLAS's least
    if base.get(BLAS_ENV, "").lower() == "reference":
        return env
    openblas = find_openblas()
    if openblas is None:
        return env
    existing = [p for p in env.get("LD_PRELOAD", "").split() if p and p != str(openblas)]
    env["LD_PRELOAD"] = " ".join([str(openblas), *existing])
    return env


def set_blas_threads(threads: int) -> bool:
    """Set the thread count of the loaded OpenBLAS, if it is OpenBLAS; False otherwise.

    Tensor ranks on one machine compute at the same time, so they split its cores;
    pipeline ranks compute in turn, so each may use all of them.
    """
    try:
        setter = ctypes.CDLL(None).openblas_set_num_threads
    except AttributeError:
        return False
    setter(ctypes.c_int(max(1, threads)))
    return True


def loaded_blas() -> str:
    """Describe the BLAS that this process's `cblas_sgemm` actually resolves to.

    Read from the dynamic linker (the library defining the global `cblas_sgemm`) when a
    BLAS is loaded, else from the BLAS-looking libraries in /proc/self/maps.
    """
    if sys.platform == "darwin":
        return "accelerate"
    path = _sgemm_library() or _mapped_blas()
    if path is None:
        return "none loaded"
    return _describe(path)


def _describe(path: str) -> str:
    name = Path(path).name
    if "openblas" in path.lower():
        return f"openblas ({path})"
    if "mlx" in path and name.startswith("libblas"):
        return "reference (bundled with mlx)"
    if "mkl" in name:
        return f"mkl ({path})"
    return f"other ({path})"


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _sgemm_library() -> str | None:
    """Path of the library that defines the process-global `cblas_sgemm`, if any."""
    try:
        process = ctypes.CDLL(None)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        symbol = ctypes.cast(process.cblas_sgemm, ctypes.c_void_p)
    except (OSError, AttributeError):
        return None
    info = _DlInfo()
    if not libc.dladdr(symbol, ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.fsdecode(info.dli_fname)


def _mapped_blas() -> str | None:
    """A BLAS library mapped into this process, OpenBLAS first, from /proc/self/maps."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {
        line.split(maxsplit=5)[5] for line in maps.splitlines() if len(line.split(maxsplit=5)) == 6
    }
    # numpy's wheel bundles `libscipy_openblas64_` with suffixed symbols: MLX never uses it.
    blas = sorted(p for p in paths if ("blas" in Path(p).name) and "scipy_openblas" not in p)
    return next((p for p in blas if "openblas" in p), blas[0] if blas else None)
