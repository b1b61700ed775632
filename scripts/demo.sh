#!/usr/bin/env bash
# The live pipeline on this machine: a real Prometheus backfilled with demo history,
# the demo workload and the detector. Extra arguments go to `aiops demo up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/aiops demo up "$@"
