#!/usr/bin/env bash
# The README's test command: sets everything up and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-peers.sh
exec .venv/bin/python -m pytest "$@"
