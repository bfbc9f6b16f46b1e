#!/usr/bin/env bash
# Install exo with its dev tools, then run the whole check: lint, types, tests, and 200
# seeds of the deterministic cluster simulation (docs/simulation.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pyright
.venv/bin/pytest "$@"
.venv/bin/python -m simulations run --seeds 0..199
