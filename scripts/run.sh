#!/usr/bin/env bash
# The README's run command: sets everything up and runs smarthost on loopback with an embedded
# default configuration (generated into ./demo on first run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/smarthost demo --dir ./demo "$@"
