#!/usr/bin/env bash
# Static checks, before the tests: lint and format, the layers contract, the types.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/mypy
