"""Which BLAS a runner's MLX uses, and how to make it a fast one.

Why: the Linux `mlx[cpu]` wheel links a bundled reference (netlib) BLAS, about 40x slower
at float32 matmul than OpenBLAS on the same CPU. MLX calls `cblas_sgemm` through the
dynamic linker, so preloading Debian's OpenBLAS build of `libblas.so.3` into the runner
process interposes it without rebuilding anything. Only the runner needs it, which is why
this is an environment for a child process rather than something the node does to itself.

Two more things make OpenBLAS fast at decoding (one row of activations times each weight
matrix), both measured in docs/benchmarks.md:
- a small preloaded shim (`native/gemv_forward.c`, compiled once with the system's C
  compiler) sends single-row `cblas_sgemm` calls to `cblas_sgemv`: Debian's OpenBLAS runs
  them through its general GEMM, which packs the whole weight matrix on every call;
- `OPENBLAS_CORETYPE` names the kernels the CPU can run: Debian's OpenBLAS 0.3.21 does
  not know newer CPUs and falls back to its SSE3 "Prescott" kernels on a Sapphire Rapids
  Xeon.

`EXO_BLAS=openblas` preloads OpenBLAS alone, as detected (the baseline for comparisons);
`EXO_BLAS=reference` keeps the bundled BLAS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

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
GEMV_FORWARD_SOURCE = Path(__file__).with_name("native") / "gemv_forward.c"
_GEMV_FORWARD_PREFIX = "libexo-gemv-forward-"


def find_openblas() -> Path | None:
    """The first OpenBLAS `libblas.so.3` installed, or None (always None off Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return next((path for path in OPENBLAS_CANDIDATES if path.is_file()), None)


def runner_env(base: Mapping[str, str], ranked: bool = False) -> dict[str, str]:
    """The environment for a runner process: `base` plus, on Linux, LD_PRELOAD of the gemv
    forward and OpenBLAS and an `OPENBLAS_CORETYPE` for the CPU (module docstring).

    An existing LD_PRELOAD is kept after ours. `EXO_BLAS=openblas` in `base` preloads
    OpenBLAS alone; `EXO_BLAS=reference` nothing.
    `ranked`: a rank of a multi-node instance. Its OpenBLAS threads then go to sleep soon
    after each call instead of spinning for a while: pipeline ranks on one machine compute
    in turn, and a finished rank's spinning threads took the cores of the next one
    (`benchmarks/pipeline_ranks.py`, 2 cores: 2 ranks 0.71x of one runner, 0.95x with this).
    """
    env = dict(base)
    if ranked:
        env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2**4 cycles, OpenBLAS's least
    mode = base.get(BLAS_ENV, "").lower()
    if mode == "reference":
        return env
    openblas = find_openblas()
    if openblas is None:
        return env
    preload = [str(openblas)]
    if mode != "openblas":
        coretype = openblas_coretype(cpu_flags(), platform.machine())
        if coretype is not None:
            env.setdefault("OPENBLAS_CORETYPE", coretype)
        shim = gemv_forward_library()
        if shim is not None:
            preload.insert(0, str(shim))
    existing = [p for p in env.get("LD_PRELOAD", "").split() if p and p not in preload]
    env["LD_PRELOAD"] = " ".join([*preload, *existing])
    return env


def openblas_coretype(flags: frozenset[str], machine: str) -> str | None:
    """The OpenBLAS kernel family for a CPU with these /proc/cpuinfo flags, or None to let
    OpenBLAS detect it. Only families every OpenBLAS since 0.3.10 knows are named."""
    if machine not in ("x86_64", "AMD64"):
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty off Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def gemv_forward_library() -> Path | None:
    """The gemv-forwarding shim, compiled once per version of its source into the user's
    cache; None (logged once) without a C compiler or when compiling fails."""
    return build_gemv_forward(native_cache_dir())


def build_gemv_forward(directory: Path) -> Path | None:
    """Compile `native/gemv_forward.c` into `directory` unless a build of this exact
    source is there already; None when that cannot be done."""
    built = build_native(GEMV_FORWARD_SOURCE, directory, _GEMV_FORWARD_PREFIX, ("-O2",))
    if built is None:
        log.warning("CPU decoding runs without the gemv forward, slower")
    return built


def build_native(
    source_path: Path, directory: Path, prefix: str, flags: tuple[str, ...], key: str = ""
) -> Path | None:
    """Compile a C source of `native/` into a shared library in `directory`, named by
    `prefix` and the hash of the source (with the flags and `key` where given), unless
    that build is there already; None (logged) without a C compiler or when compiling
    fails."""
    source = source_path.read_bytes()
    if key:
        source += "\0".join(("", *flags, key)).encode()
    target = directory / f"{prefix}{hashlib.sha256(source).hexdigest()[:16]}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler (cc) to build %s", source_path.name)
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed: nodes starting together never load half a file.
        with tempfile.TemporaryDirectory(dir=directory) as work:
            built = Path(work) / target.name
            command = [compiler, *flags, "-shared", "-fPIC", "-o", str(built)]
            subprocess.run(
                [*command, str(source_path), "-ldl", "-lm"],
                check=True,
                capture_output=True,
                timeout=120,
            )
            built.replace(target)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning(
            "could not build %s (%s%s)",
            source_path.name,
            exc,
            f": {detail.decode(errors='replace').strip()}" if detail else "",
        )
        return None
    return target


def native_cache_dir() -> Path:
    """Where native builds are kept, per user (each named by the hash of what built it)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "exo" / "native"


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
    if Path(path).name.startswith(_GEMV_FORWARD_PREFIX):
        below = _mapped_blas()
        return f"{_describe(below) if below else 'none loaded'} with gemv forward"
    return _describe(path)


def _describe(path: str) -> str:
    name = Path(path).name
    if "openblas" in path.lower():
        return f"openblas ({path}, {_openblas_core()} kernels)"
    if "mlx" in path and name.startswith("libblas"):
        return "reference (bundled with mlx)"
    if "mkl" in name:
        return f"mkl ({path})"
    return f"other ({path})"


def _openblas_core() -> str:
    """The kernel family the loaded OpenBLAS chose (or was told by OPENBLAS_CORETYPE)."""
    try:
        corename = ctypes.CDLL(None).openblas_get_corename
    except AttributeError:
        return "unknown"
    corename.restype = ctypes.c_char_p
    return (corename() or b"unknown").decode()


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
