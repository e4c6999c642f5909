#!/usr/bin/env bash
# Set up the virtualenv and run the whole test suite (CI runs exactly this through .ci/run).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh .venv || exit 1
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -q "$@"
code=$?
if [[ $code -eq 5 ]]; then
  echo "pytest collected no tests"
  exit 0
fi
exit $code
