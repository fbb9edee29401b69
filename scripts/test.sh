#!/usr/bin/env bash
# Runs the default test suite (slow tests skipped; add --runslow to include them).
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
exec "$VENV/bin/python" -m pytest -q -n 2 --dist loadfile "$@"
