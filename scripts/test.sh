#!/usr/bin/env bash
# Install exo with its dev tools, then run the whole check: lint, types, tests, and 200
# seeds of the deterministic cluster simulation (docs/simulation.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pyright
# The tests that load the model in their own process run it as a runner does: with the
# OpenBLAS the runners preload (MLX's own reference BLAS prefills 20-40x slower).
preload=$(.venv/bin/python -c 'import os; from exo.engine.blas import runner_env; print(runner_env(os.environ).get("LD_PRELOAD", ""))')
LD_PRELOAD="$preload" .venv/bin/pytest "$@"
.venv/bin/python -m simulations run --seeds 0..199
