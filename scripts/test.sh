#!/usr/bin/env bash
# Install exo with its dev tools, then run the whole check: lint, types, layers, tests, and 200
# seeds of the deterministic cluster simulation (docs/simulation.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pyright
.venv/bin/lint-imports
# The tests that load the model in their own process run it as a runner does: with the
# OpenBLAS, gemv forward and kernel choice the runners get (MLX's own reference BLAS
# prefills 20-40x slower).
mapfile -t runner_vars < <(.venv/bin/python -c '
import os
from exo.engine.blas import runner_env
env = runner_env(os.environ)
for name in ("LD_PRELOAD", "OPENBLAS_CORETYPE"):
    if name in env:
        print(f"{name}={env[name]}")
')
env "${runner_vars[@]}" .venv/bin/pytest "$@"
.venv/bin/python -m simulations run --seeds 0..199
